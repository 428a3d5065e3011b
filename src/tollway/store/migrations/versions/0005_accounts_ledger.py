"""Accounts, money limits on keys and accounts, and the ledger of balance changes.

Every key gets an account: existing keys each get one of their own, named after the key.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _money_columns() -> list[sa.Column[object]]:
    return [sa.Column("prepaid", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("cap_nanousd", sa.BigInteger, nullable=True),
            sa.Column("cap_period", sa.String(10), nullable=True)]


def upgrade() -> None:
    accounts = op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *_money_columns(),
    )
    op.create_index("ix_accounts_updated_at", "accounts", ["updated_at"])
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        # Microseconds since the Unix epoch: two entries are written per request, and an integer is the
        # cheapest time to write.
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("amount_nanousd", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_ledger_owner", "ledger", ["owner"])
    # One reserve and one closing entry (settle or release) per request and owner: a batch written again
    # after an unclear failure cannot count twice, and a request released at a start while the process that
    # made it still drains cannot also be settled.
    op.create_index("ux_ledger_request", "ledger",
                    ["request_id", "owner", sa.text("(CASE WHEN kind = 'reserve' THEN 0 ELSE 1 END)")], unique=True)
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("account_id", sa.String(40), nullable=True))
        for column in _money_columns():
            batch.add_column(column)
        batch.create_index("ix_keys_account", ["account_id"])

    conn = op.get_bind()
    keys = sa.table("keys", sa.column("id", sa.String), sa.column("name", sa.String),
                    sa.column("account_id", sa.String))
    now = datetime.now(UTC)
    taken: set[str] = set()
    for key_id, name in conn.execute(sa.select(keys.c.id, keys.c.name)).all():
        account_name = name if name not in taken else f"{name}-{key_id}"
        taken.add(account_name)
        account_id = "acct_" + secrets.token_hex(8)
        conn.execute(accounts.insert().values(id=account_id, name=account_name, created_at=now, updated_at=now))
        conn.execute(keys.update().where(keys.c.id == key_id).values(account_id=account_id))


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.drop_index("ix_keys_account")
        for name in ("cap_period", "cap_nanousd", "prepaid", "account_id"):
            batch.drop_column(name)
    op.drop_table("ledger")
    op.drop_table("accounts")
