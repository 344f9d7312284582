"""The native and the generic path on the same checkpoint, in one run (a ratio).

A random-weight Qwen3 checkpoint (transformers' own config class; 8 layers, hidden 1024, GQA
16/4 heads of 64, vocabulary 259: ~100M parameters) runs the same seeded workload (prompt lengths 32-256,
64 greedy tokens each, EOS ignored) through pagedesk's native Qwen3 and through the generic
transformers path (`engine.models.transformers_backend`), each warmed up first; `--repeat N`
round-robins and keeps each one's fastest run. Greedy tokens of the two are compared.

    .venv/bin/python benchmarks/model_paths.py            # 16 requests, CPU, fp32
    .venv/bin/python benchmarks/model_paths.py --repeat 2 --num-requests 32
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for extra in (REPO_ROOT, REPO_ROOT / "tests"):  # tests/ for the random checkpoint maker
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def build_engines(path: Path):
    import torch

    from engine import EngineConfig, LLMEngine
    from engine.model_loader import _weight_files, build_model, load_hf_dir
    from engine.models.transformers_backend import TransformersForCausalLM

    config = EngineConfig(model=str(path), device="cpu", dtype="float32")
    native = LLMEngine(config)
    loaded = load_hf_dir(path, name="qwen3-generic", source_path=path, dtype=torch.float32,
                         device=torch.device("cpu"))  # fmt: skip
    loaded.model = build_model(TransformersForCausalLM, loaded.hf_config, _weight_files(path),
                               torch.float32, torch.device("cpu"))  # fmt: skip
    return {"native Qwen3": native, "generic (transformers Qwen3ForCausalLM)": LLMEngine(config, loaded)}


def run(engine, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    from engine import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm = LLM.from_engine(engine)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, [o.outputs[0].token_ids for o in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    from family_parity import save_random_model

    rng = random.Random(0)
    prompts = [[rng.randrange(3, 259) for _ in range(rng.randint(32, 256))]
               for _ in range(args.num_requests)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_model(Path(tmp) / "qwen3", "qwen3", hidden_size=1024,
                                 intermediate_size=3072, num_hidden_layers=8,
                                 num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                                 max_position_embeddings=1024)  # fmt: skip
        engines = build_engines(path)
        for engine in engines.values():
            run(engine, prompts[:2], 4)  # warm-up
        best: dict[str, float] = {}
        tokens: dict[str, list[list[int]]] = {}
        for _ in range(args.repeat):
            for name, engine in engines.items():
                seconds, tokens[name] = run(engine, prompts, args.new_tokens)
                best[name] = min(seconds, best.get(name, seconds))
    total = args.num_requests * args.new_tokens
    native = next(iter(best.values()))
    print("| path | output tokens | seconds | output tok/s | ratio vs native |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {total} | {seconds:.1f} | {total / seconds:.1f} | {native / seconds:.2f}x |")
    first, second = tokens.values()
    same = sum(a == b for a, b in zip(first, second))
    print(f"greedy tokens equal on {same} / {len(first)} requests")


if __name__ == "__main__":
    main()
