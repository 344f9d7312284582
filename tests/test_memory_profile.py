"""engine/memory_profile.py: the CUDA profiling run's sampler pass takes at least the peak
of any real sampling step of max_num_seqs rows, and the estimate covers it. Peaks are
measured on the CPU by following every tensor storage an op creates (a dispatch mode),
which is what the CUDA caching allocator would be asked for, its sort workspace aside."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from engine.memory_profile import (
    profile_sampler,
    sampler_peak_bytes,
    worst_case_requests,
    worst_case_sampling_params,
)
from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams

ROWS, VOCAB, HIDDEN = 16, 4096, 64


class LiveBytes(TorchDispatchMode):
    """The most bytes of storages created under the mode that were alive at one time."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors using it]
        self.seen: set[int] = set()  # ids of the tensors counted
        self.current = self.peak = 0

    def _release(self, key: int, tensor_id: int) -> None:
        self.seen.discard(tensor_id)
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in self.seen:
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            self.seen.add(id(t))
            entry = self.live.get(key)
            if entry is None:
                self.live[key] = entry = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key, id(t))
        return out


class TinyHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return TinyHead()


def _peak(fn) -> int:
    with torch.inference_mode(), LiveBytes() as meter:
        fn()
    return meter.peak


def _real_step(head, params: list[SamplingParams], context_len: int = 12) -> int:
    """The peak of a real step: logits of ROWS rows, then the sampler on those requests."""
    hidden = torch.randn(ROWS, HIDDEN)
    prompt = list(range(3, 3 + context_len))
    requests = [Request(f"r{i}", prompt, p, 0.0, eos_token_id=0) for i, p in enumerate(params)]
    for r in requests:
        r.append_output_token(5)
    sampler = Sampler(torch.device("cpu"))
    return _peak(lambda: sampler(head.compute_logits(hidden), requests))


STEPS = {
    "greedy": [SamplingParams(temperature=0)] * ROWS,
    "greedy-logprobs": [SamplingParams(temperature=0, logprobs=20)] * ROWS,
    "top-p": [SamplingParams(temperature=0.8, top_p=0.95)] * ROWS,
    "top-k-min-p": [SamplingParams(top_k=40, min_p=0.1)] * ROWS,
    "penalties": [SamplingParams(repetition_penalty=1.2, presence_penalty=0.5)] * ROWS,
    "mixed": [SamplingParams(temperature=0, logprobs=5), SamplingParams(top_p=0.9)] * (ROWS // 2),
    "constraints": [SamplingParams(top_p=0.9, allowed_token_ids=list(range(0, VOCAB, 2)),
                                   logit_bias={3: 1.0, 4: -2.0})] * ROWS,
    "everything": [worst_case_sampling_params()] * ROWS,
}


def test_profile_pass_peaks_at_least_as_high_as_any_real_step(head):
    hidden = torch.randn(40, HIDDEN)  # the profiling forward's hidden states
    profiled = _peak(lambda: profile_sampler(head, hidden, ROWS, context_len=12))
    real = {name: _real_step(head, params) for name, params in STEPS.items()}
    assert all(profiled >= peak for peak in real.values()), (profiled, real)
    unit = ROWS * VOCAB * 4  # one [rows, vocab] float32 buffer
    assert profiled > 5 * unit  # it does hold the sort, softmaxes and logprobs at once
    assert real["greedy"] < 2 * unit < profiled


def test_estimate_covers_the_measured_peak(head):
    hidden = torch.randn(8, HIDDEN)
    measured = _peak(lambda: profile_sampler(head, hidden, ROWS, context_len=12))
    estimate = sampler_peak_bytes(VOCAB, ROWS)
    # Above the CPU peak (the CUDA sort's workspace comes on top), but not far above.
    assert measured < estimate < 2 * measured, (measured, estimate)
    assert sampler_peak_bytes(2 * VOCAB, 3 * ROWS) == 6 * estimate


def test_profile_sampler_samples_max_num_seqs_rows(head, monkeypatch):
    seen = {}
    real_call = Sampler.__call__

    def spy(self, logits, requests):
        seen["shape"] = tuple(logits.shape)
        seen["params"] = [r.sampling_params for r in requests]
        return real_call(self, logits, requests)

    monkeypatch.setattr(Sampler, "__call__", spy)
    nbytes = profile_sampler(head, torch.randn(3, HIDDEN), ROWS)
    assert seen["shape"] == (ROWS, VOCAB) and nbytes == ROWS * VOCAB * 4
    params = seen["params"][0]
    assert all(p == params for p in seen["params"])
    assert not params.greedy and params.logprobs == 20 and params.min_tokens >= 1
    assert params.has_penalties and 0 < params.top_k < VOCAB and params.top_p < 1
    requests = worst_case_requests(4, VOCAB, context_len=300)
    assert len(requests) == 4 and all(r.num_prompt_tokens == 300 for r in requests)
