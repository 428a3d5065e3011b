"""Table definitions, one for every backend; migrations in ``migrations/`` create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    false,
)

from tollway.store.records import NAME_LENGTH

metadata = MetaData()

keys = Table(
    "keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("hint", String(40), nullable=False),
    Column("models", JSON(none_as_null=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("rpm", Integer, nullable=True),
    Column("itpm", Integer, nullable=True),
    Column("otpm", Integer, nullable=True),
    Column("max_concurrency", Integer, nullable=True),
    Column("account_id", String(40), nullable=True),
    Column("prepaid", Boolean, nullable=False, server_default=false()),
    Column("cap_nanousd", BigInteger, nullable=True),
    Column("cap_period", String(10), nullable=True),
    Column("log_bodies", Boolean, nullable=False, server_default=false()),
    Index("ix_keys_updated_at", "updated_at"),
    Index("ix_keys_account", "account_id"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("prepaid", Boolean, nullable=False, server_default=false()),
    Column("cap_nanousd", BigInteger, nullable=True),
    Column("cap_period", String(10), nullable=True),
    Index("ix_accounts_updated_at", "updated_at"),
)

# Every change to a balance; a balance is the sum of its owner's rows.
ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("owner", String(40), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("amount_nanousd", BigInteger, nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("note", Text, nullable=True),
    Index("ix_ledger_owner", "owner"),
    # The top-ups after a given entry, read by every replica at each refresh: without it, a scan of every
    # entry since the last top-up (migration 0007).
    Index("ix_ledger_kind_id", "kind", "id"),
)
# One reserve and one closing entry (settle or release) per request and owner: a batch written again after an
# unclear failure cannot count twice, and a request released at a start while the process that made it still
# drains (a rolling restart) cannot also be settled.
Index("ux_ledger_request", ledger.c.request_id, ledger.c.owner,
      case((ledger.c.kind == "reserve", 0), else_=1), unique=True)

usage = Table(
    "usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("key_id", String(40), nullable=True),
    Column("endpoint", String(20), nullable=False),
    Column("model", String(200), nullable=True),
    Column("upstream", String(200), nullable=True),
    Column("upstream_model", String(200), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_type", String(60), nullable=True),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cache_creation_input_tokens", Integer, nullable=False),
    Column("cache_read_input_tokens", Integer, nullable=False),
    Column("cache_creation_5m", Integer, nullable=False),
    Column("cache_creation_1h", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttfb_ms", Float, nullable=True),
    Column("tries", Text, nullable=True),
    Column("cost_nanousd", BigInteger, nullable=True),
    Index("ix_usage_key_created", "key_id", "created_at"),
    Index("ix_usage_created", "created_at"),
)
