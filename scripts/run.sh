#!/usr/bin/env bash
# Set everything up (idempotent) and start pagedesk on the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pagedesk "$@"
