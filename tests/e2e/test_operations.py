"""What an operator checks: every service is healthy and its metrics count the traffic it handled."""

from __future__ import annotations

import re

import httpx

from tests.e2e.platform import TINY_MODEL, Platform


def metric_total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} ([0-9.e+-]+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_every_service_is_healthy_and_counts_its_kafka_traffic(platform: Platform) -> None:
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": TINY_MODEL, "messages": [{"role": "user", "content": "count me"}], "max_tokens": 4},
        headers=platform.auth,
        timeout=60,
    )
    assert response.status_code == 200

    topics = platform.common.topics
    ports = {s.name: s.port for s in platform.services}
    for name, port in ports.items():
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code < 300, name

    def metrics(name: str) -> str:
        return httpx.get(f"http://127.0.0.1:{ports[name]}/metrics", timeout=5).text

    published = "faststream_published_messages_total"
    received = "faststream_received_messages_total"
    assert metric_total(metrics("ingress"), published, destination=topics.requests(TINY_MODEL)) >= 1
    ingress = metrics("ingress")
    assert metric_total(ingress, "ferry_ingress_responses_total", route="/v1/chat/completions", status="200") >= 1
    assert metric_total(ingress, "ferry_ingress_time_to_first_event_seconds_count", model=TINY_MODEL) >= 1
    assert metric_total(ingress, "ferry_ingress_tokens_total", model=TINY_MODEL, kind="completion") >= 1
    assert metric_total(metrics("batcher"), "ferry_batcher_received_total", model=TINY_MODEL) >= 1
    assert metric_total(metrics("batcher"), published, destination=topics.batches(TINY_MODEL)) >= 1
    worker = metrics(f"worker-{TINY_MODEL}")
    assert metric_total(worker, received, app_name="ferry-worker") >= 1
    assert metric_total(worker, published, app_name="ferry-worker") >= 1


def test_every_service_keeps_its_start_up_heap_out_of_garbage_collections(platform: Platform) -> None:
    """A full collection stops a process's event loop for as long as it walks the heap: hundreds of milliseconds over
    what vLLM, torch and the classifiers leave. Each service freezes what its start-up made and reports the pauses."""
    for service in platform.services:
        text = httpx.get(f"http://127.0.0.1:{service.port}/metrics", timeout=5).text
        frozen = re.search(r"^ferry_gc_frozen_objects ([0-9.e+]+)$", text, re.MULTILINE)
        assert frozen is not None and float(frozen.group(1)) > 50_000, service.name
        assert 'ferry_gc_pause_seconds_count{generation="2"}' in text, service.name


def test_ingress_forgets_finished_and_failed_requests(platform: Platform) -> None:
    too_long = " ".join(["serendipitous"] * 3000)
    for content, status in (("hi", 200), (too_long, 400)):
        response = httpx.post(
            f"{platform.base_url}/v1/chat/completions",
            json={"model": TINY_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4},
            headers=platform.auth,
            timeout=60,
        )
        assert response.status_code == status
    health = httpx.get(f"{platform.base_url}/health", timeout=5).json()
    assert health["requests_waiting"] == 0
