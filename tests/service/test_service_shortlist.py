"""A repository of 1,000 teachers on PostgreSQL: listing and pagination, index use, specifications computed by a
worker, and a ranking that shortlists instead of running every teacher."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import pytest
from sqlalchemy import delete, func, select, text

from svc_helpers import assert_problem, npz_bytes, tiny_weights, wait_job

from service.tables import SpecStatus, TeacherRow

N = 1000
SOURCES = ["fashion-footwear", "fashion-clothes", "animals-all", "mnist-digits"]
FAILED = 3  # clones left without a specification


@pytest.fixture(scope="module")
def client(pg_client):
    return pg_client


@pytest.fixture(scope="module")
def db(pg_service):
    d = pg_service.db()
    yield d
    d.dispose()


def _clone_spec(spec, clone_id: str, rng):
    """The original's specification, perturbed so that clones differ: prototypes nudged, confusion damped (the
    clone loses some of its predictions to classes it does not describe, like a worse copy)."""
    from hubscout.spec._format import _unit_rows

    protos = _unit_rows(spec.prototypes.astype(np.float32) + rng.normal(0, 0.02, spec.prototypes.shape))
    return dataclasses.replace(spec, teacher_id=clone_id, prototypes=protos.astype(np.float32),
                               conf_val=(spec.conf_val * rng.uniform(0.5, 0.95)).astype(np.float32))


@pytest.fixture(scope="module")
def catalogue(pg_service, quick_repo, db):
    """1,000 more teachers: clones of the quick zoo's four small teachers, as a sync of a big repository leaves
    them. Test-side shortcut: their folders are written directly (teacher.json and a hard link to the original's
    weights; Repository.add would validate each weights file) and their rows and specifications inserted straight
    into PostgreSQL. Removed again after the module."""
    from service import specs
    from service.teacher_sync import row_from_teacher
    from hubscout.spec import load_specification
    from hubscout.teachers import META_FILE, WEIGHTS_FILE, Repository

    repo = Repository(pg_service.env["HUBSCOUT_REPOSITORY_DIR"])
    rng = np.random.default_rng(0)
    originals = {s: (repo.get(s), load_specification(repo, s)) for s in SOURCES}
    assert all(sp is not None for _, sp in originals.values()), "the quick zoo comes with specifications"
    rows, ids, failed = [], [], []
    for i in range(N):
        src = SOURCES[i % len(SOURCES)]
        teacher, spec = originals[src]
        cid = f"{src}-clone-{i:04d}"
        folder = repo.root / cid
        folder.mkdir()
        os.link(repo.root / src / WEIGHTS_FILE, folder / WEIGHTS_FILE)
        clone = dataclasses.replace(teacher, id=cid, name=f"{teacher.name} (clone {i})", root=folder)
        (folder / META_FILE).write_text(json.dumps(clone.to_dict()))
        row = row_from_teacher(clone)
        if i % 331 == 7 and len(failed) < FAILED:
            specs.set_pending(row)
            row.spec_status, row.spec_error = SpecStatus.FAILED, "test: no specification"
            failed.append(cid)
        else:
            specs.set_ready(row, _clone_spec(spec, cid, rng).to_bytes())
        rows.append(row)
        ids.append(cid)
    with db.session() as s:
        s.add_all(rows)
        s.commit()
        s.execute(text("ANALYZE teachers"))
        s.commit()
    yield {"ids": ids, "failed": sorted(failed)}
    with db.session() as s:
        s.execute(delete(TeacherRow).where(TeacherRow.id.in_(ids)))
        s.commit()
    import shutil

    for cid in ids:
        shutil.rmtree(repo.root / cid, ignore_errors=True)


def _all_ids(db) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(TeacherRow.id).order_by(TeacherRow.id)))


def test_pagination_walks_all_teachers_in_a_stable_order(client, db, catalogue):
    everyone = _all_ids(db)
    assert len(everyone) >= N + len(SOURCES)
    by_offset, offset = [], 0
    while True:
        page = client.get("/v1/teachers", params={"limit": 300, "offset": offset}).json()
        assert page["total"] == len(everyone) and page["limit"] == 300
        by_offset += [t["id"] for t in page["items"]]
        if len(page["items"]) < 300:
            break
        offset += 300
    by_cursor, after = [], None
    while True:
        page = client.get("/v1/teachers", params={"limit": 300, **({"after": after} if after else {})}).json()
        by_cursor += [t["id"] for t in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert by_offset == by_cursor == everyone  # every teacher once, in id order
    capped = client.get("/v1/teachers", params={"limit": 100_000}).json()
    assert capped["limit"] == 500 and len(capped["items"]) == 500
    failed = client.get("/v1/teachers", params={"spec_status": "failed", "limit": 10}).json()
    assert failed["total"] == FAILED and [t["id"] for t in failed["items"]] == catalogue["failed"]
    assert failed["items"][0]["spec"] == {"status": "failed", "source": None, "error": "test: no specification",
                                          "updated_at": failed["items"][0]["spec"]["updated_at"]}
    one = client.get(f"/v1/teachers/{catalogue['ids'][0]}").json()
    assert one["spec"]["status"] == "ready" and one["spec"]["source"] == "training-sample"
    assert_problem(client.get("/v1/teachers", params={"spec_status": "done"}), 422)


def test_listing_queries_use_indexes(db, catalogue):
    from sqlalchemy.dialects import postgresql

    from app.services import teacher_page_queries

    middle = catalogue["ids"][N // 2]
    queries = {
        "first page": teacher_page_queries(50, 0)[0],
        "after a cursor": teacher_page_queries(50, 0, after=middle)[0],
        "by name": teacher_page_queries(50, 0, name="x")[0],
        "by specification status": teacher_page_queries(50, 0, spec_status="failed")[0],
        "count by status": teacher_page_queries(50, 0, spec_status="failed")[1],
        "count by name": teacher_page_queries(50, 0, name="x")[1],
    }
    with db.session() as s:
        # At a thousand narrow rows the planner may rightly prefer reading the whole table; with sequential scans
        # priced out, a plan without one proves that an index serves the query (filter and order).
        s.execute(text("SET LOCAL enable_seqscan = off"))
        for what, q in queries.items():
            sql = str(q.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            plan = "\n".join(r[0] for r in s.execute(text("EXPLAIN " + sql)))
            assert "Index" in plan and "Seq Scan" not in plan, f"{what}:\n{sql}\n{plan}"


def test_a_ranking_runs_exact_ot_only_on_the_shortlist(client, db, catalogue, footwear_target):
    r = client.post("/v1/datasets", files={"file": ("footwear.npz", npz_bytes(footwear_target))})
    assert r.status_code in (200, 201), r.text
    dataset_id = r.json()["id"]
    with db.session() as s:
        n_all = s.scalar(select(func.count()).select_from(TeacherRow))
        n_ready = s.scalar(select(func.count()).select_from(TeacherRow)
                           .where(TeacherRow.spec_status == SpecStatus.READY))
    # Ordered by OT, so the specifications' OT emulation shortlists (a default ranking orders by H-score, whose
    # emulation reads the teachers' probe geometry, which these clones share with their originals).
    r = client.post("/v1/rankings", json={"dataset_id": dataset_id, "metrics": ["ot"]})  # the default shortlist: 10
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300, interval=0.2)
    assert job["status"] == "succeeded", job
    assert job["params"]["shortlist"] == 10
    ranking = client.get(job["links"]["result"]).json()
    sl = ranking["shortlist"]
    assert sl["mode"] == "shortlist" and sl["k"] == 10 and sl["considered"] == n_ready and sl["rule"]
    assert sl["method"] == "specification:gmm-joint"
    # The 10 best, and the teachers whose score intervals reach the 10th best's (near-identical clones).
    assert len(sl["shortlisted"]) == 10 and sl["kept"] == 10 + len(sl["uncertain_run"])
    assert set(sl["scores"]) == set(sl["shortlisted"]) | set(sl["uncertain_run"])
    best = [sl["scores"][t] for t in sl["shortlisted"]]
    assert sorted(best) == best and all(sl["scores"][t] >= best[-1] for t in sl["uncertain_run"])
    assert sl["unspecified_run"] == catalogue["failed"]  # no specification: always run exactly
    ran = [t["teacher_id"] for t in ranking["teachers"]]
    assert sorted(ran) == sorted(sl["shortlisted"] + sl["uncertain_run"] + catalogue["failed"])
    assert sl["not_run_count"] == n_all - len(ran) and not set(sl["not_run"]) & set(ran)
    # Every skipped teacher is listed with why, and the result says how to rank them too.
    assert [s["teacher_id"] for s in sl["skipped"]] and {s["teacher_id"] for s in sl["skipped"]} == set(sl["not_run"])
    assert all(s["lower_bound"] > sl["bound"] for s in sl["skipped"]) and sl["rank_all"] == {"shortlist": 0}
    # The teachers that know the footwear classes are found without running the others.
    assert all(t.startswith("fashion-footwear") for t in sl["shortlisted"][:3])

    # Exact OT (the score the specifications emulate) puts one of them first among those it runs.
    again = client.post("/v1/rankings", json={"dataset_id": dataset_id, "shortlist": 5, "metrics": ["ot"]}).json()
    job = wait_job(client, again["id"], timeout=300, interval=0.2)
    second_ranking = client.get(job["links"]["result"]).json()
    second = second_ranking["shortlist"]
    assert second["embed_target_cached"] and second["kept"] == 5 + len(second["uncertain_run"])
    assert second["shortlisted"] == sl["shortlisted"][:5]
    assert second_ranking["teachers"][0]["teacher_id"].startswith("fashion-footwear")


def test_a_photo_ranking_keeps_the_imagenet_teacher_its_specification_cannot_rule_out(client, catalogue):
    """1,000 grey-image teachers and an ImageNet one whose specification comes from the grey probe set: for real
    photos that specification knows nothing, so the teacher runs exactly, and comes first."""
    from hubscout.sources import photo_target

    r = client.post("/v1/datasets", files={"file": ("photos.npz", npz_bytes(photo_target(10, seed=0)))})
    assert r.status_code in (200, 201), r.text
    r = client.post("/v1/rankings", json={"dataset_id": r.json()["id"]})  # the defaults
    job = wait_job(client, r.json()["id"], timeout=300, interval=0.2)
    assert job["status"] == "succeeded", job
    ranking = client.get(job["links"]["result"]).json()
    sl = ranking["shortlist"]
    assert sl["mode"] == "shortlist" and sl["coverage"]["imagenet-efficientnet-lite0"] == 0.0
    assert "imagenet-efficientnet-lite0" in sl["shortlisted"] + sl["uncertain_run"]
    assert sl["method"] == "specification:probe-hscore"  # the default orders by H-score, and shortlists by it
    assert ranking["teachers"][0]["teacher_id"] == "imagenet-efficientnet-lite0"


def test_a_worker_computes_the_specification_of_an_uploaded_teacher(client, db):
    from hubscout.data import Dataset

    rng = np.random.default_rng(0)
    sample = Dataset(rng.integers(0, 255, (12, 28, 28, 1), dtype=np.uint8), np.arange(12) % 3, ["a", "b", "c"])
    form = {"arch": "test_resnet", "name": "specified upload", "labels": "a\nb\nc",
            "input": json.dumps({"size": 32, "channels": 1, "mean": [0.5], "std": [0.5]})}
    r = client.post("/v1/teachers", data=form, files={"weights": ("w.safetensors", tiny_weights(classes=3, seed=9)),
                                                      "spec_sample": ("s.npz", npz_bytes(sample))})
    assert r.status_code == 201, r.text
    try:
        assert r.json()["spec"]["status"] == "pending"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            spec = client.get("/v1/teachers/specified-upload").json()["spec"]
            if spec["status"] != "pending":
                break
            time.sleep(0.3)
        assert spec["status"] == "ready" and spec["source"] == "training-sample", spec
        from hubscout.spec import Specification

        with db.session() as s:
            data = s.scalar(select(TeacherRow.spec).where(TeacherRow.id == "specified-upload"))
        stored = Specification.from_bytes(data)
        assert stored.labels == ["a", "b", "c"] and stored.n_samples == 12 and list(stored.rows) == [0, 1, 2]
    finally:
        assert client.delete("/v1/teachers/specified-upload").status_code == 204


def test_the_service_defaults_are_the_library_s():
    from service.settings import Settings
    from hubscout.spec import DEFAULT_SHORTLIST_K, EXHAUSTIVE_MAX_TEACHERS

    settings = Settings()
    assert settings.exhaustive_max_teachers == EXHAUSTIVE_MAX_TEACHERS and settings.shortlist_k == DEFAULT_SHORTLIST_K
