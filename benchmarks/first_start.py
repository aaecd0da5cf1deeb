"""First start: ``hubscout serve`` on a fresh data dir and no repository, timed until /healthz answers and until
the first ranking (a 10-shot footwear target, OT) is answered.

    python -m benchmarks.first_start [--quick] [--workers N]

Writes results/speed_cells/first_start[_quick].json (read by ``benchmarks.speed``). The full demo zoo is what a
fresh checkout builds; --quick builds the test zoo.
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
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hubscout-first-start-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSCOUT_")}
    env.update(HUBSCOUT_DATA_DIR=str(tmp / "var"), HUBSCOUT_REPOSITORY_DIR=str(tmp / "demo-zoo"),
               PYTHONPATH=str(ROOT))
    if args.quick:
        env["HUBSCOUT_DEMO_ZOO_QUICK"] = "1"
    if args.workers:
        env["HUBSCOUT_ZOO_BUILD_WORKERS"] = str(args.workers)
    port = _port()
    base = f"http://127.0.0.1:{port}"
    target = demo_target("footwear", shots=10)
    buf = io.BytesIO()
    np.savez(buf, images=target.images, labels=target.labels, classes=np.array(target.classes))
    log = open(tmp / "serve.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "hubscout"), "serve", "--port", str(port)], env=env,
                            cwd=str(tmp), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict = {"quick": args.quick, "machine": machine(), "workers": args.workers}
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            while True:
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
            while True:
                r = c.post("/v1/rankings", json={"dataset_id": ds["id"], "metrics": ["ot"]})
                if r.status_code == 202:
                    break
                assert r.status_code == 503, r.text
                out.setdefault("build_s", None)
                time.sleep(1.0)
            out["teachers_ready_s"] = round(time.monotonic() - t0, 2)
            job = r.json()["id"]
            while True:
                j = c.get(f"/v1/jobs/{job}").json()
                if j["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.3)
            out["first_start_s"] = round(time.monotonic() - t0, 2)
            out["ranking_status"] = j["status"]
            best = c.get(j["links"]["result"]).json()["teachers"][0]["teacher_id"] if j["links"]["result"] else None
            out["best_teacher"] = best
            out["teachers"] = c.get("/v1/teachers").json()["total"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
        built = [ln for ln in (tmp / "serve.log").read_text(errors="replace").splitlines() if "built teacher" in ln]
        out["log_built_lines"] = built
        shutil.copy(tmp / "serve.log", Path(tempfile.gettempdir()) / "hubscout-first-start-last.log")  # post-mortem
        shutil.rmtree(tmp, ignore_errors=True)
    print(out, flush=True)
    save_cell("first_start_quick" if args.quick else "first_start", out)
    return out


if __name__ == "__main__":
    main()
