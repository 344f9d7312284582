"""A request's structured-output fields -> the engine's StructuredOutputsParams (vLLM's).

Three ways to ask, as vLLM's server takes them:
- `response_format`: OpenAI's `{"type": "json_object"}` and `{"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}` ("text" asks for nothing);
- vLLM's `structured_outputs`: `{"json" | "regex" | "choice" | "grammar" | "json_object": ...}`;
- vLLM's older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`, which
  vLLM maps to structured_outputs (before it renamed them), and so does this server.
They merge as in vLLM (response_format overrides structured_outputs' kind); more than one
kind in the end is a 400. Options this server does not implement (structural tags, other
grammar backends, whitespace control) are refused with a 400 "X is not supported". A spec
that does not compile is a 400 naming the field it came from.
"""

from __future__ import annotations

from typing import Any

from engine.server.errors import APIError, unsupported
from engine.structured_outputs import StructuredOutputsParams, check_structured_outputs

_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
           "guided_grammar": "grammar"}  # fmt: skip
# structured_outputs' other options (vLLM's) -> the values that change nothing
_HARMLESS_OPTIONS = {"disable_any_whitespace": (None, False), "disable_additional_properties": (None, False),
                     "whitespace_pattern": (None,), "structural_tag": (None,), "disable_fallback": (None, False)}  # fmt: skip
# The grammar engine behind "auto" is xgrammar: asking for it by name is honoured too.
_BACKENDS = (None, "auto", "xgrammar")


def structured_outputs_of(request: Any) -> StructuredOutputsParams | None:
    """The request's StructuredOutputsParams, or None if it asks for free text."""
    _refuse_unsupported(request)
    spec, source = _guided(request)
    if request.structured_outputs is not None:
        spec.update(_structured_outputs(request.structured_outputs))
        source = "structured_outputs"
    overrides = _response_format(getattr(request, "response_format", None))
    if overrides:
        spec.update(overrides)
        source = "response_format"
    if not spec:
        return None
    try:
        params = StructuredOutputsParams(**spec)
        check_structured_outputs(params)
    except ValueError as exc:
        raise APIError(f"{source}: {exc}", param=source) from exc
    return params


def _refuse_unsupported(request: Any) -> None:
    backend = request.guided_decoding_backend
    if backend not in _BACKENDS:
        raise unsupported("guided_decoding_backend", f"guided_decoding_backend={backend!r} (only auto, xgrammar)")
    if request.guided_whitespace_pattern is not None:
        raise unsupported("guided_whitespace_pattern", "guided_whitespace_pattern")


def _guided(request: Any) -> tuple[dict[str, Any], str]:
    spec, source = {}, ""
    for field, kind in _GUIDED.items():
        value = getattr(request, field)
        if value is not None:
            spec[kind] = value
            source = source or field
    return spec, source


def _structured_outputs(value: dict[str, Any]) -> dict[str, Any]:
    unknown = [k for k in value if k not in _KINDS and k not in _HARMLESS_OPTIONS]
    if unknown:
        raise APIError(f"structured_outputs has unknown fields: {', '.join(map(str, unknown))}",
                       param="structured_outputs")
    for name, harmless in _HARMLESS_OPTIONS.items():
        if name in value and value[name] not in harmless:
            raise unsupported(f"structured_outputs.{name}", f"structured_outputs.{name}")
    return {k: v for k, v in value.items() if k in _KINDS and v is not None}


def _response_format(response_format: Any) -> dict[str, Any]:
    if response_format is None:
        return {}
    if not isinstance(response_format, dict):
        raise APIError("response_format must be an object with a type", param="response_format")
    kind = response_format.get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        return {"json": _json_schema(response_format.get("json_schema"))}
    if kind == "structural_tag":
        raise unsupported("response_format", "response_format 'structural_tag'")
    raise APIError(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                   param="response_format")


def _json_schema(json_schema: Any) -> Any:
    # OpenAI's shape: {"name", "description", "schema", "strict"}; `schema` is the constraint.
    if not isinstance(json_schema, dict) or json_schema.get("schema") is None:
        raise APIError("response_format json_schema needs json_schema.schema (the JSON schema)",
                       param="response_format")
    schema = json_schema["schema"]
    if not isinstance(schema, dict):
        raise APIError("response_format json_schema.schema must be a JSON object",
                       param="response_format")
    return schema
