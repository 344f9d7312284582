"""Linear weights packed once into oneDNN's blocked layout (engine/models/layers.py
`pack_cpu_linears`), against the same layers unpacked and torch's plain F.linear."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import LLM, SamplingParams
from engine.models import layers

pytestmark = pytest.mark.skipif(not layers._ONEDNN, reason="this torch build has no oneDNN")


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
def test_packed_linear_equals_f_linear_at_every_row_count(rows):
    model = TwoLinears()
    plain = copy.deepcopy(model)
    assert layers.pack_cpu_linears(model) == 2  # up and down; bf16 and the tied head stay
    x = torch.randn(rows, 96)
    torch.testing.assert_close(
        model.up(x), F.linear(x, plain.up.weight, plain.up.bias), rtol=1e-5, atol=1e-4
    )
    h = torch.randn(rows, 200)
    torch.testing.assert_close(model.down(h), F.linear(h, plain.down.weight), rtol=1e-5, atol=1e-4)


def test_packed_linear_keeps_leading_dimensions():
    model = TwoLinears()
    plain = copy.deepcopy(model)
    layers.pack_cpu_linears(model)
    x = torch.randn(2, 3, 96)
    torch.testing.assert_close(model.up(x), plain.up(x), rtol=1e-5, atol=1e-4)


def test_packing_leaves_shared_and_non_float32_weights_plain_and_runs_once():
    model = TwoLinears()
    layers.pack_cpu_linears(model)
    assert model.up.packed and model.down.packed
    assert not model.bf16.packed and not model.bf16.weight.is_mkldnn
    assert not model.tied.packed and model.tied.weight is model.embed.weight
    assert not model.embed.weight.is_mkldnn  # the embedding still looks rows up
    packed_up = model.up.weight
    assert layers.pack_cpu_linears(model) == 0 and model.up.weight is packed_up
    # Read back, a packed weight is the matrix it was.
    plain = TwoLinears()
    torch.testing.assert_close(model.up.weight.to_dense(), plain.up.weight)


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
            assert not embedding.is_mkldnn and model.packed_tied_head.is_mkldnn
            hidden = torch.randn(5, embedding.shape[1])
            torch.testing.assert_close(model.compute_logits(hidden), F.linear(hidden, embedding),
                                       rtol=1e-5, atol=1e-4)  # fmt: skip
            assert model.pack_tied_head() is False  # once only
        runs[pack] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert runs[True] == runs[False]
    # An untied head is an ordinary packed Linear: no copy.
    untied = LLM(str(random_llama), num_kv_blocks=64).engine.runner.model
    assert untied.packed_tied_head is None and untied.lm_head.packed
