"""Blob storage on a local (or shared, mounted) folder, addressed by keys the service generates.

Keys are checked against a strict pattern, so nothing a user typed can become a path. Every write goes to a
temporary file and is renamed into place: a reader never sees half a blob, a crash leaves only a temp file.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

_KEY = re.compile(r"[a-z0-9_-]+(/[A-Za-z0-9_.-]+){0,3}")


class StorageError(RuntimeError):
    pass


def _check(key: str) -> str:
    if not _KEY.fullmatch(key) or any(part in ("", ".", "..") or part.startswith(".") for part in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class LocalStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _check(key)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """A file to write ``key`` into; it appears under ``key`` only if the block completes."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as f:
            f.write(data)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def put_dir(self, key: str, source: Path) -> None:
        """Copy folder ``source`` to ``key``, replacing what was there in one rename."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
        shutil.copytree(source, tmp)
        if dest.exists():
            old = dest.parent / f".old-{uuid.uuid4().hex}"
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(dest)

    def delete(self, key: str) -> None:
        p = self.path(key)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def tmp_path(self) -> Path:
        """A fresh path for scratch files (uploads in flight), on the same filesystem as the blobs."""
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d / uuid.uuid4().hex

    def check(self) -> None:
        """Write, read back and delete a probe blob; raises when storage is unusable."""
        key = f"health/{uuid.uuid4().hex}"
        self.put_bytes(key, b"ok")
        try:
            if self.get_bytes(key) != b"ok":
                raise StorageError("storage returned different bytes than written")
        finally:
            self.delete(key)
