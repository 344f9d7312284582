"""The precision a checkpoint holds its weight matrices in, read from the file headers alone.

EngineConfig's cpu_weight_dtype="auto" keeps the CPU's packed linears in bfloat16 where that
loses (next to) nothing the checkpoint had: a bfloat16 checkpoint is held exactly, and a
quantized GGUF's values are coarser than bfloat16's rounding (the bundled Q4_1 SmolLM2:
perplexity 20.617 in float32, 20.596 with bfloat16 weights, benchmarks/bf16_quality.py).
float32 and float16 checkpoints stay float32 (bfloat16 would drop mantissa bits they have).
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

QUANTIZED, BFLOAT16, FLOAT16, FLOAT32 = "quantized", "bfloat16", "float16", "float32"
# The precisions EngineConfig.cpu_weight_dtype="auto" keeps in bfloat16.
CPU_BF16_PRECISIONS = (BFLOAT16, QUANTIZED)

_SAFETENSORS_NAMES = {"BF16": BFLOAT16, "F16": FLOAT16, "F32": FLOAT32, "F64": FLOAT32}
_GGUF_FLOAT_TYPES = {0: FLOAT32, 1: FLOAT16, 30: BFLOAT16}  # GGMLQuantizationType; others quantize


def matrix_precision(source: Path) -> str | None:
    """QUANTIZED, BFLOAT16, FLOAT16 or FLOAT32: the type holding most bytes of `source`'s
    2-D tensors (a .gguf file or a folder of safetensors); None where it cannot be told."""
    try:
        counts = _gguf_bytes(source) if source.suffix == ".gguf" else _safetensors_bytes(source)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return counts.most_common(1)[0][0] if counts else None


def _safetensors_bytes(folder: Path) -> Counter:
    counts: Counter = Counter()
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > path.stat().st_size:  # not a safetensors file: do not read "size" bytes
                raise ValueError(f"{path} is not a safetensors file")
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        for entry in header.values():
            name = _SAFETENSORS_NAMES.get(entry["dtype"])
            if name and len(entry["shape"]) == 2:
                start, stop = entry["data_offsets"]
                counts[name] += stop - start
    return counts


def _gguf_bytes(path: Path) -> Counter:
    from engine.gguf_loader import _gguf_api

    counts: Counter = Counter()
    for info in _gguf_api().GgufHeader.from_file(str(path)).tensors:
        if len(info.shape) == 2:
            counts[_GGUF_FLOAT_TYPES.get(int(info.ggml_type), QUANTIZED)] += info.nbytes
    return counts
