#!/usr/bin/env bash
# Install Debian's Chromium for tests/browser (the dashboard driven by Playwright).
#
# Usage: scripts/install-browser.sh
#   TOLLWAY_CHROMIUM   the browser to use (default: /usr/bin/chromium)
#
# On success the last line of stdout is the browser's path. Idempotent: a browser that runs is reused
# without apt. Playwright's own browser download is never used (`playwright install` needs hosts this
# project's machines do not reach); the Python package drives the system's Chromium instead.
set -euo pipefail

bin="${TOLLWAY_CHROMIUM:-/usr/bin/chromium}"

die() {
    echo "install-browser: $*" >&2
    exit 1
}

runs() {
    [[ -x "$bin" ]] && timeout 60 "$bin" --headless --no-sandbox --version >/dev/null 2>&1
}

if runs; then
    echo "install-browser: $("$bin" --version 2>/dev/null) already installed" >&2
    echo "$bin"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "no $bin and no apt-get to install Debian's chromium with"
sudo=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "installing chromium needs root (or sudo)"
    sudo="sudo -n"
fi

echo "install-browser: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
    # The package lists may be missing or stale on a fresh machine.
    $sudo apt-get update -q >/dev/null 2>&1 || die "apt-get update failed (is the Debian mirror reachable?)"
    $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || die "apt-get install chromium failed"
fi
runs || die "$bin does not run after the install"

echo "install-browser: installed $("$bin" --version 2>/dev/null)" >&2
echo "$bin"
