"""OpenAI's Batch API (/v1/batches): a file of requests (/v1/files) run apart at the cost batching profile, within 24
hours; each request's answer goes to the batch's output file, and each failure to its error file.

A batch runs on the ingress instance that created it. It checks the whole input file first: a line that is not a
request fails the batch (``errors`` says which, as OpenAI's does). Then it runs each request through the ingress's own
routes in process (handlers.InProcessApi), so that a line gets what the same request over HTTP would: the same
checks, limits and errors. A rate-limit 429 or a 503 is waited out (its Retry-After) and tried again until the batch
expires; any other answer is the line's result. Results are stored as they come (adapters.BatchStore).

No batch is lost with its instance: the instances beat in Redis (adapters.Liveness, as for background responses);
another one claims a running batch whose instance beats no more and runs the lines that have no result yet (a line
in flight when its instance stopped runs again). A cancel stops the lines in flight; an expired batch keeps the
results it has. The lines not run are in the error file, with batch_cancelled or batch_expired."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingress.adapters import (
    RESULTS_PAGE,
    BatchCounts,
    BatchResult,
    BatchStore,
    FileStore,
    Liveness,
    StoredBatch,
)
from services.ingress.metrics import IngressMetrics
from services.ingress.protocol import STRICT_INPUT
from services.ingress.tenants import PRIORITY_RANK, Tenant
from shared.contracts import utc_now
from shared.outages import DependencyUnavailable

logger = logging.getLogger(__name__)

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/moderations"]
COMPLETION_WINDOW = timedelta(hours=24)
MAX_REQUESTS = 50_000
"""OpenAI's limit on a batch's requests."""
MAX_ERRORS_LISTED = 100
"""A file that fails validation lists at most this many of its bad lines."""
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")


class ExpiresAfter(BaseModel):
    model_config = STRICT_INPUT

    anchor: Literal["created_at"] = Field(description="What the expiry counts from.")
    seconds: int = Field(ge=3600, le=30 * 24 * 3600, description="From 1 hour to 30 days.")


class NewBatch(BaseModel):
    """The body of POST /v1/batches."""

    model_config = STRICT_INPUT | ConfigDict(extra="ignore")

    input_file_id: str = Field(description="A file uploaded with purpose batch: one request per line (JSONL).")
    endpoint: Endpoint = Field(description="The route every request of the file is for.")
    completion_window: Literal["24h"] = Field(description="The time it has to run; only 24h.")
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Up to 16 keys, returned with it.")
    output_expires_after: ExpiresAfter | None = Field(
        None, description="When its output and error files expire (the tenant's retention applies as well)."
    )


class BatchObject(BaseModel):
    """A batch, as OpenAI's API gives it (documentation of the answer)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["batch"]
    endpoint: str
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    request_counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch's input file. Its body is read from the file when it runs: a batch of 50,000 requests
    held parsed for its whole run took 1.6 times the file's size again (benchmarks/reports/batch-memory-2026-12-07)."""

    line: int
    """Its line in the file, from 1."""
    custom_id: str
    source: bytes
    """The whole input file."""
    start: int
    end: int
    """Where its line is in ``source``."""

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.source[self.start : self.end])["body"]  # type: ignore[no-any-return]


def read_lines(content: bytes, endpoint: str, max_requests: int = MAX_REQUESTS) -> tuple[list[BatchLine], list[dict]]:
    """The requests of an input file (JSON Lines: each ends with a newline), and the errors that fail it (OpenAI's
    batch errors: code, message, param, line); blank lines are skipped."""
    errors: list[dict[str, Any]] = []

    def error(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS_LISTED:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    lines: list[BatchLine] = []
    seen: set[str] = set()
    number, end = 0, -1
    while end < len(content):  # one line at a time: no copy of the whole file, decoded or split
        start, number = end + 1, number + 1
        end = content.find(b"\n", start)
        end = len(content) if end == -1 else end
        try:
            raw = content[start:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            return [], [{"code": "invalid_file", "message": f"The file is not UTF-8 text ({exc.reason} at byte "
                         f"{start + exc.start}).", "param": None, "line": number}]  # fmt: skip
        if not raw.strip():
            continue
        try:
            request = json.loads(raw)
        except ValueError:
            error("invalid_json_line", "This line is not valid JSON.", number)
            continue
        if not isinstance(request, dict):
            error("invalid_request", "Each line must be a JSON object.", number)
            continue
        custom_id, url, body = request.get("custom_id"), request.get("url"), request.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            error("missing_required_parameter", "Each line needs a custom_id (a string).", number, "custom_id")
        elif custom_id in seen:
            error("duplicate_custom_id", "This line's custom_id is an earlier line's too.", number, "custom_id")
        if request.get("method") != "POST":
            error("invalid_method", "The method must be POST.", number, "method")
        if url != endpoint:
            error("mismatched_endpoint", f"The url must be the batch's endpoint, {endpoint}.", number, "url")
        if not isinstance(body, dict):
            error("invalid_request", "The body must be a JSON object (the request).", number, "body")
        elif body.get("stream") is True:
            error("invalid_value", "A batch's answers are not streamed: leave stream out.", number, "body.stream")
        if isinstance(custom_id, str) and custom_id:
            seen.add(custom_id)
            if isinstance(body, dict):
                lines.append(BatchLine(number, custom_id, content, start, end))
    if not lines and not errors:
        error("empty_file", "The file holds no request.")
    elif len(lines) > max_requests:
        error("too_many_requests", f"A batch holds at most {max_requests} requests; this file has {len(lines)}.")
    return (lines, errors) if not errors else ([], errors)


def new_batch(
    batch_id: str,
    body: NewBatch,
    created_at: datetime,
    window: timedelta = COMPLETION_WINDOW,
    output_expires_after: int | None = None,
) -> dict[str, Any]:
    """A batch object as created (validating), less its counts; it expires ``window`` after it was created."""
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(created_at.timestamp()),
        "in_progress_at": None,
        "expires_at": int((created_at + window).timestamp()),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "metadata": body.metadata,
        "output_expires_after": output_expires_after,
    }


def batch_view(stored: StoredBatch) -> dict[str, Any]:
    """The batch object as a client reads it: its counts and its requests' usage added."""
    batch = {key: value for key, value in stored.batch.items() if key not in ("total", "output_expires_after")}
    counts = stored.counts
    total = stored.batch.get("total")
    return batch | {
        "request_counts": {
            "total": total if isinstance(total, int) else 0,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "usage": {
            "input_tokens": counts.input_tokens,
            "input_tokens_details": {"cached_tokens": counts.cached_tokens},
            "output_tokens": counts.output_tokens,
            "output_tokens_details": {"reasoning_tokens": counts.reasoning_tokens},
            "total_tokens": counts.input_tokens + counts.output_tokens,
        },
    }


def answered_line(request: BatchLine, status: int, request_id: str | None, body: Any) -> BatchResult:
    """A request's answer as its output line (a 200) or error line (any other status), with its usage."""
    result = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": request.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return BatchResult(request.line, status == 200, json.dumps(result), **usage_of(body) if status == 200 else {})


UnrunCode = Literal["batch_cancelled", "batch_expired"]


def unrun_line(request: BatchLine, code: UnrunCode) -> BatchResult:
    """The error line of a request the batch did not run."""
    message = {
        "batch_cancelled": "The batch was cancelled before this request ran.",
        "batch_expired": "This request could not be run before the batch expired.",
    }[code]
    result = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": request.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return BatchResult(request.line, False, json.dumps(result))


def usage_of(body: Any) -> dict[str, int]:
    """The tokens an answer used, from the usage of a chat or text completion, or of a response."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return {}
    input_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens", usage.get("input_tokens")) or 0),
        "cached_tokens": int(input_details.get("cached_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens", usage.get("output_tokens")) or 0),
        "reasoning_tokens": int(output_details.get("reasoning_tokens") or 0),
    }


def retry_wait_s(status: int, headers: Mapping[str, str], body: Any) -> float | None:
    """How long to wait before trying a request again, for a refusal that passes (a rate limit, or the platform at
    capacity); None for an answer that is the request's result (a monthly quota used up is one)."""
    error = body.get("error") if isinstance(body, dict) else None  # a response object's error is null
    code = error.get("code") if isinstance(error, dict) else None
    if status == 503 or (status == 429 and code != "insufficient_quota"):
        try:
            return max(1.0, float(headers.get("retry-after", "1")))
        except ValueError:
            return 1.0
    return None


def output_file_id(batch_id: str, kind: Literal["output", "error"]) -> str:
    """The id of a batch's output or error file: the same on every run of its finalization (after a takeover)."""
    return "file-" + hashlib.sha256(f"{batch_id}/{kind}".encode()).hexdigest()[:24]


def batch_priority(tenant: Tenant) -> str:
    """A batch's requests go at the batch priority, or the tenant's ceiling below it."""
    return "batch" if PRIORITY_RANK[tenant.max_priority] <= PRIORITY_RANK["batch"] else tenant.max_priority


Call = Callable[[str, str, dict[str, Any], dict[str, str]], Awaitable[tuple[int, Mapping[str, str], Any]]]
"""Runs a request as a tenant: (tenant id, path, body, headers) to (status, headers, JSON body)."""
TenantLookup = Callable[[str], Awaitable[Tenant | None]]


class BatchRunner:
    """The batches this instance runs: those it created, and those it took over."""

    def __init__(
        self,
        instance_id: str,
        store: BatchStore,
        files: FileStore,
        liveness: Liveness,
        call: Call,
        tenant_of: TenantLookup,
        metrics: IngressMetrics,
        concurrency: int,
        request_timeout_s: float,
        poll_s: float = 1.0,
    ) -> None:
        self.instance_id, self._store, self._files, self._liveness = instance_id, store, files, liveness
        self._metrics = metrics
        self._call, self._tenant_of, self._concurrency = call, tenant_of, concurrency
        self._request_timeout_s, self._poll_s = request_timeout_s, poll_s
        self._running: dict[str, asyncio.Task[None]] = {}

    async def create(self, tenant_id: str, batch: dict[str, Any]) -> None:
        """Stores a new batch (validating) and starts it; raises DependencyUnavailable."""
        await self._store.create(tenant_id, batch, self.instance_id)
        self._track(str(batch["id"]), self._run(str(batch["id"])))

    async def take_over(self) -> int:
        """Claims the running batches whose instance stopped, and runs them; how many."""
        unfinished = await self._store.unfinished()
        others = {finisher for _, finisher in unfinished if finisher and finisher != self.instance_id}
        alive = await self._liveness.alive(others)
        taken = 0
        for batch_id, finisher in unfinished:
            if batch_id in self._running or (finisher != self.instance_id and finisher in alive):
                continue
            if not await self._store.claim(batch_id, finisher, self.instance_id):
                continue
            logger.info("batch %s taken over from instance %s", batch_id, finisher or "(unknown)")
            self._track(batch_id, self._run(batch_id))
            taken += 1
        return taken

    async def stop(self) -> None:
        """Stops running batches here: another instance (or this one, restarted) claims them."""
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _track(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        if batch_id in self._running:  # a takeover pass that read it as its creation was being stored
            work.close()
            return

        async def logged() -> None:
            try:
                await work
            except Exception:  # it stays running in the store: another pass, or another instance, claims it again
                logger.exception("batch %s stopped with an error", batch_id)

        task = asyncio.get_running_loop().create_task(logged(), name=f"batch {batch_id}")
        self._running[batch_id] = task
        task.add_done_callback(lambda _: self._running.pop(batch_id, None))

    async def _update(self, batch_id: str, changes: dict[str, Any], *statuses: str) -> StoredBatch | None:
        return await self._store.update(batch_id, changes, self.instance_id, statuses)

    async def _run(self, batch_id: str) -> None:
        stored = await self._store.get(None, batch_id)
        if stored is None or stored.batch["status"] not in RUNNING:
            return
        batch, tenant_id, status = stored.batch, stored.tenant_id, str(stored.batch["status"])
        endpoint = str(batch["endpoint"])
        expires_at = datetime.fromtimestamp(int(batch["expires_at"]), utc_now().tzinfo)
        content = await self._files.content(tenant_id, str(batch["input_file_id"]))
        tenant = await self._tenant_of(tenant_id)
        if content is None or tenant is None:
            gone = {"code": "input_file_not_found", "message": "The input file is gone (deleted, or expired).",
                    "param": "input_file_id", "line": None}  # fmt: skip
            await self._finalize(batch_id, tenant_id, [], "failed", batch, errors={"object": "list", "data": [gone]})
            return
        lines, errors = read_lines(content, endpoint)
        if errors:
            await self._end(batch_id, "failed", errors={"object": "list", "data": errors})
            return
        if status == "validating":
            started = {"status": "in_progress", "in_progress_at": _now(), "total": len(lines)}
            status = "in_progress" if await self._update(batch_id, started, "validating") else "cancelling"
        if status == "in_progress":
            answered = await self._store.answered(batch_id)
            pending = [line for line in lines if line.line not in answered]
            outcome = await self._run_lines(batch_id, tenant, endpoint, pending, expires_at)
            if outcome == "completed" and not await self._update(
                batch_id, {"status": "finalizing", "finalizing_at": _now()}, "in_progress"
            ):
                outcome = "cancelled"  # as its last request ended, unless another instance took it over
            current = await self._store.state(batch_id)
            if outcome is None or current is None or current.finisher != self.instance_id:
                return  # another instance runs it now
        else:  # cancelling: the cancel came while no instance ran it; finalizing: its instance stopped then
            outcome = "cancelled" if status == "cancelling" else "completed"
        await self._finalize(batch_id, tenant_id, lines, outcome, batch)

    async def _run_lines(
        self, batch_id: str, tenant: Tenant, endpoint: str, pending: list[BatchLine], expires_at: datetime
    ) -> str | None:
        """Runs the requests, ``concurrency`` at a time, until all have a result, the batch is cancelled or expires;
        how it went: completed, cancelled or expired (None: another instance runs it now)."""
        queue: Iterator[BatchLine] = iter(pending)
        headers = {"x-ferry-batching-profile": "cost", "x-ferry-priority": batch_priority(tenant)}
        unrun: list[BatchLine] = []

        async def run_some() -> None:
            for request in queue:  # one shared iterator: each request is taken once
                if not await self._run_line(batch_id, tenant.id, endpoint, request, headers, expires_at):
                    unrun.append(request)

        runners = [asyncio.create_task(run_some()) for _ in range(min(self._concurrency, len(pending)))]
        all_run = asyncio.gather(*runners)
        try:
            while True:
                done, _ = await asyncio.wait({all_run}, timeout=self._poll_s)
                if done:
                    all_run.result()
                    return "expired" if unrun else "completed"
                if utc_now() >= expires_at:
                    return "expired"
                try:
                    current = await self._store.state(batch_id)
                except DependencyUnavailable:
                    continue
                if current is None or current.finisher != self.instance_id:
                    return None
                if current.status == "cancelling":
                    return "cancelled"
        finally:
            all_run.cancel()  # the requests in flight: their work is cancelled
            await asyncio.gather(all_run, return_exceptions=True)

    async def _run_line(
        self,
        batch_id: str,
        tenant_id: str,
        endpoint: str,
        request: BatchLine,
        headers: dict[str, str],
        expires_at: datetime,
    ) -> bool:
        """Runs one request until it has a result, and stores it; False when the batch expired first."""
        result: BatchResult | None = None
        while (remaining_s := (expires_at - utc_now()).total_seconds()) >= 1:
            if result is None:  # its deadline may pass the batch's expiry: the expiry stops it first (_run_lines)
                asked = headers | {"x-ferry-timeout": f"{self._request_timeout_s:g}"}
                try:
                    status, answer_headers, body = await self._call(tenant_id, endpoint, request.body, asked)
                    wait_s = retry_wait_s(status, answer_headers, body)
                    if wait_s is not None:
                        self._metrics.batch_requests.labels("retried").inc()
                        await asyncio.sleep(min(wait_s, remaining_s))
                        continue
                    result = answered_line(request, status, answer_headers.get("x-request-id"), body)
                except Exception:  # the line's error, rather than a batch run again and again on the same fault
                    logger.exception("batch %s: line %d could not be run", batch_id, request.line)
                    failure = {
                        "message": "The server had an error while processing this request.",
                        "type": "server_error",
                    }
                    result = answered_line(request, 500, None, {"error": failure | {"param": None, "code": None}})
            try:
                await self._store.save_result(batch_id, result)
                self._metrics.batch_requests.labels("answered" if result.succeeded else "refused").inc()
                return True
            except DependencyUnavailable:
                await asyncio.sleep(1.0)
        return False

    async def _finalize(
        self,
        batch_id: str,
        tenant_id: str,
        lines: list[BatchLine],
        outcome: str,
        batch: dict[str, Any],
        **changes: Any,
    ) -> None:
        """Writes the output and error files of the results kept, and ends the batch ``outcome`` (completed,
        cancelled, expired, or failed: ``changes`` say why); the requests of ``lines`` without a result are errors."""
        answered = await self._store.answered(batch_id)
        code: UnrunCode = "batch_expired" if outcome == "expired" else "batch_cancelled"
        unrun = [unrun_line(request, code) for request in lines if request.line not in answered]
        for first in range(0, len(unrun), RESULTS_PAGE):
            await self._store.save_results(batch_id, unrun[first : first + RESULTS_PAGE])
        self._metrics.batch_requests.labels("not_run").inc(len(unrun))
        contents = {True: bytearray(), False: bytearray()}  # the output file's lines, and the error file's
        after_line = 0
        while page := await self._store.results(batch_id, after_line):
            for result in page:
                contents[result.succeeded] += f"{result.result}\n".encode()
            after_line = page[-1].line
        created_at = datetime.fromtimestamp(int(batch["created_at"]), utc_now().tzinfo)
        keep_s = batch.get("output_expires_after")
        expires_at = created_at + timedelta(seconds=keep_s) if isinstance(keep_s, int) else None
        file_ids: dict[str, str | None] = {}
        for kind, succeeded in (("output", True), ("error", False)):
            file_ids[f"{kind}_file_id"] = None
            if content := contents[succeeded]:
                file_id = output_file_id(batch_id, kind)  # type: ignore[arg-type]
                await self._files.create(
                    tenant_id, file_id, "batch_output", f"{batch_id}_{kind}.jsonl", content, expires_at
                )
                file_ids[f"{kind}_file_id"] = file_id
        await self._end(batch_id, outcome, **file_ids, **changes)

    async def _end(self, batch_id: str, status: str, **changes: Any) -> None:
        at = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at", "failed": "failed_at"}
        ended = await self._update(batch_id, {"status": status, at[status]: _now(), **changes}, *RUNNING)
        if ended is not None:
            self._metrics.batches_ended.labels(status).inc()
            logger.info("batch %s %s: %s", batch_id, status, _counted(ended.counts))


def _now() -> int:
    return int(utc_now().timestamp())


def _counted(counts: BatchCounts) -> str:
    return f"{counts.completed} completed, {counts.failed} failed"
