"""HTTP edge of the review UI (server-rendered): sign-in, queue, claim, decide, audit trail, user administration.

Sessions are random tokens in an HttpOnly, SameSite=Strict cookie; only their hash is stored. Unauthenticated requests
get 401 with the sign-in form, wrong roles 403.

Every form post carries a CSRF token, and a post without the right one is refused with 403 (SameSite=Strict alone
leaves older browsers and same-site pages open): signed-in forms carry a token derived from the session cookie
(``auth.session_csrf``); the sign-in form, before any session exists, a random token that must match a second
HttpOnly cookie set with the form (double submit)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import asyncpg
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.safety.auth import csrf_matches, new_session_token, session_csrf
from services.safety.config import SafetySettings
from services.safety.labels import CATEGORIES
from services.safety.review import (
    Delivery,
    Verdict,
    deliveries,
    held_messages,
    label_of,
    releases,
    visible_text,
)
from services.safety.store import ReviewStore, User, UserStore
from shared.contracts import Message
from shared.kafka import UNWRITABLE_TOPIC_ERRORS

logger = logging.getLogger(__name__)

COOKIE = "ferry_review_session"
CSRF_COOKIE = "ferry_review_csrf"
CSRF_FIELD = "csrf_token"
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))

# (message, topic): sends a decision's message (to the screened topic of a held prompt's model, or a reply topic)
Send = Callable[[Message, str, str], Awaitable[None]]


async def deliver(send: Send, sends: Sequence[Delivery], reply_topic: str, screened_topic: str) -> None:
    """Sends what a decision on an item sends: replies to the request's reply topic, released prompts to their model's
    screened topic, each keyed by the request it is about. A reply topic that takes nothing does not undo the
    decision: its requester cannot be told, whatever is decided, and the decision stands."""
    for d in sends:
        if not d.reply:
            await send(d.message, screened_topic, d.key)
            continue
        try:
            await send(d.message, reply_topic, d.key)
        except UNWRITABLE_TOPIC_ERRORS:
            logger.warning(
                "request %s: its reply topic %r cannot be written; the decision stands untold", d.key, reply_topic
            )


@dataclass(frozen=True)
class ReviewDeps:
    settings: SafetySettings
    users: UserStore
    reviews: ReviewStore
    send: Send
    screened_topic: Callable[[str], str]


class NotSignedIn(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class Forbidden(Exception):
    pass


class CsrfRefused(Exception):
    pass


async def get_deps(request: Request) -> ReviewDeps:
    """async: FastAPI would run a plain function in its thread pool (see the ingress's get_deps)."""
    deps: ReviewDeps = request.app.state.review
    return deps


DepsDep = Annotated[ReviewDeps, Depends(get_deps)]


async def current_user(request: Request, deps: DepsDep) -> User:
    user = await deps.users.session_user(request.cookies.get(COOKIE))
    if user is None:
        raise NotSignedIn(request.url.path)
    return user


UserDep = Annotated[User, Depends(current_user)]


async def admin_user(user: UserDep) -> User:
    if user.role != "admin":
        raise Forbidden()
    return user


AdminDep = Annotated[User, Depends(admin_user)]


async def signed_in_csrf(request: Request, user: UserDep, csrf_token: Annotated[str, Form()] = "") -> User:
    """The signed-in user, when the post carries their session's CSRF token."""
    if not csrf_matches(csrf_token, session_csrf(request.cookies.get(COOKIE, ""))):
        raise CsrfRefused()
    return user


async def sign_in_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    if not csrf_matches(csrf_token, request.cookies.get(CSRF_COOKIE)):
        raise CsrfRefused()


PostingUserDep = Annotated[User, Depends(signed_in_csrf)]

router = APIRouter(prefix="/review")


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page whose forms carry the CSRF token: the session's when signed in, else the sign-in form's (a new
    one, with its cookie, when the browser has none)."""
    session = request.cookies.get(COOKIE)
    fresh = None
    if context.get("user") is not None and session:
        csrf = session_csrf(session)
    else:
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        if not csrf:
            csrf = fresh = new_session_token()
    response = templates.TemplateResponse(request, name, context | {"csrf": csrf}, status_code=status)
    if fresh:
        secure = request.app.state.review.settings.secure_cookies
        response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="strict", secure=secure, path="/review")
    return response


def install_error_pages(app: Any) -> None:
    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn) -> HTMLResponse:
        return page(request, "login.html", 401, user=None, next=exc.next_url, error="Please sign in.")

    @app.exception_handler(CsrfRefused)
    async def _csrf_refused(request: Request, exc: CsrfRefused) -> HTMLResponse:
        user = await request.app.state.review.users.session_user(request.cookies.get(COOKIE))
        error = "This form was refused: it carries no valid CSRF token. Reload the page and send it again."
        if user is None:
            return page(request, "login.html", 403, user=None, next="/review/", error=error)
        return page(request, "queue.html", 403, user=user, items=[], error=error)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> HTMLResponse:
        user = await request.app.state.review.users.session_user(request.cookies.get(COOKIE))
        return page(request, "queue.html", 403, user=user, items=[], error="Your role may not open this page.")

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def _nul(request: Request, exc: Exception) -> HTMLResponse:
        # a form field PostgreSQL is asked for (a user name, say) holds U+0000, which its text cannot hold
        error = "This form was refused: a field holds the character U+0000 (NUL)."
        user = await request.app.state.review.users.session_user(request.cookies.get(COOKIE))
        if user is None:
            return page(request, "login.html", 400, user=None, next="/review/", error=error)
        return page(request, "queue.html", 400, user=user, items=[], error=error)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/review/") -> HTMLResponse:
    return page(request, "login.html", user=None, next=next)


@router.post("/login", response_model=None)
async def login(
    request: Request,
    deps: DepsDep,
    _csrf: Annotated[None, Depends(sign_in_csrf)],
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/review/",
) -> Response:
    token = await deps.users.sign_in(username, password)
    if token is None:
        return page(request, "login.html", 401, user=None, next=next, error="Wrong user name or password.")
    target = next if next.startswith("/review/") else "/review/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=deps.settings.secure_cookies,
        max_age=int(deps.settings.session_hours * 3600),
        path="/review",
    )
    return response


@router.post("/logout")
async def logout(request: Request, deps: DepsDep, user: PostingUserDep) -> RedirectResponse:
    token = request.cookies.get(COOKIE)
    if token:
        await deps.users.sign_out(token)
    response = RedirectResponse("/review/login", status_code=303)
    response.delete_cookie(COOKIE, path="/review")
    return response


@router.get("/", response_class=HTMLResponse)
async def queue(request: Request, deps: DepsDep, user: UserDep, flash: str | None = None) -> HTMLResponse:
    return page(request, "queue.html", user=user, items=await deps.reviews.queue(), flash=flash)


@router.get("/items/{item_id}", response_class=HTMLResponse)
async def item_page(
    request: Request, item_id: int, deps: DepsDep, user: UserDep, flash: str | None = None
) -> HTMLResponse:
    item = await deps.reviews.get(item_id)
    if item is None:
        return page(request, "queue.html", 404, user=user, items=[], error=f"No item {item_id}.")
    content, masked = visible_text(item["snippet"], item["text"], user.can_unmask)
    return page(
        request,
        "item.html",
        user=user,
        item=item,
        content=content,
        masked=masked,
        audit=await deps.reviews.audit(item_id),
        categories=CATEGORIES,
        flash=flash,
    )


@router.post("/items/{item_id}/claim")
async def claim(item_id: int, deps: DepsDep, user: PostingUserDep) -> RedirectResponse:
    ok = await deps.reviews.claim(item_id, user.username)
    flash = "Claimed." if ok else "Someone else holds this item, or it is decided."
    return RedirectResponse(f"/review/items/{item_id}?flash={quote(flash)}", status_code=303)


@router.post("/items/{item_id}/decide")
async def decide(
    item_id: int,
    deps: DepsDep,
    user: PostingUserDep,
    verdict: Annotated[Verdict, Form()],
    note: Annotated[str, Form()] = "",
    labels: Annotated[list[str] | None, Form()] = None,
) -> RedirectResponse:
    chosen = [c for c in (labels or []) if c in CATEGORIES]

    async def act(item: dict[str, Any]) -> tuple[list[str], str | None]:
        label = label_of(verdict, chosen, list(item["categories"]))
        held = held_messages(item["held"])
        sends = deliveries(item["stage"], held, item["request_id"], verdict, label, list(item["categories"]))
        await deliver(deps.send, sends, item["reply_topic"], deps.screened_topic(item["model"]))
        return label, (("released" if releases(verdict, label) else "withheld") if sends else None)

    ok = await deps.reviews.decide(item_id, user.username, verdict, note, act)
    flash = "Decision recorded." if ok else "Claim the item before deciding."
    return RedirectResponse(f"/review/items/{item_id}?flash={quote(flash)}", status_code=303)


@router.get("/admin", response_class=HTMLResponse)
async def admin_page(request: Request, deps: DepsDep, user: AdminDep, flash: str | None = None) -> HTMLResponse:
    return page(
        request, "admin.html", user=user, users=await deps.users.list(), audit=await deps.reviews.audit(), flash=flash
    )


@router.post("/admin/users")
async def add_user(
    deps: DepsDep,
    user: AdminDep,
    _posting: PostingUserDep,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=8)],
    role: Annotated[str, Form(pattern="^(reviewer|admin)$")],
    can_unmask: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    await deps.users.add(username, password, role, can_unmask, actor=user.username)
    return RedirectResponse(f"/review/admin?flash={quote('Saved ' + username)}", status_code=303)
