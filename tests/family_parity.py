"""Any model family against transformers: tiny random checkpoints and the parity rules.

`save_random_model(path, model_type, **config)` writes a Hugging Face directory built with
transformers' own config class (`AutoConfig.for_model`) and model class, every weight drawn
at random (biases and norm weights too: transformers zeroes or ones them, which would hide
a missing bias or a wrong norm formula), plus the byte tokenizer of `model_factory`.

`assert_matches_transformers(path, prompts)` runs the engine twice, each prompt alone and all
prompts in one mixed batch with chunked prefill, and asserts for each prompt:
  * the greedy token ids equal transformers' `generate()`, token for token;
  * the top-5 logprobs of the first `LOGPROB_STEPS` steps are close: vLLM's
    `check_logprobs_close` rule (where the chosen tokens differ, each side's token is in the
    other's top-5; after that the sequences are not compared), and where they agree the
    logprob values agree within `atol`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from engine import EngineConfig, LLMEngine, SamplingParams
from engine_helpers import run_to_completion
from model_factory import make_byte_tokenizer

NEW_TOKENS = 16
LOGPROB_STEPS = 16
TOP_K = 5


def save_random_model(
    path: str | Path,
    model_type: str,
    *,
    seed: int = 0,
    std: float = 0.5,
    norm_std: float = 0.2,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    **config_fields,
) -> Path:
    """A random-weight `model_type` checkpoint in `path` (config, safetensors, tokenizer).

    Matrices ~ N(0, std * sqrt(64 / fan_in)); norm weights ~ N(1, norm_std) (N(0, norm_std) where the model adds
    1 itself, as Gemma does); biases ~ N(0, std). `config_fields` go to the config class;
    `max_shard_size` (e.g. "40KB") splits the weights into shards with an index.
    """
    path = Path(path)
    tokenizer = make_byte_tokenizer()
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_fields,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _randomize(model, std, norm_std, zero_centred_norms=model_type.startswith("gemma"))
    shards = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **shards)
    tokenizer.save_pretrained(path)
    return path


def _randomize(model: torch.nn.Module, std: float, norm_std: float, zero_centred_norms: bool):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.ndim == 1 and not name.endswith(".bias"):
                param.normal_(0.0 if zero_centred_norms else 1.0, norm_std)
            elif param.ndim == 1:
                param.normal_(0.0, std)
            else:
                param.normal_(0.0, std * (64 / param.shape[-1]) ** 0.5)  # width-independent


def random_prompts(vocab_size: int, lengths: Sequence[int], seed: int = 0) -> list[list[int]]:
    """Prompts of the given lengths, avoiding the 3 special ids of the byte tokenizer."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def hf_greedy(
    hf_model, prompt: list[int], new_tokens: int = NEW_TOKENS
) -> tuple[list[int], list[dict[int, float]]]:
    """transformers' greedy ids and the top-5 logprobs of each step (the prompt alone)."""
    hf_model.generation_config.eos_token_id = None  # never stop early, never suppress EOS
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    tokens = out.sequences[0, len(prompt) :].tolist()
    tops = []
    for logits in out.logits:
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        values, idx = logprobs.topk(TOP_K)
        tops.append(dict(zip(idx.tolist(), values.tolist())))
    return tokens, tops


def engine_greedy(
    engine: LLMEngine, prompts: list[list[int]], new_tokens: int = NEW_TOKENS
) -> list[tuple[list[int], list[dict[int, float]]]]:
    """The engine's greedy ids and top-5 logprobs, all prompts in one continuous batch."""
    params = SamplingParams(
        temperature=0.0, max_tokens=new_tokens, ignore_eos=True, logprobs=TOP_K
    )
    outs = run_to_completion(engine, prompts, params)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


def check_logprobs_close(
    ours: tuple[list[int], list[dict[int, float]]],
    theirs: tuple[list[int], list[dict[int, float]]],
    *,
    steps: int = LOGPROB_STEPS,
    atol: float = 1e-2,
    what: str = "",
) -> None:
    """vLLM's rule, plus value agreement while the two sequences agree."""
    for step in range(min(steps, len(ours[0]), len(theirs[0]))):
        a, b = ours[0][step], theirs[0][step]
        a_top, b_top = ours[1][step], theirs[1][step]
        if a != b:
            assert a in b_top and b in a_top, (
                f"{what} step {step}: ours chose {a}, transformers {b}; "
                f"ours top-5 {a_top}, transformers top-5 {b_top}"
            )
            return
        for token in set(a_top) & set(b_top):
            assert abs(a_top[token] - b_top[token]) <= atol, (
                f"{what} step {step}: logprob of {token}: ours {a_top[token]:.5f}, "
                f"transformers {b_top[token]:.5f}"
            )


def assert_matches_transformers(
    path: str | Path,
    prompts: list[list[int]],
    *,
    new_tokens: int = NEW_TOKENS,
    block_size: int = 8,
    chunk_tokens: int = 24,
    exact_tokens: bool = True,
    **engine_fields,
) -> LLMEngine:
    """Each prompt alone, then all of them in one mixed batch whose prefills are chunked
    (`chunk_tokens` per step), against transformers' generate() on the same checkpoint.
    Returns the batched engine (for more checks on its stats)."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = [hf_greedy(hf, p, new_tokens) for p in prompts]

    def engine(**fields) -> LLMEngine:
        config = dict(model=str(path), device="cpu", dtype="float32", block_size=block_size)
        return LLMEngine(EngineConfig(**{**config, **engine_fields, **fields}))

    single = engine()
    alone = [engine_greedy(single, [p], new_tokens)[0] for p in prompts]
    batched_engine = engine(max_num_batched_tokens=chunk_tokens)
    batched = engine_greedy(batched_engine, prompts, new_tokens)
    assert any(s.prefill_tokens and s.decode_tokens for s in batched_engine.stats_history), (
        "the batched run never mixed a prefill chunk with decodes"
    )
    for i, want in enumerate(expected):
        for how, got in (("alone", alone[i]), ("batched", batched[i])):
            if exact_tokens:
                assert got[0] == want[0], f"prompt {i} ({how}): {got[0]} != {want[0]}"
            check_logprobs_close(got, want, what=f"prompt {i} ({how})")
    return batched_engine
