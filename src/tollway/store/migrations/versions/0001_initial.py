"""Keys and usage rows.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.String(40), nullable=False),
        sa.Column("models", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_keys_updated_at", "keys", ["updated_at"])
    op.create_table(
        "usage",
        # 64-bit on PostgreSQL, where a busy gateway would run through 2**31 rows; SQLite's rowid already is,
        # and its column stays INTEGER, the only type that makes it the rowid. (PostgreSQL was refused as a
        # store before this type was set, so no PostgreSQL database has the older 32-bit column.)
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("endpoint", sa.String(20), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("upstream", sa.String(200), nullable=True),
        sa.Column("upstream_model", sa.String(200), nullable=True),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String(60), nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cache_creation_input_tokens", sa.Integer, nullable=False),
        sa.Column("cache_read_input_tokens", sa.Integer, nullable=False),
        sa.Column("cache_creation_5m", sa.Integer, nullable=False),
        sa.Column("cache_creation_1h", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttfb_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_usage_key_created", "usage", ["key_id", "created_at"])
    op.create_index("ix_usage_created", "usage", ["created_at"])


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("keys")
