#!/usr/bin/env bash
# Install the pinned Claude Code CLI into a project-local folder, for tests/claude_code.
#
# Usage: scripts/install-claude-code.sh
#   CLAUDE_CODE_VERSION   override the pinned version
#   CLAUDE_CODE_PREFIX    override the install folder (default: <repo>/.cache/claude-code)
#
# On success the last line of stdout is the absolute path of the `claude` executable.
# Idempotent: an existing install of the pinned version that runs is reused without npm.
set -euo pipefail

# Keep in sync with tests/claude_code/client.py. 2.1.197 is the newest release whose
# package.json still declares engines.node >=18; from 2.1.198 on it requires Node 22.
VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
PACKAGE="@anthropic-ai/claude-code"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${CLAUDE_CODE_PREFIX:-$repo_root/.cache/claude-code}"
bin="$prefix/node_modules/.bin/claude"

die() {
    echo "install-claude-code: $*" >&2
    exit 1
}

installed_version() {
    # `claude --version` prints e.g. "2.1.197 (Claude Code)"; the first word is the version.
    [[ -x "$bin" ]] || return 1
    local out
    out="$(IS_SANDBOX=1 DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        timeout 60 "$bin" --version 2>/dev/null)" || return 1
    echo "${out%% *}"
}

if [[ "$(installed_version || true)" == "$VERSION" ]]; then
    echo "install-claude-code: $PACKAGE@$VERSION already installed" >&2
    echo "$bin"
    exit 0
fi

command -v node >/dev/null 2>&1 || die "node is not installed (need Node >= 18 for $PACKAGE@$VERSION)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 18)); then
    die "Node $(node --version) is too old for $PACKAGE@$VERSION (need >= 18)"
fi

mkdir -p "$prefix"
# A private package.json makes npm install into $prefix/node_modules instead of
# walking up to the repo and treating Tollway as the project.
if [[ ! -f "$prefix/package.json" ]]; then
    printf '{\n  "name": "tollway-claude-code",\n  "private": true\n}\n' >"$prefix/package.json"
fi

echo "install-claude-code: installing $PACKAGE@$VERSION into $prefix" >&2
# Optional dependencies and install scripts must stay enabled: the CLI ships as a native
# binary in a per-platform optional package that the postinstall script links into place.
if ! npm install \
    --prefix "$prefix" \
    --no-audit --no-fund --no-save --no-package-lock \
    --loglevel=error \
    "$PACKAGE@$VERSION" >&2; then
    die "npm install $PACKAGE@$VERSION failed (is the npm registry reachable?)"
fi

got="$(installed_version || true)"
pkg_dir="$prefix/node_modules/$PACKAGE"
if [[ "$got" != "$VERSION" && -f "$pkg_dir/install.cjs" ]]; then
    # npm versions that gate install scripts behind an allow-list leave the placeholder
    # stub in bin/; the package's own postinstall links the native binary into place.
    echo "install-claude-code: running the package's postinstall explicitly" >&2
    (cd "$pkg_dir" && node install.cjs >&2) || true
    got="$(installed_version || true)"
fi
if [[ "$got" != "$VERSION" ]]; then
    die "$bin does not run or reports version '${got:-none}' instead of $VERSION" \
        "(platform $(uname -s)-$(uname -m); the per-platform optional package may be missing)"
fi

echo "install-claude-code: installed $PACKAGE@$VERSION" >&2
echo "$bin"
