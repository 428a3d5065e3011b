"""The dispatcher: migrate, and config errors before any command runs."""

from __future__ import annotations

from tests.cli.conftest import CLI, CONFIG


def test_migrate(cli: CLI) -> None:
    done = cli.run("migrate")
    assert done.stdout.startswith("schema is up to date")
    assert cli.db.exists()


def test_bad_config_exits_2_naming_file_and_key(cli: CLI) -> None:
    bad = cli.tmp / "bad.toml"
    bad.write_text(CONFIG.format(db=cli.db) + '\n[server]\nport = "eighty"\n', encoding="utf-8")
    done = cli.run("keys", "list", config=bad, code=2)
    assert done.stdout == ""
    assert f"{bad}: server.port: must be an integer, not str" in done.stderr
    assert not cli.db.exists()  # nothing was opened


def test_missing_env_var_exits_2_naming_the_key(cli: CLI) -> None:
    bad = cli.tmp / "env.toml"
    bad.write_text(CONFIG.format(db=cli.db) + '\n[[upstreams]]\nname = "a"\nkind = "anthropic"\n'
                   'api_keys = ["${TOLLWAY_TEST_UNSET_VAR}"]\n', encoding="utf-8")
    cli.env.pop("TOLLWAY_TEST_UNSET_VAR", None)
    done = cli.run("usage", config=bad, code=2)
    assert f"{bad}: upstreams[1].api_keys[0]: environment variable TOLLWAY_TEST_UNSET_VAR is not set" in done.stderr


def test_missing_config_file_exits_2(cli: CLI) -> None:
    missing = cli.tmp / "nope.toml"
    done = cli.run("keys", "list", config=missing, code=2)
    assert f"{missing}: file not found" in done.stderr


def test_an_unreachable_database_exits_1_saying_so_without_a_traceback(cli: CLI) -> None:
    away = cli.tmp / "away.toml"
    # Port 1 on loopback refuses connections: a PostgreSQL that is down.
    away.write_text(CONFIG.format(db=cli.db).replace(f'url = "sqlite:///{cli.db}"',
                                                     'url = "postgresql://tollway@127.0.0.1:1/tollway"'),
                    encoding="utf-8")
    done = cli.run("keys", "list", config=away, code=1)
    assert done.stderr.startswith("tollway: the database cannot be reached (")
    assert "Traceback" not in done.stderr
