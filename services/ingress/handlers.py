"""HTTP edge of the ingress: OpenAI routes and OpenAI-format errors. Logic lives in serving.py."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.cache.service import ResponseCache, with_development_tenant
from services.ingress.adapters import ModelCatalog, ReplyListener, RequestPublisher
from services.ingress.config import IngressSettings
from services.ingress.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    error_json,
    ignored_fields,
)
from services.ingress.serving import ApiError, Submission, collect, stream_sse, to_completion_requested
from shared.contracts import utc_now
from shared.telemetry import context_from, current_trace_context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngressDeps:
    settings: IngressSettings
    catalog: ModelCatalog
    publisher: RequestPublisher
    listener: ReplyListener
    tracer: trace.Tracer
    cache: ResponseCache


def get_deps(request: Request) -> IngressDeps:
    deps: IngressDeps = request.app.state.deps
    return deps


DepsDep = Annotated[IngressDeps, Depends(get_deps)]

ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "Invalid request"),
        (404, "Unknown model"),
        (503, "The platform could not take the request"),
        (504, "The request did not complete before its deadline"),
    ]
}

router = APIRouter()


@router.get("/health", tags=["operations"], responses={503: {"model": ErrorResponse}})
async def health(deps: DepsDep) -> JSONResponse:
    """Ready while this instance can hear replies; a stopped reply listener would leave every request hanging."""
    if not deps.listener.running:
        return JSONResponse(
            error_json("the reply listener is not running", "service_unavailable_error"), status_code=503
        )
    return JSONResponse({"status": "ok", "reply_topic": deps.listener.topic, "requests_waiting": deps.listener.waiting})


@router.get("/v1/models", response_model=ModelList, tags=["openai"])
async def list_models(deps: DepsDep) -> ModelList:
    models = await deps.catalog.all()
    return ModelList(data=[ModelCard(id=m.id, created=0, max_model_len=m.max_model_len) for m in models.values()])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream is true"}}
    | ERRORS,
    tags=["openai"],
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, deps: DepsDep):  # type: ignore[no-untyped-def]
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if ignored := ignored_fields(body):
        logger.warning("request %s: ignored unsupported fields %s", request_id, ignored)
    model = (await deps.catalog.all()).get(body.model)
    if model is None:
        raise ApiError(404, f"The model `{body.model}` does not exist.", param="model", code="model_not_found")

    deadline_at = utc_now() + timedelta(seconds=deps.settings.request_timeout_s)
    with deps.tracer.start_as_current_span(
        "ferry.ingress.chat_completions",
        context=context_from(dict(request.headers)),
        kind=trace.SpanKind.SERVER,
        attributes={"ferry.request_id": request_id, "ferry.model": body.model},
    ):
        message = to_completion_requested(
            body,
            Submission(
                request_id=request_id,
                reply_topic=deps.listener.topic,
                deadline_at=deadline_at,
                trace_context=current_trace_context(),
                default_max_tokens=deps.settings.default_max_tokens,
            ),
        )
        if deps.settings.trust_tenant_headers:
            message = with_development_tenant(message, request.headers, deps.cache.settings)
        cached = await deps.cache.lookup(message, model.version, request.headers)
        trace.get_current_span().set_attribute("ferry.cache", cached.status)
        if cached.entry is not None:
            events = deps.cache.replay(cached)
        else:
            events = deps.cache.record(cached, deps.listener.expect(request_id, deadline_at))
            try:
                await deps.publisher.publish(message)
            except Exception:
                deps.listener.forget(request_id)
                logger.exception("request %s: could not publish", request_id)
                raise ApiError(
                    503,
                    "The request could not be queued; try again.",
                    "service_unavailable_error",
                    code="queue_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
    logger.info("request %s for %s (stream=%s, cache %s)", request_id, body.model, body.stream, cached.status)

    headers = {"x-request-id": request_id} | cached.headers
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            stream_sse(request_id, body.model, include_usage, events),
            media_type="text/event-stream",
            headers=headers | {"cache-control": "no-cache"},
        )
    completion = await collect(request_id, body.model, events)
    return JSONResponse(completion.model_dump(), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's format; bad input is a 4xx, never a 500."""

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(
                error_json(
                    "We could not parse the JSON body of your request. "
                    "Send valid JSON with Content-Type: application/json.",
                    "invalid_request_error",
                    code="invalid_json",
                ),
                status_code=400,
            )
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        elif param:
            message = f"Invalid value for '{param}': {message}"
        return JSONResponse(
            error_json(message, "invalid_request_error", param=param, code="invalid_value"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_json(str(exc.detail), "invalid_request_error", code=f"http_{exc.status_code}"),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(
            error_json("The server had an error while processing your request.", "server_error"), status_code=500
        )
