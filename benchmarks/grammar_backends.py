"""Which grammar engine costs a decode step least: xgrammar against llguidance, on the CPU.

With the bundled SmolLM2 tokenizer (49,152 tokens), for a nested JSON schema (objects in
objects, an enum, arrays of objects and of strings), it measures per backend:

- setup: the tokenizer's vocabulary made into the backend's form (once per engine);
- compile: the schema made into a grammar (once per schema; the engine caches it);
- per step: what structured outputs add to a decode step of one request, i.e. filling the
  request's row of the token bitmask and advancing its matcher by the chosen token, over
  the tokens of a valid instance of the schema (the tokenizer's own tokenisation of it),
  median and p90 over all steps of `--repeats` passes with a fresh matcher each;
- apply: the bitmask applied to a [1, vocab] float32 logits row (the sampler's part).

pagedesk keeps the backend with the lower per-step median as its dependency (xgrammar, see
engine/structured_outputs.py); the other is optional here: without it the table says
"not installed".

    .venv/bin/python benchmarks/grammar_backends.py
    .venv/bin/python benchmarks/grammar_backends.py --repeats 20
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "geo": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"],
                },
            },
            "required": ["street", "city", "geo"],
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "orders": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "status": {"enum": ["open", "shipped", "closed"]},
                    "items": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["id", "status", "items"],
            },
        },
    },
    "required": ["name", "age", "role", "address", "tags", "orders"],
}

INSTANCE = {
    "name": "Ada Lovelace",
    "age": 36,
    "role": "editor",
    "address": {"street": "12 St James's Square", "city": "London",
                "geo": {"lat": 51.5074, "lon": -0.1346}},
    "tags": ["mathematics", "engines", "poetry"],
    "orders": [
        {"id": 1, "status": "shipped", "items": ["notes", "tables"]},
        {"id": 2, "status": "open", "items": ["bernoulli numbers"]},
    ],
}


def load_tokenizer():
    from transformers import AutoTokenizer

    from engine import hf_folder_of

    return AutoTokenizer.from_pretrained(hf_folder_of(None))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


class XGrammarBench:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab: int):
        import xgrammar as xgr

        self.xgr, self.vocab = xgr, vocab
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)

    def compile(self, schema: str):
        # A fresh compiler each time: its cache would make a second compile free.
        return self.xgr.GrammarCompiler(self.info, cache_enabled=False).compile_json_schema(schema)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self):
        return self.xgr.allocate_token_bitmask(1, self.vocab)

    @staticmethod
    def step(matcher, bitmask, token: int) -> bool:
        matcher.fill_next_token_bitmask(bitmask, 0)
        return matcher.accept_token(token)

    def apply(self, logits, bitmask) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)

    @staticmethod
    def can_end(matcher, eos: int) -> bool:
        return matcher.accept_token(eos) and matcher.is_terminated()


class GuidanceBench:
    name = "llguidance"

    def __init__(self, tokenizer, vocab: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg, self.llg_torch, self.vocab = llguidance, llguidance.torch, vocab
        self.tok = llguidance.hf.from_tokenizer(tokenizer, vocab)

    def compile(self, schema: str):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema)
        # llguidance builds its parser when the matcher is made: that is its compile.
        matcher = self.llg.LLMatcher(self.tok, grammar)
        if matcher.get_error():
            raise ValueError(matcher.get_error())
        return grammar

    def matcher(self, grammar):
        return self.llg.LLMatcher(self.tok, grammar)

    def bitmask(self):
        return self.llg_torch.allocate_token_bitmask(1, self.tok.vocab_size)

    def step(self, matcher, bitmask, token: int) -> bool:
        self.llg_torch.fill_next_token_bitmask(matcher, bitmask, 0)
        return matcher.consume_token(token)

    def apply(self, logits, bitmask) -> None:
        self.llg_torch.apply_token_bitmask_inplace(logits, bitmask)

    @staticmethod
    def can_end(matcher, eos: int) -> bool:
        return matcher.is_accepting() and matcher.consume_token(eos)


def measure(bench, tokens: list[int], eos: int, repeats: int) -> dict:
    schema = json.dumps(SCHEMA)
    compile_times = []
    for _ in range(3):
        seconds, compiled = timed(lambda: bench.compile(schema))
        compile_times.append(seconds)
    steps, bitmask = [], bench.bitmask()
    for _ in range(repeats):
        matcher = bench.matcher(compiled)
        for token in tokens:
            start = time.perf_counter()
            ok = bench.step(matcher, bitmask, token)
            steps.append(time.perf_counter() - start)
            if not ok:
                raise RuntimeError(f"{bench.name} refused token {token}")
        if not bench.can_end(matcher, eos):
            raise RuntimeError(f"{bench.name}: EOS not allowed after a complete instance")
    logits = torch.randn(1, bench.vocab)
    apply_times = []
    for _ in range(200):
        seconds, _ = timed(lambda: bench.apply(logits, bitmask))
        apply_times.append(seconds)
    steps.sort()
    return {
        "compile_ms": 1e3 * min(compile_times),
        "step_median_us": 1e6 * statistics.median(steps),
        "step_p90_us": 1e6 * steps[int(0.9 * (len(steps) - 1))],
        "apply_median_us": 1e6 * statistics.median(apply_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="passes over the instance")
    args = parser.parse_args()
    tokenizer = load_tokenizer()
    vocab = len(tokenizer)
    tokens = tokenizer.encode(json.dumps(INSTANCE), add_special_tokens=False)
    print(f"tokenizer: SmolLM2 ({vocab} tokens); instance: {len(tokens)} tokens; "
          f"{args.repeats} passes; torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'backend':<12}{'setup ms':>10}{'compile ms':>12}{'step med us':>13}"
          f"{'step p90 us':>13}{'apply us':>10}")  # fmt: skip
    for module, cls in (("xgrammar", XGrammarBench), ("llguidance", GuidanceBench)):
        if importlib.util.find_spec(module) is None:
            print(f"{cls.name:<12}not installed (pip install {module})")
            continue
        setup, bench = timed(lambda: cls(tokenizer, vocab))
        r = measure(bench, tokens, tokenizer.eos_token_id, args.repeats)
        print(f"{cls.name:<12}{1e3 * setup:>10.0f}{r['compile_ms']:>12.1f}"
              f"{r['step_median_us']:>13.1f}{r['step_p90_us']:>13.1f}{r['apply_median_us']:>10.1f}")


if __name__ == "__main__":
    main()
