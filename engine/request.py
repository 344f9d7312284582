"""One request's state as the scheduler and the cache manager see it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from engine.block_hash import hash_block
from engine.sampling_params import SamplingParams
from engine.structured_outputs import GrammarMatcher


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self.value in ("stop", "length", "abort")


@dataclass(eq=False)
class Request:
    """A prompt, what was generated so far, and how much of it sits in the KV cache.

    A step closes the gap `num_tokens - num_computed_tokens`: a fresh prompt has a large
    gap (prefill), a running decode a gap of one. A preempted request restarts from
    zero computed tokens, and its outputs so far are recomputed with the prompt.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    prompt: str | None = None
    eos_token_id: int | None = None
    # More ids that end a reply like EOS (generation_config.json's list); vLLM reports
    # these as the stop_reason, the tokenizer's own EOS as None.
    extra_eos_token_ids: tuple[int, ...] = ()
    max_total_tokens: int = 1 << 30  # the model's context: prompt + output never exceed it
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit length at first admission; -1 = not yet
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    generator: torch.Generator | None = None
    parent_id: str | None = None  # the user's request id; n > 1 makes several children
    index: int = 0  # which of the parent's n samples this is
    leader: Request | None = None  # a sibling whose prompt blocks this one waits to share
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, float]] | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    # sampling_params.bad_words as token-id sequences (tokenized once, by add_request)
    bad_words_token_ids: list[list[int]] = field(default_factory=list)
    grammar: GrammarMatcher | None = None  # structured outputs: this sample's own matcher

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        # Chained hashes of the full blocks seen so far: tokens are only ever appended, so
        # block i's hash never changes, and a retried admission need not hash it again.
        self.block_hashes: list[int] = []
        if self.parent_id is None:
            self.parent_id = self.request_id
        if self.sampling_params.logprobs is not None:
            self.cumulative_logprob = 0.0
            self.logprobs = []
        # Prompt logprobs: computed once per prompt, by the first of its n samples; token 0
        # has none. Filled by the prefill's steps (engine/prompt_logprobs.py).
        self.prompt_logprobs: list[dict[int, float] | None] | None = None
        self.prompt_logprob_ranks: list[int | None] | None = None
        if self.sampling_params.prompt_logprobs is not None and self.index == 0:
            self.prompt_logprobs, self.prompt_logprob_ranks = [None], [None]

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def max_length(self) -> int:
        """The most tokens it may reach: what a contiguous allocator would reserve for it."""
        max_tokens = self.sampling_params.max_tokens
        if max_tokens is None:
            return self.max_total_tokens
        return min(self.num_prompt_tokens + max_tokens, self.max_total_tokens)

    def block_hash(self, index: int, parent: int | None, token_ids: tuple[int, ...]) -> int:
        """The prefix-cache hash of full block `index` (cached after the first time)."""
        if index < len(self.block_hashes):
            return self.block_hashes[index]
        value = hash_block(parent, token_ids)
        if index == len(self.block_hashes):
            self.block_hashes.append(value)
        return value

    @property
    def computes_prompt_logprobs(self) -> bool:
        """Its prompt logprobs are not all there yet: it may not read the prefix cache
        (a cached token has no logits), as in vLLM."""
        done = self.prompt_logprobs
        return done is not None and len(done) < self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def waits_for_leader(self) -> bool:
        """A sibling sample waits until its leader's prompt is in the cache, then shares it."""
        leader = self.leader
        return (
            leader is not None
            and not leader.is_finished
            and leader.num_computed_tokens < leader.num_prompt_tokens
        )

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_stop(self) -> RequestStatus | None:
        """The finished status the last generated token calls for, or None to go on."""
        params = self.sampling_params
        last = self.output_token_ids[-1]
        if not params.ignore_eos and last == self.eos_token_id:
            return RequestStatus.FINISHED_STOPPED
        if not params.ignore_eos and last in self.extra_eos_token_ids:
            self.stop_reason = last
            return RequestStatus.FINISHED_STOPPED
        if last in params.stop_token_ids:
            self.stop_reason = last
            return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and self.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if self.num_tokens >= self.max_total_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None
