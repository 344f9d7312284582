#!/usr/bin/env bash
# Render the main window under Xvfb (Qt's real xcb platform, not offscreen) with two panes
# mid-conversation on the bundled model, to docs/screenshot.png (or the path given), and
# the learner's panels during a three-session run to docs/panels*.png, and the model manager
# (against the tests' local fake Hub: this machine cannot reach the real one) to
# docs/models-*.png (the folder of it). `--only models|panels|window|window-waste` takes one of them (the last: the KV
# panel on a sliding-window model, docs/panel-kv-window.png); `remote`: a local and a remote
# pane side by side, the remote being `pagedesk serve` (docs/screenshots/remote-session.png);
# `tp`: the tensor-parallel setting and a TP=2 engine's KV panel (docs/screenshots/tp-*.png).
# Installs Xvfb and the X libraries Qt's xcb platform needs when they are missing; note that
# Qt blames xcb-cursor0 when libxcb-icccm4 or libxcb-keysyms1 is what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
only=""
if [ "${1:-}" = "--only" ]; then only=$2; shift 2; fi
out=${1:-docs/screenshot.png}
bash scripts/setup.sh
bash scripts/system_packages.sh xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 \
  libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 \
  libxkbcommon-x11-0 libegl1 libfontconfig1 libdbus-1-3 fonts-dejavu-core

n=97
while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do n=$((n + 1)); done
# Tall enough for the whole window with its learner docks, status bar included.
Xvfb ":$n" -screen 0 1920x1440x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
trap 'kill "$xvfb" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X$n" ] && break; sleep 0.1; done

shot() { [ -z "$only" ] || [ "$only" = "$1" ]; }
export DISPLAY=":$n" QT_QPA_PLATFORM=xcb
if shot window; then .venv/bin/python scripts/screenshot.py "$out"; fi
if shot panels; then .venv/bin/python scripts/screenshot_panels.py "$(dirname "$out")"; fi
if shot models; then .venv/bin/python scripts/screenshot_models.py "$(dirname "$out")"; fi
if shot window-waste; then .venv/bin/python scripts/screenshot_window_waste.py "$(dirname "$out")"; fi
if shot tp; then .venv/bin/python scripts/screenshot_tensor_parallel.py "$(dirname "$out")/screenshots"; fi
if shot remote; then .venv/bin/python scripts/screenshot_remote.py "$(dirname "$out")/screenshots/remote-session.png"; fi
