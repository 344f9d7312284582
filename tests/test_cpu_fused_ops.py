"""The compiled CPU fused ops (kernels/csrc/cpu_fused_ops.cpp) against transformers' own
Llama modules (LlamaRMSNorm, apply_rotary_pos_emb, the silu activation), in float32 and
bfloat16, at decode sizes (run on the calling thread) and prefill sizes (rows split over
threads); the layers' dispatch to them; their argument checks; and an engine run with and
without them."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from engine.models import layers
from kernels import cpu_fused_ops

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the engine keeps torch's ops", allow_module_level=True)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROWS = [1, 5, 300]  # 300 x 576 values: past one task's grain, so rows split over threads


@pytest.fixture(scope="module")
def ops():
    built = cpu_fused_ops.load()
    assert built is not None, "the CPU fused ops did not build (see the log)"
    return built


def hf_rms_norm(weight: torch.Tensor, eps: float) -> LlamaRMSNorm:
    norm = LlamaRMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    norm.weight.data.copy_(weight)
    return norm


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    # float32: summation order alone; bfloat16: one rounding step apart at most.
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(actual, expected, **tol)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_add_rms_norm_matches_transformers(ops, threads, dtype, rows):
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 576, generator=g) * 3).to(dt)
    residual = torch.randn(rows, 576, generator=g).to(dt)
    weight = (torch.rand(576, generator=g) + 0.5).to(dt)
    normed, new_residual = ops.add_rms_norm(x, residual, weight, 1e-5)
    expected_sum = x + residual  # transformers' decoder adds the residual in the dtype
    torch.testing.assert_close(new_residual, expected_sum, atol=0, rtol=0)
    with torch.no_grad():
        assert_close(normed, hf_rms_norm(weight, 1e-5)(expected_sum), dt)
    # Without a residual: the norm of x, and x itself handed back as the residual.
    alone, same = ops.add_rms_norm(x, None, weight, 1e-6)
    assert same.data_ptr() == x.data_ptr()
    with torch.no_grad():
        assert_close(alone, hf_rms_norm(weight, 1e-6)(x), dt)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_silu_and_mul_matches_transformers(ops, threads, dtype, rows):
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(rows)
    # Rows strided inside a wider matrix, as a merged gate_up output sliced by a caller.
    wide = (torch.randn(rows, 2 * 1536 + 8, generator=g) * 4).to(dt)
    gate_up = wide[:, 8:]
    out = ops.silu_and_mul(gate_up)
    gate, up = gate_up[:, :1536], gate_up[:, 1536:]
    assert out.shape == (rows, 1536) and out.is_contiguous()
    assert_close(out, ACT2FN["silu"](gate) * up, dt)


@pytest.mark.parametrize("rotary_dim", [64, 32])  # 32: partial rotary, lanes past it pass through
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_rope_neox_matches_transformers(ops, threads, dtype, rows, rotary_dim):
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(rows + rotary_dim)
    heads, kv_heads, d = 9, 3, 64
    # q and k heads side by side inside a merged qkv row (strided rows), as llama.py hands them.
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * d, generator=g).to(dt)
    qk = qkv[:, : (heads + kv_heads) * d].view(rows, heads + kv_heads, d)
    angles = torch.rand(rows, rotary_dim // 2, generator=g) * 50
    table = torch.cat((angles.cos(), angles.sin()), dim=-1).to(dt).unsqueeze(1)
    cos, sin = table.chunk(2, dim=-1)
    out = ops.rope_neox(qk, cos, sin)
    # transformers: [batch, heads, seq, d] with cos/sin over the whole rotary_dim (halves repeated).
    q_rot, k_rot = qk[:, :heads, :rotary_dim], qk[:, heads:, :rotary_dim]
    cos_hf, sin_hf = torch.cat((cos, cos), -1)[:, 0], torch.cat((sin, sin), -1)[:, 0]
    q_hf, k_hf = apply_rotary_pos_emb(
        q_rot.transpose(0, 1)[None], k_rot.transpose(0, 1)[None], cos_hf[None], sin_hf[None]
    )
    expected = torch.cat((q_hf[0].transpose(0, 1), k_hf[0].transpose(0, 1)), dim=1)
    assert out.shape == qk.shape and out.is_contiguous()
    if dt == torch.bfloat16:  # each product rounded where torch rounds it: bit for bit
        torch.testing.assert_close(out[..., :rotary_dim], expected, atol=0, rtol=0)
    assert_close(out[..., :rotary_dim], expected, dt)
    torch.testing.assert_close(out[..., rotary_dim:], qk[..., rotary_dim:], atol=0, rtol=0)


def test_the_layers_use_the_fused_ops_and_agree_with_their_torch_path(ops, monkeypatch):
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    g = torch.Generator().manual_seed(0)
    norm = layers.RMSNorm(576, 1e-5)
    norm.weight.data = torch.rand(576, generator=g) + 0.5
    mlp = layers.GatedMLP(576, 1536, "silu")
    for p in mlp.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.05
    x, residual = torch.randn(4, 576, generator=g), torch.randn(4, 576, generator=g)
    qk = torch.randn(4, 12, 64, generator=g)
    cos, sin = torch.rand(4, 1, 64, generator=g).chunk(2, -1)

    def run():
        return (*norm(x, residual), mlp(x), layers.apply_rope(qk, cos, sin))

    monkeypatch.setattr(layers.cpu_fused_ops, "load", lambda: Counting())
    fused = run()
    assert calls == ["add_rms_norm", "silu_and_mul", "rope_neox"]
    monkeypatch.setattr(layers.cpu_fused_ops, "load", lambda: None)
    for a, b in zip(fused, run(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Gemma's zero-centred norm and float16 keep torch's ops.
    calls.clear()
    monkeypatch.setattr(layers.cpu_fused_ops, "load", lambda: Counting())
    layers.RMSNorm(576, 1e-6, zero_centred=True)(x, residual)
    layers.apply_rope(qk.half(), cos.half(), sin.half())
    assert calls == []


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda o: o.add_rms_norm(torch.randn(2, 8).half(), None, torch.ones(8).half(), 1e-6),
         "float32 or bfloat16"),
        (lambda o: o.add_rms_norm(torch.randn(2, 8), None, torch.ones(7), 1e-6), "weight"),
        (lambda o: o.add_rms_norm(torch.randn(2, 8), torch.randn(2, 4), torch.ones(8), 1e-6),
         "residual"),
        (lambda o: o.add_rms_norm(torch.randn(8, 2).t(), None, torch.ones(8), 1e-6), "contiguous"),
        (lambda o: o.silu_and_mul(torch.randn(2, 7)), "2 \\* I"),
        (lambda o: o.rope_neox(torch.randn(2, 3, 8), *torch.rand(2, 1, 10).chunk(2, -1)), "r <= d"),
        (lambda o: o.rope_neox(torch.randn(2, 3, 8), *torch.rand(2, 1, 8).double().chunk(2, -1)),
         "dtype"),
    ],
    ids=["fp16", "weight-size", "residual-shape", "not-contiguous", "odd-gate-up", "rotary-too-wide",
         "cos-dtype"],
)
def test_bad_arguments_are_refused_with_a_message(ops, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(ops)


def test_engine_tokens_equal_with_and_without_the_fused_ops(cpu_kernel_switch, random_llama):
    from engine import LLM, SamplingParams

    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = [[3, 8, 1, 9], list(range(2, 50))]
    runs = {}
    for switch in ("1", "0"):
        cpu_kernel_switch(cpu_fused_ops, switch)
        assert (cpu_fused_ops.load() is not None) == (switch == "1")
        llm = LLM(str(random_llama), num_kv_blocks=64)
        runs[switch] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert runs["1"] == runs["0"]
