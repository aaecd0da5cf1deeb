"""The CE-only control of a distillation: its cache key and caches. The control is the same student trained on
the labels alone (same split, schedule and seed), so a distillation's gain over it is what the teachers added."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Protocol

from hubscout.distill._config import DistillConfig
from hubscout.distill._student import _json_safe

# Options of the distillation term only: a cross-entropy-only student does not depend on them.
_KD_ONLY = ("lam", "tau", "reg", "sinkhorn_iters", "cost", "kd", "proto_temperature", "ce_only")
CONTROL_METRICS = ("train_accuracy", "val_accuracy", "n_train", "n_val", "epochs", "steps")


def control_key(dataset_sha256: str, cfg: DistillConfig) -> str:
    """What the CE-only control depends on: the data's content, the student, the schedule, the split and seed."""
    c = {k: v for k, v in cfg.to_dict().items() if k not in _KD_ONLY}
    return hashlib.sha256(json.dumps(["ce-control", 1, dataset_sha256, c], sort_keys=True).encode()).hexdigest()


class ControlCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: Mapping[str, Any]) -> None: ...


class DirControlCache:
    """CE-only control metrics as small JSON files in a folder (the command line's cache)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(_json_safe(dict(value))))
        tmp.replace(self.root / f"{key}.json")
