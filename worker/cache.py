"""The library's ``OutputsCache`` on the service's database and storage, and the score records.

A forward pass of a teacher over a dataset is stored once per (teacher weights sha256, dataset sha256): the
arrays as bytes in storage, a row in ``teacher_outputs`` saying they exist. Workers on other machines find them
through the shared database and storage.

Both caches are kept apart per owner (API key): shared, the ``cached`` flags and the timings of a ranking would
tell one key that another had uploaded the same data. The embedded default's single owner keeps plain keys.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import re
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from app.db import Database, utcnow
from app.models import LOCAL_OWNER, ScoreRow, SpecStatus, TeacherOutputRow, TeacherRow, json_safe
from app.storage import LocalStorage

log = logging.getLogger("hubscout.cache")
_SHA = re.compile(r"[0-9a-f]{64}")


def owner_key(dataset_sha256: str, owner: str | None) -> str:
    """The dataset key under which ``owner``'s cached outputs and scores are filed."""
    if not owner or owner == LOCAL_OWNER:
        return dataset_sha256
    return hashlib.sha256(f"{owner}:{dataset_sha256}".encode()).hexdigest()


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


class ScoreStore:
    """Every metric value computed for a (teacher weights, dataset content) pair, with OT's correspondences and
    plan summary.

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
        import hubscout
        from hubscout.rank import RankEntry

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
        import hubscout
        from hubscout.scores import METRICS

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


def rank_cached(dataset, repo, *, metrics, teacher_ids, top_k, outputs_cache: DbOutputsCache, scores: ScoreStore,
                device, batch_size: int, on_progress, compute_lock: Callable[[], object] | None = None):
    """``hubscout.rank.rank`` over the teachers whose scores are not stored yet (their outputs through
    ``outputs_cache``), merged with the stored scores of the others and ordered by the library.

    ``compute_lock()``, held while computing, is one per dataset: of two identical rankings running at once, the
    second waits and then finds everything scored, so the teachers' forward passes run once."""
    import time

    from hubscout.rank import DEFAULT_COST, Ranking, order_entries, rank, resolve_metrics, select_teachers

    t0 = time.perf_counter()
    metric_list = resolve_metrics(metrics)
    teachers = select_teachers(repo, teacher_ids)
    stored = scores.lookup(teachers, dataset.sha256, metric_list, DEFAULT_COST)
    known = [stored[t.id] for t in teachers if t.id in stored]
    missing = [t for t in teachers if t.id not in stored]
    fresh, excluded = [], []
    if missing:
        with compute_lock() if compute_lock else nullcontext():
            # Scored meanwhile by the job that held the lock?
            stored.update(scores.lookup(missing, dataset.sha256, metric_list, DEFAULT_COST))
            known = [stored[t.id] for t in teachers if t.id in stored]
            missing = [t for t in teachers if t.id not in stored]
            if missing:
                part = rank(dataset, repo, metrics=metric_list, teacher_ids=[t.id for t in missing],
                            cache=outputs_cache, device=device, batch_size=batch_size, on_progress=on_progress)
                fresh, excluded = part.entries, part.excluded
                scores.record(fresh, {t.id: t.outputs_key for t in missing}, dataset.sha256, part.cost)
    ordered = order_entries(known + fresh, metric_list[0])
    if top_k is not None:
        ordered = ordered[:top_k]
    return Ranking(dataset.sha256, dataset.classes, len(dataset), metric_list, ordered, DEFAULT_COST,
                   time.perf_counter() - t0, excluded=excluded), len(known)


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
        weights = {r.id: (r.weights_sha256, r.spec_sha256) for r in rows}
        keep = [t for t in candidates if t in weights and t in self._specs
                and self._specs[t][0] == weights[t][1] and self._specs[t][1].is_current(weights[t][0])]
        key = tuple((t, weights[t][1]) for t in keep)
        if key != self._index_key:
            self._index = SpecIndex.build([self._specs[t][1] for t in keep])
            self._index_key = key
        return self._index, time.perf_counter() - t0


def target_embedding(storage: LocalStorage, dataset, embedder_fn, owner: str | None = None):
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
    emb = embed_target(dataset, embedder_fn())
    storage.put_bytes(key, emb.to_bytes())
    return emb, False
