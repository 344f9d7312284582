"""Per-request sampling settings: vLLM's set, validated when they are made."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from engine.structured_outputs import StructuredOutputsParams


class RequestOutputKind(enum.Enum):
    """What each output of a request carries (vLLM's names and meanings).

    CUMULATIVE: everything so far (text, token ids, logprobs), every time.
    DELTA: only what is new since the request's previous output; the last has finished.
    FINAL_ONLY: nothing until the request finishes, then one cumulative output.
    A stream that never re-sends what it already sent costs what changed, not the reply.
    """

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


# seed is a 64-bit signed integer, as in vLLM's server (and what torch's generators take).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


@dataclass(slots=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    temperature 0 means greedy. top_k -1 means no top-k cut; top_p 1.0 and min_p 0.0 no
    cut. Penalties: presence / frequency over the generated tokens (OpenAI's), repetition
    over prompt and generated tokens (1.0 = off). `stop` strings end the text (removed
    from it unless include_stop_str_in_output). `n` samples share the prompt's KV blocks.
    `logprobs` = N returns the top-N log-probabilities of each generated token.
    `prompt_logprobs` = N: the top-N of each prompt token plus the token's own (0: only
    its own), from the prefill's forward pass; such a request does not read the prefix cache.
    `output_kind`: cumulative outputs (the default), deltas, or only the final one.
    Constraints (vLLM's): `logit_bias` adds a bias in [-100, 100] to listed token ids'
    logits; `allowed_token_ids` lets only those ids be sampled; `bad_words` are never
    completed (each word's last token is banned when the output ends with the rest).
    `seed` is a 64-bit signed integer. A bad value raises ValueError naming the field.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    prompt_logprobs: int | None = None  # top-N logprobs of each prompt token (+ the token's)
    structured_outputs: StructuredOutputsParams | None = None  # JSON schema, regex, choice, grammar

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias is not None:
            self.logit_bias = _token_keyed(self.logit_bias)
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        self._validate()

    def _validate(self) -> None:
        _check(isinstance(self.n, int) and self.n >= 1, "n", "an integer >= 1", self.n)
        _check(_number(self.temperature) and self.temperature >= 0, "temperature", ">= 0", self.temperature)
        _check(_number(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]", self.top_p)
        _check(isinstance(self.top_k, int) and (self.top_k == -1 or self.top_k >= 1),
               "top_k", "-1 (disabled) or >= 1", self.top_k)
        _check(_number(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]", self.min_p)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_number(value) and -2.0 <= value <= 2.0, name, "in [-2, 2]", value)
        _check(_number(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", "> 0", self.repetition_penalty)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "non-empty strings", self.stop)
        _check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
               "stop_token_ids", "token ids >= 0", self.stop_token_ids)
        _check(self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
               "max_tokens", "an integer >= 1", self.max_tokens)
        _check(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens", ">= 0", self.min_tokens)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens, got min_tokens={self.min_tokens} "
                f"and max_tokens={self.max_tokens}"
            )
        _check(self.seed is None or (_integer(self.seed) and SEED_MIN <= self.seed <= SEED_MAX),
               "seed", f"an integer in [{SEED_MIN}, {SEED_MAX}] (64-bit)", self.seed)
        _check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
               "logprobs", "an integer in [0, 20]", self.logprobs)
        _check(self.prompt_logprobs is None
               or (type(self.prompt_logprobs) is int and 0 <= self.prompt_logprobs <= 20),
               "prompt_logprobs", "an integer in [0, 20]", self.prompt_logprobs)
        _check(isinstance(self.output_kind, RequestOutputKind), "output_kind",
               "a RequestOutputKind", self.output_kind)
        _check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", "a StructuredOutputsParams", self.structured_outputs)
        self._validate_constraints()

    def _validate_constraints(self) -> None:
        """logit_bias, allowed_token_ids, bad_words: the shape of each (the vocabulary
        bounds are the engine's to check, in add_request)."""
        if self.logit_bias is not None:
            bad = {t: v for t, v in self.logit_bias.items()
                   if not (_number(v) and -100 <= v <= 100)}
            _check(not bad, "logit_bias", "a map of token id to a bias in [-100, 100]",
                   _first(bad))
        if self.allowed_token_ids is not None:
            ids = self.allowed_token_ids
            _check(isinstance(ids, (list, tuple)) and bool(ids), "allowed_token_ids",
                   "a non-empty list of token ids", ids)
            bad = [t for t in ids if not (_integer(t) and t >= 0)]
            _check(not bad, "allowed_token_ids", "token ids >= 0", bad[:5])
            self.allowed_token_ids = list(ids)
        if self.bad_words is not None:
            words = self.bad_words
            _check(isinstance(words, (list, tuple))
                   and all(isinstance(w, str) and w.strip() for w in words),
                   "bad_words", "a list of non-blank strings", words)
            self.bad_words = list(dict.fromkeys(words))  # vLLM drops repeats too

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_keyed(bias: object) -> dict[int, float]:
    """logit_bias with int keys: JSON (OpenAI's API) can only send them as strings."""
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must be a map of token id to bias, got {bias!r}")
    out = {}
    for key, value in bias.items():
        if isinstance(key, str) and _INT_TEXT.fullmatch(key.strip()):
            key = int(key)
        if not _integer(key):
            raise ValueError(f"logit_bias must have integer token ids as keys, got {key!r}")
        out[key] = value
    return out


def _first(entries: dict) -> dict:
    """The first few entries of a map, for an error message about a possibly huge one."""
    return dict(list(entries.items())[:5])


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, name: str, wanted: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
