"""API keys: who is asking, and so whose datasets, jobs and results a request may see.

A request names its key as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. What is stored with a row is the
key's *owner*, a SHA-256 of the key, never the key itself: a leaked database does not leak keys, and rotating a
key (adding the new one, removing the old) hides the old key's rows. With keys off (the embedded default on
loopback) every row belongs to the fixed owner ``local``.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.problems import Problem
from service.tables import LOCAL_OWNER

__all__ = ["LOCAL_OWNER", "Owner", "authenticate", "is_admin", "owner_of"]

_bearer = HTTPBearer(auto_error=False, description="An API key from HUBSCOUT_API_KEYS, as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from HUBSCOUT_API_KEYS.")


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@lru_cache(maxsize=16)
def _owners(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(owner_of(k) for k in keys)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, type_="unauthorized", title="Unauthorized",
                   headers={"WWW-Authenticate": 'Bearer realm="hubscout"'})


def _loopback_only(request: Request) -> None:
    """Keys off is allowed only on loopback. ``hubscout serve`` refuses another bind address at start; a bare
    ``uvicorn --host 0.0.0.0`` is caught here, by the address the request came in on."""
    server = request.scope.get("server")
    host = server[0] if server else None
    try:
        ip = ipaddress.ip_address(host) if host else None
    except ValueError:
        return  # not an IP (a unix socket, the in-process test client): nothing reached it over the network
    if ip is not None and not ip.is_loopback:
        raise _unauthorized("this server has no API keys configured and answers only on loopback; set "
                            "HUBSCOUT_API_KEYS to serve other machines")


def authenticate(request: Request,
                 bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
                 header_key: str | None = Security(_header)) -> str:
    """The owner of the request: the hash of a valid key, or ``local`` when keys are off. 401 otherwise."""
    settings = request.app.state.settings
    if not settings.auth_enabled:
        _loopback_only(request)
        return LOCAL_OWNER
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    candidate = owner_of(key)
    match = None
    # Compare with every configured key, in constant time: neither a timing nor an early exit tells how close a
    # guess came.
    for owner in _owners(tuple(settings.all_keys)):
        if hmac.compare_digest(candidate, owner):
            match = owner
    if match is None:
        raise _unauthorized("invalid API key")
    return match


def is_admin(settings, owner: str) -> bool:
    """An admin key's owner, or anyone when keys are off (the one local user owns the whole service)."""
    if not settings.auth_enabled:
        return True
    return owner in _owners(tuple(settings.admin_keys))


Owner = Annotated[str, Depends(authenticate)]
