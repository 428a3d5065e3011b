"""The ``tollway`` command against a temporary config and SQLite file: as the installed console script in a
subprocess (what users run), or as ``main([...])`` in this process (fast, for the many cases)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tollway.cli import main

TOLLWAY = Path(sys.executable).parent / "tollway"

CONFIG = """
[storage]
url = "sqlite:///{db}"

[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "mock" }}]
"""


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


class CLI:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.db = tmp_path / "data" / "cli.db"
        self.config = tmp_path / "tollway.toml"
        self.config.write_text(CONFIG.format(db=self.db), encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if k not in ("TOLLWAY_CONFIG", "ANTHROPIC_API_KEY")}
        self._capsys = capsys

    def _argv(self, args: tuple[str, ...], config: Path | None) -> list[str]:
        # --config belongs to the subcommand: "tollway keys list --config X", "tollway usage --config X".
        split = 2 if args[0] in ("keys", "accounts") else 1
        return [*args[:split], "--config", str(config or self.config), *args[split:]]

    def run(self, *args: str, config: Path | None = None, code: int = 0) -> subprocess.CompletedProcess[str]:
        """The installed console script, in a subprocess."""
        argv = [str(TOLLWAY), *self._argv(args, config)]
        # The working directory holds no tollway.toml of its own: only --config is read.
        cwd = self.tmp / "cwd"
        cwd.mkdir(exist_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=self.env, cwd=cwd, check=False)
        assert done.returncode == code, (argv, done.returncode, done.stdout, done.stderr)
        return done

    def main(self, *args: str, code: int = 0) -> Ran:
        """``tollway.cli.main`` in this process; argparse's exits are caught and returned like the others."""
        self._capsys.readouterr()
        try:
            got: Any = main(self._argv(args, None))
        except SystemExit as exc:
            got = exc.code
        out, err = self._capsys.readouterr()
        assert got == code, (args, got, out, err)
        return Ran(got, out, err)

    def create(self, name: str, *models: str) -> tuple[str, str]:
        args = ["keys", "create", "--name", name]
        if models:
            args += ["--models", *models]
        out = self.run(*args).stdout.splitlines()
        match = re.match(r"created key (key_[0-9a-f]+) ", out[0])
        assert match is not None, out
        return match.group(1), out[-1]

    def sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CLI:
    assert TOLLWAY.exists(), f"console script not installed at {TOLLWAY}"
    # The in-process runs must read only --config, as the subprocess ones do.
    monkeypatch.delenv("TOLLWAY_CONFIG", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return CLI(tmp_path, capsys)
