"""Greedy parity with Hugging Face transformers, token for token, in float32.

The engine runs all prompts as one continuously batched run; transformers runs each prompt
alone (no padding), so its output is the plain definition of greedy: `generate()` for the
random models, one forward over prompt + reply for the bundled SmolLM2 (the same check).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import EngineConfig, LLMEngine
from engine_helpers import greedy, run_to_completion
from model_factory import make_random_llama

NEW_TOKENS = 32


def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    model.generation_config.eos_token_id = None  # never stop early, never suppress EOS
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0,
        )
    return out[0, len(prompt):].tolist()


def hf_greedy_along(model, prompt: list[int], tokens: list[int]) -> list[int]:
    """transformers' greedy choice after prompt + tokens[:i], for every i, in one forward.
    When it equals `tokens`, generate() would write `tokens` (each step's choice is the
    argmax after the steps before it), in a quarter of generate()'s time on SmolLM2."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1:]
    return logits.argmax(-1).tolist()


def test_bundled_smollm2_matches_transformers(make_engine, default_loaded, hf_smollm2_gguf):
    """The reference is transformers' own GGUF loader: an independent path to the weights."""
    hf_smollm2 = hf_smollm2_gguf
    tok = default_loaded.tokenizer
    texts = [
        "Hi",
        "What is the capital of France?",
        "Write a haiku about a cat sleeping in the sun.",
        "Explain, step by step, how a bicycle's gears let a rider climb a steep hill.",
        "List five fruits.",
        "Translate 'good morning' into French, German and Spanish, then explain the grammar.",
        "Why is the sky blue? Answer for a ten-year-old who loves science and asks a lot "
        "of questions about light, colours and the atmosphere around our planet.",
        "What is 2+2? Reply with the number only, please.",
    ]
    prompts = [
        list(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                     return_dict=False))
        for t in texts
    ]
    assert len({len(p) for p in prompts}) == len(prompts)  # all lengths differ
    engine = make_engine()
    outs = run_to_completion(engine, prompts, greedy(NEW_TOKENS))
    assert max(s.batch_size for s in engine.stats_history) == len(prompts)
    for prompt, out in zip(prompts, outs):
        tokens = out.outputs[0].token_ids
        assert len(tokens) == NEW_TOKENS
        assert hf_greedy_along(hf_smollm2, prompt, tokens) == tokens


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim",
    [(8, 2, 32), (4, 4, 64), (6, 3, 64), (4, 1, 32)],
    ids=["gqa4-d32", "mha-d64", "gqa2-d64", "mqa-d32"],
)
def test_random_llama_matches_transformers(tmp_path, num_heads, num_kv_heads, head_dim):
    path = make_random_llama(
        tmp_path / "model", num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim
    )
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", block_size=8))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = random.Random(num_heads * 100 + head_dim)
    vocab = hf.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (1, 5, 8, 13, 21, 30, 47, 64)]
    outs = run_to_completion(engine, prompts, greedy(NEW_TOKENS))
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, NEW_TOKENS)
