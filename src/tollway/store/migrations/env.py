"""Alembic environment: Tollway runs migrations itself, on a connection it passes in."""

from __future__ import annotations

from alembic import context

from tollway.store.schema import metadata

connection = context.config.attributes["connection"]
# Batch mode lets SQLite alter tables by copying them, so one migration serves every backend.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
