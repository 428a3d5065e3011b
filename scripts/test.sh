#!/usr/bin/env bash
# Install everything the tests need, then run the linters and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k streams -x).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
scripts/bootstrap.sh dev
# The real Claude Code CLI for tests/claude_code; without it (no npm, no registry) those tests skip
# and say why, and the rest of the suite still runs.
if ! scripts/install-claude-code.sh >/dev/null; then
    echo "test: Claude Code could not be installed; its tests will be skipped" >&2
fi
# Debian's Chromium for tests/browser; without it those tests skip and say why (under CI they fail).
if ! scripts/install-browser.sh >/dev/null; then
    echo "test: Chromium could not be installed; the browser tests will be skipped" >&2
fi
echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy (strict)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
