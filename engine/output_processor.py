"""The engine's output side, as vLLM V1's output processor: each request's text, its stop
strings, and the RequestOutputs of the kind its caller asked for.

The scheduler owns token state; this owns what was made of it for the caller: the text so
far (incremental detokenization) and how much of each request the caller has been given.
A DELTA output slices only what is new and a FINAL_ONLY request is built once, when it
ends, so a long reply does not cost a copy of itself every step (CUMULATIVE copies what
it returns, as it must). Text that may yet turn out to start a stop string is held back
until that is decided, in every kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from engine.request import Request
from engine.sampling_params import RequestOutputKind


@dataclass(slots=True)
class _Progress:
    """One request's text, and how much of it (and of its tokens) was handed out."""

    detokenizer: IncrementalDetokenizer
    sent_chars: int = 0
    sent_tokens: int = 0
    sent_final: bool = False  # its finished completion went out (DELTA sends it once)


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._progress: dict[str, _Progress] = {}  # by the scheduler's (child) request id
        self._sent_prompt_logprobs: set[str] = set()  # parents whose DELTA output had them

    def add(self, request: Request) -> None:
        detokenizer = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids,
                                             request.sampling_params.skip_special_tokens)  # fmt: skip
        self._progress[request.request_id] = _Progress(detokenizer)

    def detokenize(self, requests: list[Request]) -> list[tuple[Request, str]]:
        """Turn each request's newest token into text. Returns the requests still running
        whose text now holds a stop string, with that string (their text already ends
        there); the caller finishes them."""
        stopped = []
        for request in requests:
            stop = self._add_token(request)
            if stop is not None:
                stopped.append((request, stop))
        return stopped

    def _add_token(self, request: Request) -> str | None:
        detokenizer = self._progress[request.request_id].detokenizer
        delta = detokenizer.add_tokens(request.output_token_ids[-1:])
        params = request.sampling_params
        # A token-based stop (checked first, by the scheduler) wins; before min_tokens
        # a stop string does not count.
        if request.is_finished or request.num_output_tokens < params.min_tokens:
            return None
        return detokenizer.cut_at_stop_string(params.stop, len(delta),
                                              params.include_stop_str_in_output)  # fmt: skip

    # ---------------------------------------------------------------- outputs
    def make_output(self, parent_id: str, children: list[Request]) -> RequestOutput | None:
        """The user's request as its output kind shows it now: a completion per sample
        (DELTA: per sample with something new), or None (FINAL_ONLY before the end).
        A finished request is forgotten here: it is reported once."""
        finished = all(c.is_finished for c in children)
        kind = children[0].sampling_params.output_kind
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        built = (self._completion(c, kind) for c in children)
        out = _request_output(parent_id, children, [c for c in built if c is not None], finished)
        out.prompt_logprobs, out.prompt_logprob_ranks = self._prompt_logprobs(parent_id, children[0], kind)
        if finished:
            for c in children:
                self._progress.pop(c.request_id, None)
            self._sent_prompt_logprobs.discard(parent_id)
        return out

    def _prompt_logprobs(self, parent_id: str, first: Request, kind: RequestOutputKind) -> tuple:
        """The prompt's logprobs and ranks once all are computed (by the first sample, for
        all n); a DELTA stream gets them once, in its first output."""
        logprobs = first.prompt_logprobs
        if logprobs is None or first.computes_prompt_logprobs:
            return None, None
        if kind is RequestOutputKind.DELTA:
            if parent_id in self._sent_prompt_logprobs:
                return None, None
            self._sent_prompt_logprobs.add(parent_id)
        return logprobs, first.prompt_logprob_ranks

    def _completion(self, request: Request, kind: RequestOutputKind) -> CompletionOutput | None:
        progress = self._progress[request.request_id]
        finished = request.is_finished
        text = progress.detokenizer.output_text
        shown = len(text) if finished else _shown_length(text, request.sampling_params.stop)
        new_text = text[progress.sent_chars : shown]
        new_ids = request.output_token_ids[progress.sent_tokens :]
        if kind is RequestOutputKind.DELTA:
            if progress.sent_final or not (new_ids or new_text or finished):
                return None
            logprobs = _tail(request.logprobs, progress.sent_tokens)
            out = _completion_output(request, new_text, new_ids, logprobs, new_text, new_ids)
        else:
            whole = text if shown == len(text) else text[:shown]
            logprobs = _tail(request.logprobs, 0)
            out = _completion_output(request, whole, list(request.output_token_ids), logprobs,
                                     new_text, new_ids)  # fmt: skip
        progress.sent_chars, progress.sent_tokens = shown, request.num_output_tokens
        progress.sent_final = finished
        return out


def _shown_length(text: str, stops: list[str]) -> int:
    """How much of an unfinished request's text may be shown: what could still be the
    start of a stop string is held back, since it may yet be cut."""
    if not stops:
        return len(text)
    return max(0, len(text) - max(len(s) for s in stops) + 1)


def _tail(items: list | None, start: int) -> list | None:
    return None if items is None else items[start:]


def _completion_output(request: Request, text: str, token_ids: list[int], logprobs,
                       delta_text: str, delta_token_ids: list[int]) -> CompletionOutput:  # fmt: skip
    finished = request.is_finished
    return CompletionOutput(
        index=request.index,
        text=text,
        token_ids=token_ids,
        finish_reason=request.status.value if finished else None,
        stop_reason=request.stop_reason,
        cumulative_logprob=request.cumulative_logprob,
        logprobs=logprobs,
        delta_text=delta_text,
        delta_token_ids=delta_token_ids,
    )


def _request_output(parent_id: str, children: list[Request],
                    completions: list[CompletionOutput], finished: bool) -> RequestOutput:  # fmt: skip
    first = children[0]
    return RequestOutput(
        request_id=parent_id,
        prompt=first.prompt,
        prompt_token_ids=first.prompt_token_ids,
        outputs=completions,
        finished=finished,
        metrics=RequestMetrics(
            arrival_time=first.arrival_time,
            first_scheduled_time=_earliest(c.first_scheduled_time for c in children),
            first_token_time=_earliest(c.first_token_time for c in children),
            last_token_time=max((c.last_token_time or 0.0) for c in children) or None,
            finished_time=max((c.finished_time or 0.0) for c in children) if finished else None,
            num_preemptions=sum(c.num_preemptions for c in children),
        ),
        num_cached_tokens=max(first.num_cached_tokens, 0),
    )


def _earliest(times) -> float | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None
