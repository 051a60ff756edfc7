#!/usr/bin/env bash
# Installs what the browser test of `tenpak serve`'s page needs: Debian's chromium (apt-get, only
# when it is missing) and playwright-core from npm in tests/browser/ (from its committed
# package-lock.json). playwright-core downloads no browser: the test points it at the system
# chromium. Run by test.sh, or on its own; safe to run again.
set -euo pipefail
_browser_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_browser_sudo=""
if [[ "$(id -u)" != 0 ]]; then _browser_sudo="sudo"; fi
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
    echo "install-browser: apt-get install chromium"
    $_browser_sudo apt-get update -qq
    $_browser_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
command -v npm >/dev/null || { echo "install-browser: npm is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
_browser_dir="$_browser_root/tests/browser"
if [[ ! -f "$_browser_dir/node_modules/playwright-core/package.json" \
    || "$_browser_dir/package-lock.json" -nt "$_browser_dir/node_modules/.package-lock.json" ]]; then
    echo "install-browser: npm ci in tests/browser"
    (cd "$_browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
