"""Our Llama-family model over a paged KV cache against transformers on the same weights.

Each case runs three engine-like steps through a paged cache with shuffled block ids:
a prefill of several sequences (one of them chunked), a mixed step (the rest of the chunked
prompt + one decode token for the others), and a decode step for all; every logit is
compared with transformers' forward over the whole sequence.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.attention import AttentionMetadata
from engine.model_loader import load_model
from engine.models.llama import LlamaForCausalLM
from model_factory import make_random_llama

BLOCK_SIZE = 4
CPU = torch.device("cpu")


class PagedRun:
    """Drives a model step by step over a paged cache, like the model runner does."""

    def __init__(self, model, config, seqs: list[list[int]], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        kv_heads, head_dim = config.num_key_value_heads, model.model.layers[0].self_attn.head_dim
        max_blocks = max(-(-len(s) // BLOCK_SIZE) for s in seqs)
        num_blocks = max_blocks * len(seqs) + 3  # a few never-used blocks
        shape = (num_blocks, BLOCK_SIZE, kv_heads, head_dim)
        # Garbage, not zeros, in the cache: a read of an unwritten slot would show.
        self.kv = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
                   for _ in range(config.num_hidden_layers)]  # fmt: skip
        perm = torch.randperm(num_blocks, generator=gen).int()
        self.tables = perm[: max_blocks * len(seqs)].view(len(seqs), max_blocks)
        self.model, self.seqs = model, seqs

    def step(self, work: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """work: (seq index, start, n) -> logits [n, vocab] of tokens start..start+n of each."""
        ids, pos, slots, cu = [], [], [], [0]
        for s, start, n in work:
            p = torch.arange(start, start + n)
            ids.append(torch.tensor(self.seqs[s][start : start + n]))
            pos.append(p)
            slots.append(self.tables[s].long()[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE)
            cu.append(cu[-1] + n)
        meta = AttentionMetadata(
            slot_mapping=torch.cat(slots),
            cu_query_lens=torch.tensor(cu, dtype=torch.int32),
            seq_lens=torch.tensor([start + n for _, start, n in work], dtype=torch.int32),
            block_tables=self.tables[[s for s, _, _ in work]],
        )
        with torch.inference_mode():
            hidden = self.model(torch.cat(ids), torch.cat(pos), self.kv, meta)
            logits = self.model.compute_logits(hidden)
        assert logits.dtype == torch.float32
        return list(logits.split([n for _, _, n in work]))


def hf_logits(hf_model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([seq])).logits[0].float()


def check_three_steps(model, hf_model, config, lengths, seed=0, atol=2e-3, rtol=1e-4):
    """Prefill (seq 1 chunked) -> mixed chunk + decodes -> decodes; all logits vs transformers.

    The random models' logits have std ~8 (initializer_range 0.5, so attention is sharp and
    a position or masking bug shows): at that scale transformers' own float32 logits differ
    from its float64 ones by up to ~5e-4. Ours run their float32 matmuls through oneDNN,
    which sums in another order than transformers' MKL (its error against float64 is 2-3x
    MKL's at K = 576-1536), so ours differ from transformers' by up to ~1.5e-3: still
    four orders of magnitude below the logits, where a position or mask bug is order one.
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = config.vocab_size
    # Each sequence: its prompt plus the two tokens the decode steps will feed.
    seqs = [torch.randint(3, vocab, (n + 2,), generator=gen).tolist() for n in lengths]
    run = PagedRun(model, config, seqs, seed)
    chunk = lengths[1] // 2
    steps = [
        [(0, 0, lengths[0]), (1, 0, chunk), *[(s, 0, n) for s, n in enumerate(lengths) if s > 1]],
        [(1, chunk, lengths[1] - chunk), *[(s, n, 1) for s, n in enumerate(lengths) if s != 1]],
        [(s, n + (s != 1), 1) for s, n in enumerate(lengths)],
    ]
    refs = [hf_logits(hf_model, seq) for seq in seqs]
    for work in steps:
        for (s, start, n), ours in zip(work, run.step(work)):
            torch.testing.assert_close(ours, refs[s][start : start + n], atol=atol, rtol=rtol)


def load_both(path, dtype=torch.float32):
    ours = load_model(str(path), dtype=dtype, device=CPU)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return ours, hf


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim",
    [(8, 2, 32), (4, 4, 32), (6, 2, 64), (4, 4, 64)],
    ids=["gqa-d32", "mha-d32", "gqa-d64", "mha-d64"],
)
def test_paged_steps_match_transformers(tmp_path, num_heads, num_kv_heads, head_dim):
    path = make_random_llama(
        tmp_path, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, num_layers=3
    )
    loaded, hf = load_both(path)
    assert isinstance(loaded.model, LlamaForCausalLM)
    check_three_steps(loaded.model, hf, loaded.hf_config, lengths=[5, 11, 1, 16, 9])


@pytest.mark.parametrize(
    "variant",
    [
        dict(model_type="qwen2", tie_word_embeddings=True),  # q/k/v bias, tied head
        dict(model_type="mistral"),
        dict(attention_bias=True, hidden_size=96),  # biases everywhere, hidden != heads * dim
        dict(rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0,
             low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)),
        dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
    ],
    ids=["qwen2-bias-tied", "mistral", "llama-bias", "llama3-rope", "linear-rope"],
)
def test_family_variants_match_transformers(tmp_path, variant):
    path = make_random_llama(tmp_path, **variant)
    loaded, hf = load_both(path)
    check_three_steps(loaded.model, hf, loaded.hf_config, lengths=[3, 9, 70])


def test_bfloat16_weights_and_compute(tmp_path):
    path = make_random_llama(tmp_path, num_layers=2)
    loaded, hf = load_both(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    # bf16 rounding differs between two correct implementations: loose tolerance.
    check_three_steps(loaded.model, hf, loaded.hf_config, lengths=[4, 7, 12], atol=0.5, rtol=0.05)


@pytest.mark.slow
def test_bundled_smollm2_matches_transformers_gguf(default_loaded, hf_smollm2_gguf):
    """The real default model: our GGUF conversion + model vs transformers' GGUF loader."""
    tok = default_loaded.tokenizer
    prompts = ["What is the capital of France?", "Write a haiku about autumn leaves in the wind."]
    seqs = [
        list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                     return_dict=False)) + [28, 1130]  # fmt: skip
        for p in prompts
    ]
    lengths = [len(s) - 2 for s in seqs]
    run = PagedRun(default_loaded.model, default_loaded.hf_config, seqs)
    refs = [hf_logits(hf_smollm2_gguf, s) for s in seqs]
    for work in ([(0, 0, lengths[0]), (1, 0, lengths[1])],
                 [(0, lengths[0], 1), (1, lengths[1], 1)],
                 [(0, lengths[0] + 1, 1), (1, lengths[1] + 1, 1)]):  # fmt: skip
        for (s, start, n), ours in zip(work, run.step(work)):
            torch.testing.assert_close(ours, refs[s][start : start + n], atol=5e-4, rtol=1e-4)
    # And the answer is sensible (a wrong q/k un-permutation would still "run").
    first = refs[0][lengths[0] - 1].argmax().item()
    assert tok.decode([first]).strip() in {"The", "Paris"}


def test_load_weights_rejects_bad_checkpoints(tmp_path):
    from safetensors.torch import load_file

    path = make_random_llama(tmp_path, num_layers=1)
    loaded = load_model(str(path), dtype=torch.float32, device=CPU)
    model, weights = loaded.model, load_file(path / "model.safetensors")
    missing = {k: v for k, v in weights.items() if "k_proj" not in k}
    with pytest.raises(ValueError, match="missing.*k_proj"):
        model.load_weights(missing.items())
    with pytest.raises(ValueError, match="Unexpected weight 'model.extra.weight'"):
        model.load_weights([*weights.items(), ("model.extra.weight", torch.zeros(1))])
    bad = dict(weights, **{"model.norm.weight": torch.zeros(7)})
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        model.load_weights(bad.items())
