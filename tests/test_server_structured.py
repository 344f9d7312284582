"""Structured outputs through the server, with the official `openai` client: OpenAI's
response_format (json_schema, json_object), vLLM's structured_outputs and its older
guided_* names (extra_body), streamed and not; bad specs are 400s naming the field.

The bundled SmolLM2 serves here (real text, so a JSON reply ends): this module overrides
conftest's `served_engine`; `api_server` and `api_client` are conftest's."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from engine.async_engine import AsyncEngine

pytestmark = pytest.mark.slow

ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "reasons": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 2},
    },
    "required": ["answer", "confidence", "reasons"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]
JSON_SCHEMA_FORMAT = {"type": "json_schema",
                      "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}  # fmt: skip


@pytest.fixture(scope="module")
def served_engine(make_engine):
    engine = AsyncEngine(engine=make_engine())
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def client(api_client):
    return api_client


@pytest.fixture(scope="module")
def model(served_engine):
    return served_engine.model_name


def test_response_format_json_schema(client, model):
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=120,
                                           temperature=0.8, seed=7, response_format=JSON_SCHEMA_FORMAT)  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), ANSWER)


def test_response_format_json_object(client, model):
    reply = client.chat.completions.create(
        model=model, max_tokens=150, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with a JSON object like {"city": "Paris"}.'}],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


def test_streamed_json_schema_reply_is_valid_json(client, model):
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=120, stream=True,
                                            temperature=0.8, seed=8, response_format=JSON_SCHEMA_FORMAT)  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    jsonschema.validate(json.loads(text), ANSWER)


def test_structured_outputs_regex_on_completions_and_choice_on_chat(client, model):
    pattern = r"[A-Z][a-z]{2,8} [0-9]{4}"
    completion = client.completions.create(model=model, prompt="A month and a year:", max_tokens=20,
                                           temperature=0.9, seed=1,
                                           extra_body={"structured_outputs": {"regex": pattern}})  # fmt: skip
    assert re.fullmatch(pattern, completion.choices[0].text)
    choices = ["red", "green", "blue"]
    chat = client.chat.completions.create(model=model, n=2, max_tokens=8, temperature=1.0, seed=2,
                                          messages=[{"role": "user", "content": "A colour?"}],
                                          extra_body={"structured_outputs": {"choice": choices}})  # fmt: skip
    assert [c.message.content in choices for c in chat.choices] == [True, True]
    assert {c.finish_reason for c in chat.choices} == {"stop"}


def test_streamed_choice_with_the_older_guided_name(client, model):
    choices = ["alpha", "beta gamma"]
    stream = client.completions.create(model=model, prompt="Pick one:", max_tokens=8, stream=True,
                                       temperature=0.9, seed=3,
                                       extra_body={"guided_choice": choices, "guided_decoding_backend": "auto"})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) in choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_guided_json_maps_to_a_schema(client, model):
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=120, temperature=0,
                                           extra_body={"guided_json": ANSWER})  # fmt: skip
    jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)


@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"extra_body": {"structured_outputs": {"regex": "a(b"}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"regex": "a", "choice": ["a"]}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"grammar": "root ::= nothing"}}}, "structured_outputs"),
    ({"extra_body": {"guided_json": {"type": "object", "properties": 3}}}, "guided_json"),
])
def test_invalid_specs_are_400s_naming_the_field(client, model, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=5, **fields)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


@pytest.mark.parametrize("extra, param", [
    ({"guided_choice": ["a"], "guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ({"guided_regex": "a+", "guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
    ({"structured_outputs": {"json_object": True, "disable_any_whitespace": True}},
     "structured_outputs.disable_any_whitespace"),
    ({"structured_outputs": {"structural_tag": '{"structures": [], "triggers": []}'}},
     "structured_outputs.structural_tag"),
    ({"response_format": {"type": "structural_tag", "structures": [], "triggers": []}}, "response_format"),
])
def test_unimplemented_options_are_refused_as_not_supported(client, model, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt="Hi", max_tokens=5, extra_body=extra)
    assert caught.value.body["param"] == param
    assert "is not supported" in caught.value.body["message"]
