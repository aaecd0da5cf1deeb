"""A ranking job: the library's ``rank`` with the service's stores (outputs, scores, specifications) and lock."""
from __future__ import annotations

import logging

from sqlalchemy import select

from hubscout.scores import DEFAULT_METRICS

from service import jobs
from service.tables import DatasetRow, JobRow, RankingRow, TeacherRow, json_safe, result_id_for
from worker.locks import exclusive
from worker.runtime import Context, Reporter, device_for, load_dataset, reference_embedder, retry_db
from worker.stores import DbOutputsCache, DbScoreStore, SpecStore, target_embedding

log = logging.getLogger("hubscout.worker")

_spec_store = SpecStore()


def run_ranking(ctx: Context, claim: jobs.Claim, job: JobRow, dataset: DatasetRow, report: Reporter) -> None:
    # torch: the library loads with the worker's first job, not when the worker starts.
    from hubscout.rank import rank
    from hubscout.teachers import Repository

    params = job.params
    report(0.0, "loading dataset")
    ds = load_dataset(ctx, dataset)
    repo = Repository(ctx.settings.repository_dir)
    outputs = DbOutputsCache(ctx.db, ctx.storage, owner=job.owner)

    waited = []

    def wait_for_twin() -> None:
        report.check()
        if not waited:
            log.info("job %s waits for a ranking of the same data to finish its forward passes", job.id)
            waited.append(True)
        report(0.0, "waiting for a ranking of the same data to finish its forward passes")

    def lock():
        return exclusive(ctx.db, ctx.storage, f"rank:{job.owner}:{ds.sha256}", on_wait=wait_for_twin)

    shortlist = DbShortlist(ctx, job.owner, repo)
    ranking = rank(ds, repo, metrics=params.get("metrics") or list(DEFAULT_METRICS),
                   teacher_ids=shortlist.candidates(params.get("teacher_ids")),
                   top_k=params.get("top_k"), cache=outputs, scores=DbScoreStore(ctx.db, owner=job.owner),
                   device=device_for(ctx.settings), batch_size=ctx.settings.batch_size,
                   on_progress=report.scaled(0.0, 0.95), shortlist_k=params.get("shortlist") or None,
                   shortlist=shortlist, compute_lock=lock,
                   # Recorded with the job when it was created; older jobs: this worker's setting.
                   exhaustive_max=params.get("exhaustive_max", ctx.settings.exhaustive_max_teachers))
    info = ranking.shortlist
    result = json_safe(ranking.to_dict())
    rid = result_id_for(job.id)

    def record() -> None:
        with ctx.db.session() as s:
            s.merge(RankingRow(id=rid, job_id=job.id, dataset_id=dataset.id, result=result))
            if not jobs.finish(s, claim, rid):
                s.rollback()
                raise jobs.JobLost(job.id)
            s.commit()

    retry_db(ctx, record)
    log.info("ranking %s: %d teachers%s; scores stored for %d; outputs cached for %d, computed for %d", rid,
             len(ranking.entries), f" (shortlisted from {info['considered'] + len(info['unspecified_run'])})"
             if info and info["mode"] == "shortlist" else "", ranking.n_stored, outputs.hits, outputs.computed)


class DbShortlist:
    """``hubscout.rank.ShortlistStep`` on the service: the candidates and their specifications from the database,
    the target embedded once per dataset content and owner."""

    def __init__(self, ctx: Context, owner: str, repo):
        self.ctx, self.owner, self.repo = ctx, owner, repo

    def candidates(self, teacher_ids) -> list[str]:
        """``teacher_ids``, or for "every teacher" those this key sees (the shared catalogue and its own), not
        every folder of the repository."""
        if teacher_ids:
            return list(teacher_ids)
        with self.ctx.db.session() as s:
            visible = [t for t in s.scalars(select(TeacherRow.id).where(TeacherRow.visible_to(self.owner))
                                            .order_by(TeacherRow.id)) if t in self.repo]
        if not visible:
            raise ValueError("the repository holds no teacher this key may rank")
        return visible

    def __call__(self, ds, candidates: list[str], k: int, method: str | None = None) -> tuple[list[str], dict]:
        from hubscout.spec import repo_cache_dir, shortlist_plan

        ctx = self.ctx
        index, load_s = _spec_store.index(ctx.db, candidates)
        target, embed_cached = target_embedding(ctx.storage, ds, lambda: reference_embedder(ctx.settings), self.owner,
                                                probe_cache_dir=repo_cache_dir(self.repo))
        run, info = shortlist_plan(candidates, index, target, k, method)
        info.update(load_specs_s=round(load_s, 4), embed_target_cached=embed_cached)
        return run, info
