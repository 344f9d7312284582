"""Linear weights packed once on the CPU (engine/models/layers.py `pack_cpu_linears`): into
pagedesk's blocks of 16 (kernels/cpu_linear.py, float32 or bfloat16-stored) or, where that
kernel is off, oneDNN's blocked layout; against the same layers unpacked, torch's plain
F.linear, and transformers' forward with the weights rounded as stored."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import LLM, SamplingParams
from engine.models import layers
from kernels import cpu_linear

pytestmark = pytest.mark.skipif(not layers._ONEDNN, reason="this torch build has no oneDNN")


@pytest.fixture(params=["pagedesk", "onednn"])
def packer(request, monkeypatch):
    """Which layout packing makes: pagedesk's kernel's, or oneDNN's where it is off."""
    if request.param == "pagedesk":
        if cpu_linear.load() is None:
            pytest.skip("pagedesk's CPU linear needs AVX2/FMA and a C++ compiler")
    else:
        monkeypatch.setattr(cpu_linear, "load", lambda: None)
    return request.param


def is_packed_layout(weight: torch.Tensor, packer: str) -> bool:
    return weight.is_mkldnn if packer == "onednn" else weight.dim() == 3


class TwoLinears(nn.Module):
    """A bias and no bias, a float32 and a bfloat16 layer, and an embedding whose weight a
    head reuses (as a tied LM head does)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = layers.Linear(96, 200, bias=True)
        self.down = layers.Linear(200, 96, bias=False)
        self.bf16 = layers.Linear(96, 64, bias=False).to(torch.bfloat16)
        self.embed = nn.Embedding(300, 96)
        self.tied = layers.Linear(96, 300, bias=False)
        for p in self.parameters():
            nn.init.normal_(p)
        self.tied.weight = self.embed.weight


@pytest.mark.parametrize("rows", [1, 4, 16, 64, 300])
def test_packed_linear_equals_f_linear_at_every_row_count(rows, packer):
    model = TwoLinears()
    plain = copy.deepcopy(model)
    assert layers.pack_cpu_linears(model) == 2  # up and down; bf16 and the tied head stay
    x = torch.randn(rows, 96)
    torch.testing.assert_close(
        model.up(x), F.linear(x, plain.up.weight, plain.up.bias), rtol=1e-5, atol=1e-4
    )
    h = torch.randn(rows, 200)
    torch.testing.assert_close(model.down(h), F.linear(h, plain.down.weight), rtol=1e-5, atol=1e-4)


def test_bfloat16_storage_equals_f_linear_on_rounded_weights():
    model = TwoLinears()
    plain = copy.deepcopy(model)
    assert layers.pack_cpu_linears(model, torch.bfloat16) == 2
    assert model.up.weight.dtype == torch.bfloat16 and model.up.bias.dtype == torch.float32
    x = torch.randn(7, 96)
    rounded = plain.up.weight.bfloat16().float()
    torch.testing.assert_close(model.up(x), F.linear(x, rounded, plain.up.bias), rtol=1e-5, atol=1e-4)


def test_onednn_cannot_store_bfloat16_and_packs_nothing(monkeypatch):
    monkeypatch.setattr(cpu_linear, "load", lambda: None)
    model = TwoLinears()
    assert not layers.packing_available(torch.bfloat16)
    assert layers.pack_cpu_linears(model, torch.bfloat16) == 0 and not model.up.packed
    with pytest.raises(ValueError, match="cannot be packed as torch.bfloat16"):
        layers.packed_weight(model.up.weight, torch.bfloat16)


def test_packed_linear_keeps_leading_dimensions(packer):
    model = TwoLinears()
    plain = copy.deepcopy(model)
    layers.pack_cpu_linears(model)
    x = torch.randn(2, 3, 96)
    torch.testing.assert_close(model.up(x), plain.up(x), rtol=1e-5, atol=1e-4)


def test_packing_leaves_shared_and_non_float32_weights_plain_and_runs_once(packer):
    model = TwoLinears()
    layers.pack_cpu_linears(model)
    assert model.up.packed and model.down.packed
    assert is_packed_layout(model.up.weight, packer)
    assert not model.bf16.packed and model.bf16.weight.dim() == 2 and not model.bf16.weight.is_mkldnn
    assert not model.tied.packed and model.tied.weight is model.embed.weight
    assert not model.embed.weight.is_mkldnn  # the embedding still looks rows up
    packed_up = model.up.weight
    assert layers.pack_cpu_linears(model) == 0 and model.up.weight is packed_up
    # Read back, a packed weight is the matrix it was.
    plain = TwoLinears()
    torch.testing.assert_close(layers.unpacked_weight(model.up.weight, 200), plain.up.weight)


def default_packer() -> str:
    return "onednn" if cpu_linear.load() is None else "pagedesk"


# The engine tests run the default packer only: the layer tests above cover both layouts.
def test_engine_packs_by_default_and_greedy_tokens_match_unpacked(random_llama):
    prompts = [[1, 5, 9, 2], list(range(3, 40)), [7] * 20]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    runs = {}
    for pack in (True, False):
        llm = LLM(str(random_llama), pack_cpu_weights=pack, num_kv_blocks=64)
        linears = [m for m in llm.engine.runner.model.modules() if isinstance(m, layers.Linear)]
        assert all(m.packed == pack for m in linears) and linears
        outs = llm.generate(prompts, params)
        runs[pack] = [o.outputs[0].token_ids for o in outs]
    assert runs[True] == runs[False]


def test_a_tied_head_gets_a_packed_copy_and_the_same_logits(tmp_path, random_llama):
    from model_factory import make_random_llama

    tied_dir = make_random_llama(tmp_path / "tied", num_heads=4, num_kv_heads=2, head_dim=32,
                                 num_layers=2, tie_word_embeddings=True)  # fmt: skip
    prompts = [[1, 5, 9, 2], list(range(3, 40))]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    runs = {}
    for pack in (True, False):
        llm = LLM(str(tied_dir), pack_cpu_weights=pack, num_kv_blocks=64)
        model = llm.engine.runner.model
        assert (model.packed_tied_head is not None) == pack
        if pack:  # the embedding stays a plain matrix for lookups; the copy reads back equal
            embedding = model.embedding().weight
            assert not embedding.is_mkldnn and is_packed_layout(model.packed_tied_head, default_packer())
            hidden = torch.randn(5, embedding.shape[1])
            torch.testing.assert_close(model.compute_logits(hidden), F.linear(hidden, embedding),
                                       rtol=1e-5, atol=1e-4)  # fmt: skip
            assert model.pack_tied_head() is False  # once only
        runs[pack] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert runs[True] == runs[False]
    # An untied head is an ordinary packed Linear: no copy.
    untied = LLM(str(random_llama), num_kv_blocks=64).engine.runner.model
    assert untied.packed_tied_head is None and untied.lm_head.packed


def test_bfloat16_weights_match_transformers_with_weights_rounded_as_stored(random_llama):
    """cpu_weight_dtype="bfloat16": every linear (the LM head too) reads bf16 weights with
    float32 arithmetic, so the engine's prompt logprobs are transformers' float32 forward
    with exactly those weights rounded to bf16 (embeddings and norms untouched)."""
    if cpu_linear.load() is None:
        pytest.skip("pagedesk's CPU linear needs AVX2/FMA and a C++ compiler")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(random_llama, dtype=torch.float32).eval()
    rounded = 0
    for module in hf.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = module.weight.data.bfloat16().float()
            rounded += 1
    assert rounded == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    prompt = list(range(3, 60, 2))
    with torch.no_grad():
        want = hf(torch.tensor([prompt])).logits[0].log_softmax(-1)
    llm = LLM(str(random_llama), cpu_weight_dtype="bfloat16", num_kv_blocks=64)
    assert llm.engine.runner.model.lm_head.weight.dtype == torch.bfloat16
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    got = llm.generate([prompt], params)[0].prompt_logprobs
    for i in range(1, len(prompt)):
        assert got[i][prompt[i]] == pytest.approx(want[i - 1, prompt[i]].item(), abs=1e-4)
    # ... and differ from the float32 weights' (the rounding is real, so the test can fail).
    full = LLM(str(random_llama), cpu_weight_dtype="float32", num_kv_blocks=64)
    exact = full.generate([prompt], params)[0].prompt_logprobs
    assert max(abs(exact[i][prompt[i]] - got[i][prompt[i]]) for i in range(1, len(prompt))) > 1e-4


def test_cpu_weight_dtype_is_checked():
    from engine.config import EngineConfig

    with pytest.raises(ValueError, match="cpu_weight_dtype must be one of"):
        EngineConfig(cpu_weight_dtype="float16")


def test_a_model_packed_once_refuses_other_storage_instead_of_ignoring_it():
    if cpu_linear.load() is None:
        pytest.skip("pagedesk's CPU linear needs AVX2/FMA and a C++ compiler")
    model = TwoLinears()
    layers.pack_cpu_linears(model, torch.bfloat16)
    assert layers.pack_cpu_linears(model, torch.bfloat16) == 0  # same storage: a no-op
    with pytest.raises(ValueError, match="already packed in torch.bfloat16, not torch.float32"):
        layers.pack_cpu_linears(model, torch.float32)


def test_auto_on_a_model_another_engine_packed_keeps_its_storage(default_loaded, make_engine):
    from engine import EngineConfig, LLMEngine

    first = make_engine()  # float32 (conftest), packs the shared model
    assert layers.packed_storage(default_loaded.model) == torch.float32
    second = LLMEngine(EngineConfig(device="cpu", dtype="float32"), loaded=default_loaded)
    assert second.runner.cpu_weight_dtype == first.runner.cpu_weight_dtype == torch.float32
    if cpu_linear.load() is not None:  # asked for explicitly, other storage is an error
        with pytest.raises(ValueError, match="already packed"):
            make_engine(cpu_weight_dtype="bfloat16")
