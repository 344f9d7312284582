"""Does bfloat16 cost the bundled model quality? Perplexity on a fixed text, three ways.

- float32: the weights as pagedesk reads them (the bundled Q4_1 GGUF, dequantised);
- bf16 weights: the same weights rounded to bfloat16, computed in float32 (weight-only);
- bf16: weights and activations in bfloat16 (what `dtype="bfloat16"` runs);

computed with transformers on the safetensors folder pagedesk converts the GGUF into, so
the check is independent of the engine; then pagedesk's own engine, from its prompt logprobs,
with `cpu_weight_dtype="float32"` and `"bfloat16"` (the bundled model's "auto": only the
linears and the LM head's copy are bf16, the embedding and norms stay float32). The text is public domain (Jane Austen), fixed
here so every run scores the same tokens.

    .venv/bin/python benchmarks/bf16_quality.py
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

TEXT = """It is a truth universally acknowledged, that a single man in possession of a good
fortune, must be in want of a wife. However little known the feelings or views of such a man
may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the
surrounding families, that he is considered the rightful property of some one or other of their
daughters. "My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield
Park is let at last?" Mr. Bennet replied that he had not. "But it is," returned she; "for Mrs.
Long has just been here, and she told me all about it." Mr. Bennet made no answer. "Do you not
want to know who has taken it?" cried his wife impatiently. "You want to tell me, and I have no
objection to hearing it." This was invitation enough. "Why, my dear, you must know, Mrs. Long
says that Netherfield is taken by a young man of large fortune from the north of England; that
he came down on Monday in a chaise and four to see the place, and was so much delighted with it,
that he agreed with Mr. Morris immediately; that he is to take possession before Michaelmas, and
some of his servants are to be in the house by the end of next week." "What is his name?"
"Bingley." "Is he married or single?" "Oh! Single, my dear, to be sure! A single man of large
fortune; four or five thousand a year. What a fine thing for our girls!" "How so? How can it
affect them?" "My dear Mr. Bennet," replied his wife, "how can you be so tiresome! You must know
that I am thinking of his marrying one of them." "Is that his design in settling here?"
"Design! Nonsense, how can you talk so! But it is very likely that he may fall in love with one
of them, and therefore you must visit him as soon as he comes." """


def perplexity(model, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        logits = model(ids[None]).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[1:])
    return math.exp(float(nll))


def engine_perplexities(ids: list[int]) -> dict[str, float]:
    from engine import LLM, SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = {}
    for stored in ("float32", "bfloat16"):
        llm = LLM(cpu_weight_dtype=stored, num_kv_blocks=128)
        logprobs = llm.generate([ids], params, use_tqdm=False)[0].prompt_logprobs
        nll = -sum(logprobs[i][ids[i]] for i in range(1, len(ids))) / (len(ids) - 1)
        out[f"pagedesk, {stored} weights"] = math.exp(nll)
        del llm
    return out


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.throughput import default_model_folder

    folder = default_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    results = {"float32": perplexity(model, ids)}
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    results["bf16 weights, fp32 compute"] = perplexity(model, ids)
    results["bf16"] = perplexity(model.to(torch.bfloat16), ids)
    results.update(engine_perplexities(ids.tolist()))
    base = results["float32"]
    print(f"perplexity of SmolLM2-135M-Instruct (bundled Q4_1) on {len(ids)} tokens")
    for name, ppl in results.items():
        print(f"  {name:<28} {ppl:8.3f}  ({(ppl / base - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
