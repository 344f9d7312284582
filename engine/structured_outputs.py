"""Structured outputs: a request's tokens held to a JSON schema, regex, choice or grammar.

As vLLM V1 does it, with xgrammar (benchmarks/grammar_backends.py: on this CPU it adds
~5 us per request per decode step against llguidance's ~40 us). A spec compiles once per
engine (cached by the spec); each sample gets its own matcher. Before the draw, the
sampler asks `apply_grammar_bitmask` to fill one bitmask row per constrained request and
set the logits of the tokens its grammar forbids to -inf; the other rows of the batch are
left as they are. JSON whitespace is flexible but bounded (MAX_WHITESPACE). After the step each constrained request's matcher accepts the token it
got (`advance_grammars`); one whose grammar is done ends with finish_reason "stop".

The matcher allows EOS exactly when the grammar can end. A preempted request keeps its
matcher: recompute only rebuilds the KV cache of tokens the matcher has already accepted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads on first use: SamplingParams imports this module
    import torch

    from engine.request import Request

log = logging.getLogger(__name__)

_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_CACHE_SIZE = 64  # compiled grammars kept per engine
# Whitespace between JSON tokens: flexible (as vLLM's default) but at most this many
# characters in a row. Unbounded (or even 12), SmolLM2 sampled at 0.7 fills gap after gap
# with newlines until max_tokens; 4 still lets a reply break lines and indent a little.
MAX_WHITESPACE = 4
# xgrammar's errors start with "[hh:mm:ss] /project/cpp/file.cc:123: ": not the user's business.
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


@dataclass(slots=True)
class StructuredOutputsParams:
    """What a request's output must match (vLLM's fields): exactly one of a JSON schema
    (`json`: a dict or its JSON text), a `regex`, a `choice` of strings, a `grammar` (EBNF
    with `::=` rules, or Lark), or `json_object` (any JSON object)."""

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        chosen = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(chosen) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of json, regex, choice, grammar, "
                f"json_object; got {', '.join(chosen) if chosen else 'none'}"
            )
        self._check_types()

    def _check_types(self) -> None:
        if self.json is not None and not isinstance(self.json, (dict, str)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (an object or its text), got {self.json!r}")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, got {value!r}")
        if self.choice is not None:
            if not isinstance(self.choice, (list, tuple)) or not self.choice or not all(
                isinstance(c, str) and c for c in self.choice
            ):
                raise ValueError(f"structured_outputs.choice must be a non-empty list of non-empty strings, got {self.choice!r}")
            self.choice = list(self.choice)
        if self.json_object is not None and not isinstance(self.json_object, bool):
            raise ValueError(f"structured_outputs.json_object must be a boolean, got {self.json_object!r}")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> tuple[str, str]:
        """(kind, spec text): equal specs compile once."""
        kind = self.kind
        if kind == "json":
            # Not sort_keys: properties are generated in the schema's order.
            return kind, self.json if isinstance(self.json, str) else json.dumps(self.json)
        if kind == "choice":
            return kind, json.dumps(self.choice)
        if kind == "json_object":
            return kind, ""
        return kind, getattr(self, kind)


class GrammarMatcher:
    """One sample's place in its grammar: which tokens may come next, and the ones taken."""

    def __init__(self, matcher: Any):
        self._matcher = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance by `token_id`; False if the grammar does not allow it here."""
        return self._matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its end (a stop token) was accepted."""
        return self._matcher.is_terminated()


class GrammarCompiler:
    """Compiles specs for one tokenizer (xgrammar), caching the compiled grammars by spec.

    `vocab_size` is the logits' width; `stop_token_ids` are the ids that end a reply (the
    tokenizer's EOS and generation_config's): the grammar allows them exactly where it can
    end. The tokenizer's vocabulary is converted on the first compile (~0.6 s for 49k tokens).
    Thread-safe: AsyncEngine compiles a request's spec in a worker thread before the engine's
    thread sees it (a large grammar can take seconds), which then finds it in the cache.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int | None]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # the bitmask's width is the logits': xgrammar checks it
        self.stop_token_ids = list(dict.fromkeys(t for t in stop_token_ids if t is not None))
        self._compiler: Any = None
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()  # the cache and the compiler's creation

    def compile(self, params: StructuredOutputsParams) -> Any:
        """The compiled grammar for `params`; a bad spec raises ValueError naming the field."""
        key = params.key
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        compiled = self._compile(*key)  # outside the lock: xgrammar's compiler is thread-safe
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, compiled: Any) -> GrammarMatcher:
        import xgrammar as xgr

        return GrammarMatcher(xgr.GrammarMatcher(compiled, override_stop_tokens=self.stop_token_ids or None))

    def _compile(self, kind: str, spec: str) -> Any:
        return self._xgrammar().compile_grammar(_parse(kind, spec))

    def _xgrammar(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids or None
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._compiler


def check_structured_outputs(params: StructuredOutputsParams) -> None:
    """Raise ValueError if the spec is not a valid schema, regex or grammar (no tokenizer
    needed: the server checks a request with this before it reaches the engine)."""
    _parse(*params.key)


def _parse(kind: str, spec: str) -> Any:
    """The spec as an xgrammar Grammar; a bad one raises ValueError naming the field."""
    import xgrammar as xgr

    try:
        if kind == "json":
            json.loads(spec)  # xgrammar's own message for bad JSON text is cryptic
            return xgr.Grammar.from_json_schema(spec, max_whitespace_cnt=MAX_WHITESPACE)
        if kind == "json_object":
            return xgr.Grammar.from_json_schema('{"type": "object"}', max_whitespace_cnt=MAX_WHITESPACE)
        if kind == "regex":
            return xgr.Grammar.from_regex(spec)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(choice_grammar(json.loads(spec)))
        # vLLM's rule: a grammar with "::=" rules is EBNF (GBNF), anything else Lark.
        return xgr.Grammar.from_ebnf(spec) if "::=" in spec else xgr.Grammar.from_lark(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        what = {"json": "JSON schema", "regex": "regex", "grammar": "grammar (EBNF or Lark)",
                "choice": "choice", "json_object": "json_object"}[kind]  # fmt: skip
        message = _NATIVE_PREFIX.sub("", str(exc).strip()).strip()
        raise ValueError(f"structured_outputs.{kind} is not a valid {what}: {message}") from exc


def choice_grammar(choices: Sequence[str]) -> str:
    """EBNF whose only sentences are the choices (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def apply_grammar_bitmask(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """Set each constrained row's forbidden tokens to -inf, in place; returns `logits`.

    The bitmask has 32 tokens per int32 word (bit set = allowed); only the constrained
    requests' rows are filled and applied: the other rows of the batch are not touched."""
    rows = [i for i, r in enumerate(requests) if r.grammar is not None]
    if not rows:
        return logits
    import torch
    import xgrammar as xgr

    vocab = logits.shape[-1]
    # Free rows stay all-ones (and are skipped by `indices`): only constrained rows are filled.
    bitmask = torch.full((len(requests), (vocab + 31) // 32), -1, dtype=torch.int32)
    for i in rows:
        requests[i].grammar.fill(bitmask, i)
    # xgrammar's kernel (CPU, or CUDA/Triton): in place, ~2x a torch unpack + masked_fill here.
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True),
                                    vocab_size=vocab, indices=rows)  # fmt: skip
    return logits


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, words] int32 -> [rows, vocab] bool (bit b of word w = token 32 w + b)."""
    import torch

    shifts = torch.arange(32, dtype=torch.int32)
    bits = (bitmask[:, :, None] >> shifts) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab].bool()


def advance_grammars(requests: Sequence[Request]) -> list[Request]:
    """Each constrained request's matcher accepts its newest token. Returns the requests
    still running that must end now: their grammar is complete (a stop token accepted while
    EOS is ignored), or it refused the token (min_tokens or a bias forced it; never when the
    bitmask was the last word)."""
    ended = []
    for request in requests:
        grammar = request.grammar
        if grammar is None or grammar.is_terminated:
            continue
        token = request.output_token_ids[-1]
        if not grammar.accept(token):
            log.warning("request %s: token %d is outside its grammar; ending it",
                        request.request_id, token)  # fmt: skip
            ended.append(request)
        elif grammar.is_terminated:
            ended.append(request)
    return [r for r in ended if not r.is_finished]
