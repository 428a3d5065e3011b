"""Rate limits per key: requests, input and output tokens per minute, and concurrency.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("rpm", "itpm", "otpm", "max_concurrency")


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
