"""One registry shape for every family of named functions: ranking scores, OT ground costs, specification scores
and distillation methods (timm's ``register_model`` / ``list_models`` / ``is_model`` is the model).

A decorator records the name, the direction (which way is better, where the family ranks anything) and what the
function needs, read from its signature::

    @METRICS.register("leep", direction="higher", needs="probs")
    def leep(probs, labels, n_classes: int) -> float: ...

Registering is the whole change: the API's enum, the CLI's help and choices and every validation read the
registry (``list(METRICS)``, ``name in METRICS``, ``METRICS.get(name)``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

__all__ = ["Entry", "Registry"]

_NO_DEFAULT = inspect.Parameter.empty


@dataclass(frozen=True)
class Entry:
    """A registered function.

    ``fn`` takes every input by keyword and passes on only those the function declares (unknown keywords are
    ignored, so a caller can loop over a registry with one set of arguments); a required input given as None is a
    ValueError naming it. ``inputs``: the keyword inputs it requires; ``needs``: the same, said for people (or the
    label given at registration); ``value``: turns the function's result into the registry's value (a float, for
    scores); ``compute`` returns the result as the function gave it; ``readout``, where a family has one, reads
    more than the value out of that result (OT's plan as class correspondences)."""

    name: str
    direction: str | None
    needs: str
    fn: Callable[..., Any]
    compute: Callable[..., Any] = field(repr=False)
    value: Callable[[Any], Any] = field(default=lambda out: out, repr=False)
    readout: Callable[..., Any] | None = field(default=None, repr=False)
    inputs: tuple[str, ...] = ()
    doc: str = ""


class Registry(Mapping[str, Entry]):
    """name → :class:`Entry`, in registration order (the first is a family's default where it has none named)."""

    def __init__(self, kind: str, directions: tuple[str, ...] = ("higher", "lower")):
        self.kind = kind
        self._directions = directions
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, direction: str | None = None, needs: str | None = None,
                 value: Callable[[Any], Any] | None = None, readout: Callable[..., Any] | None = None,
                 **bound: Any) -> Callable[[Callable], Callable]:
        """Decorator: record ``fn`` under ``name``; ``bound`` keywords are fixed for this name (one function can
        be registered under several names with different options). Returns ``fn`` unchanged."""
        if direction is not None and direction not in self._directions:
            raise ValueError(f"direction must be one of {self._directions}, got {direction!r}")

        def deco(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            params = inspect.signature(fn).parameters
            open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
            takes = {p for p in named if p not in bound}
            required = tuple(p for p in named if params[p].default is _NO_DEFAULT and p not in bound)

            def compute(*args: Any, **kw: Any) -> Any:
                missing = [p for p in required[len(args):] if kw.get(p) is None]
                if missing:
                    raise ValueError(f"{self.kind} {name!r} needs {', '.join(missing)}")
                given = kw if open_kw else {k: v for k, v in kw.items() if k in takes}
                return fn(*args, **given, **bound)

            to_value = value or (lambda out: out)

            def call(*args: Any, **kw: Any) -> Any:
                return to_value(compute(*args, **kw))

            shown = needs or ", ".join(p for p in required if p not in ("labels", "n_classes"))
            self._entries[name] = Entry(name, direction, shown, call, compute, to_value, readout, required,
                                        inspect.getdoc(fn) or "")
            return fn

        return deco

    def get(self, name: str) -> Entry:  # type: ignore[override]
        """The entry ``name``; a ValueError listing the choices for any other name."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}") from None

    def list(self) -> list[str]:
        return list(self._entries)

    def is_registered(self, name: str) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
