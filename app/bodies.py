"""Bounded request bodies: every body but a multipart upload is read up to a size limit, and JSON is checked for
UTF-8 and nesting depth before it is parsed, so a malformed body is one 422 and a huge one a 413, whatever the
route.

Multipart uploads stream through app.uploads, which enforces its own limits part by part.
"""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import problem_response


class MalformedJSON(ValueError):
    """Not JSON we parse: invalid UTF-8, too deep, or a syntax error; the message says which."""


def check_depth(text: str, max_depth: int) -> None:
    """Raise MalformedJSON if arrays and objects nest deeper than ``max_depth``: one pass, no recursion, so a
    body nested 5,000 deep is refused before the (recursive) parser could fail on it."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise MalformedJSON(f"nested deeper than {max_depth} levels")
        elif ch in "]}":
            depth -= 1


def loads(data: bytes | str, max_depth: int) -> Any:
    """``json.loads`` of UTF-8 text at most ``max_depth`` deep; MalformedJSON otherwise."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedJSON(f"not UTF-8 text: {e}") from None
    check_depth(data, max_depth)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        raise MalformedJSON(str(e)) from None


def _is_json(content_type: str) -> bool:
    ctype = content_type.split(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


class BodyLimit:
    """ASGI middleware: bodies other than multipart/form-data are read here, at most ``settings.
    max_json_body_bytes`` (413 from the Content-Length, else the moment the stream passes it), JSON ones checked
    (422 if malformed), then handed to the app from memory."""

    def __init__(self, app: ASGIApp, settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() == "multipart/form-data":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_json_body_bytes
        request = Request(scope)

        async def refuse(status: int, detail: str, **ext: Any) -> None:
            response = problem_response(request, status, detail, **ext)
            await response(scope, receive, send)

        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await refuse(413, f"the request body exceeds the limit of {limit} bytes", type_="payload-too-large",
                         title="Body too large", limit=limit, headers={"Connection": "close"})
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await refuse(413, f"the request body exceeds the limit of {limit} bytes", type_="payload-too-large",
                             title="Body too large", limit=limit, headers={"Connection": "close"})
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and _is_json(ctype):
            try:
                text = body.decode("utf-8")
                check_depth(text, self.settings.max_json_depth)
            except UnicodeDecodeError as e:
                await refuse(422, f"malformed JSON body: not UTF-8 text ({e.reason} at byte {e.start})",
                             type_="validation-error", title="Invalid request")
                return
            except MalformedJSON as e:
                await refuse(422, f"malformed JSON body: {e}", type_="validation-error", title="Invalid request")
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # only a disconnect can follow
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
