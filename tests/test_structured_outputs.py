"""Structured outputs in the engine: what comes out matches the schema, regex, choice or
grammar, checked by independent judges (json + jsonschema, re.fullmatch, membership), and
the bitmask leaves the batch's free rows alone. The bundled SmolLM2, one engine per module."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from engine import SamplingParams, StructuredOutputsParams
from engine.request import Request
from engine.structured_outputs import GrammarCompiler, apply_grammar_bitmask, unpack_bitmask

pytestmark = pytest.mark.slow

# Nested objects, enums and arrays (of strings and of objects). Lengths are bounded so a
# sampled reply ends well inside max_tokens.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 24},
                "geo": {
                    "type": "object",
                    "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                   "lon": {"type": "number", "minimum": -180, "maximum": 180}},
                    "required": ["lat", "lon"],
                    "additionalProperties": False,
                },
            },
            "required": ["city", "geo"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "pets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]},
                               "age": {"type": "integer", "minimum": 0, "maximum": 30}},
                "required": ["kind", "age"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 2,
        },
    },
    "required": ["name", "age", "role", "address", "tags", "pets"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine()


def chat(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def run(engine, requests: dict[str, tuple[str, SamplingParams]]) -> dict:
    """Add all, step until done; the final RequestOutput of each."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def so(**spec) -> StructuredOutputsParams:
    return StructuredOutputsParams(**spec)


def test_nested_schema_holds_for_20_seeded_sampled_requests(engine):
    prompt = chat(engine, "Invent a person and describe them as JSON.")
    requests = {
        f"person-{i}": (prompt, SamplingParams(temperature=0.7 + 0.1 * (i % 2), seed=i, max_tokens=256,
                                               structured_outputs=so(json=PERSON)))
        for i in range(20)
    }
    outputs = run(engine, requests)
    assert len(outputs) == 20
    unfinished = {rid: o.outputs[0].text for rid, o in outputs.items() if o.outputs[0].finish_reason != "stop"}
    assert not unfinished
    for out in outputs.values():
        jsonschema.validate(json.loads(out.outputs[0].text), PERSON)
    texts = {out.outputs[0].text for out in outputs.values()}
    assert len(texts) > 1  # sampled with different seeds: not one forced string


def test_regex_choice_grammar_and_a_free_request_share_a_batch(engine):
    free = (chat(engine, "Name a colour."), SamplingParams(temperature=0, max_tokens=12))
    solo = run(engine, {"solo": free})["solo"].outputs[0]
    phone = r"\(\d{3}\) \d{3}-\d{4}"
    choices = ["yes", "no", "it depends"]
    grammar = 'root ::= "<" [a-z]+ ("," [a-z]+)? ">"'
    requests = {
        "regex": (chat(engine, "A phone number?"), SamplingParams(
            temperature=0.9, seed=1, max_tokens=30, structured_outputs=so(regex=phone))),
        "choice": (chat(engine, "Is the sky blue?"), SamplingParams(
            temperature=1.0, seed=2, n=3, max_tokens=10, structured_outputs=so(choice=choices))),
        "choice-greedy-ignore-eos": (chat(engine, "Is water wet?"), SamplingParams(
            temperature=0, max_tokens=10, ignore_eos=True, structured_outputs=so(choice=choices))),
        "grammar": (chat(engine, "Two animals?"), SamplingParams(
            temperature=0.8, seed=3, max_tokens=30, structured_outputs=so(grammar=grammar))),
        "free": free,
    }
    outputs = run(engine, requests)
    reasons = {rid: [c.finish_reason for c in o.outputs] for rid, o in outputs.items() if rid != "free"}
    assert all(r == ["stop"] * len(r) for r in reasons.values()), reasons
    assert re.fullmatch(phone, outputs["regex"].outputs[0].text)
    assert len(outputs["choice"].outputs) == 3
    assert all(c.text in choices for c in outputs["choice"].outputs)
    # EOS ignored: the grammar's end (its stop token accepted) still ends the request.
    assert outputs["choice-greedy-ignore-eos"].outputs[0].text in choices
    assert re.fullmatch(r"<[a-z]+(,[a-z]+)?>", outputs["grammar"].outputs[0].text)
    # Greedy, so the free request's reply in the mixed batch is its reply alone.
    assert outputs["free"].outputs[0].token_ids == solo.token_ids
    assert outputs["free"].outputs[0].text == solo.text


def test_n_samples_each_get_their_own_matcher(engine):
    children = engine.add_request("n3", "Pick:", SamplingParams(n=3, structured_outputs=so(choice=["a", "b"])))
    try:
        matchers = [c.grammar for c in children]
        assert all(m is not None for m in matchers)
        assert len({id(m) for m in matchers}) == 3
    finally:
        engine.abort_request("n3")
        engine.step()


@pytest.mark.parametrize("spec, field", [
    ({"json": {"type": "strnig"}}, "json"),
    ({"json": '{"type": "object", '}, "json"),
    ({"json": {"type": "object", "properties": 5}}, "json"),
    ({"regex": "a(b"}, "regex"),
    ({"grammar": 'root ::= "a" undefined_rule'}, "grammar"),
])
def test_invalid_spec_raises_value_error_at_add_request(engine, spec, field):
    with pytest.raises(ValueError, match=rf"structured_outputs\.{field} is not a valid"):
        engine.add_request("bad", "Hi", SamplingParams(structured_outputs=so(**spec)))
    assert "bad" not in engine.groups and not engine.has_unfinished_requests()


@pytest.mark.parametrize("spec", [{}, {"json": {}, "regex": "a"}, {"choice": ["a"], "json_object": True}])
def test_exactly_one_kind_must_be_set(spec):
    with pytest.raises(ValueError, match="exactly one of json, regex, choice, grammar, json_object"):
        StructuredOutputsParams(**spec)


def test_bitmask_masks_only_the_constrained_rows(engine):
    tokenizer = engine.tokenizer
    vocab = engine.loaded.hf_config.vocab_size
    compiler = GrammarCompiler(tokenizer, vocab, [tokenizer.eos_token_id])
    choices = ["yes", "no"]
    rows = [_request(None), _request(compiler, choices), _request(None)]
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    masked = apply_grammar_bitmask(logits.clone(), rows)
    assert torch.equal(masked[0], logits[0]) and torch.equal(masked[2], logits[2])
    # The reference: a first token is allowed iff its text starts one of the choices.
    allowed = {t for t in range(len(tokenizer)) if _starts_a_choice(tokenizer.decode([t]), choices)}
    kept = set(torch.nonzero(masked[1] > float("-inf")).flatten().tolist())
    assert kept == allowed
    assert torch.equal(masked[1][sorted(kept)], logits[1][sorted(kept)])


def test_eos_is_allowed_exactly_where_the_grammar_can_end(engine):
    tokenizer = engine.tokenizer
    vocab = engine.loaded.hf_config.vocab_size
    eos = tokenizer.eos_token_id
    compiler = GrammarCompiler(tokenizer, vocab, [eos])
    matcher = compiler.matcher(compiler.compile(so(choice=["yes", "yes please"])))
    bitmask = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)
    matcher.fill(bitmask, 0)
    assert not unpack_bitmask(bitmask, vocab)[0, eos]  # nothing generated yet: cannot end
    for token in tokenizer.encode("yes", add_special_tokens=False):
        assert matcher.accept(token)
    matcher.fill(bitmask, 0)
    can_follow = unpack_bitmask(bitmask, vocab)[0]
    assert can_follow[eos]  # "yes" is complete
    assert can_follow[tokenizer.encode(" please", add_special_tokens=False)[0]]  # or go on
    for token in tokenizer.encode(" please", add_special_tokens=False):
        assert matcher.accept(token)
    matcher.fill(bitmask, 0)
    assert torch.nonzero(unpack_bitmask(bitmask, vocab)[0]).flatten().tolist() == [eos]


def test_preempted_requests_keep_their_matcher_state(make_engine):
    # 6 blocks of 16 tokens for four requests of ~40 tokens (3 blocks) each: some are
    # preempted and recomputed midway; their matcher must go on from the tokens it already
    # accepted (a matcher restarted at preemption would begin the pattern again).
    engine = make_engine(num_kv_blocks=6, block_size=16)
    pattern = r"[0-9]{3}(-[0-9]{3}){8}"
    requests = {
        f"p{i}": ("Numbers: ", SamplingParams(temperature=0.9, seed=i, max_tokens=60,
                                              structured_outputs=so(regex=pattern)))
        for i in range(4)
    }
    outputs = run(engine, requests)
    assert sum(s.num_preemptions for s in engine.stats_history) > 0
    for out in outputs.values():
        assert out.outputs[0].finish_reason == "stop"
        assert re.fullmatch(pattern, out.outputs[0].text), out.outputs[0].text


def _request(compiler, choices=None) -> Request:
    request = Request("r", [1], SamplingParams(), arrival_time=0.0)
    if compiler is not None:
        request.grammar = compiler.matcher(compiler.compile(so(choice=choices)))
    return request


def _starts_a_choice(text: str, choices: list[str]) -> bool:
    return bool(text) and any(c.startswith(text) for c in choices)
