"""Streaming multipart/form-data: file parts go to storage chunk by chunk, never whole into memory.

Starlette's own form parsing reads the entire body before the endpoint runs, so a size limit could only be
checked afterwards. Here the body is parsed as it arrives and the request is refused (413) the moment a file
part passes its limit; a Content-Length that is already too large is refused before reading anything.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.problems import Problem
from service.storage import LocalStorage

# Room for the multipart framing and the small text fields around a file.
BODY_SLACK = 1024 * 1024
MAX_PARTS = 32


@dataclass
class UploadedFile:
    field: str
    filename: str  # as the client named it: for display only, never used as a path
    content_type: str
    path: Path  # a storage scratch path with a generated name
    size: int = 0
    sha256: str = ""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def cleanup(self) -> None:
        for f in self.files.values():
            f.path.unlink(missing_ok=True)

    def digest(self) -> dict:
        """The form's content, files by hash: equal for two uploads of the same thing."""
        return {"fields": dict(sorted(self.fields.items())),
                "files": {k: [f.sha256, f.filename] for k, f in sorted(self.files.items())}}


def _too_large(what: str, limit: int) -> Problem:
    return Problem(413, f"{what} exceeds the limit of {limit} bytes", type_="payload-too-large",
                   title="Upload too large", limit=limit, headers={"Connection": "close"})


def _malformed(e: Exception) -> Problem:
    return Problem(422, f"malformed multipart body: {e}", type_="validation-error", title="Invalid request")


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    buf: bytearray = field(default_factory=bytearray)
    size: int = 0
    handle: BinaryIO | None = None
    upload: UploadedFile | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    done: bool = False
    discard: bool = False


async def read_multipart(request: Request, storage: LocalStorage, *, file_limits: dict[str, int],
                         text_fields: set[str], max_field_bytes: int, chunk_bytes: int) -> Form:
    """Parse the request body. Files named in ``file_limits`` are streamed to storage scratch files (the caller
    owns them: call ``Form.cleanup``); fields in ``text_fields`` are kept as text; anything else is ignored.
    Raises Problem 415/413/422; on any error no scratch file is left behind."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise Problem(415, "expected a multipart/form-data body", type_="unsupported-media-type",
                      title="Unsupported media type")
    max_body = sum(file_limits.values()) + BODY_SLACK  # every accepted file at its limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _too_large("the request body", max_body)

    form = Form()
    parts: list[_Part] = []
    header_field = bytearray()
    header_value = bytearray()
    pending: list[Problem] = []
    seen_fields: set[str] = set()

    def current() -> _Part:
        return parts[-1]

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            pending.append(Problem(422, f"more than {MAX_PARTS} form parts", type_="validation-error",
                                   title="Invalid request"))
            raise MultipartParseError("too many parts")
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        current().headers[header_field.decode("latin-1").lower()] = header_value.decode("latin-1")
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        part = current()
        _, disp = parse_options_header(part.headers.get("content-disposition", ""))
        part.name = disp.get(b"name", b"").decode("utf-8", "replace")
        fn = disp.get(b"filename")
        part.filename = fn.decode("utf-8", "replace") if fn is not None else None
        part.content_type = part.headers.get("content-type", "")
        if part.name in file_limits and part.name not in form.files:
            part.upload = UploadedFile(part.name, part.filename or "", part.content_type, storage.tmp_path())
            form.files[part.name] = part.upload
        elif part.name not in text_fields or part.name in seen_fields or part.filename is not None:
            part.discard = True  # unknown, repeated (the first one counts), or a file where text is expected
        else:
            seen_fields.add(part.name)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current()
        part.size += end - start
        if part.upload is not None:
            if part.size > file_limits[part.name]:
                pending.append(_too_large(f"file {part.name!r}", file_limits[part.name]))
                raise MultipartParseError("file too large")
        elif part.size > max_field_bytes:
            pending.append(_too_large(f"form field {part.name!r}", max_field_bytes))
            raise MultipartParseError("field too large")
        if not part.discard:
            part.buf.extend(data[start:end])

    def on_part_end() -> None:
        current().done = True

    parser = MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })

    def flush(part: _Part, final: bool) -> None:
        # Runs in a worker thread: disk writes stay off the event loop.
        assert part.upload is not None
        if part.handle is None:
            part.handle = open(part.upload.path, "wb")
        data = bytes(part.buf)
        part.buf.clear()
        part.handle.write(data)
        part.hasher.update(data)
        if final:
            part.handle.close()
            part.handle = None
            part.upload.size = part.size
            part.upload.sha256 = part.hasher.hexdigest()

    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise _too_large("the request body", max_body)
            try:
                parser.write(chunk)
            except FormParserError as e:
                raise (pending[0] if pending else _malformed(e)) from None
            for part in parts:
                if part.upload is None or part.upload.sha256:
                    continue
                if part.done:
                    await run_in_threadpool(flush, part, True)
                elif len(part.buf) >= chunk_bytes:
                    await run_in_threadpool(flush, part, False)
        try:
            parser.finalize()
        except FormParserError as e:
            raise _malformed(e) from None
        for part in parts:
            if part.upload is not None and not part.upload.sha256:
                if not part.done:
                    raise Problem(422, f"file {part.name!r} is truncated (the body ended inside it)",
                                  type_="validation-error", title="Invalid request")
                await run_in_threadpool(flush, part, True)
            elif not part.discard and part.upload is None and part.done:
                try:
                    form.fields[part.name] = part.buf.decode("utf-8")
                except UnicodeDecodeError:
                    raise Problem(422, f"form field {part.name!r} is not UTF-8 text", type_="validation-error",
                                  title="Invalid request") from None
    except BaseException:
        for part in parts:
            if part.handle is not None:
                part.handle.close()
        form.cleanup()
        raise
    return form
