"""Schemathesis fuzzes the server through its own OpenAPI schema (/openapi.json): valid and
invalid requests for every route, a bounded, deterministic number of each. No answer may
be a 500, and every answer must be one the schema declares (status code, content type,
body schema, headers)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_headers_conformance,
    response_schema_conformance, status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

from engine import EngineConfig
from engine.async_engine import AsyncEngine
from engine.server import start_server

# Every route the server has: a new one fails test_the_schema_lists_every_route until it
# is added here, and so fuzzed.
OPERATIONS = [
    "GET /health", "GET /metrics", "GET /version", "POST /tokenize", "POST /detokenize",
    "GET /v1/models", "GET /v1/models/{model_id}", "POST /v1/chat/completions",
    "POST /v1/completions",
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
EXAMPLES = 75  # per route and generation mode (valid, invalid): ~2 minutes in all on 2 cores
MAX_MODEL_LEN = 64  # short contexts: a fuzzed request never generates for long


@pytest.fixture(scope="module")
def fuzz_server(random_llama):
    engine = AsyncEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32",
                                      block_size=8, max_model_len=MAX_MODEL_LEN))
    try:
        with start_server(engine, port=0) as handle:
            yield handle
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    served = httpx.get(f"{fuzz_server.url}/openapi.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    schema = schemathesis.openapi.from_dict(served.json())
    schema.config.update(base_url=fuzz_server.url)
    return schema


def test_the_schema_lists_every_route_and_its_errors(api_schema, fuzz_server):
    labels = [result.ok().label for result in api_schema.get_all_operations()]
    assert sorted(labels) == sorted(OPERATIONS)
    document = httpx.get(f"{fuzz_server.url}/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            # A body that does not validate is a 400 here (as OpenAI and vLLM), never a 422.
            assert {"200", "400", "413"} <= codes and "422" not in codes, (method, path, codes)
            assert (path.startswith("/v1/")) == ("401" in codes), (method, path, codes)


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzzed_requests_get_declared_answers(api_schema, fuzz_server, label):
    operation = api_schema.find_operation_by_label(label)
    findings: dict[tuple[int, str], str] = {}  # (status, failure) -> the first request showing it
    statuses: Counter[int] = Counter()

    @settings(max_examples=2 * EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE)))
    def fuzz(case):
        response = case.call(timeout=60)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as failure:
            for one in getattr(failure, "exceptions", [failure]):
                key = (response.status_code, f"{one.code} {one.title}")
                findings.setdefault(key, f"{case.as_curl_command()}\n    {one.message[:600]}")

    fuzz()
    print(f"{label}: answers by status {dict(statuses)}")
    report = [f"{status} {kind}: {example}" for (status, kind), example in findings.items()]
    assert not report, f"{label} answered {dict(statuses)}; not as declared:\n" + "\n".join(report)
    assert sum(statuses.values()) >= 1
    assert httpx.get(f"{fuzz_server.url}/health").status_code == 200
