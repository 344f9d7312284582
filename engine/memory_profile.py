"""The sampler's share of the CUDA memory profile.

ModelRunner sizes the KV cache from the peak of one dummy forward pass. A real step then
also holds float32 logits of up to max_num_seqs rows and the sampler's temporaries
(penalty counts, a sort of every row for top-k / top-p, softmaxes, log-softmax for
logprobs): about nine [max_num_seqs, vocab] float32 buffers at once, more on CUDA, where
the sort takes a workspace of its own. With a large vocabulary (Llama 3: 128k) and many
sequences that is gigabytes the cache must not have taken.

`profile_sampler` runs the real Sampler once, on logits of max_num_seqs rows, with every
expensive option on (`worst_case_requests`), so that `torch.cuda.max_memory_allocated`
read after it includes that peak exactly: call it inside the profiling run, after the
model's forward. `sampler_peak_bytes` is the estimate without running anything (logs, fit
checks); tests/test_cuda_graphs.py checks it against the sampler's measured peak.
"""

from __future__ import annotations

import torch

from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams

# [rows, vocab] float32 buffers alive at the sampler's peak (measured on the CPU: ~8.3 with
# every option on), plus the CUDA sort's workspace (keys and int64 values, double-buffered:
# ~3) and the logits themselves (1), rounded up.
SAMPLER_PEAK_UNITS = 13


def sampler_peak_bytes(vocab_size: int, max_num_seqs: int) -> int:
    """Bytes a sampling step of max_num_seqs rows may hold at its peak, the float32 logits
    included: an estimate (the sampler's measured peak stays below it)."""
    return SAMPLER_PEAK_UNITS * max_num_seqs * vocab_size * 4


def worst_case_sampling_params() -> SamplingParams:
    """Every option that costs memory: allowed_token_ids (a [rows, vocab] mask) and
    logit_bias, penalties, min_tokens, temperature with min-p, top-k and top-p (a full
    sort), and 20 logprobs."""
    return SamplingParams(
        temperature=0.7, top_p=0.9, top_k=50, min_p=0.05, repetition_penalty=1.1,
        frequency_penalty=0.1, presence_penalty=0.1, min_tokens=1, logprobs=20,
        allowed_token_ids=[0, 1, 2], logit_bias={1: 0.5},
    )  # fmt: skip


def worst_case_requests(num_seqs: int, vocab_size: int, context_len: int = 1) -> list[Request]:
    """num_seqs dummy requests of context_len prompt tokens, each with the worst-case
    sampling params (the penalties' count index grows with the context) and a bad word."""
    params = worst_case_sampling_params()
    prompt = [i % vocab_size for i in range(max(1, context_len))]
    return [
        Request(f"profile-{i}", prompt, params, arrival_time=0.0, eos_token_id=0,
                bad_words_token_ids=[[2]])
        for i in range(num_seqs)
    ]


@torch.inference_mode()
def profile_sampler(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    max_num_seqs: int,
    *,
    context_len: int = 1,
    sampler: Sampler | None = None,
) -> int:
    """Logits for max_num_seqs rows (copies of `hidden`'s last row) through
    model.compute_logits, then one worst-case sampler pass over them. Returns the logits'
    bytes. Run inside the CUDA profiling run so that its peak counts."""
    rows = hidden[-1:].expand(max_num_seqs, hidden.shape[-1]).contiguous()
    logits = model.compute_logits(rows)
    sampler = sampler or Sampler(logits.device)
    sampler(logits, worst_case_requests(max_num_seqs, logits.shape[-1], context_len))
    return logits.numel() * logits.element_size()
