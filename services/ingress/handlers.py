"""HTTP edge of the ingress: OpenAI routes, API-key checks and OpenAI-format errors. Logic lives in serving.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar, get_args

import asyncpg
import httpx
from aiokafka.errors import MessageSizeTooLargeError
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.cache.policy import TenantCachePolicy
from services.cache.service import CACHE_HEADER, ResponseCache, cache_headers
from services.ingress.adapters import (
    BatchCounts,
    BatchStore,
    ConversationStore,
    DuplicateItem,
    EventLog,
    FileStore,
    ModelCatalog,
    NotStorable,
    QueueMonitor,
    ReplyListener,
    RequestPublisher,
    ResponseStore,
    StoredBatch,
    StoredFile,
    StoredResponse,
    TenantDirectory,
)
from services.ingress.background import BACKGROUND_STORE_GRACE_S, BackgroundResponses, Keeper, Placement
from services.ingress.batches import BatchObject, BatchRunner, NewBatch, batch_view, new_batch
from services.ingress.config import IngressSettings
from services.ingress.conversations import (
    ConversationDeleted,
    ConversationObject,
    ConversationUpdate,
    NewConversation,
    NewItems,
    conversation_object,
    reference_in,
)
from services.ingress.metrics import IngressMetrics
from services.ingress.moderations import MODERATION_MODEL, ModerationRequest, ModerationResponse, moderation_result
from services.ingress.protocol import (
    SERVICE_TIERS,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    error_json,
    ignored_fields,
    invalid_input,
    lone_surrogate,
    tool_error,
    unsupported_option,
)
from services.ingress.rate_limits import Charge, RateLimiter, batch_limits
from services.ingress.responses import (
    LOGPROBS,
    UNFINISHED,
    ResponseItemList,
    ResponseObject,
    ResponsesCall,
    ResponsesRequest,
    as_of,
    duplicate_id,
    input_items_page,
    list_page,
    page_of,
    responses_error,
    stored_item,
    stream_response,
    unserved_include,
    whole_response,
)
from services.ingress.serving import (
    DEADLINE_EXCEEDED,
    AbandonReason,
    ApiError,
    ApiKind,
    IndexedEvent,
    Submission,
    chat_completion,
    choice_requests,
    counting_tokens,
    failure_error,
    final_events,
    merged,
    stream_sse,
    text_completion,
    to_completion_requested,
    usage_of,
    watched,
    without_reasoning,
    without_repeats,
)
from services.ingress.tenants import PriorityNotAllowed, Tenant, estimated_tokens
from shared.contracts import (
    VARIANT_NAME_PATTERN,
    BatchingProfile,
    CompletionFinished,
    GenerationFailed,
    ModerationCompleted,
    ModerationRequested,
    Priority,
    RequestCancelled,
    utc_now,
)
from shared.outages import DependencyUnavailable
from shared.telemetry import context_from, current_trace_context

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class IngressDeps:
    settings: IngressSettings
    catalog: ModelCatalog
    publisher: RequestPublisher
    listener: ReplyListener
    tracer: trace.Tracer
    tenants: TenantDirectory
    limiter: RateLimiter
    queues: QueueMonitor
    metrics: IngressMetrics
    cache: ResponseCache
    responses: ResponseStore
    conversations: ConversationStore
    finishing: BackgroundResponses
    """Responses API background mode: the responses this instance finishes."""
    files: FileStore
    batches: BatchStore
    running_batches: BatchRunner
    """Batch API: the batches this instance runs."""
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Runs follow-up work (a cancel, a settlement) that must outlive the HTTP exchange that caused it."""

        async def logged() -> None:
            try:
                await work
            except Exception:
                logger.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(logged())
        self.background.add(task)
        task.add_done_callback(self.background.discard)


async def get_deps(request: Request) -> IngressDeps:
    """async, though it awaits nothing: FastAPI runs a plain function dependency in a thread pool, a hop between
    threads on every request."""
    deps: IngressDeps = request.app.state.deps
    return deps


DepsDep = Annotated[IngressDeps, Depends(get_deps)]
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer ferry-...`")


async def authenticated(
    request: Request, deps: DepsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Tenant:
    if (tenant_id := request.scope.get(IN_PROCESS_TENANT)) is not None:  # set only by InProcessApi, never by HTTP
        tenant = await deps.tenants.tenant(tenant_id)
        if tenant is None:
            raise ApiError(401, f"Tenant `{tenant_id}` no longer exists.", code="invalid_api_key")
        return tenant
    if credentials is None:
        raise unauthorized("API key", "YOUR_KEY")
    tenant = await deps.tenants.authenticate(credentials.credentials)
    if tenant is None:
        raise unauthorized("API key", "YOUR_KEY", credentials.credentials)
    return tenant


IN_PROCESS_TENANT = "ferry.in_process_tenant"
"""The ASGI scope's key naming the tenant a request runs as, set by InProcessApi."""
_IN_PROCESS_HEADER = b"x-ferry-in-process-tenant"


class InProcessApi:
    """The ingress's own routes, called in process as a tenant, with no API key: how a batch runs its requests, so
    that each gets what the same request over HTTP gets. The tenant travels in the ASGI scope, which no HTTP client
    can set."""

    def __init__(self, app: ASGIApp) -> None:
        async def as_tenant(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(name, value) for name, value in scope["headers"] if name != _IN_PROCESS_HEADER]
            tenant_id = dict(scope["headers"])[_IN_PROCESS_HEADER].decode()
            await app(scope | {"headers": headers, IN_PROCESS_TENANT: tenant_id}, receive, send)

        # an unexpected error is the 500 answer the error handler gives, as over HTTP (not raised again here)
        transport = httpx.ASGITransport(app=as_tenant, raise_app_exceptions=False)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://ingress.in-process", timeout=None)

    async def post(
        self, tenant_id: str, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], Any]:
        """(status, headers, JSON body) of a POST to ``path`` as the tenant."""
        sent = headers | {_IN_PROCESS_HEADER.decode(): tenant_id}
        response = await self._client.post(path, json=body, headers=sent)
        try:
            answer = response.json()
        except ValueError:  # every route answers JSON; kept as text should one not
            answer = response.text
        return response.status_code, response.headers, answer

    async def close(self) -> None:
        await self._client.aclose()


def unauthorized(kind: str, placeholder: str, sent: str | None = None) -> ApiError:
    """401 for a missing key (``sent`` None) or an unknown or revoked one, in OpenAI's wording."""
    if sent is None:
        header = f"`Authorization: Bearer {placeholder}`"
        message = f"You didn't provide an {kind}. Send it in the Authorization header: {header}."
        return ApiError(401, message, code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
    shown = sent[:10] + "..." if len(sent) > 10 else "***"
    message = f"Incorrect {kind} provided: {shown}. The key is unknown or has been revoked."
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


TenantDep = Annotated[Tenant, Depends(authenticated)]

ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "Invalid request"),
        (401, "Missing, unknown or revoked API key"),
        (403, "The tenant may not ask for this (e.g. a priority above its ceiling)"),
        (404, "Unknown model"),
        (413, "The request is too large to queue"),
        (429, "A rate limit or quota of the tenant is used up; see Retry-After"),
        (503, "The platform could not take the request in time; see Retry-After"),
        (504, "The request did not complete before its deadline"),
    ]
}
STREAM_DOC = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream is true"}}

router = APIRouter()


@router.get("/health", tags=["operations"], responses={503: {"model": ErrorResponse}})
async def health(deps: DepsDep) -> JSONResponse:
    """Ready while this instance can hear replies; a stopped reply listener would leave every request hanging."""
    if not deps.listener.running:
        return JSONResponse(
            error_json("the reply listener is not running", "service_unavailable_error"), status_code=503
        )
    return JSONResponse({"status": "ok", "reply_topic": deps.listener.topic, "requests_waiting": deps.listener.waiting})


@router.get("/v1/models", response_model=ModelList, tags=["openai"], responses=ERRORS)
async def list_models(deps: DepsDep, _: TenantDep) -> ModelList:
    models = await deps.catalog.all()
    return ModelList(data=[ModelCard.of(m) for m in models.values()])


def unknown_model(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


@router.get("/v1/models/{model}", response_model=ModelCard, tags=["openai"], responses=ERRORS)
async def retrieve_model(model: str, deps: DepsDep, _: TenantDep) -> ModelCard:
    record = (await deps.catalog.all()).get(model)
    if record is None:
        raise unknown_model(model)
    return ModelCard.of(record)


@router.delete("/v1/cache", tags=["ferry"], responses=ERRORS)
async def invalidate_cache(deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    """Drops every response the cache holds for the caller's tenant, and those of the shared scope it opted into."""
    deleted = await deps.cache.invalidate_tenant(tenant.id, tenant.cache_shared_scope)
    logger.info("tenant %s dropped its %d cached responses", tenant.id, deleted)
    return JSONResponse({"object": "cache.invalidation", "tenant": tenant.id, "deleted": deleted})


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_DOC | ERRORS, tags=["openai"])
async def create_chat_completion(body: ChatCompletionRequest, request: Request, deps: DepsDep, tenant: TenantDep):  # type: ignore[no-untyped-def]
    return await _serve(body, "chat", request, deps, tenant)


@router.post("/v1/completions", response_model=Completion, responses=STREAM_DOC | ERRORS, tags=["openai"])
async def create_completion(body: CompletionRequest, request: Request, deps: DepsDep, tenant: TenantDep):  # type: ignore[no-untyped-def]
    return await _serve(body, "text", request, deps, tenant)


@router.post("/v1/responses", response_model=ResponseObject, responses=STREAM_DOC | ERRORS, tags=["openai"])
async def create_response(body: ResponsesRequest, request: Request, deps: DepsDep, tenant: TenantDep):  # type: ignore[no-untyped-def]
    """OpenAI's Responses API (see services/ingress/responses.py). A response is stored, unless ``store`` is false,
    when the tenant keeps text; ``previous_response_id`` continues a stored one."""
    if unsupported := body.unsupported():
        param, message = unsupported
        raise ApiError(400, message, param=param, code="unsupported_parameter")
    if body.background:
        _needs_kept_text(tenant, "background", "a background response is kept for you to read later")
        if body.store is False:
            raise ApiError(
                400,
                "background mode keeps the response for you to read later: leave store out, or true.",
                param="store",
                code="invalid_value",
            )
    conversation: list[dict[str, Any]] = []  # of the stored response this one continues, or of its conversation
    if (conversation_id := body.conversation_id()) is not None:
        _needs_kept_text(tenant, "conversation", "a conversation is kept on the platform", _SEND_IT_ALL)
        if body.previous_response_id is not None:
            raise ApiError(
                400,
                "previous_response_id and conversation cannot both be given: the conversation holds the earlier turns.",
                param="previous_response_id",
                code="invalid_value",
            )
        if body.store is False:
            raise ApiError(
                400,
                "a response in a conversation is kept with it: leave store out, or true.",
                param="store",
                code="invalid_value",
            )
        kept = await deps.conversations.items(tenant.id, conversation_id)
        if kept is None:
            raise _no_conversation(conversation_id, "conversation")
        conversation = kept
    if body.previous_response_id is not None:
        _needs_kept_text(tenant, "previous_response_id", "it names a stored response", _SEND_IT_ALL)
        previous = await deps.responses.load(tenant.id, body.previous_response_id)
        if previous is None:
            raise ApiError(
                400,
                f"Previous response with id '{body.previous_response_id}' not found (or past the tenant's retention).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        if (status := as_of(previous.response, previous.finish_by, utc_now())["status"]) in UNFINISHED:
            raise ApiError(
                400,
                f"Previous response with id '{body.previous_response_id}' is {status}: continue it once it has ended.",
                param="previous_response_id",
                code="previous_response_unfinished",
            )
        conversation = previous.conversation
    referenced: dict[str, dict[str, Any]] = {}
    if references := body.references():
        _needs_kept_text(tenant, "input", "it refers to stored items", _SEND_IT_ALL)
        referenced = await deps.responses.items(tenant.id, references)
        if missing := [ref for ref in references if ref not in referenced]:
            referenced |= await deps.conversations.items_by_id(tenant.id, missing)
        if missing := [ref for ref in references if ref not in referenced]:
            raise ApiError(
                400,
                f"Item with id '{missing[0]}' not found among this tenant's stored responses and conversations (or "
                "past its retention).",
                param="input",
                code="item_not_found",
            )
    new_items = body.input_items(referenced)
    items = [*conversation, *new_items]
    if duplicate := duplicate_id(items):
        raise ApiError(
            400,
            f"Duplicate item found with id '{duplicate}': an item comes once in a conversation (the one "
            "previous_response_id continues included); remove the duplicate from the input.",
            param="input",
            code="duplicate_item",
        )
    keep = None
    if body.store is not False and tenant.retains_text:
        keep = Keeper(deps.responses, deps.conversations, tenant.id, items, len(new_items))
    asked = body.with_input(items) if conversation or referenced else body
    # a background response's answer comes after this offset of the reply topic, for whoever finishes it
    reply_offset = await deps.listener.position() if body.background else None
    call = ResponsesCall(body, keep, reply_offset)
    try:
        return await _serve(asked.as_chat(), "chat", request, deps, tenant, responses=call)
    except ApiError as exc:  # the chat's checks name the chat's fields
        raise responses_error(exc) from None


_SEND_IT_ALL = "send the whole conversation as input, or ask for retention"


def _needs_kept_text(tenant: Tenant, param: str, why: str, remedy: str = "ask for retention") -> None:
    """Refuses ``param``, which needs text kept on the platform (``why``: what it keeps or reads), for a tenant that
    keeps none."""
    if not tenant.retains_text:
        raise ApiError(
            400,
            f"{param}: {why}, and tenant `{tenant.id}` keeps no text (its retention_days is 0): {remedy}.",
            param=param,
            code="unsupported_parameter",
        )


class ItemPage:
    """The query of OpenAI's item lists (a response's input items, a conversation's items)."""

    def __init__(
        self,
        after: Annotated[str | None, Query(description="The last item id of the page before.")] = None,
        limit: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 20,
        order: Annotated[Literal["asc", "desc"], Query(description="desc (the default): latest first.")] = "desc",
        include: Annotated[list[str] | None, Query(alias="include[]", description=f"Only {LOGPROBS} is taken.")] = None,
    ) -> None:
        if unserved := unserved_include(include):
            raise ApiError(
                400, f"include takes only {LOGPROBS}, not {unserved}.", param="include", code="unsupported_parameter"
            )
        self.after, self.limit, self.order = after, limit, order


PageDep = Annotated[ItemPage, Depends()]


@router.get(
    "/v1/responses/{response_id}", response_model=ResponseObject, responses=STREAM_DOC | ERRORS, tags=["openai"]
)
async def retrieve_response(  # type: ignore[no-untyped-def]
    response_id: str,
    deps: DepsDep,
    tenant: TenantDep,
    stream: Annotated[bool, Query(description="A streamed background response's events, taken up again.")] = False,
    starting_after: Annotated[
        int | None, Query(ge=-1, description="With stream: the events after this sequence number.")
    ] = None,
):
    """A stored response of the caller's tenant, while its retention covers it; with ``stream``, a streamed background
    response's events (from after ``starting_after``), as they come until it ends."""
    stored = await _kept(tenant, _response_alone(deps), response_id, _no_stored_response)
    if not stream:
        return JSONResponse(as_of(stored.response, stored.finish_by, utc_now()))
    if stored.finish_by is None or not await deps.finishing.events.exists(response_id):
        raise ApiError(
            400,
            "Only a background response that was streamed can be streamed again, while its events are kept (until "
            "10 minutes after its deadline).",
            param="stream",
            code="invalid_value",
        )
    after = -1 if starting_after is None else starting_after
    return StreamingResponse(
        _logged_events(deps.finishing.events, response_id, after, stored.finish_by),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


@router.post("/v1/responses/{response_id}/cancel", response_model=ResponseObject, responses=ERRORS, tags=["openai"])
async def cancel_response(response_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    """Stops a background response that has not ended: it is cancelled at once, and its work is stopped."""
    stored = await _kept(tenant, _response_alone(deps), response_id, _no_stored_response)
    if not stored.response.get("background"):
        raise ApiError(400, "Only a background response can be cancelled.", param="response_id", code="invalid_value")
    cancelled = await deps.responses.cancel(tenant.id, response_id)
    if cancelled is None:  # it had ended (or ends as we ask): cancelling it again changes nothing
        ended = await deps.responses.load(tenant.id, response_id, with_conversation=False)
        status = as_of(ended.response, ended.finish_by, utc_now())["status"] if ended else "deleted"
        if status == "cancelled":
            assert ended is not None
            return JSONResponse(ended.response)
        raise ApiError(400, f"Cannot cancel a response that is {status}.", param="response_id", code="invalid_value")
    stop = RequestCancelled(
        request_id=response_id,
        model=str(stored.response.get("model")),
        reason="requested",
        reply_topic=stored.reply_topic,
    )
    deps.spawn(deps.publisher.cancel(stop), f"cancel of {response_id}")
    logger.info("background response %s cancelled by its tenant %s", response_id, tenant.id)
    return JSONResponse(cancelled)


@router.get(
    "/v1/responses/{response_id}/input_items", response_model=ResponseItemList, responses=ERRORS, tags=["openai"]
)
async def list_input_items(response_id: str, deps: DepsDep, tenant: TenantDep, page: PageDep) -> JSONResponse:
    """The items that led to a stored response: the conversation it continued, then its own input."""
    stored = await _kept(tenant, deps.responses.load, response_id, _no_stored_response)
    output = stored.response.get("output")
    output_count = len(output) if isinstance(output, list) else 0
    items = input_items_page(response_id, stored.conversation, output_count, page.after, page.limit, page.order)
    return JSONResponse(items)


@router.delete("/v1/responses/{response_id}", responses=ERRORS, tags=["openai"])
async def delete_response(response_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    if not await deps.responses.delete(tenant.id, response_id):
        raise _no_stored_response(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.post("/v1/conversations", response_model=ConversationObject, responses=ERRORS, tags=["openai"])
async def create_conversation(body: NewConversation, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    """OpenAI's Conversations API: a conversation kept on the server, for a tenant that keeps text."""
    _needs_kept_text(tenant, "conversation", "a conversation is kept on the platform")
    items = _conversation_items(body.items or [])
    conversation_id = f"conv_{uuid.uuid4().hex}"
    try:
        created = await deps.conversations.create(tenant.id, conversation_id, body.metadata or {}, items)
    except NotStorable as exc:
        in_metadata = any("\x00" in key + value for key, value in (body.metadata or {}).items())
        param = "metadata" if in_metadata else "items"
        raise ApiError(400, f"A conversation is stored, and {exc}.", param=param, code="invalid_value") from None
    return JSONResponse(conversation_object(created.id, created.created_at, created.metadata))


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationObject, responses=ERRORS, tags=["openai"])
async def retrieve_conversation(conversation_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    found = await _kept(tenant, deps.conversations.get, conversation_id, _no_conversation)
    return JSONResponse(conversation_object(found.id, found.created_at, found.metadata))


@router.post(
    "/v1/conversations/{conversation_id}", response_model=ConversationObject, responses=ERRORS, tags=["openai"]
)
async def update_conversation(
    conversation_id: str, body: ConversationUpdate, deps: DepsDep, tenant: TenantDep
) -> JSONResponse:
    """Replaces its metadata."""
    found = None
    if tenant.retains_text:
        try:
            found = await deps.conversations.set_metadata(tenant.id, conversation_id, body.metadata or {})
        except NotStorable as exc:
            raise ApiError(400, f"Metadata is stored, and {exc}.", param="metadata", code="invalid_value") from None
    if found is None:
        raise _no_conversation(conversation_id)
    return JSONResponse(conversation_object(found.id, found.created_at, found.metadata))


@router.delete(
    "/v1/conversations/{conversation_id}", response_model=ConversationDeleted, responses=ERRORS, tags=["openai"]
)
async def delete_conversation(conversation_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    """Deletes it with its items (the responses made in it stay, under their own retention)."""
    if not await deps.conversations.delete(tenant.id, conversation_id):
        raise _no_conversation(conversation_id)
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.get(
    "/v1/conversations/{conversation_id}/items", response_model=ResponseItemList, responses=ERRORS, tags=["openai"]
)
async def list_conversation_items(
    conversation_id: str, deps: DepsDep, tenant: TenantDep, page: PageDep
) -> JSONResponse:
    items = await _items_of(conversation_id, deps, tenant)
    return JSONResponse(page_of(items, page.after, page.limit, page.order, f"conversation '{conversation_id}'"))


@router.post(
    "/v1/conversations/{conversation_id}/items", response_model=ResponseItemList, responses=ERRORS, tags=["openai"]
)
async def add_conversation_items(
    conversation_id: str, body: NewItems, deps: DepsDep, tenant: TenantDep
) -> JSONResponse:
    """Appends items, in order; returns them with their ids."""
    items = _conversation_items(body.items)
    try:
        added = await deps.conversations.add_items(tenant.id, conversation_id, items) if tenant.retains_text else False
    except DuplicateItem:
        raise _duplicate_in_conversation(conversation_id) from None
    except NotStorable as exc:
        raise ApiError(400, f"A conversation is stored, and {exc}.", param="items", code="invalid_value") from None
    if not added:
        raise _no_conversation(conversation_id)
    return JSONResponse(page_of(items, None, len(items), "asc", f"conversation '{conversation_id}'"))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}", responses=ERRORS, tags=["openai"])
async def retrieve_conversation_item(
    conversation_id: str, item_id: str, deps: DepsDep, tenant: TenantDep
) -> JSONResponse:
    items = await _items_of(conversation_id, deps, tenant)
    found = next((item for item in items if item["id"] == item_id), None)
    if found is None:
        raise _no_conversation_item(conversation_id, item_id)
    return JSONResponse(found)


@router.delete(
    "/v1/conversations/{conversation_id}/items/{item_id}",
    response_model=ConversationObject,
    responses=ERRORS,
    tags=["openai"],
)
async def delete_conversation_item(
    conversation_id: str, item_id: str, deps: DepsDep, tenant: TenantDep
) -> JSONResponse:
    """Deletes one item; returns the conversation."""
    if not await deps.conversations.delete_item(tenant.id, conversation_id, item_id):
        if tenant.retains_text and await deps.conversations.get(tenant.id, conversation_id) is not None:
            raise _no_conversation_item(conversation_id, item_id)
        raise _no_conversation(conversation_id)
    found = await deps.conversations.get(tenant.id, conversation_id)
    if found is None:
        raise _no_conversation(conversation_id)
    return JSONResponse(conversation_object(found.id, found.created_at, found.metadata))


async def _items_of(conversation_id: str, deps: IngressDeps, tenant: Tenant) -> list[dict[str, Any]]:
    """The tenant's conversation's items; a 404 when it keeps no such conversation."""
    return await _kept(tenant, deps.conversations.items, conversation_id, _no_conversation)


def _response_alone(deps: IngressDeps) -> Callable[[str, str], Awaitable[StoredResponse | None]]:
    """The stored response's load without its conversation, which takes the longest to read for a long chain."""
    return functools.partial(deps.responses.load, with_conversation=False)


async def _kept(
    tenant: Tenant, load: Callable[[str, str], Awaitable[T | None]], kept_id: str, missing: Callable[[str], ApiError]
) -> T:
    """What the tenant keeps by this id (a response, conversation, file or batch); ``missing(kept_id)``, a 404, when
    there is none, as for a tenant that keeps no text at all."""
    found = await load(tenant.id, kept_id) if tenant.retains_text else None
    if found is None:
        raise missing(kept_id)
    return found


def _conversation_items(given: list[Any]) -> list[dict[str, Any]]:
    """Items to add to a conversation, as it keeps them (ids given); a reference or a repeated id is a 400."""
    if (position := reference_in(given)) is not None:
        raise ApiError(
            400,
            "A conversation keeps items, not references: send the item itself.",
            param=f"items.{position}",
            code="invalid_value",
        )
    items = [stored_item(item.model_dump(by_alias=True, exclude_none=True)) for item in given]
    if duplicate := duplicate_id(items):
        raise ApiError(400, f"Duplicate item found with id '{duplicate}'.", param="items", code="duplicate_item")
    return items


def _no_conversation(conversation_id: str, param: str = "conversation_id") -> ApiError:
    return ApiError(
        404,
        f"No conversation with id '{conversation_id}' is kept for this key's tenant (conversations are kept only when "
        "the tenant keeps text, for its retention_days).",
        param=param,
        code="conversation_not_found",
    )


def _no_conversation_item(conversation_id: str, item_id: str) -> ApiError:
    return ApiError(
        404, f"No item with id '{item_id}' in conversation '{conversation_id}'.", param="item_id", code="item_not_found"
    )


def _duplicate_in_conversation(conversation_id: str) -> ApiError:
    return ApiError(
        400,
        f"Conversation '{conversation_id}' already holds an item with one of these ids; send new ids, or none.",
        param="items",
        code="duplicate_item",
    )


def _no_stored_response(response_id: str) -> ApiError:
    return ApiError(
        404,
        f"No response with id '{response_id}' is stored for this key's tenant (responses are kept only when the tenant "
        "keeps text, for its retention_days).",
        param="response_id",
        code="response_not_found",
    )


FilePurpose = Literal["batch", "user_data"]


class FileObject(BaseModel):
    """A file, as OpenAI's Files API gives it."""

    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"]
    expires_at: int | None
    status_details: None = None


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": int(stored.created_at.timestamp()),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": int(stored.expires_at.timestamp()) if stored.expires_at else None,
        "status_details": None,
    }


@router.post("/v1/files", response_model=FileObject, responses=ERRORS, tags=["openai"])
async def upload_file(
    deps: DepsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="The file; for purpose batch, one request per line (JSONL).")],
    purpose: Annotated[FilePurpose, Form(description="batch: a batch's input. user_data: kept for the tenant.")],
    expires_anchor: Annotated[
        Literal["created_at"] | None, Form(alias="expires_after[anchor]", description="What the expiry counts from.")
    ] = None,
    expires_seconds: Annotated[
        int | None,
        Form(alias="expires_after[seconds]", ge=3600, le=30 * 24 * 3600, description="From 1 hour to 30 days."),
    ] = None,
) -> JSONResponse:
    """OpenAI's Files API, for a tenant that keeps text (a file holds prompts): kept until it expires (its
    expires_after, else the tenant's retention) or is deleted."""
    _needs_kept_text(tenant, "file", "a file is kept on the platform")
    if (expires_anchor is None) != (expires_seconds is None):
        raise ApiError(400, "expires_after needs both anchor and seconds.", param="expires_after", code="invalid_value")
    content = await file.read()
    if not content:
        raise ApiError(400, "The file is empty.", param="file", code="invalid_value")
    created = utc_now()
    expires_at = created + timedelta(seconds=expires_seconds) if expires_seconds is not None else None
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    filename = (file.filename or "").replace("\x00", "") or "upload"  # PostgreSQL's text cannot hold U+0000
    stored = await deps.files.create(tenant.id, file_id, purpose, filename, content, expires_at)
    logger.info("tenant %s uploaded file %s (%d bytes, purpose %s)", tenant.id, file_id, len(content), purpose)
    return JSONResponse(file_object(stored))


@router.get("/v1/files", response_model=FileList, responses=ERRORS, tags=["openai"])
async def list_files(
    deps: DepsDep,
    tenant: TenantDep,
    purpose: Annotated[str | None, Query(description="Only files of this purpose.")] = None,
    after: Annotated[str | None, Query(description="The last file id of the page before.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Files per page.")] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation; desc (the default): latest first.")] = (
        "desc"
    ),
) -> JSONResponse:
    if not tenant.retains_text:
        return JSONResponse(list_page([], limit))
    found = await deps.files.list(tenant.id, purpose, after, limit + 1, order == "asc")
    return JSONResponse(list_page([file_object(stored) for stored in found], limit))


@router.get("/v1/files/{file_id}", response_model=FileObject, responses=ERRORS, tags=["openai"])
async def retrieve_file(file_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    stored = await _kept(tenant, deps.files.get, file_id, _no_file)
    return JSONResponse(file_object(stored))


@router.get(
    "/v1/files/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes."}} | ERRORS,
    tags=["openai"],
)
async def file_content(file_id: str, deps: DepsDep, tenant: TenantDep) -> Response:
    content = await _kept(tenant, deps.files.content, file_id, _no_file)
    return Response(content, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", responses=ERRORS, tags=["openai"])
async def delete_file(file_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    if not await deps.files.delete(tenant.id, file_id):
        raise _no_file(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


def _no_file(file_id: str, param: str = "file_id") -> ApiError:
    return ApiError(
        404,
        f"No file with id '{file_id}' is kept for this key's tenant (files are kept only when the tenant keeps text).",
        param=param,
        code="file_not_found",
    )


@router.post("/v1/batches", response_model=BatchObject, responses=ERRORS, tags=["openai"])
async def create_batch(body: NewBatch, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    """OpenAI's Batch API: the requests of an uploaded file (purpose batch), run apart within 24 hours at the cost
    batching profile; answers in its output file, failures in its error file (services/ingress/batches.py)."""
    _needs_kept_text(tenant, "input_file_id", "a batch runs from a kept file and keeps its results")
    input_file = await deps.files.get(tenant.id, body.input_file_id)
    if input_file is None:
        raise _no_file(body.input_file_id, "input_file_id")
    if input_file.purpose != "batch":
        raise ApiError(
            400,
            f"File '{body.input_file_id}' was uploaded with purpose {input_file.purpose}; a batch's input needs "
            "purpose batch.",
            param="input_file_id",
            code="invalid_value",
        )
    keep_s = body.output_expires_after.seconds if body.output_expires_after else None
    window = timedelta(seconds=deps.settings.batch_window_s)
    batch = new_batch(f"batch_{uuid.uuid4().hex}", body, utc_now(), window, keep_s)
    try:
        await deps.running_batches.create(tenant.id, batch)
    except NotStorable as exc:
        raise ApiError(
            400, f"A batch's metadata is stored, and {exc}.", param="metadata", code="invalid_value"
        ) from None
    logger.info("tenant %s created batch %s of file %s", tenant.id, batch["id"], body.input_file_id)
    created = StoredBatch(tenant.id, batch, BatchCounts(), deps.running_batches.instance_id)
    return JSONResponse(batch_view(created))


@router.get("/v1/batches", response_model=BatchList, responses=ERRORS, tags=["openai"])
async def list_batches(
    deps: DepsDep,
    tenant: TenantDep,
    after: Annotated[str | None, Query(description="The last batch id of the page before.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Batches per page.")] = 20,
) -> JSONResponse:
    if not tenant.retains_text:
        return JSONResponse(list_page([], limit))
    found = await deps.batches.list(tenant.id, after, limit + 1)
    return JSONResponse(list_page([batch_view(stored) for stored in found], limit))


@router.get("/v1/batches/{batch_id}", response_model=BatchObject, responses=ERRORS, tags=["openai"])
async def retrieve_batch(batch_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    stored = await _kept(tenant, deps.batches.get, batch_id, _no_batch)
    return JSONResponse(batch_view(stored))


@router.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject, responses=ERRORS, tags=["openai"])
async def cancel_batch(batch_id: str, deps: DepsDep, tenant: TenantDep) -> JSONResponse:
    """Cancels a batch that is validating or running: it is cancelling at once, and cancelled once the requests in
    flight are stopped, with the output of those that ended."""
    cancelled = None
    if tenant.retains_text:
        cancelled = await deps.batches.cancel(tenant.id, batch_id, int(utc_now().timestamp()))
    if cancelled is not None:
        logger.info("batch %s cancelled by its tenant %s", batch_id, tenant.id)
        return JSONResponse(batch_view(cancelled))
    now = await _kept(tenant, deps.batches.get, batch_id, _no_batch)
    status = now.batch["status"]
    if status in ("cancelling", "cancelled"):
        return JSONResponse(batch_view(now))
    raise ApiError(400, f"Cannot cancel a batch that is {status}.", param="batch_id", code="invalid_value")


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(
        404,
        f"No batch with id '{batch_id}' is kept for this key's tenant (batches are kept only when the tenant keeps "
        "text, for its retention_days).",
        param="batch_id",
        code="batch_not_found",
    )


def _queue_unavailable(headers: dict[str, str]) -> ApiError:
    """A request Kafka did not take in time (FERRY_INGRESS_PUBLISH_TIMEOUT_S) or refused."""
    return ApiError(
        503,
        "The request could not be queued; try again.",
        "service_unavailable_error",
        code="queue_unavailable",
        headers={"Retry-After": "1"} | headers,
    )


def _limited(deps: IngressDeps, tenant: Tenant, request: Request, tokens: int) -> Tenant:
    """The limits a request is checked against: a batch's requests (the ones run in process) get a share of them."""
    if IN_PROCESS_TENANT in request.scope:
        return batch_limits(tenant, deps.settings.batch_limit_share, tokens)
    return tenant


def _within_capacity(deps: IngressDeps, requests: int, headers: dict[str, str]) -> None:
    """Refuses work beyond what this instance may wait for at once (FERRY_INGRESS_MAX_IN_FLIGHT)."""
    if deps.listener.waiting + requests > deps.settings.max_in_flight:
        raise ApiError(
            503, "This instance is at capacity; try again shortly.", "service_unavailable_error",
            code="ingress_at_capacity", headers={"Retry-After": "1"} | headers,
        )  # fmt: skip


@router.post("/v1/moderations", response_model=ModerationResponse, responses=ERRORS, tags=["openai"])
async def create_moderation(
    body: ModerationRequest, request: Request, deps: DepsDep, tenant: TenantDep
) -> JSONResponse:
    """Judges texts with the platform's safety stage, under the tenant's prompt policy (see moderations.py)."""
    request_id = f"modr-{uuid.uuid4().hex}"
    headers = {"x-request-id": request_id}
    if not_text := lone_surrogate(await request.body()):
        param, message = not_text
        raise ApiError(400, message, param=param, code="invalid_value")
    if ignored := ignored_fields(body):
        logger.warning("request %s: ignored unsupported fields %s", request_id, ignored)
    timeout_s = _timeout(request.headers.get("x-ferry-timeout"), deps.settings, deps.settings.moderation_timeout_s)
    deadline_at = utc_now() + timedelta(seconds=timeout_s)
    _within_capacity(deps, 1, headers)
    texts = body.texts()
    with deps.tracer.start_as_current_span(
        "ferry.ingress.moderations",
        context=context_from(dict(request.headers)),
        kind=trace.SpanKind.SERVER,
        attributes={"ferry.request_id": request_id, "ferry.tenant": tenant.id, "ferry.safety.inputs": len(texts)},
    ):
        try:
            message = ModerationRequested(
                request_id=request_id,
                inputs=texts,
                reply_topic=deps.listener.topic,
                tenant_id=tenant.id,
                screening_policy=tenant.screening_policy,
                deadline_at=deadline_at,
                trace_context=current_trace_context(),
            )
        except ValidationError as exc:  # the texts' length in all, which the contract bounds
            reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ApiError(400, f"Invalid input: {reason}.", param="input", code="invalid_value") from None
        estimate = max(1, sum(len(text) for text in texts) // 4)  # as a prompt's, without a template
        limited = _limited(deps, tenant, request, estimate)
        charge = await _charge(
            deps, limited, estimate, headers, request_id, deadline_at, "its texts' estimate", "send less text", "input"
        )
        answer = deps.listener.expect(request_id, deadline_at)
        try:
            async with asyncio.timeout(deps.settings.publish_timeout_s):
                await deps.publisher.moderate(message)
        except Exception:
            deps.listener.forget(request_id)
            if charge is not None:
                deps.spawn(deps.limiter.settle(charge, 0), f"refund of {request_id}")
            logger.exception("request %s: could not publish", request_id)
            raise _queue_unavailable(headers) from None
    logger.info("moderation %s of tenant %s: %d texts", request_id, tenant.id, len(texts))
    used = estimate  # the texts are screened whether or not their client waits for the answer
    try:
        judged = await _unless_disconnected(request, _moderation_of(answer))
    except ApiError as exc:
        used = 0  # the platform's failure, or a deadline past which the stage no longer screens them
        raise exc.with_headers(headers) from None
    finally:
        if charge is not None:
            deps.spawn(deps.limiter.settle(charge, used), f"settlement of {request_id}")
    deps.metrics.responses.labels(request.url.path, "200").inc()
    response = ModerationResponse(
        id=request_id, model=MODERATION_MODEL, results=[moderation_result(r) for r in judged.results]
    )
    return JSONResponse(response.model_dump(), headers=headers)


async def _moderation_of(events: AsyncIterator[Any]) -> ModerationCompleted:
    """The safety stage's answer; its failure and the deadline become ApiError."""
    try:
        async for event in events:
            if isinstance(event, GenerationFailed):
                raise failure_error(event)
            if isinstance(event, ModerationCompleted):
                return event
    except TimeoutError:
        raise DEADLINE_EXCEEDED from None
    raise ApiError(503, "the reply stream ended without a result", "server_error", code="no_result")


async def _serve(  # type: ignore[no-untyped-def]
    body: ChatCompletionRequest | CompletionRequest,
    kind: ApiKind,
    request: Request,
    deps: DepsDep,
    tenant: Tenant,
    responses: ResponsesCall | None = None,
):
    """Serves a chat or a text completion; ``responses``: the Responses API request the chat ``body`` stands for,
    which the answer then takes the shape of."""
    request_id = f"{'resp_' if responses else 'chatcmpl-' if kind == 'chat' else 'cmpl-'}{uuid.uuid4().hex}"
    headers = {"x-request-id": request_id}
    if not_text := lone_surrogate(await request.body()):  # the body FastAPI read, kept by the request
        param, message = not_text
        raise ApiError(400, message, param=param, code="invalid_value")
    if unsupported := unsupported_option(body):
        param, message = unsupported
        raise ApiError(400, message, param=param, code="unsupported_parameter")
    if isinstance(body, ChatCompletionRequest) and (unusable := tool_error(body)):
        param, message = unusable
        raise ApiError(400, message, param=param, code="invalid_value")
    if ignored := responses.body.ignored() if responses else ignored_fields(body):
        logger.warning("request %s: ignored unsupported fields %s", request_id, ignored)
    model = (await deps.catalog.all()).get(body.model)
    if model is None:
        raise unknown_model(body.model)
    priority = _choice(body.priority, request, "x-ferry-priority", Priority)
    profile = _choice(body.batching_profile, request, "x-ferry-batching-profile", BatchingProfile)
    if (tier := SERVICE_TIERS.get(body.service_tier or "")) is not None:  # what the client names itself wins
        priority = priority or tenant.priority_capped(tier[0])
        profile = profile or tier[1]
    variant = body.variant or _variant_header(request) or tenant.default_variant
    try:
        priority = tenant.priority_for(priority)
    except PriorityNotAllowed as exc:
        raise ApiError(403, str(exc), "permission_error", param="priority", code="priority_not_allowed") from None
    timeout_s = _timeout(request.headers.get("x-ferry-timeout"), deps.settings)
    prompts = body.prompts() if isinstance(body, CompletionRequest) else None  # None: a chat's messages
    choice_count = body.choice_count()
    prompt_of = [k // body.n for k in range(choice_count)]  # which prompt each choice answers

    _within_capacity(deps, choice_count, headers)
    expected_wait = deps.queues.expected_wait_s(body.model)
    if expected_wait > timeout_s:
        raise ApiError(
            503,
            f"The model `{body.model}` has a backlog of about {expected_wait:.0f} s, longer than this request's "
            f"deadline of {timeout_s:.0f} s; try again later or with a longer x-ferry-timeout.",
            "service_unavailable_error",
            code="model_overloaded",
            headers={"Retry-After": str(math.ceil(expected_wait - timeout_s))} | headers,
        )

    deadline_at = utc_now() + timedelta(seconds=timeout_s)
    with deps.tracer.start_as_current_span(
        f"ferry.ingress.{'responses' if responses else 'chat_completions' if kind == 'chat' else 'completions'}",
        context=context_from(dict(request.headers)),
        kind=trace.SpanKind.SERVER,
        attributes={
            "ferry.request_id": request_id,
            "ferry.model": body.model,
            "ferry.tenant": tenant.id,
            "ferry.prompt_screening": deps.settings.prompt_screening,
        },
    ):
        message = to_completion_requested(
            body,
            Submission(
                request_id=request_id,
                reply_topic=deps.listener.topic,
                deadline_at=deadline_at,
                trace_context=current_trace_context(),
                default_max_tokens=deps.settings.default_max_tokens,
                max_model_len=model.max_model_len,
                tenant_id=tenant.id,
                priority=priority,
                profile=profile or tenant.default_profile,
                retain_text=tenant.retains_text,
                variant=variant,
                prompt_screening=deps.settings.prompt_screening,
                screening_policy=tenant.screening_policy,
            ),
        )
        message = message.model_copy(update={"retention_days": tenant.retention_days})  # review queue erases text then
        choices = choice_requests(message, body.n, prompts)
        estimate = sum(estimated_tokens(choices[k], body.n) for k in range(0, len(choices), body.n))
        # settled once: by this instance, or (a background response) by the one that takes it over if this one stops
        charge = await _charge(
            deps, _limited(deps, tenant, request, estimate), estimate, headers, request_id, deadline_at
        )
        policy = _cache_policy(tenant)
        cache_control: Mapping[str, str] = request.headers
        if isinstance(body, CompletionRequest) and body.echo and None in body.echo_texts():
            # the echo is then the text the worker read, which a cached answer does not keep (no entry holds a
            # prompt): look up nothing, as Cache-Control no-cache asks, and store the fresh answer
            cache_control = {
                "cache-control": ",".join(filter(None, [request.headers.get("cache-control"), "no-cache"]))
            }
        lookups = await asyncio.gather(
            *(
                deps.cache.lookup(choice, model.version, cache_control, policy, sample=k % body.n)
                for k, choice in enumerate(choices)
            )
        )
        headers |= cache_headers(lookups)
        trace.get_current_span().set_attribute("ferry.cache", headers[CACHE_HEADER])
        cleared = message.prompt_screening == "before"  # else nothing is released before the safety stage's verdict
        streams = [
            deps.cache.replay(lookup)
            if lookup.entry is not None
            else deps.cache.record(lookup, deps.listener.expect(lookup.request.request_id, deadline_at, cleared))
            for lookup in lookups
        ]
        live = [lookup.request for lookup in lookups if lookup.entry is None]
        try:
            async with asyncio.timeout(deps.settings.publish_timeout_s):
                await asyncio.gather(*(deps.publisher.publish(choice) for choice in live))
        except Exception as exc:
            for choice in live:
                deps.listener.forget(choice.request_id)
            if isinstance(exc, TimeoutError) or not cleared or len(live) > 1:
                # a record may still reach Kafka (it waits in the producer; or another of the request's records went
                # out): stop work whose output nobody will read
                for choice in live:
                    cancelled = RequestCancelled(request_id=choice.request_id, model=body.model, reason="requested")
                    deps.spawn(deps.publisher.cancel(cancelled), f"cancel of {choice.request_id}")
            if charge is not None:
                deps.spawn(deps.limiter.settle(charge, 0), f"refund of {request_id}")
            if isinstance(exc, MessageSizeTooLargeError):  # refused by the producer before it was sent: not retryable
                raise ApiError(
                    413,
                    "The request is too large to queue: its Kafka record would exceed the producer's 1 MiB limit. "
                    "Send a shorter prompt.",
                    param="input" if responses else "messages" if kind == "chat" else "prompt",
                    code="request_too_large",
                    headers=headers,
                ) from None
            logger.exception("request %s: could not publish", request_id)
            raise _queue_unavailable(headers) from None
    logger.info(
        "request %s of tenant %s for %s (stream=%s, choices=%d, cache %s)",
        request_id, tenant.id, body.model, body.stream, len(choices), headers[CACHE_HEADER],
    )  # fmt: skip

    published_at = time.monotonic()
    generated: dict[int, CompletionFinished] = {}  # by choice; a cache hit generated nothing: a request, not tokens
    generated_so_far = [0] * len(choices)  # tokens, by choice, of its deltas read
    done: set[int] = set()
    settled = False

    def settle(used: int, why: str) -> None:
        nonlocal settled
        if charge is not None and not settled:
            settled = True
            deps.spawn(deps.limiter.settle(charge, used), f"{why} of {request_id}")

    def used_unanswered() -> int:
        """What a request that ends before its answer (the client gone, the deadline passed) has used: the choices
        that finished, as their usage counts them, and the tokens the others generated so far, with the estimate of
        their prompt if it is not counted already. A choice that generated nothing (still queued) costs nothing."""
        answered_prompts = {prompt_of[i] for i in generated}
        used = usage_of(list(generated.values()), [prompt_of[i] for i in generated]).total_tokens if generated else 0
        unfinished = [i for i, lookup in enumerate(lookups) if lookup.entry is None and i not in generated]
        started_prompts = {prompt_of[i] for i in unfinished if generated_so_far[i]} - answered_prompts
        prompts = sum(
            choices[p * body.n].prompt_tokens_estimate(template_tokens_per_message=0) for p in started_prompts
        )
        return used + prompts + sum(generated_so_far[i] for i in unfinished)

    def on_first() -> None:
        deps.metrics.time_to_first_event.labels(body.model).observe(time.monotonic() - published_at)

    def on_final(index: int, event: CompletionFinished | GenerationFailed) -> None:
        done.add(index)
        if isinstance(event, CompletionFinished) and lookups[index].entry is None:
            generated[index] = event
            deps.metrics.tokens.labels(body.model, "completion").inc(event.usage.completion_tokens)
        if isinstance(event, CompletionFinished) and len(done) < len(lookups):
            return  # settled once: when the last choice is done, or at once on a failure
        usage = usage_of(list(generated.values()), [prompt_of[i] for i in generated]) if generated else None
        if usage is not None:
            deps.metrics.tokens.labels(body.model, "prompt").inc(usage.prompt_tokens)
            cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
            deps.metrics.tokens.labels(body.model, "cached_prompt").inc(cached or 0)
        if isinstance(event, GenerationFailed) and event.code in STOPPED_BY_ASKING:
            settle(used_unanswered(), "settlement")  # stopped by its client or its deadline: what it used until then
        else:  # each prompt once, as in the usage; the platform's failure is not charged
            settle(usage.total_tokens if usage is not None else 0, "settlement")

    def on_abandoned(reason: AbandonReason, indexes: list[int]) -> None:
        if responses is not None and responses.body.background and deps.finishing.handing_over:
            return  # the instance stops: another one finishes the work (background.py), and settles its charge
        settle(used_unanswered(), "settlement")  # (a choice that failed has settled the request already)
        live_choices = [lookups[i].request.request_id for i in indexes if lookups[i].entry is None]
        if not live_choices:
            return  # answered from the cache: no work to cancel
        logger.info("request %s abandoned (%s); cancelling the work of %s", request_id, reason, live_choices)
        if reason != "requested":
            deps.metrics.cancelled.labels(reason).inc()
        for choice_id in live_choices:
            cancelled = RequestCancelled(
                request_id=choice_id, model=body.model, reason=reason, reply_topic=deps.listener.topic
            )
            deps.spawn(deps.publisher.cancel(cancelled), f"cancel of {choice_id}")

    readable = [counting_tokens(without_repeats(s), generated_so_far, k) for k, s in enumerate(streams)]
    if isinstance(body, ChatCompletionRequest) and not body.include_reasoning:
        readable = [without_reasoning(s) for s in readable]
    replies = watched(merged(readable), on_final, on_abandoned, on_first, len(choices))
    echoes: list[str | None] = []  # what each choice's text begins with (None: the reply brings it)
    if isinstance(body, CompletionRequest) and body.echo:
        echoes = [text for text in body.echo_texts() for _ in range(body.n)]
    elif isinstance(body, ChatCompletionRequest) and body.echo and body.messages[-1].role == "assistant":
        echoes = [body.messages[-1].text()] * len(choices)  # as vLLM's server: only an assistant's own turn
    prompt_only = isinstance(body, CompletionRequest) and body.prompt_only()
    deps.metrics.responses.labels(request.url.path, "200").inc()
    if responses is not None:
        if responses.body.background:
            from_cache = all(lookup.entry is not None for lookup in lookups)
            return await _in_background(responses, request_id, replies, headers, deps, deadline_at, charge, from_cache)
        return await _respond(request_id, responses, request, replies, headers)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # as vLLM's server: the usage in every chunk only along with the usage chunk
        continuous_usage = include_usage and bool(body.stream_options and body.stream_options.continuous_usage_stats)
        return StreamingResponse(
            stream_sse(
                request_id,
                body.model,
                include_usage,
                replies,
                kind,
                echoes,
                len(choices),
                echo_logprobs=choices[0].sampling.prompt_logprobs is not None,
                prompt_only=prompt_only,
                prompt_of=prompt_of,
                token_ids=bool(body.return_token_ids),
                tokens_as_ids=bool(body.return_tokens_as_token_ids),
                continuous_usage=continuous_usage,
            ),
            media_type="text/event-stream",
            headers=headers | {"cache-control": "no-cache"},
        )
    try:
        completed = await _unless_disconnected(request, final_events(replies, len(choices)))
    except ApiError as exc:  # a failure reported by the worker, or the deadline: still answered with the request's id
        raise exc.with_headers(headers) from None
    if completed[0].variant:
        headers["x-ferry-variant"] = completed[0].variant
    response = (
        chat_completion(request_id, body.model, completed, echoes, bool(body.return_tokens_as_token_ids))
        if kind == "chat"
        else text_completion(
            request_id, body.model, completed, echoes, prompt_only, prompt_of, bool(body.return_tokens_as_token_ids)
        )
    )
    return JSONResponse(response.model_dump(), headers=headers)


async def _respond(  # type: ignore[no-untyped-def]
    request_id: str,
    call: ResponsesCall,
    request: Request,
    replies: AsyncIterator[IndexedEvent],
    headers: dict[str, str],
):
    """The answer in the Responses API's shape: a response object, or its stream of events."""
    shell = call.shell(request_id)
    if call.body.stream:
        return StreamingResponse(
            stream_response(shell, replies, call.keep),
            media_type="text/event-stream",
            headers=headers | {"cache-control": "no-cache"},
        )
    try:
        response = await _unless_disconnected(request, whole_response(shell, replies, call.keep))
    except ApiError as exc:
        raise exc.with_headers(headers) from None
    return JSONResponse(response, headers=headers)


async def _in_background(
    call: ResponsesCall,
    request_id: str,
    replies: AsyncIterator[IndexedEvent],
    headers: dict[str, str],
    deps: IngressDeps,
    deadline_at: datetime,
    charge: Charge | None,
    from_cache: bool,
) -> JSONResponse:
    """Background mode: the response is stored queued and returned at once, and finished apart (background.py); one
    answered from the response cache is stored finished before it is returned."""
    assert isinstance(call.keep, Keeper) and call.reply_offset is not None, "create_response keeps it, and placed it"
    placement = Placement(
        finish_by=deadline_at + timedelta(seconds=BACKGROUND_STORE_GRACE_S),
        finisher=deps.finishing.instance_id,
        reply_topic=deps.listener.topic,
        reply_offset=call.reply_offset,
        charge=charge,
        streamed=bool(call.body.stream),
        screened_beside=deps.settings.prompt_screening == "beside",
    )
    try:
        if from_cache:
            stored = await deps.finishing.finish_at_once(call.shell(request_id), call.keep, replies, placement)
        else:
            stored = await deps.finishing.start(call.shell(request_id), call.keep, replies, placement)
    except NotStorable as exc:
        raise ApiError(
            400, f"A background response is stored, and {exc}.", param="input", code="invalid_value"
        ) from None
    except DependencyUnavailable:
        raise ApiError(
            503,
            "The background response could not be stored; try again.",
            "service_unavailable_error",
            code="database_unavailable",
            headers={"Retry-After": "1"} | headers,
        ) from None
    if call.body.stream:
        return StreamingResponse(
            _logged_events(deps.finishing.events, request_id, -1, placement.finish_by),
            media_type="text/event-stream",
            headers=headers | {"cache-control": "no-cache"},
        )
    return JSONResponse(stored, headers=headers)


async def _logged_events(events: EventLog, response_id: str, after: int, until: datetime) -> AsyncIterator[str]:
    """A streamed background response's events after sequence number ``after``, as they come; a client whose stream
    ends early (Redis down, or its connection cut) takes it up again with starting_after."""
    try:
        async for event in events.read(response_id, after, until):
            yield event.text
    except DependencyUnavailable:
        return


STOPPED_BY_ASKING = ("cancelled", "deadline_exceeded")
"""The failures a request's client asked for (a cancel, its deadline): charged the tokens generated until then, as a
request abandoned by its client is; other failures (the platform's, or a block) are not charged."""


def _cache_policy(tenant: Tenant) -> TenantCachePolicy:
    return TenantCachePolicy(
        shared_scope=tenant.cache_shared_scope,
        cache_sampled=tenant.cache_sampled,
        screening_policy=tenant.screening_policy,
    )


def _choice(body_value: str | None, request: Request, header: str, allowed: Any) -> Any:
    """A scheduling hint from the body, else from its header (for clients that cannot add body fields)."""
    if body_value is not None:
        return body_value
    value = request.headers.get(header)
    if value is not None and value not in get_args(allowed):
        raise ApiError(
            400,
            f"Invalid value for header {header}: '{value}'; expected one of {', '.join(get_args(allowed))}.",
            param=header,
            code="invalid_value",
        )
    return value


def _variant_header(request: Request) -> str | None:
    value = request.headers.get("x-ferry-variant")
    if value is not None and not re.fullmatch(VARIANT_NAME_PATTERN, value):
        raise ApiError(
            400,
            f"Invalid value for header x-ferry-variant: '{value}'; expected a variant name such as fp32 or int8.",
            param="x-ferry-variant",
            code="invalid_value",
        )
    return value


def _timeout(header: str | None, settings: IngressSettings, default_s: float | None = None) -> float:
    """The request's deadline in seconds: its x-ferry-timeout header, else ``default_s`` (else the settings')."""
    if header is None:
        return default_s or settings.request_timeout_s
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not 0 < value <= settings.max_request_timeout_s:
        raise ApiError(
            400,
            f"Invalid x-ferry-timeout '{header}': give seconds, above 0 and"
            f" at most {settings.max_request_timeout_s:g}.",
            param="x-ferry-timeout",
            code="invalid_value",
        )
    return value


async def _charge(
    deps: IngressDeps,
    tenant: Tenant,
    tokens: int,
    headers: dict[str, str],
    request_id: str,
    deadline_at: datetime,
    weighed: str = "prompt estimate plus max_tokens",
    fix: str = "lower max_tokens",
    param: str = "max_tokens",
) -> Charge | None:
    """Checks and charges the tenant's limits; None when Redis could not check them and the settings let the
    request through unchecked. ``weighed``, ``fix`` and ``param`` say, in the error of a request above the tokens per
    minute, what its tokens are, what to do and which field to change."""
    try:
        admission = await deps.limiter.admit(tenant, tokens, request_id=request_id, deadline_at=deadline_at)
    except DependencyUnavailable:
        if deps.settings.rate_limits_unavailable == "refuse":
            raise
        deps.metrics.limits_unchecked.inc()  # the outage itself is logged once a second, not once a request
        return None
    headers |= admission.headers(tenant)
    if admission.allowed:
        assert admission.charge is not None
        return admission.charge
    if admission.retry_after_s is None:
        raise ApiError(
            400,
            f"This request may use up to {tokens} tokens ({weighed}), more than the tenant's"
            f" limit of {tenant.tokens_per_minute} tokens per minute; {fix}.",
            param=param,
            code="tokens_exceed_rate_limit",
        )
    retry = {"Retry-After": str(admission.retry_after_s)} | headers
    if admission.limit == "quota":
        raise ApiError(
            429,
            f"The tenant's monthly quota of {tenant.monthly_token_quota} tokens is used up.",
            "insufficient_quota",
            code="insufficient_quota",
            headers=retry,
        )
    limit = tenant.requests_per_minute if admission.limit == "requests" else tenant.tokens_per_minute
    raise ApiError(
        429,
        f"Rate limit reached: {limit} {admission.limit} per minute for this tenant."
        f" Try again in {admission.retry_after_s} s.",
        "rate_limit_exceeded",
        code=f"rate_limit_{admission.limit}",
        headers=retry,
    )


class ClientGone(Exception):
    pass


FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"
"""FastAPI's 400 for a body its JSON reader refused other than by a syntax error (a nesting deeper than the reader's
recursion limit, an integer of more than Python's 4,300 digits), with the reader's exception as its cause."""


ROUTER_MISSES = {(404, "Not Found"), (405, "Method Not Allowed")}  # what Starlette's router raises, word for word


class BodyTooLarge(StarletteHTTPException):
    """A request body past the ingress's limit, found while it was read (a body sent without Content-Length)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than the {max_bytes} bytes this API takes.")


class BodyLimit:
    """Refuses a request body larger than ``max_bytes`` (its path's in ``by_path``) before the app reads it whole: at
    once when its Content-Length says so, else as soon as the bytes read pass the limit. FastAPI reads and parses a
    body whole before any check of its own (a 50 MB prompt took 150 MB of the ingress's memory before its 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int, by_path: Mapping[str, int] | None = None) -> None:
        self.app, self.default_max_bytes, self.by_path = app, max_bytes, by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.by_path.get(scope["path"], self.default_max_bytes)  # a file upload takes more
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            too_large = BodyTooLarge(max_bytes)
            body = error_json(str(too_large.detail), "invalid_request_error", code="request_too_large")
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > max_bytes:
                    raise BodyTooLarge(max_bytes)  # FastAPI passes an HTTPException from the body on
            return message

        await self.app(scope, counted, send)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Non-streaming requests hear of a disconnect only by asking; the work is cancelled if the client leaves, or if
    the request itself is cancelled (an in-process caller stops: a batch cancelled)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's format; bad input is a 4xx, never a 500."""

    @app.exception_handler(ClientGone)
    async def on_client_gone(_: Request, exc: ClientGone) -> JSONResponse:
        return JSONResponse(error_json("client closed the request", "invalid_request_error"), status_code=499)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        deps: IngressDeps | None = getattr(request.app.state, "deps", None)
        if deps is not None:
            # the route's template, not the path: ids in paths (or fuzzed paths) must not make new series
            route = getattr(request.scope.get("route"), "path", "unmatched")
            deps.metrics.responses.labels(route, str(exc.status)).inc()
            if exc.status in (429, 503) and exc.code:
                deps.metrics.refused.labels(exc.code).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def on_nul(request: Request, exc: Exception) -> JSONResponse:
        # an id, a cursor or a name PostgreSQL is asked for holds U+0000, which its text cannot hold: no such thing
        message = "The request holds the character U+0000 (NUL), which no id, name or stored text can hold."
        return await on_api_error(request, ApiError(400, message, code="invalid_value"))

    @app.exception_handler(DependencyUnavailable)
    async def on_dependency_unavailable(request: Request, exc: DependencyUnavailable) -> JSONResponse:
        # the outage is logged by the Breaker that saw it fail, once per pause rather than once per request
        error = ApiError(
            503,
            f"The platform's {exc.dependency.replace('_', ' ')} did not answer in time; try again shortly.",
            "service_unavailable_error",
            code=f"{exc.dependency}_unavailable",
            headers={"Retry-After": "1"},
        )
        return await on_api_error(request, error)

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
        if tuple(first.get("loc", ())) == ("body",) and first.get("type") == "model_attributes_type":
            # FastAPI reads a body as JSON only when its Content-Type says so; otherwise pydantic sees bytes
            return JSONResponse(
                error_json(
                    "The request body must be a JSON object, sent with Content-Type: application/json.",
                    "invalid_request_error",
                    code="invalid_json",
                ),
                status_code=400,
            )
        param, message = invalid_input(exc.errors(), exc.body)
        return JSONResponse(
            error_json(message, "invalid_request_error", param=param, code="invalid_value"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == FASTAPI_UNREADABLE_BODY:
            # FastAPI's wrapper of what its JSON reader raised other than a syntax error, named here
            cause = exc.__cause__
            why = "it could not be read as JSON"
            if isinstance(cause, RecursionError):
                why = "it nests deeper than Python's JSON reader goes"
            elif isinstance(cause, ValueError) and "digits" in str(cause):
                why = f"it holds an integer of more than {sys.get_int_max_str_digits()} digits"
            message = f"We could not parse the JSON body of your request: {why}."
            return JSONResponse(error_json(message, "invalid_request_error", code="invalid_json"), status_code=400)
        code = "request_too_large" if isinstance(exc, BodyTooLarge) else f"http_{exc.status_code}"
        message = str(exc.detail)
        if (exc.status_code, message) in ROUTER_MISSES:  # no route has this path, or not this method: as OpenAI says it
            message = f"Invalid URL ({request.method} {request.url.path})"
        return JSONResponse(
            error_json(message, "invalid_request_error", code=code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(
            error_json("The server had an error while processing your request.", "server_error"), status_code=500
        )
