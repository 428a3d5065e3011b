"""``tollway keys``: create, list, update, top up, revoke; the key's account and its money limits."""

from __future__ import annotations

import hashlib
import re
import sqlite3

import pytest

from tests.cli.conftest import CLI, Ran


def test_keys_create_list_revoke(cli: CLI) -> None:
    assert cli.run("keys", "list").stdout == ""  # a fresh database: no keys, no header

    done = cli.run("keys", "create", "--name", "x")
    lines = done.stdout.splitlines()
    secret = lines[-1]  # the secret is the last line, alone, for scripts to take
    assert secret.startswith("tw-")
    assert re.fullmatch(r"tw-[A-Za-z0-9_-]{43}", secret)
    match = re.fullmatch(r"created key (key_[0-9a-f]{16}) \(x\) for all models", lines[0])
    assert match is not None, lines
    first_id = match.group(1)
    assert sum(secret in line for line in lines) == 1  # shown once
    assert done.stderr == ""

    second_id, second_secret = cli.create("second key", "claude-sonnet-*", "claude-haiku-4-5*")
    lines = cli.run("keys", "list").stdout.splitlines()
    assert len(lines) == 2  # one line a key
    fields = [line.split("\t") for line in lines]
    assert [f[:2] for f in fields] == [[first_id, "x"], [second_id, "second key"]]  # id first, then name
    assert all("\tactive\t" in line for line in lines)
    assert "\t*\t" in lines[0]  # every model
    assert "claude-sonnet-*,claude-haiku-4-5*" in fields[1]
    assert second_secret[:7] in fields[1][2] and second_secret[-4:] in fields[1][2]  # the hint
    assert secret not in lines[0] and second_secret not in lines[1]

    # Only hashes reach the database.
    with sqlite3.connect(cli.db) as conn:
        stored = dict(conn.execute("SELECT id, secret_hash FROM keys").fetchall())
    assert stored == {first_id: hashlib.sha256(secret.encode()).hexdigest(),
                      second_id: hashlib.sha256(second_secret.encode()).hexdigest()}
    raw = b"".join(f.read_bytes() for f in cli.db.parent.iterdir())
    assert secret.encode() not in raw and second_secret.encode() not in raw

    done = cli.run("keys", "revoke", first_id)
    assert done.stdout.strip() == f"revoked {first_id}"
    lines = cli.run("keys", "list").stdout.splitlines()
    assert lines[0].startswith(first_id + "\t")
    assert re.search(r"\trevoked \d{4}-\d\d-\d\d \d\d:\d\d\t", lines[0])
    assert "\tactive\t" in lines[1]

    again = cli.run("keys", "revoke", first_id, code=1)
    assert again.stdout == ""
    assert f"no active key with id {first_id}" in again.stderr


def test_keys_limits_create_update_and_list(cli: CLI) -> None:
    out = cli.run("keys", "create", "--name", "limited", "--rpm", "50", "--otpm", "8000").stdout.splitlines()
    key_id = out[0].split()[2]
    line = cli.run("keys", "list").stdout.splitlines()[0]
    assert "\trpm=50,otpm=8000\t" in line
    done = cli.run("keys", "update", key_id, "--rpm", "0", "--itpm", "30000", "--max-concurrency", "4")
    assert done.stdout.strip() == f"updated {key_id}: rpm=none, itpm=30000, max_concurrency=4"
    line = cli.run("keys", "list").stdout.splitlines()[0]
    assert "\titpm=30000,otpm=8000,max_concurrency=4\t" in line
    with sqlite3.connect(cli.db) as conn:
        assert conn.execute("SELECT rpm, itpm, otpm, max_concurrency FROM keys").fetchone() == (None, 30000, 8000, 4)
    cli.run("keys", "update", "key_nope", "--rpm", "1", code=1)
    cli.run("keys", "update", key_id, code=2)


def created(ran: Ran) -> str:
    match = re.match(r"created key (key_[0-9a-f]{16}) ", ran.stdout)
    assert match is not None, ran.stdout
    return match.group(1)


def test_a_key_without_account_gets_one_of_its_own(cli: CLI) -> None:
    first = cli.main("keys", "create", "--name", "ci")
    first_id = created(first)
    lines = first.stdout.splitlines()
    assert re.fullmatch(r"account: ci \(acct_[0-9a-f]{16}, new\)", lines[1])
    assert lines[-1].startswith("tw-")  # the secret is still the last line
    # A second key of the same name: the name is taken, so its account takes the key's id as a suffix.
    second_id = created(cli.main("keys", "create", "--name", "ci"))
    rows = cli.sql("SELECT k.id, a.name FROM keys k JOIN accounts a ON a.id = k.account_id ORDER BY k.created_at")
    assert rows == [(first_id, "ci"), (second_id, f"ci-{second_id}")]
    assert cli.sql("SELECT COUNT(*) FROM accounts") == [(2,)]
    assert cli.sql("SELECT COUNT(*) FROM ledger") == [(0,)]
    lines = cli.main("keys", "list").stdout.splitlines()
    assert [line.split("\t")[7:] for line in lines] == [["ci", "no balance", "no cap"],
                                                        [f"ci-{second_id}", "no balance", "no cap"]]


def test_a_long_name_still_fits_its_account_s_column(cli: CLI) -> None:
    name = "n" * 200  # as long as a name may be
    created(cli.main("keys", "create", "--name", name))
    second = created(cli.main("keys", "create", "--name", name))
    own = cli.sql(f"SELECT a.name FROM keys k JOIN accounts a ON a.id = k.account_id WHERE k.id = '{second}'")[0][0]
    assert len(own) == 200 and own.endswith(f"-{second}") and own.startswith("nnn")


@pytest.mark.parametrize(("name", "problem"), [
    ("n" * 201, "must be at most 200 characters (got 201)"),
    ("  ", "must not be empty"),
    ("a\nb", "must not contain control characters"),
])
def test_names_that_cannot_be_listed_or_stored_are_refused(cli: CLI, name: str, problem: str) -> None:
    for command in (("keys", "create", "--name", name), ("accounts", "create", name)):
        ran = cli.main(*command, code=2)
        assert problem in ran.stderr
    assert not cli.db.exists()  # refused before the database was opened


def test_a_key_joins_an_account_by_name_or_id(cli: CLI) -> None:
    cli.main("accounts", "create", "team")
    account_id = cli.sql("SELECT id FROM accounts")[0][0]
    by_name = created(cli.main("keys", "create", "--name", "a", "--account", "team"))
    ran = cli.main("keys", "create", "--name", "b", "--account", account_id)
    by_id = created(ran)
    assert ran.stdout.splitlines()[1] == f"account: team ({account_id})"
    rows = cli.sql("SELECT id, account_id FROM keys ORDER BY created_at")
    assert rows == [(by_name, account_id), (by_id, account_id)]
    assert cli.sql("SELECT COUNT(*) FROM accounts") == [(1,)]  # no account of their own
    assert "\t2 keys\t" in cli.main("accounts", "list").stdout


def test_an_unknown_account_is_refused_and_nothing_is_created(cli: CLI) -> None:
    ran = cli.main("keys", "create", "--name", "a", "--account", "nobody", "--budget-usd", "5", code=1)
    assert ran.stdout == ""
    assert "no account named or with id 'nobody'" in ran.stderr
    assert cli.sql("SELECT COUNT(*) FROM keys") == [(0,)]
    assert cli.sql("SELECT COUNT(*) FROM accounts") == [(0,)]
    assert cli.sql("SELECT COUNT(*) FROM ledger") == [(0,)]


def test_budget_usd_makes_the_key_prepaid_with_a_topup(cli: CLI) -> None:
    ran = cli.main("keys", "create", "--name", "a", "--budget-usd", "20", "--cap-usd", "2.5")
    key_id = created(ran)
    assert "budget: balance $20.000000, cap $2.500000/month" in ran.stdout.splitlines()
    assert cli.sql("SELECT prepaid, cap_nanousd, cap_period FROM keys") == [(1, 2_500_000_000, "month")]
    assert cli.sql("SELECT owner, kind, amount_nanousd, note FROM ledger") == [
        (key_id, "topup", 20_000_000_000, "initial budget")]
    # The money is the key's own: its account has no limit.
    assert cli.sql("SELECT prepaid, cap_nanousd FROM accounts") == [(0, None)]
    assert cli.main("keys", "list").stdout.split("\t")[-2:] == ["balance $20.000000", "cap $2.500000/month\n"]


def test_budget_usd_zero_is_prepaid_with_nothing_to_spend(cli: CLI) -> None:
    ran = cli.main("keys", "create", "--name", "a", "--budget-usd", "0")
    assert "budget: balance $0.000000, no cap" in ran.stdout
    assert cli.sql("SELECT prepaid FROM keys") == [(1,)]
    assert cli.sql("SELECT COUNT(*) FROM ledger") == [(0,)]


def test_keys_topup_and_take_back(cli: CLI) -> None:
    key_id = created(cli.main("keys", "create", "--name", "a"))
    ran = cli.main("keys", "topup", key_id, "5", "--note", "invoice 12")
    assert ran.stdout.splitlines() == [f"a ({key_id}): +$5.000000, balance $5.000000",
                                       "now prepaid: requests are refused once the balance cannot cover them"]
    assert cli.sql("SELECT prepaid FROM keys") == [(1,)]
    assert cli.main("keys", "topup", key_id, "-1.25").stdout == f"a ({key_id}): -$1.250000, balance $3.750000\n"
    refused = cli.main("keys", "topup", key_id, "-3.750000001", code=1)
    assert "cannot take back $3.750000 from a" in refused.stderr
    cli.main("keys", "topup", key_id, "0", code=2)
    cli.main("keys", "topup", "key_0000000000000000", "1", code=1)
    assert cli.sql("SELECT kind, amount_nanousd, note FROM ledger ORDER BY id") == [
        ("topup", 5_000_000_000, "invoice 12"), ("topup", -1_250_000_000, None)]
    assert cli.sql("SELECT SUM(amount_nanousd) FROM ledger WHERE owner = ?", key_id) == [(3_750_000_000,)]
    assert "\tbalance $3.750000\t" in cli.main("keys", "list").stdout


def test_keys_update_limits_and_budget_together(cli: CLI) -> None:
    key_id = created(cli.main("keys", "create", "--name", "a", "--budget-usd", "1"))
    ran = cli.main("keys", "update", key_id, "--rpm", "10", "--cap-usd", "3", "--period", "day", "--no-balance")
    assert ran.stdout == f"updated {key_id}: rpm=10, cap=$3.000000/day, prepaid=off\n"
    assert cli.sql("SELECT rpm, prepaid, cap_nanousd, cap_period FROM keys") == [(10, 0, 3_000_000_000, "day")]
    # The balance stays in the ledger when prepaid is turned off; a later top-up starts from it.
    assert cli.sql("SELECT SUM(amount_nanousd) FROM ledger") == [(1_000_000_000,)]
    assert "\tno balance\tcap $3.000000/day" in cli.main("keys", "list").stdout


def test_a_key_logs_its_bodies_only_when_asked(cli: CLI) -> None:
    quiet = created(cli.main("keys", "create", "--name", "quiet"))
    loud = created(cli.main("keys", "create", "--name", "loud", "--log-bodies"))
    assert dict(cli.sql("SELECT id, log_bodies FROM keys")) == {quiet: 0, loud: 1}
    listed = cli.main("keys", "list").stdout.splitlines()
    assert [line.endswith("\tlogs-bodies") for line in listed] == [False, True]
    assert cli.main("keys", "update", quiet, "--log-bodies", "on").stdout == f"updated {quiet}: log_bodies=True\n"
    cli.main("keys", "update", loud, "--log-bodies", "off")
    assert dict(cli.sql("SELECT id, log_bodies FROM keys")) == {quiet: 1, loud: 0}
