"""What operators send: JSON bodies and query strings, read field by field.

Every problem is a 400 ``invalid_request_error`` that names the field; nothing is written before the whole
input has been read, so a bad field never leaves half a change behind.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

import orjson
from aiohttp import web

from tollway.errors import InvalidRequest
from tollway.money import parse_nanousd
from tollway.store.records import NAME_LENGTH

T = TypeVar("T")
NOTE_LENGTH = 1000
MAX_LIMIT = 2**31 - 1
"""The limits' columns are 32-bit integers on PostgreSQL."""


def _fail(name: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {problem}")


class Fields:
    """A request's JSON object. A field sent as null reads as not sent; only `sent` tells the two apart (for
    an update, where null removes a limit)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    async def read(cls, request: web.Request, allowed: Collection[str]) -> Fields:
        raw = await request.read()
        data: Any = {}
        # An action with nothing to say (a revoke) may come with no body at all.
        if raw.strip():
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequest(f"the body must be a JSON object, not {_kind(data)}")
        for name in data:
            if name not in allowed:
                expected = ", ".join(sorted(allowed)) or "none"
                raise _fail(name, f"unknown field (expected: {expected})")
        return cls(data)

    def sent(self, name: str) -> bool:
        return name in self.data

    def _value(self, name: str, what: str, check: Callable[[Any], bool]) -> Any:
        value = self.data.get(name)
        if value is not None and not check(value):
            raise _fail(name, f"must be {what}, not {_kind(value)}")
        return value

    def string(self, name: str, *, required: bool = False, length: int = NAME_LENGTH,
               one_line: bool = True) -> str | None:
        """A name (one line: no control characters, since names are shown one a line) or, with ``one_line``
        false, a note, which may have line breaks."""
        value: str | None = self._value(name, "a string", lambda v: isinstance(v, str))
        if value is None:
            if required:
                raise _fail(name, "is required")
            return None
        value = value.strip()
        if not value:
            raise _fail(name, "must not be empty")
        if len(value) > length:
            raise _fail(name, f"must be at most {length} characters")
        checked(name, value, one_line=one_line)
        return value

    def boolean(self, name: str) -> bool | None:
        value: bool | None = self._value(name, "true or false", lambda v: isinstance(v, bool))
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self._value(name, f"one of {', '.join(choices)}", lambda v: v in choices)
        return None if value is None else str(value)

    def limit(self, name: str) -> int | None:
        """A rate limit: a whole number, 0 (or null) for none."""
        value: int | None = self._value(name, "a whole number, 0 for no limit",
                                        lambda v: isinstance(v, int) and not isinstance(v, bool))
        if value is not None and not 0 <= value <= MAX_LIMIT:
            raise _fail(name, f"must be between 0 (no limit) and {MAX_LIMIT} (got {value})")
        return value or None

    def usd(self, name: str, *, negative: bool = False, required: bool = False) -> int | None:
        """Dollars as a decimal string (``"20"``, ``"0.15"``) or a whole number, to nano-dollars exactly. A JSON
        fraction is refused: it arrives as a binary float, which cannot hold most cents exactly."""
        value = self._value(name, 'dollars as a string such as "0.15", or a whole number',
                            lambda v: isinstance(v, str | int) and not isinstance(v, bool))
        if value is None:
            if required:
                raise _fail(name, "is required")
            return None
        nano = parsed(name, str(value), parse_nanousd)
        if nano < 0 and not negative:
            raise _fail(name, f"must be 0 or more (got {value!r})")
        return nano

    def patterns(self, name: str) -> tuple[str, ...] | None:
        value = self._value(name, "an array of model name patterns", lambda v: isinstance(v, list))
        if value is None:
            return None
        if not value:
            raise _fail(name, "give at least one pattern, or null for every model")
        if not all(isinstance(p, str) and p.strip() for p in value):
            raise _fail(name, "every pattern must be a non-empty string, such as \"claude-sonnet-*\"")
        for p in value:
            checked(name, p)
        return tuple(p.strip() for p in value)


def checked(name: str, value: str, *, one_line: bool = True) -> str:
    """``value``, refused if it holds a NUL (PostgreSQL cannot store one in text: it would fail as a 500 there
    and work on SQLite) or, ``one_line``, any other control character."""
    if "\x00" in value:
        raise _fail(name, "must not contain NUL characters")
    if one_line and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _fail(name, "must not contain control characters (line breaks, tabs, ...)")
    return value


def query(request: web.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters that have a value; an empty one counts as not given."""
    values: dict[str, str] = {}
    for name in request.query:
        if name not in allowed:
            raise _fail(name, f"unknown query parameter (expected: {', '.join(sorted(allowed)) or 'none'})")
        given = request.query.getall(name)
        if len(given) > 1:
            raise _fail(name, "given more than once")
        if given[0].strip():
            values[name] = checked(name, given[0].strip())
    return values


def parsed(name: str, raw: str, parse: Callable[[str], T]) -> T:
    """``parse(raw)``, its ValueError a 400 that names the parameter."""
    try:
        return parse(raw)
    except ValueError as exc:
        raise _fail(name, str(exc)) from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
