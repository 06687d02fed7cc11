"""A chat completion through every hop: ingress -> Kafka -> batcher -> worker (vLLM) -> Kafka -> ingress."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
from openai import OpenAI
from transformers import AutoTokenizer

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def prompt_token_count(platform: Platform, model: str, messages: list[dict[str, str]]) -> int:
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / model)
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_openai_client_streams_chunks_one_by_one_with_correct_usage(platform: Platform) -> None:
    started = time.monotonic()
    stream = client(platform).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=QUESTION,
        stream=True,
        max_tokens=48,
        temperature=0,
        stream_options={"include_usage": True},
    )
    arrivals, pieces, finish_reasons, usage = [], [], [], None
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                arrivals.append(time.monotonic() - started)
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
        if chunk.usage:
            usage = chunk.usage

    text = "".join(pieces)
    assert text.strip(), "no text streamed"
    assert len(pieces) >= 3, f"expected many chunks, got {len(pieces)}"
    assert arrivals[-1] - arrivals[0] > 0.1, f"chunks arrived together, not streamed: {arrivals}"
    assert finish_reasons in (["stop"], ["length"])
    assert usage is not None, "include_usage asked for a usage chunk"
    assert usage.prompt_tokens == prompt_token_count(platform, DEFAULT_MODEL, QUESTION)
    assert 0 < usage.completion_tokens <= 48
    if finish_reasons == ["length"]:
        assert usage.completion_tokens == 48
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_default_model_knows_the_capital_of_france(platform: Platform) -> None:
    reply = client(platform).chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_tokens=32, temperature=0
    )
    assert reply.object == "chat.completion"
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_stream_ends_with_done_and_request_id_header(platform: Platform) -> None:
    body = {"model": TINY_MODEL, "messages": QUESTION, "stream": True, "max_tokens": 16}
    with httpx.stream(
        "POST", f"{platform.base_url}/v1/chat/completions", json=body, headers=platform.auth, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("chatcmpl-")
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == response.headers["x-request-id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_one_request_is_one_trace_across_every_hop(platform: Platform) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        headers={"traceparent": traceparent} | platform.auth,
        timeout=60,
        json={"model": TINY_MODEL, "messages": QUESTION, "max_tokens": 8},
    )
    assert response.status_code == 200

    services = ("ingress", "batcher", f"worker-{TINY_MODEL}")

    def spans_in_trace() -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {name: [] for name in services}
        for name in services:
            path: Path = platform.traces(name)
            if path.exists():
                for line in path.read_text().splitlines():
                    span = json.loads(line)
                    if span["context"]["trace_id"] == f"0x{trace_id}":
                        found[name].append(span)
        return found

    def names(spans: list[dict]) -> set[str]:
        return {span["name"] for span in spans}

    topics = platform.common.topics
    expected = {
        "ingress": {"ferry.ingress.chat_completions", f"{topics.requests(TINY_MODEL)} publish", "ferry.ingress.reply"},
        "batcher": {"ferry.batcher.dispatch"},
        f"worker-{TINY_MODEL}": {"ferry.worker.generate"},
    }
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = spans_in_trace()
        if all(expected[name] <= names(found[name]) for name in services):
            break
        time.sleep(0.2)
    for name in services:
        assert expected[name] <= names(found[name]), f"{name}: {names(found[name])}"
    # the worker's reply carries its generation's context: the ingress's reply span is a child of the worker's span
    (generate,) = [s for s in found[f"worker-{TINY_MODEL}"] if s["name"] == "ferry.worker.generate"]
    replies = [s for s in found["ingress"] if s["name"] == "ferry.ingress.reply"]
    assert [s["parent_id"] for s in replies] == [generate["context"]["span_id"]], (generate, replies)
