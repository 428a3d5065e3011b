#!/usr/bin/env bash
# The quickstart: install Tollway, then serve on the embedded defaults (SQLite in ./tollway.db, in-process
# limits, every seed model to api.anthropic.com when ANTHROPIC_API_KEY is set, else to the built-in mock).
# On the first start it prints a key and a curl that works at once. Extra arguments go to `tollway serve`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo_root/scripts/bootstrap.sh"
exec "$repo_root/.venv/bin/tollway" serve "$@"
