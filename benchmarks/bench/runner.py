"""Drives an OpenAI-compatible endpoint: sends each request at its arrival time (under an optional concurrency cap),
streams the answer and timestamps every content chunk, as vLLM's `bench serve` does."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from benchmarks.bench.metrics import RequestResult
from benchmarks.bench.prompts import BenchRequest


@dataclass(frozen=True)
class Target:
    """An OpenAI-compatible endpoint serving ``model``; ``base_url`` ends in /v1."""

    name: str
    base_url: str
    model: str
    api_key: str = "bench"
    pid: int | None = None  # the serving process, when this benchmark started it (for its CPU time)


async def send(client: httpx.AsyncClient, target: Target, request: BenchRequest, timeout_s: float) -> RequestResult:
    body = {
        "model": target.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.monotonic()
    chunk_times: list[float] = []
    usage: dict[str, int] = {}

    def failed(reason: str) -> RequestResult:
        return RequestResult(False, started, time.monotonic(), chunk_times, error=reason)

    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST",
                f"{target.base_url}/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {target.api_key}"},
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    return failed(f"http {response.status_code}")
                cache_status = response.headers.get("x-ferry-cache")
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        return failed(f"stream error {chunk['error'].get('code') or chunk['error'].get('type')}")
                    delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
                    if delta.get("content") or delta.get("reasoning"):  # a reasoning model's thinking is output too
                        chunk_times.append(time.monotonic())
                    if chunk.get("usage"):
                        usage = chunk["usage"]
    except TimeoutError:
        return failed("timeout")
    except httpx.ConnectError:
        return failed("connection refused")
    except httpx.HTTPError as exc:
        return failed(type(exc).__name__)
    if not chunk_times:
        return failed("no content streamed")
    return RequestResult(
        True,
        started,
        time.monotonic(),
        chunk_times,
        prompt_tokens=usage.get("prompt_tokens", 0),
        output_tokens=usage.get("completion_tokens", 0),
        cache=cache_status,
    )


Send = Callable[[BenchRequest], Awaitable[RequestResult]]


@dataclass(frozen=True)
class Load:
    """What every target is given: the same requests, sent at the same offsets, under the same cap."""

    requests: list[BenchRequest]
    offsets: list[float]
    concurrency: int | None
    timeout_s: float = 300
    show_progress: bool = True


async def drive(name: str, send_one: Send, load: Load) -> tuple[list[RequestResult], float, float]:
    """Sends each request at its offset (under the concurrency cap) through ``send_one``, whatever the target is;
    returns the results (in request order), the start instant and the duration in seconds."""
    requests = load.requests
    cap = asyncio.Semaphore(load.concurrency) if load.concurrency else None
    done = 0
    start = time.monotonic()

    async def one(request: BenchRequest, offset: float) -> RequestResult:
        nonlocal done
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        if cap:
            async with cap:
                result = await send_one(request)
        else:
            result = await send_one(request)
        done += 1
        return result

    async def progress() -> None:
        while True:
            print(f"\r{name}: {done}/{len(requests)} requests", end="", file=sys.stderr, flush=True)
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(progress()) if load.show_progress else None
    try:
        results = await asyncio.gather(*(one(r, o) for r, o in zip(requests, load.offsets, strict=True)))
    finally:
        if reporter:
            reporter.cancel()
            print(f"\r{name}: {done}/{len(requests)} requests", file=sys.stderr)
    return list(results), start, time.monotonic() - start


async def run(target: Target, load: Load) -> tuple[list[RequestResult], float, float]:
    """Runs the benchmark against an HTTP target (see ``drive``)."""
    connections = max(load.concurrency or len(load.requests), 1)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def send_one(request: BenchRequest) -> RequestResult:
            return await send(client, target, request, load.timeout_s)

        return await drive(target.name, send_one, load)
