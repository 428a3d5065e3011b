"""The budget flags, the same on keys and on accounts: caps and their periods, refused combinations."""

from __future__ import annotations

import pytest

from tests.cli.conftest import CLI


def create(cli: CLI, kind: str, *flags: str, code: int = 0) -> str:
    """A key or an account, created with ``flags``; its id."""
    args = ("keys", "create", "--name", "x") if kind == "keys" else ("accounts", "create", "x")
    cli.main(*args, *flags, code=code)
    rows = cli.sql(f"SELECT id FROM {kind}")
    return str(rows[0][0]) if rows else ""


def budget(cli: CLI, kind: str) -> tuple[object, ...]:
    return cli.sql(f"SELECT prepaid, cap_nanousd, cap_period FROM {kind}")[0]


@pytest.mark.parametrize("kind", ["keys", "accounts"])
def test_a_cap_without_period_is_monthly(cli: CLI, kind: str) -> None:
    create(cli, kind, "--cap-usd", "0.1")
    assert budget(cli, kind) == (0, 100_000_000, "month")


@pytest.mark.parametrize("kind", ["keys", "accounts"])
def test_cap_zero_at_creation_is_no_cap(cli: CLI, kind: str) -> None:
    create(cli, kind, "--cap-usd", "0")
    assert budget(cli, kind) == (0, None, None)


@pytest.mark.parametrize("kind", ["keys", "accounts"])
@pytest.mark.parametrize("flags", [("--period", "day"), ("--cap-usd", "0", "--period", "day"),
                                   ("--budget-usd", "-1"), ("--cap-usd", "-1"), ("--budget-usd", "1e-10"),
                                   ("--cap-usd", "abc"), ("--budget-usd", "inf"), ("--period", "week")])
def test_refused_flags_write_nothing(cli: CLI, kind: str, flags: tuple[str, ...]) -> None:
    assert create(cli, kind, *flags, code=2) == ""
    assert not cli.db.exists()  # refused before the database is opened


@pytest.mark.parametrize("kind", ["keys", "accounts"])
def test_update_period_alone_needs_a_present_cap(cli: CLI, kind: str) -> None:
    owner = create(cli, kind)
    ran = cli.main(kind, "update", owner, "--period", "day", code=2)
    assert "--period needs a cap" in ran.stderr
    cli.main(kind, "update", owner, "--cap-usd", "0", "--period", "day", code=2)
    assert budget(cli, kind) == (0, None, None)
    cli.main(kind, "update", owner, "--cap-usd", "2", "--period", "day")
    cli.main(kind, "update", owner, "--period", "month")
    assert budget(cli, kind) == (0, 2_000_000_000, "month")
