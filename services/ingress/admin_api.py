"""The admin HTTP API (``/admin/v1/...``): tenants, their limits and privacy settings, their API keys, and the admin
keys themselves. It does what the admin command does (services/ingress/admin.py), through the same functions. Callers
authenticate with an admin key; the first one comes from the command (``python -m services.ingress.admin admin-keys
create``), later ones from either. A tenant's key gets 403."""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.ingress import admin
from services.ingress.handlers import DepsDep, bearer, unauthorized
from services.ingress.protocol import STRICT_INPUT, ErrorResponse
from services.ingress.serving import ApiError
from services.ingress.tenants import PriorityNotAllowed, Tenant
from shared.contracts import VARIANT_NAME_PATTERN, BatchingProfile, Priority

logger = logging.getLogger(__name__)

TENANT_ID_PATTERN = r"^[a-zA-Z0-9._-]{1,64}$"  # the tenants table's CHECK
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _storable(text: str) -> str:
    """PostgreSQL text holds no NUL character and only valid UTF-8 (no lone surrogates)."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


Label = Annotated[str, Field(max_length=200), AfterValidator(_storable)]
PerMinute = Annotated[int, Field(ge=1, le=INT32_MAX)]


class TenantSettings(BaseModel):
    """A tenant's limits and privacy settings; on PATCH, only the fields sent change (null means unlimited)."""

    model_config = STRICT_INPUT | ConfigDict(extra="forbid")

    name: Label = Field("", description="A display name.")
    requests_per_minute: PerMinute | None = Field(None, description="Requests per minute; null for unlimited.")
    tokens_per_minute: PerMinute | None = Field(None, description="Tokens per minute; null for unlimited.")
    monthly_token_quota: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = Field(
        None, description="Tokens per calendar month; null for unlimited."
    )
    retention_days: int = Field(
        0, ge=0, le=36_500, description="Days prompt and completion text may be kept; 0 (the default) keeps none."
    )
    max_priority: Priority = Field("interactive", description="The highest priority the tenant may ask for.")
    default_priority: Priority = Field("interactive", description="The priority of a request that asks for none.")
    default_profile: BatchingProfile | None = Field(None, description="The batching profile of its requests.")
    cache_shared_scope: Annotated[str, Field(pattern=TENANT_ID_PATTERN)] | None = Field(
        None,
        description="Response cache: share entries with every tenant that opted in to this scope name; null keeps "
        "the tenant's entries its own.",
    )
    cache_sampled: bool = Field(
        False, description="Response cache: cache sampled answers too (temperature > 0 without a seed)."
    )
    default_variant: Annotated[str, Field(pattern=VARIANT_NAME_PATTERN)] | None = Field(
        None,
        description="Model variant (fp32, fp16, int8, ...) of requests that name none; null: the model's default "
        "variant from the registry.",
        examples=["int8"],
    )


class TenantCreate(TenantSettings):
    id: Annotated[str, Field(pattern=TENANT_ID_PATTERN, description="The tenant's id: letters, digits, . _ -")]


class TenantOut(BaseModel):
    object: str = "tenant"
    id: str
    name: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    monthly_token_quota: int | None
    retention_days: int
    max_priority: Priority
    default_priority: Priority
    default_profile: BatchingProfile | None
    cache_shared_scope: str | None
    cache_sampled: bool
    default_variant: str | None
    cached_responses_dropped: int | None = Field(
        None,
        description="On a save with retention_days 0, or leaving a shared cache scope: how many cached responses "
        "were dropped.",
    )


class TenantList(BaseModel):
    object: str = "list"
    data: list[TenantOut]


class KeyCreate(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(extra="forbid")

    name: Label = Field("", description="A label to tell keys apart.")


class AdminKeyOut(BaseModel):
    object: str = "admin_key"
    id: str
    name: str
    prefix: str = Field(description="The key's first characters.")
    created_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyOut(AdminKeyOut):
    object: str = "api_key"
    tenant_id: str


_KeyOut = TypeVar("_KeyOut", bound=AdminKeyOut)


class NewKeyOut(KeyOut):
    key: str = Field(description="The secret, shown only in this response; only its SHA-256 digest is stored.")


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyOut]


class NewAdminKeyOut(AdminKeyOut):
    key: str = Field(description="The secret, shown only in this response; only its SHA-256 digest is stored.")


class AdminKeyList(BaseModel):
    object: str = "list"
    data: list[AdminKeyOut]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "Invalid request"),
        (401, "Missing, unknown or revoked admin key"),
        (403, "The key is not an admin key"),
        (404, "No such tenant or key"),
        (409, "The tenant exists already"),
    ]
}


async def administrator(
    deps: DepsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    if credentials is None:
        raise unauthorized("admin key", "ADMIN_KEY")
    if await deps.tenants.is_admin(credentials.credentials):
        return
    if await deps.tenants.authenticate(credentials.credentials) is not None:
        raise ApiError(
            403, "This key belongs to a tenant; the admin API needs an admin key.", "permission_error",
            code="admin_key_required",
        )  # fmt: skip
    raise unauthorized("admin key", "ADMIN_KEY", credentials.credentials)


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(administrator)], responses=ERRORS)
TenantId = Annotated[str, Path(description="A tenant id.")]


def _tenant_out(tenant: Tenant, dropped: int | None = None) -> TenantOut:
    return TenantOut(**dataclasses.asdict(tenant), cached_responses_dropped=dropped)


def _key_out(model: type[_KeyOut], row: Any) -> _KeyOut:
    """A key's row from the directory (an admin key's, or a tenant's with its tenant_id) as the API shows it."""
    fields = dict(row)
    fields["prefix"] = fields.pop("key_prefix")
    return model(**fields)


def _no_tenant(tenant_id: str) -> ApiError:
    return ApiError(404, f"No tenant `{tenant_id}`.", param="tenant_id", code="tenant_not_found")


async def _save(deps: DepsDep, tenant: Tenant, before: Tenant | None = None) -> TenantOut:
    dropped = await admin.save_tenant(deps.tenants, tenant, before, deps.cache.invalidate_tenant)
    logger.info("tenant %s saved through the admin API", tenant.id)
    return _tenant_out(tenant, dropped)


def _checked(tenant: Tenant) -> Tenant:
    """The default priority must be within the tenant's ceiling."""
    try:
        tenant.priority_for(None)
    except PriorityNotAllowed as exc:
        message = f"Invalid default_priority: {exc}."
        raise ApiError(400, message, param="default_priority", code="invalid_value") from None
    return tenant


@router.post("/tenants", status_code=201, response_model=TenantOut)
async def create_tenant(body: TenantCreate, deps: DepsDep) -> JSONResponse:
    if await deps.tenants.tenant(body.id) is not None:
        raise ApiError(409, f"Tenant `{body.id}` exists already; change it with PATCH.", param="id", code="conflict")
    tenant = _checked(Tenant(**body.model_dump()))
    return JSONResponse((await _save(deps, tenant)).model_dump(mode="json"), status_code=201)


@router.get("/tenants", response_model=TenantList)
async def list_tenants(deps: DepsDep) -> TenantList:
    return TenantList(data=[_tenant_out(t) for t in await deps.tenants.tenants()])


@router.get("/tenants/{tenant_id}", response_model=TenantOut)
async def get_tenant(tenant_id: TenantId, deps: DepsDep) -> TenantOut:
    tenant = await deps.tenants.tenant(tenant_id) if _valid_id(tenant_id) else None
    if tenant is None:
        raise _no_tenant(tenant_id)
    return _tenant_out(tenant)


class TenantUsage(BaseModel):
    object: str = "tenant.usage"
    tenant_id: str
    month: str = Field(description="The calendar month (UTC), YYYY-MM.")
    tokens: int = Field(
        description="Tokens counted against the monthly quota this month: prompt and output tokens of the requests "
        "that ended, and the admission estimate of those still running."
    )
    monthly_token_quota: int | None = Field(description="The tenant's quota (null: unlimited).")


@router.get("/tenants/{tenant_id}/usage", response_model=TenantUsage)
async def tenant_usage(tenant_id: TenantId, deps: DepsDep) -> TenantUsage:
    """What the tenant's monthly token quota has counted so far this month."""
    tenant = await deps.tenants.tenant(tenant_id) if _valid_id(tenant_id) else None
    if tenant is None:
        raise _no_tenant(tenant_id)
    now = datetime.now(UTC)
    tokens = await deps.limiter.month_tokens(tenant.id, now.strftime("%Y%m"))
    return TenantUsage(
        tenant_id=tenant.id, month=now.strftime("%Y-%m"), tokens=tokens, monthly_token_quota=tenant.monthly_token_quota
    )


@router.patch("/tenants/{tenant_id}", response_model=TenantOut)
async def change_tenant(tenant_id: TenantId, body: TenantSettings, deps: DepsDep) -> TenantOut:
    tenant = await deps.tenants.tenant(tenant_id) if _valid_id(tenant_id) else None
    if tenant is None:
        raise _no_tenant(tenant_id)
    changed = _checked(dataclasses.replace(tenant, **body.model_dump(include=body.model_fields_set)))
    return await _save(deps, changed, tenant)


@router.post("/tenants/{tenant_id}/keys", status_code=201, response_model=NewKeyOut)
async def create_key(tenant_id: TenantId, body: KeyCreate, deps: DepsDep) -> JSONResponse:
    key = await admin.create_key(deps.tenants, tenant_id, body.name) if _valid_id(tenant_id) else None
    if key is None:
        raise _no_tenant(tenant_id)
    logger.info("key %s of tenant %s created through the admin API", key.id, tenant_id)
    out = NewKeyOut(
        id=key.id, tenant_id=tenant_id, name=body.name, prefix=key.prefix, created_at=key.created_at, key=key.secret
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=201)


@router.get("/keys", response_model=KeyList)
async def list_keys(
    deps: DepsDep, tenant_id: Annotated[str | None, Query(description="Only this tenant's keys.")] = None
) -> KeyList:
    if tenant_id is not None and not _valid_id(tenant_id):
        return KeyList(data=[])
    return KeyList(data=[_key_out(KeyOut, row) for row in await deps.tenants.keys(tenant_id)])


@router.delete("/keys/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: Annotated[str, Path(description="A key id (key_...).")], deps: DepsDep) -> KeyOut:
    """Revokes a key: requests with it are refused within the ingress's key cache time (FERRY_INGRESS_AUTH_CACHE_S)."""
    revoked = await deps.tenants.revoke_key(key_id) if _storable_id(key_id) else None
    if revoked is None:
        raise ApiError(404, f"No active key `{key_id}`.", param="key_id", code="key_not_found")
    logger.info("key %s revoked through the admin API", key_id)
    return _key_out(KeyOut, revoked)


@router.post("/admin-keys", status_code=201, response_model=NewAdminKeyOut)
async def create_admin_key(body: KeyCreate, deps: DepsDep) -> JSONResponse:
    """Creates an admin key, to hand to another operator or to rotate one's own (create, switch, revoke the old)."""
    key = await deps.tenants.create_admin_key(body.name)
    logger.info("admin key %s created through the admin API", key.id)
    out = NewAdminKeyOut(id=key.id, name=body.name, prefix=key.prefix, created_at=key.created_at, key=key.secret)
    return JSONResponse(out.model_dump(mode="json"), status_code=201)


@router.get("/admin-keys", response_model=AdminKeyList)
async def list_admin_keys(deps: DepsDep) -> AdminKeyList:
    return AdminKeyList(data=[_key_out(AdminKeyOut, row) for row in await deps.tenants.admin_keys()])


@router.delete("/admin-keys/{key_id}", response_model=AdminKeyOut)
async def revoke_admin_key(
    key_id: Annotated[str, Path(description="An admin key id (adminkey_...).")], deps: DepsDep
) -> AdminKeyOut:
    """Revokes an admin key at once (admin keys are not cached), the caller's own included. The command line still
    makes a new one if the last is revoked."""
    revoked = await deps.tenants.revoke_admin_key(key_id) if _storable_id(key_id) else None
    if revoked is None:
        raise ApiError(404, f"No active admin key `{key_id}`.", param="key_id", code="key_not_found")
    logger.info("admin key %s revoked through the admin API", key_id)
    return _key_out(AdminKeyOut, revoked)


def _valid_id(tenant_id: str) -> bool:
    return re.fullmatch(TENANT_ID_PATTERN, tenant_id) is not None


def _storable_id(key_id: str) -> bool:
    try:
        _storable(key_id)
    except ValueError:
        return False
    return True
