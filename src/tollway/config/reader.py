"""Typed access to a TOML table, with errors that name the file and the dotted key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tollway.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Reader:
    """Typed access to one TOML table, with errors that name the file and the dotted key."""

    def __init__(self, source: str, env: Mapping[str, str], data: Mapping[str, Any], where: str) -> None:
        self.source, self.env, self.data, self.where = source, env, data, where

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._path(key)}: {problem}")

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(key, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {type(value).__name__}")
        return self.expand(value, key)

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if key in self.data else None

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, not {type(value).__name__}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return float(value)

    def integer(self, key: str, default: int | None, *, minimum: int, maximum: int | None = None) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {type(value).__name__}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise self.fail(key, f"must be {bound} (got {value})")
        return value

    def table(self, key: str) -> Reader:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return Reader(self.source, self.env, value, self._path(key))

    def tables(self, key: str) -> list[Reader]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "must be an array of tables")
        return [Reader(self.source, self.env, v, f"{self._path(key)}[{i}]") for i, v in enumerate(value)]

    def expand(self, value: str, key: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                raise self.fail(key, f"environment variable {name} is not set")
            return self.env[name]

        return _ENV_REF.sub(sub, value)
