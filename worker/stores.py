"""The library's stores on the service's database and storage: ``OutputsCache``, ``ScoreStore``, the
specifications and the target embeddings.

A forward pass of a teacher over a dataset is stored once per (teacher weights sha256, dataset sha256): the
arrays as bytes in storage, a row in ``teacher_outputs`` saying they exist. Workers on other machines find them
through the shared database and storage.

Both caches are kept apart per owner (API key): shared, the ``cached`` flags and the timings of a ranking would
tell one key that another had uploaded the same data. The embedded default's single owner keeps plain keys.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

import hubscout
from hubscout.scores import METRICS
from service.db import Database, utcnow
from service.storage import LocalStorage
from service.tables import LOCAL_OWNER, ScoreRow, SpecStatus, TeacherOutputRow, TeacherRow, json_safe

log = logging.getLogger("hubscout.cache")
_SHA = re.compile(r"[0-9a-f]{64}")


def owner_key(dataset_sha256: str, owner: str | None) -> str:
    """The dataset key under which ``owner``'s cached outputs and scores are filed."""
    if not owner or owner == LOCAL_OWNER:
        return dataset_sha256
    return hashlib.sha256(f"{owner}:{dataset_sha256}".encode()).hexdigest()


def _key(teacher_sha256: str, dataset_sha256: str) -> str:
    if not (_SHA.fullmatch(teacher_sha256) and _SHA.fullmatch(dataset_sha256)):
        raise ValueError("cache keys are sha256 hex digests")
    return f"outputs/{dataset_sha256[:2]}/{dataset_sha256}-{teacher_sha256}.npz"


class DbOutputsCache:
    """``hubscout.extract.OutputsCache`` backed by the ``teacher_outputs`` table and blob storage."""

    def __init__(self, db: Database, storage: LocalStorage, owner: str | None = None):
        self.db = db
        self.storage = storage
        self.owner = owner
        self.hits = 0
        self.misses = 0
        self.computed = 0  # forward passes stored by this cache (what a duplicate ranking must not repeat)

    def get(self, teacher_sha256: str, dataset_sha256: str):
        from hubscout.extract import TeacherOutputs

        dataset_sha256 = owner_key(dataset_sha256, self.owner)
        with self.db.session() as s:
            row = s.scalar(select(TeacherOutputRow).where(TeacherOutputRow.teacher_sha256 == teacher_sha256,
                                                          TeacherOutputRow.dataset_sha256 == dataset_sha256))
            if row is None:
                self.misses += 1
                return None
            try:
                outputs = TeacherOutputs.from_bytes(self.storage.get_bytes(row.storage_key))
            except (OSError, ValueError, KeyError) as e:
                # A blob lost or torn behind the row's back: forget it and recompute.
                log.warning("dropping unreadable cached outputs %s: %s", row.storage_key, e)
                s.delete(row)
                s.commit()
                self.misses += 1
                return None
            s.execute(update(TeacherOutputRow).where(TeacherOutputRow.id == row.id)
                      .values(hits=TeacherOutputRow.hits + 1, last_used_at=utcnow()))
            s.commit()
        self.hits += 1
        return outputs

    def put(self, teacher_sha256: str, dataset_sha256: str, outputs) -> None:
        dataset_sha256 = owner_key(dataset_sha256, self.owner)
        self.computed += 1
        key = _key(teacher_sha256, dataset_sha256)
        data = outputs.to_bytes()
        # Blob first, row second: a row always points at a complete blob. The key is fixed by the hashes, so
        # two workers computing the same outputs write the same bytes to the same place.
        self.storage.put_bytes(key, data)
        row = TeacherOutputRow(teacher_sha256=teacher_sha256, dataset_sha256=dataset_sha256, storage_key=key,
                               n_samples=int(outputs.features.shape[0]), feature_dim=int(outputs.features.shape[1]),
                               num_classes=int(outputs.logits.shape[1]), size_bytes=len(data), hits=0)
        with self.db.session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # already cached by a concurrent job: same key, same bytes


class StorageControlCache:
    """``hubscout.distill.ControlCache`` in blob storage: the CE-only control's metrics, one small JSON per
    (owner, control key)."""

    def __init__(self, storage: LocalStorage, owner: str | None = None):
        self.storage = storage
        self.owner = owner

    def _key(self, key: str) -> str:
        return f"ce-controls/{owner_key(key, self.owner)}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.storage.get_bytes(self._key(key)))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value) -> None:
        self.storage.put_bytes(self._key(key), json.dumps(json_safe(dict(value))).encode())


class DbScoreStore:
    """``hubscout.rank.ScoreStore`` on the ``scores`` table: every metric value computed for a (teacher weights,
    dataset content) pair, with OT's correspondences and plan summary.

    Scores are tagged with the library version that computed them; another version's are recomputed."""

    def __init__(self, db: Database, owner: str | None = None):
        self.db = db
        self.owner = owner

    @staticmethod
    def _cost_key(metric: str, cost: str) -> str:
        return cost if metric == "ot" else ""

    def _rows(self, s, teacher_shas: list[str], dataset_sha256: str, metrics: list[str]) -> list[ScoreRow]:
        rows: list[ScoreRow] = []
        for i in range(0, len(teacher_shas), 500):  # bounded IN lists
            rows += s.scalars(select(ScoreRow).where(
                ScoreRow.dataset_sha256 == dataset_sha256, ScoreRow.metric.in_(metrics),
                ScoreRow.teacher_sha256.in_(teacher_shas[i:i + 500])))
        return rows

    def lookup(self, teachers, dataset_sha256: str, metrics: list[str], cost: str) -> dict:
        """{teacher id: RankEntry} for the teachers whose every requested metric is stored."""
        from hubscout.rank import RankEntry  # torch, like every import below a def here

        dataset_sha256 = owner_key(dataset_sha256, self.owner)
        with self.db.session() as s:
            rows = self._rows(s, sorted({t.outputs_key for t in teachers}), dataset_sha256, metrics)
        by_key = {(r.teacher_sha256, r.metric, r.cost): r for r in rows}
        out = {}
        for t in teachers:
            scores: dict[str, float] = {}
            correspondences: dict = {}
            matches: dict = {}
            plan = None
            for m in metrics:
                row = by_key.get((t.outputs_key, m, self._cost_key(m, cost)))
                if row is None or (row.extra or {}).get("v") != hubscout.__version__:
                    break
                if m == "ot":
                    extra = row.extra or {}
                    if "plan" not in extra or "matches" not in extra:
                        break  # stored before plans and matches were kept: score again (from the cached outputs)
                    correspondences = {c: [(str(x), float(w)) for x, w in pairs]
                                       for c, pairs in (extra.get("correspondences") or {}).items()}
                    matches = {c: [(str(x), float(w)) for x, w in pairs]
                               for c, pairs in (extra.get("matches") or {}).items()}
                    plan = extra["plan"]
                scores[m] = float("nan") if row.value is None else float(row.value)
            else:
                out[t.id] = RankEntry(t.id, t.name, scores, correspondences, matches=matches, plan_summary=plan,
                                      cached=True)
        return out

    def record(self, entries, teacher_sha: dict[str, str], dataset_sha256: str, cost: str) -> int:
        """Upsert the scores of freshly computed ``RankEntry``s."""
        dataset_sha256 = owner_key(dataset_sha256, self.owner)
        values = {}
        for e in entries:
            tsha = teacher_sha.get(e.teacher_id)
            if tsha is None:
                continue
            for metric, value in e.scores.items():
                extra: dict = {"v": hubscout.__version__}
                if metric == "ot":
                    extra["correspondences"] = {c: [[x, float(w)] for x, w in pairs]
                                                for c, pairs in e.correspondences.items()}
                    extra["matches"] = {c: [[x, float(w)] for x, w in pairs] for c, pairs in e.matches.items()}
                    extra["plan"] = e.plan_summary
                values[(tsha, metric, self._cost_key(metric, cost))] = dict(
                    value=json_safe(float(value)), direction=METRICS[metric].direction, extra=json_safe(extra))
        if not values:
            return 0
        for _ in range(3):
            with self.db.session() as s:
                metrics = sorted({m for _, m, _ in values})
                existing = {(r.teacher_sha256, r.metric, r.cost): r
                            for r in self._rows(s, sorted({t for t, _, _ in values}), dataset_sha256, metrics)}
                for (tsha, metric, cost_key), v in values.items():
                    row = existing.get((tsha, metric, cost_key))
                    if row is None:
                        s.add(ScoreRow(teacher_sha256=tsha, dataset_sha256=dataset_sha256, metric=metric,
                                       cost=cost_key, **v))
                    else:
                        for k, x in v.items():
                            setattr(row, k, x)
                try:
                    s.commit()
                    break
                except IntegrityError:
                    # A concurrent ranking inserted some of the same scores: read them back and update instead.
                    s.rollback()
        return len(values)


class SpecStore:
    """The teachers' specifications from the database, decoded once per worker process and kept while their
    hash does not change: a ranking reads only the (id, hash) pairs of 1,000 teachers, and the bytes of the
    new or changed ones."""

    def __init__(self) -> None:
        self._specs: dict[str, tuple[str, Any]] = {}  # id -> (spec sha256, Specification)
        self._index_key: tuple | None = None
        self._index = None

    def index(self, db: Database, candidates: list[str]):
        """(SpecIndex of the candidates with a current specification, in candidate order; fetch seconds)."""
        from hubscout.spec import Specification, SpecIndex

        t0 = time.perf_counter()
        wanted = set(candidates)
        with db.session() as s:
            ready = list(s.execute(select(TeacherRow.id, TeacherRow.weights_sha256, TeacherRow.spec_sha256)
                                   .where(TeacherRow.spec_status == SpecStatus.READY)))
            for gone in set(self._specs) - {r.id for r in ready}:  # deleted, replaced or failed since
                del self._specs[gone]
            rows = [r for r in ready if r.id in wanted]
            stale = [r.id for r in rows if self._specs.get(r.id, ("",))[0] != r.spec_sha256]
            for i in range(0, len(stale), 200):  # bounded IN lists and result sets
                for tid, sha, data in s.execute(select(TeacherRow.id, TeacherRow.spec_sha256, TeacherRow.spec)
                                                .where(TeacherRow.id.in_(stale[i:i + 200]))):
                    try:
                        self._specs[tid] = (sha, Specification.from_bytes(data))
                    except (ValueError, TypeError):
                        log.warning("unreadable specification of teacher %s: ranked exactly", tid)
                        self._specs.pop(tid, None)
        hashes = {r.id: (r.weights_sha256, r.spec_sha256) for r in rows}
        keep = [t for t in candidates if t in hashes and t in self._specs
                and self._specs[t][0] == hashes[t][1] and self._specs[t][1].is_current(hashes[t][0])]
        key = tuple((t, hashes[t][1]) for t in keep)
        if key != self._index_key:
            self._index = SpecIndex.build([self._specs[t][1] for t in keep])
            self._index_key = key
        return self._index, time.perf_counter() - t0


def target_embedding(storage: LocalStorage, dataset, embedder_fn, owner: str | None = None, probe_cache_dir=None):
    """The target's reference embedding, computed once per dataset content and owner (kept in storage under
    :func:`owner_key`, so one key cannot tell from ``embed_target_cached`` that another has the same data).
    Returns (embedding, was cached)."""
    from hubscout.spec import REFERENCE_ARCH, REFERENCE_SIZE, SPEC_VERSION, TargetEmbedding, embed_target

    if not _SHA.fullmatch(dataset.sha256):
        raise ValueError("dataset hash is not a sha256 hex digest")
    name = owner_key(dataset.sha256, owner)
    key = f"embeddings/{REFERENCE_ARCH}-{REFERENCE_SIZE}-v{SPEC_VERSION}/{name[:2]}/{name}.npz"
    if storage.exists(key):
        try:
            return TargetEmbedding.from_bytes(storage.get_bytes(key)), True
        except (OSError, ValueError, KeyError) as e:
            log.warning("recomputing unreadable target embedding %s: %s", key, e)
    emb = embed_target(dataset, embedder_fn(), probe_cache_dir)
    storage.put_bytes(key, emb.to_bytes())
    return emb, False
