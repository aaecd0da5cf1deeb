"""First start: ``hubscout serve`` on a fresh data dir and no repository, timed until /healthz answers and until
the first ranking (a 10-shot footwear target, the server's default metrics) is answered; then, unless
``--no-wait-specs``, until the teachers' specifications (computed in the background after the repository is ready)
are all stored.

    python -m benchmarks.first_start [--quick] [--workers N] [--train] [--no-wait-specs] [--no-save]

Writes results/speed_cells/first_start[_quick].json (read by ``benchmarks.speed_cells --report``). The full demo
zoo is what a fresh checkout builds (its small teachers restored from their committed weights; ``--train``: trained
from scratch, ``HUBSCOUT_DEMO_ZOO_TRAIN``); --quick builds the test zoo (trained). ``--no-save``: print only.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, machine
from benchmarks.speed_cells import save_cell


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    import httpx
    import numpy as np

    from hubscout.sources import demo_target

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, help="HUBSCOUT_ZOO_BUILD_WORKERS (default: the service's)")
    ap.add_argument("--train", action="store_true", help="train the small teachers (HUBSCOUT_DEMO_ZOO_TRAIN=1)")
    ap.add_argument("--no-wait-specs", action="store_true", help="stop once the first ranking is answered")
    ap.add_argument("--no-save", action="store_true", help="do not write the results cell")
    ap.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hubscout-first-start-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSCOUT_")}
    env.update(HUBSCOUT_DATA_DIR=str(tmp / "var"), HUBSCOUT_REPOSITORY_DIR=str(tmp / "demo-zoo"),
               PYTHONPATH=str(ROOT))
    if args.quick:
        env["HUBSCOUT_DEMO_ZOO_QUICK"] = "1"
    if args.workers:
        env["HUBSCOUT_ZOO_BUILD_WORKERS"] = str(args.workers)
    if args.train:
        env["HUBSCOUT_DEMO_ZOO_TRAIN"] = "1"
    port = _port()
    base = f"http://127.0.0.1:{port}"
    target = demo_target("footwear", shots=10)
    buf = io.BytesIO()
    np.savez(buf, images=target.images, labels=target.labels, classes=np.array(target.classes))
    log = open(tmp / "serve.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "hubscout"), "serve", "--port", str(port)], env=env,
                            cwd=str(tmp), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict = {"quick": args.quick, "machine": machine(), "workers": args.workers, "train": args.train}
    deadline = t0 + args.timeout

    def check_time() -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no first ranking after {args.timeout} s; see {tmp / 'serve.log'}")

    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            while True:
                check_time()
                try:
                    h = c.get("/healthz")
                    out["healthz_s"] = round(time.monotonic() - t0, 2)
                    out["healthz_status"] = h.json().get("status")
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise RuntimeError((tmp / "serve.log").read_text()[-3000:])
                    time.sleep(0.1)
            print(f"/healthz after {out['healthz_s']} s: {out['healthz_status']}", flush=True)
            ds = c.post("/v1/datasets", files={"file": ("footwear.npz", buf.getvalue())}).json()
            while True:  # what a user's first ranking sends: the dataset, the server's default metrics
                check_time()
                r = c.post("/v1/rankings", json={"dataset_id": ds["id"]})
                if r.status_code == 202:
                    break
                assert r.status_code == 503, r.text
                time.sleep(0.5)
            out["teachers_ready_s"] = round(time.monotonic() - t0, 2)
            job = r.json()["id"]
            while True:
                check_time()
                j = c.get(f"/v1/jobs/{job}").json()
                if j["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            out["first_start_s"] = round(time.monotonic() - t0, 2)
            out["ranking_status"] = j["status"]
            result = c.get(j["links"]["result"]).json() if j["links"]["result"] else {}
            out["best_teacher"] = result["teachers"][0]["teacher_id"] if result.get("teachers") else None
            out["metrics"] = result.get("metrics")
            out["ranked_teachers"] = len(result.get("teachers") or [])
            out["teachers"] = c.get("/v1/teachers").json()["total"]
            print(f"first ranking answered after {out['first_start_s']} s ({out['ranking_status']})", flush=True)
            if not args.no_wait_specs:  # computed after "ready", at a lower priority: when are they all there?
                while True:
                    check_time()
                    if c.get("/v1/teachers", params={"spec_status": "pending", "limit": 1}).json()["total"] == 0:
                        break
                    time.sleep(1.0)
                out["specs_ready_s"] = round(time.monotonic() - t0, 2)
                out["specs_failed"] = c.get("/v1/teachers", params={"spec_status": "failed", "limit": 1}).json()["total"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
        lines = (tmp / "serve.log").read_text(errors="replace").splitlines()
        out["log_built_lines"] = [ln for ln in lines if "built teacher" in ln]
        out["restored_teachers"] = sum("restored from its committed weights" in ln for ln in lines)
        out["log_milestones"] = [ln for ln in lines if "demo zoo ready" in ln or "specifications of" in ln
                                 or "hubscout.worker: ranking" in ln or "hubscout API ready" in ln]
        shutil.copy(tmp / "serve.log", Path(tempfile.gettempdir()) / "hubscout-first-start-last.log")  # post-mortem
        shutil.rmtree(tmp, ignore_errors=True)
    print(out, flush=True)
    if not args.no_save:
        save_cell("first_start_quick" if args.quick else "first_start", out)
    return out


if __name__ == "__main__":
    main()
