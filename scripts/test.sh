#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
# One converted copy of the default model for the whole run, outside the user's cache.
export PAGEDESK_CACHE_DIR=${PAGEDESK_CACHE_DIR:-$PWD/.cache/pagedesk}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
