"""The fit estimate against arithmetic done here, by hand, from the formula it states."""

from __future__ import annotations

import pytest

from engine.fit_estimate import (
    estimate_fit, free_memory, kv_bytes_per_token, parameter_count, weights_bytes,
)  # fmt: skip

GIB = 1024**3
# Llama-3-8B's shape: 32 layers, 32 heads of 128, 8 KV heads, 14336 FFN, 128256 vocab.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32, "hidden_size": 4096,
    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
    "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 8192,
}  # fmt: skip
SMOLLM2 = {
    "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536,
    "vocab_size": 49152, "tie_word_embeddings": True,
}  # fmt: skip


def test_kv_bytes_per_token_is_layers_heads_dim_two_dtype():
    assert kv_bytes_per_token(LLAMA3_8B, dtype_bytes=2) == 32 * 8 * 128 * 2 * 2  # 128 KiB
    # head_dim given explicitly wins over hidden / heads (576 / 9 = 64 here anyway)
    assert kv_bytes_per_token({**SMOLLM2, "head_dim": 80}, dtype_bytes=4) == 30 * 3 * 80 * 2 * 4
    # no KV heads named: multi-head attention, one KV head per query head
    mha = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 8}
    assert kv_bytes_per_token(mha, 2) == 2 * 8 * 32 * 2 * 2
    assert kv_bytes_per_token({"architectures": ["LlamaForCausalLM"]}) == 0


def test_parameter_count_matches_known_models():
    assert parameter_count(SMOLLM2) == 134_515_008  # FACTS.md: 134.5M parameters
    assert abs(parameter_count(LLAMA3_8B) - 8_030_261_248) < 1e6  # Meta's 8.03B
    assert weights_bytes(num_parameters=1000, dtype_bytes=4) == 4000


def expected_sentence(needed: float, free: float, ctx: str, device: str, verdict: str) -> str:
    return f"needs {needed / GIB:.1f} GiB with {ctx}; {free / GIB:.1f} GiB free on the {device}: " \
           f"{verdict}."  # fmt: skip


def test_too_large_offers_the_largest_file_that_fits():
    weights = 16 * GIB  # bf16 8B
    free = 12 * GIB
    alternatives = [("Q4_K_M", int(4.9 * GIB)), ("Q8_0", int(8.5 * GIB)), ("F16", 16 * GIB)]
    kv = 32 * 8 * 128 * 2 * 2 * 8192  # 1 GiB for 8k tokens
    needed = weights + kv + 512 * 2**20 + int(0.10 * weights)
    est = estimate_fit(weights, LLAMA3_8B, 8192, free, "RTX 4090", alternatives)
    assert est.needed_bytes == needed and est.free_bytes == free and est.level == "too_large"
    # Q8_0: 8.5 + 1 + 0.5 + 0.85 = 10.85 GiB <= 12 (tight but possible); F16 does not fit
    q8_needed = int(8.5 * GIB) + kv + 512 * 2**20 + int(0.10 * int(8.5 * GIB))
    assert q8_needed <= free < 16 * GIB
    assert est.sentence == expected_sentence(
        needed, free, "an 8k context", "RTX 4090", "will not fit"
    ) + " Try the Q8_0 file (8.5 GiB)."


def test_levels_fits_and_tight_at_the_stated_thresholds():
    weights = 2 * GIB
    kv = 32 * 8 * 128 * 2 * 2 * 4096
    needed = weights + kv + 512 * 2**20 + int(0.10 * weights)  # 3.2 GiB
    roomy = estimate_fit(weights, LLAMA3_8B, 4096, 8 * GIB, "H100")
    assert roomy.level == "fits"
    assert roomy.sentence == expected_sentence(needed, 8 * GIB, "a 4k context", "H100", "fits")
    snug = int(needed / 0.85) - 1  # needed is just over 85 % of this, and below all of it
    tight = estimate_fit(weights, LLAMA3_8B, 4096, snug, "H100")
    assert needed > 0.85 * snug and needed <= snug and tight.level == "tight"
    assert tight.sentence.endswith(": may fit, with little room to spare.")
    assert estimate_fit(weights, LLAMA3_8B, 4096, needed - 1, "H100").level == "too_large"


def test_a_shorter_context_is_suggested_when_no_file_fits():
    weights = 4 * GIB
    free = 6 * GIB
    # 128k context: 16 GiB of KV; 8k: 1 GiB -> 4 + 1 + 0.5 + 0.4 = 5.9 GiB <= 6 GiB
    est = estimate_fit(weights, LLAMA3_8B, 131072, free, "RTX 3060")
    assert est.level == "too_large"
    for ctx in (65536, 32768, 16384):  # halving from 128k: each still too large
        kv = 32 * 8 * 128 * 2 * 2 * ctx
        assert weights + kv + 512 * 2**20 + int(0.1 * weights) > free
    assert est.sentence.endswith("will not fit. It would fit with an 8k context.")


def test_weights_only_when_the_config_has_no_sizes():
    est = estimate_fit(GIB, {"architectures": ["LlamaForCausalLM"]}, 8192, 4 * GIB, "CPU (RAM)")
    needed = GIB + 512 * 2**20 + int(0.1 * GIB)
    assert est.sentence == f"needs {needed / GIB:.1f} GiB for the weights alone; 4.0 GiB free " \
                           "on the CPU (RAM): fits."  # fmt: skip


def test_small_sizes_in_mib():
    weights = 269 * 2**20  # SmolLM2 in bf16
    needed = weights + 30 * 3 * 64 * 2 * 2 * 8192 + 512 * 2**20 + int(0.1 * weights)
    est = estimate_fit(weights, SMOLLM2, 8192, 64 * GIB, "CPU (RAM)")
    assert est.needed_bytes == needed < GIB
    assert est.sentence.startswith(f"needs {needed / 2**20:.0f} MiB with an 8k context; 64.0 GiB")


def test_free_memory_on_the_cpu_is_available_ram():
    psutil = pytest.importorskip("psutil")
    free, name = free_memory("cpu")
    assert name == "CPU (RAM)"
    assert abs(free - psutil.virtual_memory().available) < 512 * 2**20


def _held_bytes(model) -> int:
    """Bytes of every weight the loaded model holds, a tied head's packed copy included."""
    tensors = {id(p): p for p in model.parameters()}
    if getattr(model, "packed_tied_head", None) is not None:
        tensors[id(model.packed_tied_head)] = model.packed_tied_head
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.skipif(__import__("kernels.cpu_linear").cpu_linear.load() is None,
                    reason="packing needs the CPU linear kernel (AVX2/FMA, a C++ compiler)")
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("checkpoint_dtype, stored_bytes", [("float32", 4), ("bfloat16", 2)])
def test_a_local_models_cpu_estimate_counts_the_weights_as_the_engine_holds_them(
    tmp_path, tied, checkpoint_dtype, stored_bytes
):
    """Against the engine itself: a model loaded on the CPU with cpu_weight_dtype="auto"
    (bfloat16 storage for a bfloat16 checkpoint), its tensors' bytes counted. The
    download dialog's figure for the same folder (`local_fit`) is built on the same count;
    it used to say 4 bytes a weight whatever the storage, and left out a tied head's copy."""
    import json

    import torch

    from app.hub.local_models import LocalModel
    from app.model_manager_controller import local_fit
    from engine import EngineConfig, LLMEngine
    from engine import fit_estimate as fe
    from engine.checkpoint_precision import matrix_precision
    from model_factory import make_random_llama

    folder = make_random_llama(tmp_path / "m", hidden_size=256, intermediate_size=512,
                               tie_word_embeddings=tied, dtype=getattr(torch, checkpoint_dtype))  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert fe.cpu_stored_bytes(matrix_precision(folder)) == stored_bytes
    engine = LLMEngine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                                    kv_cache_bytes=1 << 20))  # fmt: skip
    held = _held_bytes(engine.runner.model)
    # Packing pads each matrix to 16 outputs (the byte vocab of 259 to 272 rows): ≤ 2% here.
    assert fe.cpu_weights_bytes(config, stored_bytes) == pytest.approx(held, rel=0.02)

    model = LocalModel(name="m", repo_id=None, path=folder, size_on_disk=0,
                       architecture="LlamaForCausalLM", context_length=1024, supported=True,
                       why_not="", kind="folder", runs_as="native Llama")  # fmt: skip
    kv = fe.kv_bytes_per_token(config, 4) * fe.default_context(config)

    def local_weights(storage: str) -> float:
        needed = local_fit(model, 64 * GIB, "CPU", storage).needed_bytes
        return (needed - kv - fe.OVERHEAD_FIXED_BYTES) / (1 + fe.OVERHEAD_FRACTION)

    assert local_weights("auto") == pytest.approx(held, rel=0.02)
    # The other storage, asked for in the settings: the estimate follows what the engine holds.
    other = "float32" if stored_bytes == 2 else "bfloat16"
    engine = LLMEngine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                                    kv_cache_bytes=1 << 20, cpu_weight_dtype=other))  # fmt: skip
    assert local_weights(other) == pytest.approx(_held_bytes(engine.runner.model), rel=0.02)
