"""Schemathesis against every service's OpenAPI, with the real models: no 5xx, and every status,
content type and body as documented. A fixed seed and 15 s per service; bench/fuzz.py
runs the same checks long (bench/results/fuzz.md)."""

from __future__ import annotations

import pytest

from rvchat_common.testing import run_schemathesis

pytestmark = pytest.mark.models

# Per service: the suite stays under its 20 minutes (22:30 with 40 s, 19:39 with 30 s, 19:44-20:19 with 25 s,
# 20:54 with 20 s and newer tests, on a slower 2-core CPU); at 15 s the slowest, the LLM, still generated 176
# requests (50 wanted) and every service passed.
BUDGET_S = 15


@pytest.mark.parametrize("fixture", ["vad_service", "stt_service", "tts_service", "llm_service",
                                     "app_service"])
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(request, fixture):
    service = request.getfixturevalue(fixture)
    result = run_schemathesis(service.url, max_examples=25, max_time_s=BUDGET_S)
    assert result["generated"] >= 50, result["output_tail"]
    assert result["unique_failures"] == 0 and result["errored"] == 0, result["output_tail"]
    assert result["exit_code"] == 0, result["output_tail"]
    assert service.alive()
