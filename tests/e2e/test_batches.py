"""OpenAI's Files and Batch APIs through the whole platform, with the official client: a file of requests is run as a
batch, its answers and failures read back from its output and error files; a bad file fails the batch; a cancel
stops it; a batch outlives the ingress instance running it; only a tenant that keeps text, and only its own."""

from __future__ import annotations

import json
import signal
import time
import uuid

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from openai.types import Batch

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform, start_extra_ingress, stop_service
from tests.e2e.test_operations import metric_total
from tests.e2e.test_responses import QUESTION
from tests.e2e.test_tenants import away_from_a_minute_boundary, chat

ENDED = ("completed", "failed", "expired", "cancelled")


def keeper(platform: Platform, tenant: str, base_url: str | None = None) -> OpenAI:
    return OpenAI(
        base_url=base_url or f"{platform.base_url}/v1",
        api_key=platform.new_tenant(tenant, "--retention-days", "1"),
        max_retries=0,
        timeout=120,
    )


def jsonl(*requests: dict[str, object]) -> bytes:
    return "".join(json.dumps(request) + "\n" for request in requests).encode()


def chat_line(custom_id: str, **body: object) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def ended(openai: OpenAI, batch_id: str, timeout_s: float = 240) -> Batch:
    """Polls a batch until it ends, as a client of the Batch API does."""
    deadline = time.monotonic() + timeout_s
    while (batch := openai.batches.retrieve(batch_id)).status not in ENDED:
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.5)
    return batch


def lines_of(openai: OpenAI, file_id: str | None) -> dict[str, dict]:
    """A batch output or error file's lines, by custom_id."""
    assert file_id is not None
    return {line["custom_id"]: line for line in map(json.loads, openai.files.content(file_id).text.splitlines())}


def test_a_batch_runs_a_file_of_requests_into_its_output_and_error_files(platform: Platform) -> None:
    openai = keeper(platform, "batches")
    asked = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24}
    content = jsonl(
        chat_line("paris", **asked, temperature=0),
        chat_line("too-hot", **asked, temperature=5),  # refused as over HTTP: a 400 in the error file
        chat_line("unknown-model", **asked | {"model": "no-such-model"}),
        {"custom_id": "text", "method": "POST", "url": "/v1/completions", "body": {}},  # another endpoint
    )
    mixed = openai.files.create(file=("requests.jsonl", content), purpose="batch")
    refused = openai.batches.create(input_file_id=mixed.id, endpoint="/v1/chat/completions", completion_window="24h")
    failed = ended(openai, refused.id)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data
    assert [(e.code, e.line, e.param) for e in failed.errors.data] == [("mismatched_endpoint", 4, "url")]

    upload = openai.files.create(file=("requests.jsonl", b"\n".join(content.splitlines()[:3])), purpose="batch")
    assert (upload.purpose, upload.bytes, upload.status) == (
        "batch",
        len(b"\n".join(content.splitlines()[:3])),
        "processed",
    )
    assert openai.files.retrieve(upload.id).filename == "requests.jsonl"
    assert upload.id in {f.id for f in openai.files.list(purpose="batch")}
    batch = openai.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "capitals"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "capitals"}
    done = ended(openai, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 1, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert batch.id in {b.id for b in openai.batches.list()}
    with pytest.raises(BadRequestError):
        openai.batches.cancel(batch.id)  # it ended

    output = lines_of(openai, done.output_file_id)
    assert list(output) == ["paris"]
    answer = output["paris"]["response"]
    assert answer["status_code"] == 200 and answer["request_id"].startswith("chatcmpl-")
    chat = openai.chat.completions.create(**asked, temperature=0)  # type: ignore[call-overload]
    assert answer["body"]["choices"][0]["message"]["content"] == chat.choices[0].message.content
    assert "Paris" in chat.choices[0].message.content
    usage = answer["body"]["usage"]
    assert done.usage is not None  # the batch adds up its answers' usage
    assert (done.usage.input_tokens, done.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])

    errors = lines_of(openai, done.error_file_id)
    assert errors["too-hot"]["response"]["status_code"] == 400
    assert errors["too-hot"]["response"]["body"]["error"]["param"] == "temperature"
    assert errors["unknown-model"]["response"]["status_code"] == 404
    assert errors["unknown-model"]["response"]["body"]["error"]["code"] == "model_not_found"

    openai.files.delete(upload.id)
    with pytest.raises(NotFoundError):
        openai.files.retrieve(upload.id)


def test_a_cancelled_batch_stops_its_requests_and_keeps_what_ended(platform: Platform) -> None:
    openai = keeper(platform, "batches-cancelled")
    long = {"model": DEFAULT_MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}
    requests = [
        {"custom_id": f"story-{k}", "method": "POST", "url": "/v1/completions", "body": long} for k in range(40)
    ]
    before = httpx.get(f"{platform.base_url}/metrics", timeout=10).text
    upload = openai.files.create(file=("stories.jsonl", jsonl(*requests)), purpose="batch")
    batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while openai.batches.retrieve(batch.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1)  # its first requests generate
    cancelling = openai.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = ended(openai, batch.id, timeout_s=60)
    assert done.status == "cancelled" and done.cancelled_at and done.request_counts is not None
    assert done.request_counts.total == 40
    # none of SmolLM2's 1,500-token answers ends in the seconds this took: the requests in flight were stopped
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 40) and done.output_file_id is None
    errors = lines_of(openai, done.error_file_id)
    assert sorted(errors) == sorted(r["custom_id"] for r in requests)
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
    assert openai.batches.cancel(batch.id).status == "cancelled"  # cancelling it again changes nothing
    after = httpx.get(f"{platform.base_url}/metrics", timeout=10).text
    for name, labels, added in (
        ("ferry_ingress_batch_requests_total", {"outcome": "not_run"}, 40),
        ("ferry_ingress_batches_ended_total", {"status": "cancelled"}, 1),
    ):
        assert metric_total(after, name, **labels) - metric_total(before, name, **labels) == added, name


@pytest.mark.parametrize("stop", ["SIGKILL"])
def test_a_batch_outlives_the_ingress_running_it(platform: Platform, stop: str) -> None:
    """The instance running a batch dies while its requests run; another instance takes the batch over and runs the
    requests that had no answer, once each in the output file."""
    extra = start_extra_ingress(platform, f"batches-{stop.lower()}")
    try:
        via_extra = keeper(platform, "batches-handover", f"http://127.0.0.1:{extra.port}/v1")
        counting = {"model": TINY_MODEL, "prompt": "one two three", "max_tokens": 64, "temperature": 0}
        requests = [
            {"custom_id": f"count-{k}", "method": "POST", "url": "/v1/completions", "body": counting} for k in range(48)
        ]
        upload = via_extra.files.create(file=("counts.jsonl", jsonl(*requests)), purpose="batch")
        batch = via_extra.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while (progress := via_extra.batches.retrieve(batch.id)).request_counts.completed < 4:  # type: ignore[union-attr]
            assert time.monotonic() < deadline and progress.status in ("validating", "in_progress"), progress
            time.sleep(0.1)
        assert extra.process is not None
        extra.process.send_signal(getattr(signal, stop))
        extra.process.wait(timeout=60)
    finally:
        stop_service(extra)
    via_session = OpenAI(base_url=f"{platform.base_url}/v1", api_key=via_extra.api_key, max_retries=0, timeout=60)
    done = ended(via_session, batch.id)
    assert done.status == "completed" and done.request_counts is not None, done
    assert (done.request_counts.completed, done.request_counts.failed) == (48, 0)
    output = via_session.files.content(done.output_file_id or "").text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(r["custom_id"] for r in requests)
    texts = {json.loads(line)["response"]["body"]["choices"][0]["text"] for line in output}
    assert len(texts) == 1  # one greedy answer, whichever instance ran it
    assert f"batch {batch.id} taken over from instance" in platform.log("ingress")


def test_files_and_batches_are_the_tenants_own_and_need_retention(platform: Platform) -> None:
    openai = keeper(platform, "batches-owner")
    upload = openai.files.create(
        file=("one.jsonl", jsonl(chat_line("a", model=TINY_MODEL, messages=[]))), purpose="batch"
    )
    other = keeper(platform, "batches-other")
    with pytest.raises(NotFoundError):
        other.files.retrieve(upload.id)
    with pytest.raises(NotFoundError):
        other.files.content(upload.id)
    with pytest.raises(NotFoundError):
        other.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert upload.id not in {f.id for f in other.files.list()}
    batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(NotFoundError):
        other.batches.cancel(batch.id)
    no_text = OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0)
    with pytest.raises(BadRequestError) as refused:
        no_text.files.create(file=("one.jsonl", b"{}\n"), purpose="batch")
    assert refused.value.body["param"] == "file"  # type: ignore[index]
    with pytest.raises(BadRequestError) as wrong_purpose:
        kept = openai.files.create(file=("notes.txt", b"notes"), purpose="user_data")
        openai.batches.create(input_file_id=kept.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert wrong_purpose.value.body["param"] == "input_file_id"  # type: ignore[index]
    with pytest.raises(BadRequestError) as not_storable:  # PostgreSQL's jsonb cannot hold U+0000
        openai.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"note": "a\u0000b"},
        )
    assert not_storable.value.body["param"] == "metadata"  # type: ignore[index]
    for read in (openai.files.retrieve, openai.batches.retrieve, openai.responses.retrieve):
        with pytest.raises(BadRequestError):  # no id holds it: a 400, not a 500
            read("id-\u0000")
    twice = openai.files.create(file=("twice.jsonl", jsonl(*[chat_line("a\u0000b")] * 2)), purpose="batch")
    failed = openai.batches.create(input_file_id=twice.id, endpoint="/v1/chat/completions", completion_window="24h")
    ended_failed = ended(openai, failed.id, timeout_s=60)
    assert ended_failed.status == "failed" and ended_failed.errors and ended_failed.errors.data
    assert [(e.code, e.line) for e in ended_failed.errors.data] == [("duplicate_custom_id", 2)]


def test_a_batch_waits_out_its_tenants_rate_limit_rather_than_fail_requests(platform: Platform) -> None:
    """A batch's requests count against its tenant's limits (half of each: FERRY_INGRESS_BATCH_LIMIT_SHARE), as over
    HTTP; a 429 is waited out (its Retry-After)."""
    openai = OpenAI(
        base_url=f"{platform.base_url}/v1",
        api_key=platform.new_tenant("batches-limited", "--retention-days", "1", "--rpm", "4"),
        max_retries=0,
        timeout=120,
    )
    asked = {"model": TINY_MODEL, "prompt": "one two", "max_tokens": 4}
    requests = [{"custom_id": str(k), "method": "POST", "url": "/v1/completions", "body": asked} for k in range(3)]
    upload = openai.files.create(file=("limited.jsonl", jsonl(*requests)), purpose="batch")
    started = time.monotonic()
    batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    done = ended(openai, batch.id, timeout_s=180)
    assert done.status == "completed" and done.request_counts is not None, done
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    assert time.monotonic() - started > 5  # the third waited for the tenant's minute to free a request


def test_a_running_batch_leaves_its_tenant_the_rest_of_each_minute(platform: Platform) -> None:
    """A batch's requests may use half of each per-minute limit (FERRY_INGRESS_BATCH_LIMIT_SHARE): with 4 requests a
    minute, a batch of 5 runs 2 and waits, and the tenant's own requests still get the other 2."""
    key = platform.new_tenant(f"batches-share-{uuid.uuid4().hex[:6]}", "--retention-days", "1", "--rpm", "4")
    openai = OpenAI(base_url=f"{platform.base_url}/v1", api_key=key, max_retries=0, timeout=120)
    asked = {"model": TINY_MODEL, "prompt": "one two", "max_tokens": 4}
    requests = [{"custom_id": str(k), "method": "POST", "url": "/v1/completions", "body": asked} for k in range(5)]
    upload = openai.files.create(file=("share.jsonl", jsonl(*requests)), purpose="batch")
    away_from_a_minute_boundary()
    batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while (counts := openai.batches.retrieve(batch.id).request_counts) is None or counts.completed < 2:
        assert time.monotonic() < deadline, counts
        time.sleep(0.5)
    time.sleep(2)  # its third request was refused; it waits out the Retry-After
    counts = openai.batches.retrieve(batch.id).request_counts
    assert counts is not None and counts.completed == 2, counts  # the old code ran 4, the whole limit
    assert [chat(platform, key).status_code for _ in range(2)] == [200, 200]
    openai.batches.cancel(batch.id)


def test_a_batch_past_its_window_expires_with_the_answers_it_has(platform: Platform) -> None:
    """An instance whose batches have 20 s (FERRY_INGRESS_BATCH_WINDOW_S; 24 h by default): the short requests are
    answered, the long ones are stopped when it expires and are in its error file as batch_expired. (The short one
    passes screening, the batcher and the worker beside the long one on two busy cores; 1,500 tokens of SmolLM2 on
    this CPU take over a minute.)"""
    extra = start_extra_ingress(platform, "batches-window", {"FERRY_INGRESS_BATCH_WINDOW_S": "20"})
    try:
        openai = keeper(platform, "batches-window", f"http://127.0.0.1:{extra.port}/v1")
        short = {"model": TINY_MODEL, "prompt": "one two", "max_tokens": 4}
        long = {"model": DEFAULT_MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}
        requests = [
            {"custom_id": "short", "method": "POST", "url": "/v1/completions", "body": short},
            {"custom_id": "long", "method": "POST", "url": "/v1/completions", "body": long},
        ]
        upload = openai.files.create(file=("window.jsonl", jsonl(*requests)), purpose="batch")
        batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
        assert batch.expires_at is not None and batch.expires_at - batch.created_at == 20
        done = ended(openai, batch.id, timeout_s=90)
        assert done.status == "expired" and done.expired_at and done.request_counts is not None, done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2, 1, 1)
        assert list(lines_of(openai, done.output_file_id)) == ["short"]
        assert lines_of(openai, done.error_file_id)["long"]["error"]["code"] == "batch_expired"
    finally:
        stop_service(extra)


def test_a_batch_of_responses_api_requests_answers_each_with_a_response_object(platform: Platform) -> None:
    openai = keeper(platform, "batches-responses")
    asked = {"model": TINY_MODEL, "input": "hi", "max_output_tokens": 4, "store": False}
    requests = [{"custom_id": str(k), "method": "POST", "url": "/v1/responses", "body": asked} for k in range(2)]
    upload = openai.files.create(file=("responses.jsonl", jsonl(*requests)), purpose="batch")
    batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    done = ended(openai, batch.id, timeout_s=120)
    assert done.status == "completed" and done.request_counts is not None, done
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
    output = lines_of(openai, done.output_file_id)
    generated = []
    for line in output.values():  # a response's error is null: once that read as a refusal and failed the batch
        body = line["response"]["body"]
        assert body["object"] == "response" and body["error"] is None
        generated.append(body["usage"]["output_tokens"])
    # The tiny model samples at temperature 1 and may end before its 4 tokens; the batch's usage sums its responses'.
    assert len(generated) == 2 and all(1 <= count <= 4 for count in generated), generated
    assert done.usage is not None and done.usage.output_tokens == sum(generated)
