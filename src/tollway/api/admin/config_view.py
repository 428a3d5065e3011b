"""The effective config as JSON for ``GET /admin/config``, with every secret masked.

The config's dataclasses are walked field by field, so a field added later is shown without a change here;
one rule decides what is masked, by the field's name or its ``repr=False`` (the config's mark for a value a
log must not show):

- a field named ``url`` or ``*_url`` keeps its scheme, host, port and path; the password in it (or the whole
  user part, when it has no password: a lone user part is often a token), and any query parameter whose name
  speaks of a secret, are masked;
- a field named in `SECRET_FIELDS` or marked ``repr=False`` shows only whether it is set: each string, byte
  string or list item becomes `MASK`, so ``api_keys`` still says how many keys there are;
- everything else is shown as it is (decimals as strings, tuples as lists).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from tollway.config import Config

MASK = "********"
SECRET_FIELDS = frozenset({"api_keys", "token", "token_sha256", "password", "secret"})
SECRET_WORDS = ("pass", "secret", "token", "key", "auth", "credential", "signature")
"""Query parameters whose names contain one of these are masked (``password=``, ``sslkey=``, ``api_key=``)."""


def config_view(config: Config) -> dict[str, Any]:
    shown = _shown(config)
    assert isinstance(shown, dict)
    return shown


def _shown(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if (f.name == "url" or f.name.endswith("_url")) and isinstance(item, str):
                out[f.name] = masked_url(item)
            elif f.name in SECRET_FIELDS or not f.repr:
                out[f.name] = _masked(item)
            else:
                out[f.name] = _shown(item)
        return out
    if isinstance(value, tuple | list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    # A type this walk does not know might hold anything: it is not guessed at.
    return MASK


def _masked(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple | list):
        return [MASK for _ in value]
    return MASK


def masked_url(url: str) -> str:
    try:
        urlsplit(url)
    except ValueError:  # unparseable (a bad IPv6 literal): nothing of it is shown rather than all of it
        return MASK
    # Cut by hand rather than rebuilt by urlunsplit, which rewrites some URLs (sqlite:///x loses a slash).
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK if "@" in url else url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        user_part, _, host = authority.rpartition("@")
        user, has_password, _ = user_part.partition(":")
        authority = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    before_fragment, hash_sign, fragment = tail.partition("#")
    path, question, query = before_fragment.partition("?")
    query = "&".join(_masked_parameter(p) for p in query.split("&")) if query else ""
    return f"{scheme}://{authority}{path}{question}{query}{hash_sign}{fragment}"


def _masked_parameter(parameter: str) -> str:
    name, has_value, _ = parameter.partition("=")
    if has_value and any(word in name.lower() for word in SECRET_WORDS):
        return f"{name}={MASK}"
    return parameter
