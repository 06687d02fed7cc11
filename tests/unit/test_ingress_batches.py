"""The Batch API's pure rules: reading an input file, the output and error lines, the batch object's counts, and
which refusals a batch waits out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.ingress.adapters import BatchCounts, StoredBatch
from services.ingress.batches import (
    BatchLine,
    NewBatch,
    answered_line,
    batch_priority,
    batch_view,
    new_batch,
    output_file_id,
    read_lines,
    retry_wait_s,
    unrun_line,
)
from services.ingress.tenants import Tenant

CHAT = "/v1/chat/completions"


def line(custom_id: str, url: str = CHAT, **fields: object) -> str:
    request = {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", "messages": []}}
    return json.dumps(request | fields)


def test_a_file_of_requests_is_read_in_order_and_blank_lines_are_skipped() -> None:
    content = f"{line('a')}\n\n{line('b')}\r\n".encode()
    lines, errors = read_lines(content, CHAT)
    assert errors == []
    assert [(r.line, r.custom_id) for r in lines] == [(1, "a"), (3, "b")]
    assert lines[0].body == {"model": "m", "messages": []}


def test_every_bad_line_is_named_and_fails_the_whole_file() -> None:
    content = "\n".join(
        [
            line("ok"),
            "{not json",
            "[1, 2]",
            line("ok"),  # a duplicate
            line("get", method="GET"),
            line("other", url="/v1/completions"),
            json.dumps({"method": "POST", "url": CHAT, "body": {}}),
            line("streamed", body={"model": "m", "stream": True}),
            line("no-body", body="text"),
        ]
    ).encode()
    lines, errors = read_lines(content, CHAT)
    assert lines == []
    assert [(e["line"], e["code"], e["param"]) for e in errors] == [
        (2, "invalid_json_line", None),
        (3, "invalid_request", None),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "invalid_method", "method"),
        (6, "mismatched_endpoint", "url"),
        (7, "missing_required_parameter", "custom_id"),
        (8, "invalid_value", "body.stream"),
        (9, "invalid_request", "body"),
    ]


def test_a_line_ends_at_a_newline_only_and_its_body_is_read_from_the_file() -> None:
    """JSON Lines: a line separator of Unicode (U+2028) left raw in a string is the string's, not a line's end."""
    content = (line("a", body={"model": "m", "prompt": "one\u2028two"}) + "\n" + line("b")).encode()
    content = content.replace(b"\\u2028", "\u2028".encode())  # raw, as json.dumps(ensure_ascii=False) writes it
    lines, errors = read_lines(content, CHAT)
    assert errors == [] and [(r.line, r.custom_id) for r in lines] == [(1, "a"), (2, "b")]
    assert lines[0].body == {"model": "m", "prompt": "one\u2028two"}


def test_an_empty_file_a_file_too_long_and_one_not_utf8_fail() -> None:
    assert [e["code"] for e in read_lines(b"\n \n", CHAT)[1]] == ["empty_file"]
    three = "\n".join(line(str(k)) for k in range(3)).encode()
    assert [e["code"] for e in read_lines(three, CHAT, max_requests=2)[1]] == ["too_many_requests"]
    assert [e["code"] for e in read_lines(b"\xff\xfe", CHAT)[1]] == ["invalid_file"]


def test_an_answer_goes_to_the_output_file_with_its_usage_and_a_refusal_to_the_error_file() -> None:
    request = BatchLine(3, "q", b"", 0, 0)
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    answered = answered_line(request, 200, "chatcmpl-1", {"usage": usage})
    assert (answered.line, answered.succeeded) == (3, True)
    assert (answered.input_tokens, answered.cached_tokens, answered.output_tokens, answered.reasoning_tokens) == (
        10,
        4,
        5,
        2,
    )
    result = json.loads(answered.result)
    assert result["id"].startswith("batch_req_") and result["custom_id"] == "q" and result["error"] is None
    assert result["response"] == {"status_code": 200, "request_id": "chatcmpl-1", "body": {"usage": usage}}
    responses_usage = {"input_tokens": 7, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1}}
    from_responses = answered_line(request, 200, "resp_1", {"usage": responses_usage})
    assert (from_responses.input_tokens, from_responses.output_tokens, from_responses.reasoning_tokens) == (7, 3, 1)
    refused = answered_line(request, 400, "chatcmpl-2", {"error": {"message": "no"}})
    assert not refused.succeeded and refused.input_tokens == 0
    assert json.loads(refused.result)["response"]["status_code"] == 400
    unrun = json.loads(unrun_line(request, "batch_expired").result)
    assert unrun["response"] is None and unrun["error"]["code"] == "batch_expired"


def test_a_rate_limit_or_the_platform_at_capacity_is_waited_out_and_a_used_up_quota_is_not() -> None:
    def limited(code: str) -> dict[str, object]:
        return {"error": {"code": code}}

    assert retry_wait_s(429, {"retry-after": "7"}, limited("rate_limit_requests")) == 7.0
    assert retry_wait_s(503, {"retry-after": "0"}, limited("model_overloaded")) == 1.0
    assert retry_wait_s(503, {}, "not json") == 1.0
    assert retry_wait_s(429, {"retry-after": "30"}, limited("insufficient_quota")) is None
    assert retry_wait_s(400, {}, limited("invalid_value")) is None
    assert retry_wait_s(200, {}, {}) is None
    assert retry_wait_s(200, {}, {"object": "response", "error": None}) is None  # a response object's error


def test_the_batch_object_counts_its_results_and_adds_their_usage() -> None:
    body = NewBatch(input_file_id="file-1", endpoint=CHAT, completion_window="24h", metadata={"k": "v"})
    created = new_batch("batch_1", body, datetime(2026, 12, 7, tzinfo=UTC), output_expires_after=3600)
    assert created["output_expires_after"] == 3600
    assert created["status"] == "validating" and created["expires_at"] - created["created_at"] == 24 * 3600
    counts = BatchCounts(completed=2, failed=1, input_tokens=30, cached_tokens=8, output_tokens=12, reasoning_tokens=0)
    view = batch_view(StoredBatch("t", created | {"total": 3}, counts, "instance"))
    assert view["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert view["usage"]["total_tokens"] == 42 and view["usage"]["input_tokens_details"] == {"cached_tokens": 8}
    assert "total" not in view and "output_expires_after" not in view
    assert batch_view(StoredBatch("t", created, BatchCounts(), None))["request_counts"]["total"] == 0


def test_output_files_keep_their_ids_across_a_takeover_and_batches_go_at_batch_priority() -> None:
    assert output_file_id("batch_1", "output") == output_file_id("batch_1", "output")
    assert output_file_id("batch_1", "output") != output_file_id("batch_1", "error")
    assert batch_priority(Tenant("t")) == "batch"
    assert batch_priority(Tenant("t", max_priority="best_effort", default_priority="best_effort")) == "best_effort"
