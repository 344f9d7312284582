#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The GPU machines' Triton (3.6) in a venv of its own, for tests/test_kernels_compile_triton36.py:
# triton alone (its compiler needs no torch; the test borrows .venv's). Kept once built.
if [ "$(.venv-triton36/bin/python -c 'import triton; print(triton.__version__)' 2>/dev/null)" != 3.6.0 ]; then
  .venv/bin/python -m venv --clear .venv-triton36
  .venv-triton36/bin/python -m pip install -q --no-deps triton==3.6.0
fi
# Qt's offscreen platform needs these libraries; desktop-file-validate checks the .desktop entry.
bash scripts/system_packages.sh libegl1 libgl1 libfontconfig1 libxkbcommon0 libglib2.0-0 \
  libdbus-1-3 desktop-file-utils || echo "test.sh: could not install some system packages" >&2
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
# One converted copy of the default model for the whole run, outside the user's cache.
export PAGEDESK_CACHE_DIR=${PAGEDESK_CACHE_DIR:-$PWD/.cache/pagedesk}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
