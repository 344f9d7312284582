"""What the engine hands back: vLLM's RequestOutput / CompletionOutput shapes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestMetrics:
    """Wall-clock times (time.monotonic seconds) of a request's life."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    last_token_time: float | None = None  # when the latest generated token came
    num_preemptions: int = 0  # times the request was preempted (and recomputed)

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, float]] | None = None  # per generated token: {token id: logprob}
    # Streaming (AsyncEngine): what is new since the previous output of this request.
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    error: str | None = field(default=None)
    # vLLM's prompt_logprobs: per prompt token {token id: logprob} (top-N + the token),
    # None for the first; with DELTA outputs only in the first. None: not asked for.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    # The vocabulary rank (1 = likeliest) of each prompt token, parallel to prompt_logprobs.
    prompt_logprob_ranks: list[int | None] | None = None


def merge_outputs(older: RequestOutput, newer: RequestOutput, delta: bool) -> RequestOutput:
    """One output standing for two consecutive ones of a stream, for a consumer that fell
    behind (vLLM's RequestOutputCollector does the same): each completion's delta_text and
    delta_token_ids are what is new since `older`'s predecessor. With `delta` (DELTA
    outputs) text, token ids and logprobs are concatenated too, a sample that had nothing
    new in `newer` keeps its part of `older`, and the prompt's logprobs (sent once) stay.
    Otherwise `newer` already holds everything, so only the deltas are joined."""
    previous = {c.index: c for c in older.outputs}
    merged = []
    for new in newer.outputs:
        old = previous.pop(new.index, None)
        merged.append(new if old is None else _merge_completion(old, new, delta))
    if delta:
        merged = sorted(merged + list(previous.values()), key=lambda c: c.index)
    return RequestOutput(
        newer.request_id, newer.prompt, newer.prompt_token_ids, merged, newer.finished,
        newer.metrics, newer.num_cached_tokens, newer.error,
        newer.prompt_logprobs if newer.prompt_logprobs is not None or not delta
        else older.prompt_logprobs,
        newer.prompt_logprob_ranks if newer.prompt_logprob_ranks is not None or not delta
        else older.prompt_logprob_ranks)  # fmt: skip


def _merge_completion(old: CompletionOutput, new: CompletionOutput,
                      delta: bool) -> CompletionOutput:  # fmt: skip
    text, token_ids, logprobs = new.text, new.token_ids, new.logprobs
    if delta:
        text, token_ids = old.text + new.text, old.token_ids + new.token_ids
        if old.logprobs is not None and new.logprobs is not None:
            logprobs = old.logprobs + new.logprobs
    return CompletionOutput(new.index, text, token_ids, new.finish_reason, new.stop_reason,
                            new.cumulative_logprob, logprobs, old.delta_text + new.delta_text,
                            old.delta_token_ids + new.delta_token_ids)  # fmt: skip
