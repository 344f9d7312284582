#!/usr/bin/env bash
# Install the Debian/Ubuntu packages named on the command line that are not installed yet
# (apt-get; sudo when not root). Used by scripts/screenshot.sh (Xvfb and the libraries Qt's
# xcb platform needs) and by the desktop-entry test (desktop-file-validate).
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "system_packages: no apt-get; install: ${missing[*]}" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "system_packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null || true
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
