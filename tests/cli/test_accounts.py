"""``tollway accounts``: create, list, top up and update accounts, checked in the database afterwards."""

from __future__ import annotations

import re

from tests.cli.conftest import CLI


def account_id(cli: CLI, name: str) -> str:
    return str(cli.sql("SELECT id FROM accounts WHERE name = ?", name)[0][0])


def test_create_and_list(cli: CLI) -> None:
    assert cli.main("accounts", "list").stdout == ""
    ran = cli.main("accounts", "create", "acme", "--budget-usd", "50", "--cap-usd", "10", "--period", "day")
    lines = ran.stdout.splitlines()
    assert re.fullmatch(r"created account (acct_[0-9a-f]{16}) \(acme\)", lines[0])
    assert lines[1] == "budget: balance $50.000000, cap $10.000000/day"
    acme = account_id(cli, "acme")
    assert cli.sql("SELECT prepaid, cap_nanousd, cap_period FROM accounts") == [(1, 10_000_000_000, "day")]
    assert cli.sql("SELECT owner, kind, amount_nanousd FROM ledger") == [(acme, "topup", 50_000_000_000)]

    assert cli.main("accounts", "create", "free").stdout.splitlines()[1:] == []  # no money limit, nothing to say
    key = cli.main("keys", "create", "--name", "k1", "--account", "acme").stdout.split()[2]
    cli.main("keys", "create", "--name", "k2", "--account", "acme")
    cli.main("keys", "revoke", key)
    lines = cli.main("accounts", "list").stdout.splitlines()
    fields = [line.split("\t") for line in lines]
    assert [f[:5] for f in fields] == [
        [acme, "acme", "balance $50.000000", "cap $10.000000/day", "1 key (+1 revoked)"],
        [account_id(cli, "free"), "free", "no balance", "no cap", "0 keys"],
    ]
    assert fields[0][5].startswith("created ")


def test_create_refuses_a_taken_or_id_shaped_name(cli: CLI) -> None:
    cli.main("accounts", "create", "acme")
    assert "exists already" in cli.main("accounts", "create", "acme", "--budget-usd", "5", code=1).stderr
    cli.main("accounts", "create", "acct_0123", code=2)
    cli.main("accounts", "create", "  ", code=2)
    assert cli.sql("SELECT name FROM accounts") == [("acme",)]
    assert cli.sql("SELECT COUNT(*) FROM ledger") == [(0,)]


def test_topup_by_name_or_id_adds_up_to_the_balance(cli: CLI) -> None:
    cli.main("accounts", "create", "acme")
    acme = account_id(cli, "acme")
    ran = cli.main("accounts", "topup", "acme", "50", "--note", "PO 7")
    assert ran.stdout.splitlines()[0] == f"acme ({acme}): +$50.000000, balance $50.000000"
    assert "now prepaid" in ran.stdout
    ran = cli.main("accounts", "topup", acme, "0.000000001")
    assert ran.stdout == f"acme ({acme}): +$0.000000, balance $50.000000\n"  # shown to six places, kept to nine
    assert cli.main("accounts", "topup", acme, "-20").stdout.endswith("balance $30.000000\n")
    cli.main("accounts", "topup", "acme", "-30.000000002", code=1)
    cli.main("accounts", "topup", "nobody", "5", code=1)
    entries = cli.sql("SELECT kind, amount_nanousd, note FROM ledger WHERE owner = ? ORDER BY id", acme)
    assert entries == [("topup", 50_000_000_000, "PO 7"), ("topup", 1, None), ("topup", -20_000_000_000, None)]
    assert sum(e[1] for e in entries) == 30_000_000_001
    assert cli.sql("SELECT prepaid FROM accounts") == [(1,)]
    assert "\tbalance $30.000000\t" in cli.main("accounts", "list").stdout


def test_update_cap_period_and_balance(cli: CLI) -> None:
    cli.main("accounts", "create", "acme", "--budget-usd", "5")
    acme = account_id(cli, "acme")
    assert cli.main("accounts", "update", "acme", "--cap-usd", "100").stdout == (
        f"updated acme ({acme}): cap=$100.000000/month\n")
    assert cli.main("accounts", "update", acme, "--period", "day").stdout.endswith(": period=day\n")
    # A new amount keeps the period the cap has.
    assert cli.main("accounts", "update", "acme", "--cap-usd", "7").stdout.endswith(": cap=$7.000000/day\n")
    assert cli.sql("SELECT prepaid, cap_nanousd, cap_period FROM accounts") == [(1, 7_000_000_000, "day")]
    assert cli.main("accounts", "update", "acme", "--cap-usd", "0", "--no-balance").stdout.endswith(
        ": cap=none, prepaid=off\n")
    assert cli.sql("SELECT prepaid, cap_nanousd, cap_period FROM accounts") == [(0, None, None)]
    cli.main("accounts", "update", "acme", code=2)  # nothing to change
    cli.main("accounts", "update", "nobody", "--cap-usd", "1", code=1)
    assert cli.sql("SELECT SUM(amount_nanousd) FROM ledger") == [(5_000_000_000,)]  # no entry by an update


def test_the_console_script_runs_accounts(cli: CLI) -> None:
    cli.run("accounts", "create", "acme", "--cap-usd", "1")
    assert "\tacme\tno balance\tcap $1.000000/month\t0 keys\t" in cli.run("accounts", "list").stdout
