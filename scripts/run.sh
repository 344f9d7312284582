#!/usr/bin/env bash
# Set everything up (idempotent) and start pagedesk on the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The libraries Qt's xcb platform needs for a real window (Qt blames xcb-cursor0 even when
# libxcb-icccm4 or libxcb-keysyms1 is what is missing).
bash scripts/system_packages.sh libegl1 libgl1 libfontconfig1 libxkbcommon0 libxkbcommon-x11-0 \
  libglib2.0-0 libdbus-1-3 libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 \
  libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 fonts-dejavu-core || echo "run.sh: could not install some system libraries; Qt may not start" >&2
exec .venv/bin/pagedesk "$@"
