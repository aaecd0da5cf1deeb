"""A bounded load test of the real service on loopback: PostgreSQL + Redis + a Celery worker + the uvicorn API.

Every client follows what a user script does: submit a ranking (of a dataset already ranked once, so it is
answered from the score cache), poll its job until it is final, fetch the result; between polls it also fetches
an older cached ranking. Clients are spread over several API keys. The run stops by itself after ``--duration``
seconds and sends traffic to 127.0.0.1 only.

    python -m benchmarks.load [--clients 50] [--duration 60] [--keys 5] [--poll 0.25] [--api-workers 1]

Needs PostgreSQL and Redis on loopback (as scripts/test.sh starts them): a fresh database and an empty Redis db
number are claimed for the run and dropped after it. Writes benchmarks/results/load.md and load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import ROOT, machine, machine_md, md_table, resolve_repo, write_results

FINAL = {"succeeded", "failed", "cancelled"}


# ------------------------------------------------------------------------------------------------ the service

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.log_path = name, log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()


def _wait(pred, timeout: float, what: str, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        if pred():
            return
        time.sleep(0.3)
    raise SystemExit(f"{what} not within {timeout} s:\n{proc.log()[-3000:]}")


def _claim_redis_db(base: str) -> str:
    import redis

    claim = f"hubscout-load:{uuid.uuid4().hex}"
    for db in random.sample(range(1, 16), 15):
        r = redis.Redis.from_url(f"{base}/{db}")
        if r.dbsize() == 0 and r.set("hubscout-load-claim", claim, nx=True, ex=3600):
            return f"{base}/{db}"
    raise SystemExit("no empty Redis db among 1..15")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ------------------------------------------------------------------------------------------------ the clients

class Recorder:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.turnaround: list[float] = []
        self.jobs = Counter()

    def add(self, label: str, status: int, seconds: float) -> None:
        self.samples[label].append(seconds)
        self.statuses[label][status] += 1


async def _call(rec: Recorder, client: httpx.AsyncClient, label: str, method: str, url: str, **kw):
    t0 = time.perf_counter()
    try:
        r = await client.request(method, url, **kw)
    except httpx.HTTPError:
        rec.add(label, 0, time.perf_counter() - t0)  # 0: no answer (refused, reset, timed out)
        return None
    rec.add(label, r.status_code, time.perf_counter() - t0)
    return r


async def _client(rec: Recorder, base_url: str, key: str, dataset_id: str, teacher_ids: list[str],
                  cached_ranking: str, deadline: float, poll: float) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        while time.monotonic() < deadline:
            t_submit = time.monotonic()
            r = await _call(rec, c, "POST /v1/rankings", "POST", "/v1/rankings",
                            json={"dataset_id": dataset_id, "teacher_ids": teacher_ids})
            if r is None or r.status_code != 202:
                retry = float(r.headers.get("retry-after", 1)) if r is not None else 1.0
                await asyncio.sleep(min(retry, 1.0))
                continue
            job_id = r.json()["id"]
            status = "unfinished at the end"
            while time.monotonic() < deadline:
                await asyncio.sleep(poll)
                r = await _call(rec, c, "GET /v1/jobs/{id}", "GET", f"/v1/jobs/{job_id}")
                if r is not None and r.status_code == 200 and r.json()["status"] in FINAL:
                    status = r.json()["status"]
                    break
                await _call(rec, c, "GET /v1/rankings/{id}", "GET", f"/v1/rankings/{cached_ranking}")
            rec.jobs[status] += 1
            if status == "succeeded":
                rec.turnaround.append(time.monotonic() - t_submit)
                await _call(rec, c, "GET /v1/rankings/{id}", "GET", f"/v1/rankings/{job_id}")


def _warm_up(base_url: str, key: str, teacher_ids: list[str]) -> tuple[str, str]:
    """Upload the footwear target with ``key`` and rank it once: later rankings of it are served from cache."""
    from benchmarks._common import limit_threads

    limit_threads(1)
    from hubscout.sources import demo_target

    import io

    import numpy as np

    ds = demo_target("footwear", 10, seed=0)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=ds.images, labels=ds.labels, classes=np.array(ds.classes, dtype=str))
    with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/datasets", files={"file": ("footwear.npz", buf.getvalue())})
        r.raise_for_status()
        dataset_id = r.json()["id"]
        job = c.post("/v1/rankings", json={"dataset_id": dataset_id, "teacher_ids": teacher_ids}).json()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = c.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] in FINAL:
                break
            time.sleep(0.3)
        if job["status"] != "succeeded":
            raise SystemExit(f"warm-up ranking did not succeed: {job}")
    return dataset_id, job["id"]


def _cached_rerank_latency(base_url: str, key: str, dataset_id: str, teacher_ids: list[str],
                           n: int = 10) -> list[float]:
    """Seconds from submitting a ranking of an already ranked dataset to holding its result, on the idle
    service (polling every 20 ms): what a user waits for a re-rank answered from the score cache."""
    out = []
    with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(n):
            t0 = time.monotonic()
            job = c.post("/v1/rankings", json={"dataset_id": dataset_id, "teacher_ids": teacher_ids}).json()
            while job["status"] not in FINAL:
                time.sleep(0.02)
                job = c.get(f"/v1/jobs/{job['id']}").json()
            c.get(f"/v1/rankings/{job['id']}").raise_for_status()
            out.append(time.monotonic() - t0)
            if job["status"] != "succeeded":
                raise SystemExit(f"cached re-rank did not succeed: {job}")
    return out


# ------------------------------------------------------------------------------------------------ statistics

def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def _summary(xs: list[float], statuses: Counter) -> dict[str, Any]:
    n = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return {"requests": n, "p50_ms": 1000 * _pct(xs, 50), "p90_ms": 1000 * _pct(xs, 90),
            "p99_ms": 1000 * _pct(xs, 99), "max_ms": 1000 * max(xs) if xs else float("nan"),
            "mean_ms": 1000 * statistics.fmean(xs) if xs else float("nan"),
            "status": {str(k): v for k, v in sorted(statuses.items())},
            "errors": n - ok, "error_rate": (n - ok) / n if n else 0.0,
            "5xx": sum(v for k, v in statuses.items() if k >= 500), "no_answer": statuses.get(0, 0)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--keys", type=int, default=5, help="API keys the clients are spread over")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between a client's polls of its job")
    ap.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--repo", default=None, help="teacher repository (default: as the other benchmarks)")
    ap.add_argument("--postgres", default=os.environ.get("TEST_POSTGRES_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="maintenance database URL; a database for the run is created beside it")
    ap.add_argument("--redis", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--name", default="load")
    args = ap.parse_args(argv)
    for url in (args.postgres, args.redis):
        host = url.split("@")[-1].split("//")[-1].split(":")[0].split("/")[0]
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"the load test runs on loopback only, not against {host}")

    import psycopg

    repo = resolve_repo(args.repo, quick=True)
    # The small teachers: a warm-up that costs seconds, not minutes (a cached ranking's cost hardly depends
    # on the size of the networks behind it).
    teacher_ids = sorted(p.parent.name for p in repo.glob("*/teacher.json")
                         if json.loads(p.read_text())["input"]["size"] <= 64)
    db_name = f"hubscout_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    database_url = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/" + db_name
    redis_url = _claim_redis_db(args.redis)
    tmp = Path(tempfile.mkdtemp(prefix="hubscout-load-"))
    keys = [f"load-key-{i}-{uuid.uuid4().hex}" for i in range(args.keys)]
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("HUBSCOUT_") or k in ("DATABASE_URL", "CELERY_BROKER_URL"))}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
               DATABASE_URL=database_url, CELERY_BROKER_URL=redis_url, HUBSCOUT_DATA_DIR=str(tmp / "data"),
               HUBSCOUT_REPOSITORY_DIR=str(repo), HUBSCOUT_BUILD_DEMO_ZOO="false", HUBSCOUT_API_KEYS=",".join(keys),
               HUBSCOUT_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    procs: list[Proc] = []
    try:
        done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise SystemExit(done.stderr)
        worker = Proc("worker", [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                                 "--loglevel=INFO", "--without-gossip", "--without-mingle",
                                 "-n", f"load-{os.getpid()}@%h"], env, tmp)
        procs.append(worker)
        _wait(lambda: " ready." in worker.log(), 120, "the worker", worker)
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = Proc("api", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                           str(port), "--workers", str(args.api_workers), "--no-access-log",
                           "--log-level", "warning"], env, tmp)
        procs.append(api)
        _wait(lambda: _healthy(base_url), 120, "the API", api)

        t0 = time.monotonic()
        warm = [_warm_up(base_url, k, teacher_ids) for k in keys]
        warm_s = time.monotonic() - t0
        print(f"warm-up: {len(keys)} datasets ranked in {warm_s:.1f} s; load: {args.clients} clients for "
              f"{args.duration:.0f} s", flush=True)
        rerank = _cached_rerank_latency(base_url, keys[0], warm[0][0], teacher_ids)
        print(f"cached re-rank on the idle service: p50 {_pct(rerank, 50):.3f} s, max {max(rerank):.3f} s",
              flush=True)

        rec = Recorder()

        async def run() -> float:
            deadline = time.monotonic() + args.duration
            start = time.monotonic()
            await asyncio.gather(*(
                _client(rec, base_url, keys[i % len(keys)], warm[i % len(keys)][0], teacher_ids,
                        warm[i % len(keys)][1], deadline, args.poll) for i in range(args.clients)))
            return time.monotonic() - start

        wall = asyncio.run(run())
        unhandled = api.log().count("unhandled error")
    finally:
        for p in reversed(procs):
            p.stop()
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)

    all_lat = [x for xs in rec.samples.values() for x in xs]
    all_status = sum(rec.statuses.values(), Counter())
    overall = _summary(all_lat, all_status)
    overall["throughput_rps"] = overall["requests"] / wall
    per = {label: _summary(rec.samples[label], rec.statuses[label]) for label in sorted(rec.samples)}
    jobs = {"completed": dict(rec.jobs), "per_second": sum(rec.jobs.values()) / wall,
            "turnaround_p50_s": _pct(rec.turnaround, 50), "turnaround_p99_s": _pct(rec.turnaround, 99)}
    payload = {"machine": machine(), "config": {
        "clients": args.clients, "duration_s": args.duration, "wall_s": wall, "keys": args.keys,
        "poll_s": args.poll, "api_workers": args.api_workers, "celery_workers": 1, "celery_pool": "solo",
        "repository": str(repo), "teachers_ranked": teacher_ids, "warm_up_s": warm_s,
        "stack": "uvicorn + PostgreSQL + Redis + Celery, all on 127.0.0.1"},
        "overall": overall, "per_endpoint": per, "jobs": jobs, "server_unhandled_errors": unhandled,
        "cached_rerank_idle_s": {"samples": rerank, "p50": _pct(rerank, 50), "max": max(rerank)}}

    m = payload["machine"]
    rows = [[label, s["requests"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"], s["error_rate"], s["5xx"],
             ", ".join(f"{k}: {v}" for k, v in s["status"].items())] for label, s in
            [("all", overall), *per.items()]]
    md = (f"# Load test (`python -m benchmarks.load`)\n\n{machine_md(m)}\n"
          f"{args.clients} concurrent clients for {args.duration:.0f} s ({wall:.1f} s wall) against the real service "
          f"on loopback: uvicorn ({args.api_workers} process), PostgreSQL, Redis and one Celery worker (solo pool), "
          f"clients spread over {args.keys} API keys. Each client submits a ranking of a dataset ranked once "
          f"before (so it is answered from the score cache; teachers: {', '.join(teacher_ids)}), polls its job "
          f"every {args.poll} s until final — fetching an older cached ranking between polls — then fetches its "
          f"result. The load generator shares the machine's cores with the service.\n\n"
          f"**Throughput {overall['throughput_rps']:.1f} requests/s; p50 {overall['p50_ms']:.1f} ms, "
          f"p99 {overall['p99_ms']:.1f} ms; error rate {overall['error_rate']:.4f}; 5xx: {overall['5xx']}; "
          f"no answer: {overall['no_answer']}; unhandled errors in the API log: {unhandled}.**\n\n"
          + md_table(["endpoint", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms", "error rate", "5xx",
                      "statuses"], rows)
          + f"\nJobs: {dict(rec.jobs)} ({jobs['per_second']:.1f}/s); submit-to-result turnaround p50 "
            f"{jobs['turnaround_p50_s']:.2f} s, p99 {jobs['turnaround_p99_s']:.2f} s (queueing behind the other "
            f"clients' jobs on the one worker).\n"
          + f"\nCached re-rank through the API on the idle service, before the load (submit, poll every 20 ms, "
            f"fetch the result; {len(rerank)} runs): p50 {_pct(rerank, 50):.3f} s, max {max(rerank):.3f} s.\n")
    j, mdp = write_results(args.name, payload, md)
    print(md)
    print(f"wrote {mdp} and {j}")
    return payload


if __name__ == "__main__":
    main()
