#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install Tollway into it.
#   scripts/bootstrap.sh          runtime dependencies only
#   scripts/bootstrap.sh dev      plus the test and lint tools
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "bootstrap: Tollway needs Python 3.11 or newer ($python is older)" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
extra=""
[[ "${1:-}" == "dev" ]] && extra="[dev]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extra"
