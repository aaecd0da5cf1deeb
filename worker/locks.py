"""A lock held by one process at a time across workers: of two identical rankings, the second waits."""
from __future__ import annotations

import fcntl
import hashlib
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import text

from service.db import Database
from service.storage import LocalStorage


@contextmanager
def exclusive(db: Database, storage: LocalStorage, name: str, on_wait: Callable[[], None] | None = None,
              poll_s: float = 0.25) -> Iterator[None]:
    """Held by one process at a time, across workers: a PostgreSQL advisory lock (released by the server if the
    worker dies), or on SQLite, whose workers share one machine, a file lock. ``on_wait`` runs while waiting and
    may raise to give up (a cancelled job)."""
    digest = hashlib.sha256(name.encode()).digest()
    if db.engine.dialect.name == "postgresql":
        key = int.from_bytes(digest[:8], "big", signed=True)
        conn = db.engine.connect()

        def acquire() -> bool:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()  # a session lock outlives the transaction; no transaction is left open
            return bool(got)

        try:
            _poll(acquire, on_wait, poll_s)
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except Exception:  # the connection broke: the server dropped the lock with it
                    conn.invalidate()
        finally:
            conn.close()
        return
    path = storage.path(f"locks/{digest.hex()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        def acquire() -> bool:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        _poll(acquire, on_wait, poll_s)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _poll(acquire: Callable[[], bool], on_wait: Callable[[], None] | None, poll_s: float) -> None:
    """Try ``acquire`` until it succeeds, calling ``on_wait`` (if any) before each pause."""
    while not acquire():
        if on_wait:
            on_wait()
        time.sleep(poll_s)
