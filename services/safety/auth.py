"""Passwords and session tokens. Pure: hashing with the standard library's scrypt, no client."""

from __future__ import annotations

import hashlib
import hmac
import secrets

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    return hmac.compare_digest(candidate.hex(), digest)


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored for a session: a stolen database does not give usable cookies."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_csrf(session_token: str) -> str:
    """The CSRF token of a signed-in session's forms, derived from its (HttpOnly) cookie: another site can neither read
    the cookie nor compute the token, and nothing more is stored."""
    return hmac.new(session_token.encode(), b"ferry-review-csrf", hashlib.sha256).hexdigest()


def csrf_matches(sent: str | None, expected: str | None) -> bool:
    return bool(sent) and bool(expected) and hmac.compare_digest(str(sent), str(expected))
