"""HTML forms read into the admin API's `Fields`, so a value typed into the dashboard is checked by the same
rules, with the same wording, as one sent as JSON."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from multidict import MultiDictProxy

from tollway.api.admin.inputs import Fields
from tollway.config import LIMIT_FIELDS

Form = MultiDictProxy[Any]


def text(form: Form, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def fields(form: Form, allowed: Collection[str]) -> Fields:
    """The allowed fields that were filled in (an empty box is a field not sent, as null is in JSON): limits as
    whole numbers where they are digits (else as typed, for `Fields` to refuse by name), model patterns split at
    commas and spaces, the rest as text."""
    data: dict[str, Any] = {}
    for name in allowed:
        raw = (text(form, name) or "").strip()
        if not raw:
            continue
        if name in LIMIT_FIELDS:
            data[name] = int(raw) if raw.isascii() and raw.isdigit() else raw
        elif name == "models":
            data[name] = [p for p in re.split(r"[,\s]+", raw) if p]
        else:
            data[name] = raw
    return Fields(data)
