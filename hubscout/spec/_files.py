"""Specifications beside the teachers in a repository folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from hubscout.spec._format import SPEC_FILE, Specification
from hubscout.spec._images import EmbedCache, specification_for
from hubscout.spec._reference import ReferenceEmbedder


def load_specification(repo, teacher_id: str) -> Specification | None:
    """The stored specification of a repository teacher, or None when missing, unreadable or stale (other
    weights, an older specification version)."""
    path = repo.root / teacher_id / SPEC_FILE
    if not path.is_file():
        return None
    try:
        spec = Specification.from_bytes(path.read_bytes())
    except ValueError:
        return None
    return spec if spec.is_current(repo.get(teacher_id).weights_sha256) else None


def save_specification(repo_or_root, spec: Specification) -> Path:
    """Write ``<teacher>/spec.npz`` atomically (readers never see half a file)."""
    root = Path(getattr(repo_or_root, "root", repo_or_root))
    path = root / spec.teacher_id / SPEC_FILE
    tmp = path.with_name(f".{SPEC_FILE}.{os.getpid()}.tmp")
    tmp.write_bytes(spec.to_bytes())
    tmp.replace(path)
    return path


def ensure_specifications(repo, embedder: ReferenceEmbedder | None = None, show_progress: bool = False,
                          device=None, on_missing: Callable[[list[str]], None] | None = None,
                          on_spec: Callable[[Specification], None] | None = None) -> int:
    """Compute and store the specification of every teacher in ``repo`` that lacks a current one; returns how
    many were computed. ``on_missing(ids)`` hears which before the first is computed, ``on_spec(spec)`` each one
    once it is stored."""
    missing = [t for t in repo.list() if load_specification(repo, t.id) is None]
    if on_missing is not None:
        on_missing([t.id for t in missing])
    if not missing:
        return 0
    embedder = embedder or ReferenceEmbedder(device=device)
    it = missing
    if show_progress:
        from hubscout.progress import progress_bar

        it = progress_bar(missing, desc="specifications", unit="teacher")
    cache: EmbedCache = {}
    for t in it:
        spec = specification_for(t, embedder, embed_cache=cache, device=device, probe_cache_dir=repo_cache_dir(repo))
        save_specification(repo, spec)
        if on_spec is not None:
            on_spec(spec)
    return len(missing)


def repo_cache_dir(repo) -> Path:
    """Where a repository keeps the probe set's embeddings (a dot folder: never listed as a teacher)."""
    return Path(repo.root) / ".cache"
