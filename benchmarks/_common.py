"""Shared helpers of the benchmarks: machine info, repository resolution, result writing."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
QUICK_ZOO_CACHE = ROOT / ".pytest_cache" / "d" / "hubscout-quick-zoo"
FULL_ZOO = ROOT / "demo-zoo"


def limit_threads(n: int = 1) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # Other work on the machine: what a shared machine's figures must be read with.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _n_teachers(d: Path) -> int:
    return sum(1 for p in d.glob("*/teacher.json"))


def resolve_repo(arg: str | None, quick: bool) -> Path:
    """``--repo`` if given; else the full demo zoo when it looks complete (not --quick), else the cached quick
    zoo with the most teachers (ties: the one with specifications), else the full zoo as it is."""
    if arg:
        return Path(arg)
    if not quick and FULL_ZOO.is_dir() and _n_teachers(FULL_ZOO) >= 14:
        return FULL_ZOO
    cands = [d for d in QUICK_ZOO_CACHE.glob("*/") if _n_teachers(d) > 0] if QUICK_ZOO_CACHE.is_dir() else []
    if cands:
        return max(cands, key=lambda d: (_n_teachers(d), len(list(d.glob("*/spec.npz"))), d.stat().st_mtime))
    if FULL_ZOO.is_dir() and _n_teachers(FULL_ZOO) > 0:
        return FULL_ZOO
    raise SystemExit("no teacher repository found: build one (hubscout demo-zoo) or pass --repo DIR")


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    j = RESULTS / f"{name}.json"
    m = RESULTS / f"{name}.md"
    j.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    m.write_text(markdown)
    return j, m


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def machine_md(m: dict[str, Any]) -> str:
    return (f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} "
            f"({m['torch_threads']} thread(s)), device {m['device']}; run {m['date_utc']}.\n")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return "nan" if x != x else f"{x:.3f}"
        return str(x)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
