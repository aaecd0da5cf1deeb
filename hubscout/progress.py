"""Progress for people: a tqdm bar on a terminal, plain one-line reports in a log or a pipe.

tqdm redraws in place with carriage returns and, for nested bars, cursor-up escapes (``\\x1b[A``); written to a
file those become garbage. Off a terminal, :func:`progress_bar` gives an object with the same methods that prints
a whole line now and then instead: at most one per ``step`` of the total (10 %) and one at the end.
Nested bars (``leave=False``: one teacher's forward pass inside the ranking's bar) print only their last line.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 leave: bool = True, stream: TextIO | None = None, **tqdm_kw: Any):
    """A tqdm bar when ``stream`` (stderr) is a terminal, else a :class:`LineProgress`."""
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, **tqdm_kw)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, stream=stream)


class LineProgress:
    """The part of tqdm's interface hubscout uses, reported as plain lines: ``desc: 3/10 teacher (30%) key=val``."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, stream: TextIO | None = None, step: float = 0.1,
                 **_ignored: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.stream, self.step = stream, step
        self.n: float = 0
        self.postfix = ""
        self._last_reported = 0.0
        self._closed = False
        self._start = time.monotonic()
        self._last_write = -float("inf")
        self._written: tuple | None = None
        self.min_interval = 10.0

    def __iter__(self):
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        # A new state ("ranking running", the part before ":") is reported at once; a new message within it
        # ("epoch 4/300 ...") at most once per min_interval seconds, so a long job writes a few lines a minute.
        new_state = desc.split(":")[0] != self.desc.split(":")[0]
        changed = desc != self.desc
        self.desc = desc
        if self.leave and (new_state or (changed and time.monotonic() - self._last_write >= self.min_interval)):
            self._write()

    set_description = set_description_str

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.leave and self.total and self.n / self.total - self._last_reported >= self.step - 1e-9 \
                and self.n < self.total:
            self._last_reported = self.n / self.total
            self._write()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._written != (self.n, self.desc, self.postfix):  # the last line said it all already
                self._write(done=True)

    def line(self, done: bool = False) -> str:
        count = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
        pct = f" ({min(self.n / self.total, 1):.0%})" if self.total else ""
        tail = f" in {time.monotonic() - self._start:.1f} s" if done else ""
        return " ".join(x for x in (f"{self.desc}:" if self.desc else "", count + pct + tail, self.postfix) if x)

    def _write(self, done: bool = False) -> None:
        self._last_write = time.monotonic()
        self._written = (self.n, self.desc, self.postfix)
        stream = self.stream or sys.stderr
        stream.write(self.line(done) + "\n")
        stream.flush()
