"""The job state machine (service.jobs), the repository mirror and the demo-zoo bootstrap, on SQLite."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pytest
import torch
from sqlalchemy import update

from hubscout.teachers import InputConfig, Repository, build_model
from service import jobs, teacher_sync
from service.db import Database, migrate, utcnow
from service.settings import Settings
from service.tables import DatasetRow, JobRow, JobStatus, RankingRow, TeacherRow, new_id, result_id_for


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, repository_dir=tmp_path / "zoo", build_demo_zoo=False, job_max_attempts=2,
                    stale_after_seconds=30)


@pytest.fixture()
def db(settings):
    migrate(settings)
    database = Database(settings)
    with database.session() as s:
        s.add(DatasetRow(id="ds", sha256="0" * 64, name="d", n_samples=1, num_classes=2, classes=["a", "b"],
                         class_counts={}, image_shape=[1, 1, 1], storage_key="datasets/ds.npz", size_bytes=1,
                         upload_bytes=1))
        s.commit()
    yield database
    database.dispose()


def new_job(db) -> str:
    job_id = new_id()
    with db.session() as s:
        s.add(JobRow(id=job_id, kind="ranking", params={}, dataset_id="ds", status=JobStatus.QUEUED, progress=0.0,
                     message="queued", attempts=0))
        s.commit()
    return job_id


def job(db, job_id) -> JobRow:
    with db.session() as s:
        return s.get(JobRow, job_id)


def age_heartbeat(db, job_id, seconds=3600):
    with db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id)
                  .values(heartbeat_at=utcnow() - dt.timedelta(seconds=seconds)))
        s.commit()


def test_one_claim_wins(db, settings):
    j = new_job(db)
    first = jobs.claim(db, settings, j, "w1")
    assert first is not None and first.attempt == 1
    assert jobs.claim(db, settings, j, "w2") is None  # running with a fresh heartbeat: taken
    row = job(db, j)
    assert row.status == "running" and row.worker == "w1" and row.started_at is not None


def test_cancel_stops_the_worker_and_keeps_its_result_out(db, settings):
    j = new_job(db)
    c = jobs.claim(db, settings, j, "w1")
    jobs.progress(db, c, 0.5, "half")
    assert job(db, j).progress == 0.5
    assert jobs.cancel(db, j)
    with pytest.raises(jobs.JobLost):
        jobs.progress(db, c, 0.6, "more")
    assert not jobs.heartbeat(db, c)
    with db.session() as s:
        s.add(RankingRow(id=result_id_for(j), job_id=j, dataset_id="ds", result={}))
        assert not jobs.finish(s, c, result_id_for(j))
        s.rollback()
    assert job(db, j).status == "cancelled"
    assert not jobs.cancel(db, j)  # already final


def test_stale_job_is_requeued_then_failed_after_max_attempts(db, settings):
    sent = []
    enqueue = lambda job_id: sent.append(job_id) or f"task-{len(sent)}"  # noqa: E731
    j = new_job(db)
    c1 = jobs.claim(db, settings, j, "w1")
    assert jobs.sweep(db, settings, enqueue) == 0  # alive
    age_heartbeat(db, j)
    assert jobs.sweep(db, settings, enqueue) == 1
    row = job(db, j)
    assert row.status == "queued" and row.task_id == "task-1" and sent == [j] and "lost" in row.message
    with pytest.raises(jobs.JobLost):  # the presumed-dead worker wakes up: its writes are refused
        jobs.progress(db, c1, 0.9, "late")
    c2 = jobs.claim(db, settings, j, "w2")
    assert c2 is not None and c2.attempt == 2
    age_heartbeat(db, j)
    assert jobs.sweep(db, settings, enqueue) == 1
    row = job(db, j)
    assert row.status == "failed" and "2 attempts" in row.error and row.finished_at is not None
    assert sent == [j]


def test_redelivered_task_takes_over_a_dead_workers_job(db, settings):
    j = new_job(db)
    jobs.claim(db, settings, j, "w1")
    age_heartbeat(db, j)
    c = jobs.claim(db, settings, j, "w2")
    assert c is not None and job(db, j).worker == "w2"


def test_exhausted_job_delivered_again_is_failed(db, settings):
    j = new_job(db)
    jobs.claim(db, settings, j, "w1")
    age_heartbeat(db, j)
    jobs.claim(db, settings, j, "w2")
    age_heartbeat(db, j)
    assert jobs.claim(db, settings, j, "w3") is None
    assert job(db, j).status == "failed"


def test_local_worker_startup_recovers_every_running_job(db, settings):
    sent = []
    running, queued = new_job(db), new_job(db)
    jobs.claim(db, settings, running, "dead-local-worker")  # fresh heartbeat, but its worker is gone
    n = jobs.sweep(db, settings, lambda i: sent.append(i) or "t", all_running=True, resend_queued=True)
    assert n == 1
    assert job(db, running).status == "queued"
    assert sorted(sent) == sorted([running, queued])


def test_a_finished_job_is_not_run_again(db, settings):
    from worker.execution import execute
    from worker.runtime import Context

    j = new_job(db)
    c = jobs.claim(db, settings, j, "w1")
    with db.session() as s:
        s.add(RankingRow(id=result_id_for(j), job_id=j, dataset_id="ds", result={"teachers": []}))
        assert jobs.finish(s, c, result_id_for(j))
        s.commit()
    ctx = Context(settings, db, None, None)  # type: ignore[arg-type]
    assert execute(ctx, j, "w2") == "skipped"
    assert job(db, j).status == "succeeded" and job(db, j).attempts == 1


def test_distillation_curves_go_out_with_progress_and_with_the_result(db, settings):
    import threading

    from worker.runtime import Context, Reporter

    j = new_job(db)
    c = jobs.claim(db, settings, j, "w1")
    report = Reporter(Context(settings, db, None, None), c, threading.Event(), min_interval=0)  # type: ignore
    report(0.1, "training")
    assert job(db, j).curves is None
    one = {"epoch": [1], "loss": [1.5], "ce": [1.0], "ot": [0.03], "train_acc": [0.5], "val_acc": [float("nan")]}
    report.curves(one)
    report(0.5, "epoch 1/2")
    assert job(db, j).curves == {**one, "val_acc": [None]}  # JSON-safe
    report(0.6, "no new epoch")
    assert job(db, j).curves["epoch"] == [1]  # kept until newer curves come
    two = {k: v * 2 for k, v in one.items()}
    with db.session() as s:
        s.add(RankingRow(id=result_id_for(j), job_id=j, dataset_id="ds", result={}))
        assert jobs.finish(s, c, result_id_for(j), curves={**two, "val_acc": [0.5, 0.5]})
        s.commit()
    assert job(db, j).curves["epoch"] == [1, 1] and job(db, j).status == "succeeded"


def test_a_distillation_whose_loss_turns_non_finite_fails_and_stores_no_student(db, settings, poisoned_teacher):
    from svc_helpers import npz_bytes, toy_dataset

    from hubscout.distill import DistillConfig
    from service.storage import LocalStorage
    from service.tables import StudentRow
    from worker.execution import execute
    from worker.runtime import Context

    storage = LocalStorage(settings.storage_root)
    ds = toy_dataset(n=12)
    storage.put_bytes("datasets/toy.npz", npz_bytes(ds))
    tid = poisoned_teacher(Repository(settings.repository_dir))
    job_id = new_id()
    cfg = DistillConfig(student_arch="test_resnet", epochs=2, batch_size=16, teacher_views=1)
    with db.session() as s:
        s.add(DatasetRow(id="toy", sha256=ds.sha256, name="toy", n_samples=len(ds), num_classes=3,
                         classes=list(ds.classes), class_counts={}, image_shape=[16, 16, 1],
                         storage_key="datasets/toy.npz", size_bytes=1, upload_bytes=1))
        s.add(JobRow(id=job_id, kind="distillation", params={"teacher_ids": [tid], "config": cfg.to_dict()},
                     dataset_id="toy", status=JobStatus.QUEUED, progress=0.0, message="queued", attempts=0))
        s.commit()
    assert execute(Context(settings, db, storage, None), job_id, "w1") == "failed"  # type: ignore[arg-type]
    failed = job(db, job_id)
    assert failed.status == "failed" and "the loss became nan" in failed.error
    with db.session() as s:
        assert s.get(StudentRow, result_id_for(job_id)) is None
    assert not storage.exists(f"students/{result_id_for(job_id)}.zip")


def test_stored_scores_carry_the_plan_and_older_ones_are_scored_again(db):
    from types import SimpleNamespace

    from hubscout.ot import plan_summary
    from hubscout.rank import RankEntry
    from worker.stores import DbScoreStore

    store = DbScoreStore(db)
    teachers = [SimpleNamespace(id=f"t{i}", name=f"T{i}", outputs_key=f"{i}" * 64) for i in range(2)]
    plan = plan_summary([[0.4, 0.1], [0.1, 0.4]], ["x", "y"], ["a", "b"])
    entries = [RankEntry(t.id, t.name, {"ot": 0.2, "leep": -1.0}, {"a": [("x", 0.8)]}, plan_summary=plan)
               for t in teachers]
    assert store.record(entries, {t.id: t.outputs_key for t in teachers}, "d" * 64, "proto-softmax") == 4
    found = store.lookup(teachers, "d" * 64, ["ot", "leep"], "proto-softmax")
    assert set(found) == {"t0", "t1"} and found["t0"].plan_summary == plan and found["t0"].cached
    # A score stored before plans were kept: that teacher is scored again, the other one is not.
    with db.session() as s:
        from service.tables import ScoreRow

        row = s.query(ScoreRow).filter_by(teacher_sha256="1" * 64, metric="ot").one()
        row.extra = {k: v for k, v in row.extra.items() if k != "plan"}
        s.commit()
    assert set(store.lookup(teachers, "d" * 64, ["ot", "leep"], "proto-softmax")) == {"t0"}
    assert set(store.lookup(teachers, "d" * 64, ["leep"], "proto-softmax")) == {"t0", "t1"}


def _add(repo: Repository, tid: str, seed: int = 0):
    torch.manual_seed(seed)
    return repo.add(arch="test_resnet", weights=build_model("test_resnet", 2, 1).state_dict(), labels=["a", "b"],
                    name=tid, input=InputConfig(32, 1, (0.5,), (0.5,)), teacher_id=tid, overwrite=True)


def test_repository_mirror_follows_the_folder(db, settings):
    repo = Repository(settings.repository_dir)
    _add(repo, "one")
    _add(repo, "two", seed=1)
    assert teacher_sync.sync(db, repo) == {"teachers": 2, "added": 2, "updated": 0, "removed": 0, "specs_pending": 2}
    repo.remove("one")
    _add(repo, "three", seed=3)
    assert teacher_sync.sync(db, repo) == {"teachers": 2, "added": 1, "updated": 0, "removed": 1, "specs_pending": 2}
    with db.session() as s:
        assert sorted(r.id for r in s.query(TeacherRow).all()) == ["three", "two"]


def _fake_spec(teacher, seed: int = 0):
    """A specification of the right shape for ``teacher``, without the reference model."""
    import numpy as np

    from hubscout.spec import TeacherView, build_specification

    rng = np.random.default_rng(seed)
    view = TeacherView(rng.normal(size=(4, 8)), np.full((4, 2), 0.5), rng.normal(size=(2, 8)))
    return build_specification(teacher, None, None, np.array([0, 0, 1, 1]), embeddings=rng.normal(size=(4, 16)),
                               view=view)


def test_specifications_follow_the_folder_and_pending_ones_are_requested(db, settings):
    from service import specs
    from hubscout.spec import SPEC_FILE, save_specification

    repo = Repository(settings.repository_dir)
    one = _add(repo, "one")
    teacher_sync.sync(db, repo)
    with db.session() as s:
        row = s.get(TeacherRow, "one")
        assert row.spec_status == "pending" and row.spec is None
    sent: list[str] = []
    assert specs.request_due(db, settings, sent.append) == 1 and sent == ["one"]
    assert specs.request_due(db, settings, sent.append) == 0  # asked already, not stale yet
    with db.session() as s:
        s.execute(update(TeacherRow).values(spec_requested_at=utcnow() - dt.timedelta(seconds=60)))
        s.commit()
    assert specs.request_due(db, settings, sent.append) == 1 and sent == ["one", "one"]  # a lost request

    # A spec.npz for these weights (the CLI, or a worker, wrote it): the next sync stores it.
    save_specification(repo, _fake_spec(one))
    assert teacher_sync.sync(db, repo)["specs_pending"] == 0
    with db.session() as s:
        row = s.get(TeacherRow, "one")
        assert row.spec_status == "ready" and row.spec_source == "training-sample"
        assert row.spec == (repo.root / "one" / SPEC_FILE).read_bytes()
    # Removing the file keeps the stored one (still current for the weights) ...
    (repo.root / "one" / SPEC_FILE).unlink()
    assert teacher_sync.sync(db, repo)["specs_pending"] == 0
    # ... new weights make it stale: the teacher waits for a worker again.
    two = _add(repo, "one", seed=7)
    save_specification(repo, dataclasses.replace(_fake_spec(two), weights_sha256=one.weights_sha256))
    assert teacher_sync.sync(db, repo) == {"teachers": 1, "added": 0, "updated": 1, "removed": 0, "specs_pending": 1}
    with db.session() as s:
        row = s.get(TeacherRow, "one")
        assert row.spec_status == "pending" and row.spec is None and row.weights_sha256 == two.weights_sha256


def test_missing_repository_is_built_once_on_first_start(tmp_path, monkeypatch, caplog):
    import hubscout.spec
    import hubscout.zoo

    built = []
    monkeypatch.setattr(hubscout.spec, "ensure_specifications",
                        lambda repo, **kw: built.append(("specs", repo.root, repo.ids())))

    def fake_build(out, quick=False, **kw):
        built.append((out, quick))
        _add(Repository(out), "demo")
        return Repository(out)

    monkeypatch.setattr(hubscout.zoo, "build_demo_zoo", fake_build)
    s = Settings(data_dir=tmp_path / "var", repository_dir=tmp_path / "zoo", demo_zoo_quick=True)
    with caplog.at_level(logging.INFO, logger="hubscout.repository"):
        root = teacher_sync.ensure_repository(s)
    assert root == (tmp_path / "zoo").resolve() and Repository(root).ids() == ["demo"]
    # After the repository is in place (no ranking of the demo zoo waits for them).
    assert built[1] == ("specs", root, ["demo"])
    built.pop()
    assert len(built) == 1 and built[0][1] is True and built[0][0] != root  # built aside, then renamed
    assert "building the quick demo zoo" in caplog.text
    teacher_sync.ensure_repository(s)
    assert len(built) == 1
    assert not [p for p in tmp_path.iterdir() if "building" in p.name]

    off = Settings(data_dir=tmp_path / "var", repository_dir=tmp_path / "none", build_demo_zoo=False)
    teacher_sync.ensure_repository(off)
    assert not (tmp_path / "none").exists() and len(built) == 1
