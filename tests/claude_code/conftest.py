from __future__ import annotations

from pathlib import Path

import pytest

from .client import ClaudeUnavailable, find_claude, probe_claude


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    try:
        path = find_claude()
        probe_claude(path)
    except ClaudeUnavailable as exc:
        pytest.skip(str(exc))
    return path
