"""What static batching would have cost: the timeline's comparison line.

Orca (OSDI '22) and vLLM compare continuous (iteration-level) batching with *static*
(request-level) batching, where a server takes the next `batch_size` requests in arrival
order, pads them to the longest member, and runs the batch to completion before it admits
anyone else. Short requests then wait for the longest one: the steps below count that cost.

The lengths come from the engine's own step records, so the comparison is about the very
requests the learner just watched. Pure Python, no Qt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.stats import StepStats


def static_batching_steps(requests: Sequence[tuple[int, int]], batch_size: int) -> int:
    """Engine steps a static-batching server needs for `requests`.

    `requests` are (prompt tokens, output tokens) in arrival order. The model:

    - requests are grouped into consecutive batches of `batch_size` in arrival order
      (the last batch may be smaller);
    - each batch is padded to its longest prompt and prefilled in one step, which samples
      every member's first output token;
    - it then decodes until its longest member is done: (longest output − 1) more steps,
      one token per member per step, finished members riding along as padding;
    - the next batch starts only after that.

    So a batch costs max(1, longest output) steps; prompt lengths change the work in the
    prefill step (padding) but not the number of steps. A request with no output still
    costs its batch the prefill step.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    steps = 0
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        steps += max(1, max(output for _prompt, output in batch))
    return steps


@dataclass(slots=True)
class _Request:
    order: int  # arrival order: the first step it was seen waiting or scheduled
    steps: list[int] = field(default_factory=list)  # steps it was scheduled in
    prompt: int = 0
    outputs: int = 0


@dataclass(frozen=True, slots=True)
class Comparison:
    """Continuous batching's steps against the static model, for the same finished requests."""

    continuous_steps: int  # steps in which at least one of these requests was scheduled
    static_steps: int
    batch_size: int
    num_requests: int

    @property
    def ratio(self) -> float:
        return self.static_steps / self.continuous_steps if self.continuous_steps else 1.0

    def describe(self) -> str:
        if not self.num_requests:
            return "static batching comparison: no finished request yet"
        return (f"continuous batching: {self.continuous_steps} steps · static batches of "
                f"{self.batch_size} padded to the longest: {self.static_steps} steps "
                f"({self._relation()})")  # fmt: skip

    def _relation(self) -> str:
        if self.static_steps == self.continuous_steps:
            return "the same"
        return f"{self.ratio:.1f}× {'more' if self.ratio > 1 else 'fewer'}"


class RequestLengths:
    """Follows step records and keeps each finished request's (prompt, output) lengths.

    Output tokens: the entries with `sampled=True` (the last chunk of a prefill, each decode,
    the last chunk of a recompute: each samples one new token; a recompute re-computes the
    earlier outputs' K/V but samples only the next one). Prompt tokens: at any sampling
    entry, the sampled token sits at position `num_computed_before + num_new_tokens`, which
    is prompt + the outputs sampled before it, so prompt = that − outputs before. Prefix
    cache hits are in `num_computed_before`, so they count as prompt, as they should.
    Requests that finish with no output (aborted while waiting) are left out.
    """

    def __init__(self) -> None:
        self._live: dict[str, _Request] = {}
        self._finished: list[tuple[int, tuple[int, int]]] = []  # (arrival order, lengths)
        self._steps: set[int] = set()  # steps that served a finished request
        self._arrivals = 0
        self.max_batch_size = 0

    def add(self, record: StepStats) -> None:
        self.max_batch_size = max(self.max_batch_size, record.batch_size, len(record.scheduled))
        for entry in record.scheduled:
            req = self._request(entry.request_id)
            req.steps.append(record.step)
            if entry.sampled:
                if req.outputs == 0:
                    req.prompt = entry.num_computed_before + entry.num_new_tokens
                req.outputs += 1
        for rid in record.waiting:  # after the batch: FCFS admitted those before these
            self._request(rid)
        for rid in record.finished:
            req = self._live.pop(rid, None)
            if req is not None and req.outputs:
                self._finished.append((req.order, (req.prompt, req.outputs)))
                self._steps.update(req.steps)

    def _request(self, rid: str) -> _Request:
        req = self._live.get(rid)
        if req is None:
            req = self._live[rid] = _Request(self._arrivals)
            self._arrivals += 1
        return req

    def finished(self) -> list[tuple[int, int]]:
        """(prompt, output) of every finished request, in arrival order."""
        return [lengths for _order, lengths in sorted(self._finished)]

    def compare(self, batch_size: int | None = None) -> Comparison:
        """`batch_size` defaults to the largest batch seen: what the engine showed it could
        run at once, so the static server gets the same concurrency."""
        size = batch_size or max(1, self.max_batch_size)
        lengths = self.finished()
        static = static_batching_steps(lengths, size) if lengths else 0
        return Comparison(len(self._steps), static, size, len(lengths))


def finished_request_lengths(records: Iterable[StepStats]) -> list[tuple[int, int]]:
    """(prompt tokens, output tokens) of the requests that finished in `records`, in arrival
    order (see RequestLengths for how each is counted)."""
    tracker = RequestLengths()
    for record in records:
        tracker.add(record)
    return tracker.finished()
