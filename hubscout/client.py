"""A Python client of the hubscout REST API.

    from hubscout.client import Client

    with Client("http://localhost:8000", api_key="...") as hs:
        ds = hs.upload("footwear.zip")
        job = hs.wait(hs.rank(ds["id"], metrics=["ot", "logme"]))          # a progress bar while it runs
        ranking = hs.ranking(job["result_id"])
        job = hs.wait(hs.distill(ds["id"], [ranking["teachers"][0]["teacher_id"]], epochs=30))
        hs.download(job["result_id"], "student/")                           # then hubscout.distill.load_student

Every error answer of the API (RFC 9457 problem details) is raised as a :class:`ClientError` carrying its
status, title and detail; a job that ends failed or cancelled makes :meth:`Client.wait` raise :class:`JobFailed`.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import httpx

__all__ = ["Client", "ClientError", "JobFailed"]

FINAL = ("succeeded", "failed", "cancelled")
# Answers worth polling through: the server restarting or a proxy in front of it hiccuping.
TRANSIENT = (502, 503, 504)


class ClientError(Exception):
    """An error answer from the server (``status``, ``title``, ``detail`` and the whole ``problem`` body), or no
    answer at all (``status`` None)."""

    def __init__(self, status: int | None, title: str, detail: str, problem: Mapping[str, Any] | None = None):
        super().__init__(f"{status} {title}: {detail}" if status else f"{title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = dict(problem or {})

    @property
    def type(self) -> str | None:
        return self.problem.get("type")


class JobFailed(ClientError):
    """The job ended failed or cancelled; ``job`` is its last state."""

    def __init__(self, job: Mapping[str, Any]):
        detail = job.get("error") or job.get("message") or job["status"]
        super().__init__(None, f"job {job['id']} {job['status']}", str(detail))
        self.job = dict(job)


def _problem(r: httpx.Response) -> ClientError:
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("title" in body or "detail" in body):
        return ClientError(r.status_code, str(body.get("title") or r.reason_phrase),
                           str(body.get("detail") or ""), body)
    text = r.text.strip().replace("\n", " ")[:300]
    return ClientError(r.status_code, r.reason_phrase or "Error", text or "(no details)")


def _job_id(job: str | Mapping[str, Any]) -> str:
    return job if isinstance(job, str) else str(job["id"])


def _dataset_id(dataset: str | Mapping[str, Any]) -> str:
    return dataset if isinstance(dataset, str) else str(dataset["id"])


class Client:
    """The API at ``url``. ``api_key`` is sent as ``Authorization: Bearer <key>``; ``timeout`` bounds each HTTP
    request (seconds), not a job."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0, *,
                 poll_interval: float = 0.5, transport: httpx.BaseTransport | None = None):
        from hubscout import __version__

        self.url = url.rstrip("/")
        self.poll_interval = poll_interval
        headers = {"User-Agent": f"hubscout-client/{__version__}",
                   "Accept": "application/json, application/problem+json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --------------------------------------------------------------------------------------------- plumbing

    def _send(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ClientError(None, "Connection failed", f"cannot reach {self.url}: {e}") from e
        if r.status_code >= 400:
            raise _problem(r)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        r = self._send(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise ClientError(r.status_code, "Unexpected answer",
                              f"{method} {path} did not return JSON (is {self.url} a hubscout server?)") from None

    # --------------------------------------------------------------------------------------------- resources

    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def upload(self, data: str | os.PathLike | Any, name: str | None = None) -> dict:
        """Upload a dataset: a ``.zip`` (ImageFolder) or ``.npz`` file, or a :class:`hubscout.data.Dataset`.
        The same content under the same name returns the same dataset; under another name, a dataset of that name
        sharing the stored content."""
        fields = {"name": name} if name else {}
        if all(hasattr(data, a) for a in ("images", "labels", "classes")):
            import numpy as np

            buf = io.BytesIO()
            np.savez_compressed(buf, images=data.images, labels=data.labels,
                                classes=np.array(list(data.classes), dtype=str))
            buf.seek(0)
            filename = f"{getattr(data, 'name', '') or 'dataset'}.npz"
            if not name and getattr(data, "name", ""):
                fields = {"name": data.name}
            return self._json("POST", "/v1/datasets", files={"file": (filename, buf, "application/octet-stream")},
                              data=fields)
        path = Path(data)
        with open(path, "rb") as f:  # streamed from disk, not read into memory
            return self._json("POST", "/v1/datasets", files={"file": (path.name, f, "application/octet-stream")},
                              data=fields)

    def dataset(self, dataset_id: str) -> dict:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def teachers(self, page_size: int = 500) -> list[dict]:
        """Every teacher of the server's repository (all pages)."""
        out: list[dict] = []
        while True:
            page = self._json("GET", "/v1/teachers", params={"limit": page_size, "offset": len(out)})
            out.extend(page["items"])
            if not page["items"] or len(out) >= page["total"]:
                return out

    def teacher(self, teacher_id: str) -> dict:
        return self._json("GET", f"/v1/teachers/{teacher_id}")

    def rank(self, dataset: str | Mapping[str, Any], metrics: str | Iterable[str] | None = None, *,
             teachers: Iterable[str] | None = None, top_k: int | None = None,
             callback_url: str | None = None, shortlist: int | None = None) -> dict:
        """Start ranking the teachers (all, or ``teachers``) for a dataset; returns the queued job.
        ``metrics``: None for the server's default metric. ``shortlist``: as the API's field (None: the server's
        default; 0: exhaustive)."""
        body: dict[str, Any] = {"dataset_id": _dataset_id(dataset)}
        if metrics is not None:
            body["metrics"] = [metrics] if isinstance(metrics, str) else list(metrics)
        if teachers is not None:
            body["teacher_ids"] = list(teachers)
        if top_k is not None:
            body["top_k"] = top_k
        if shortlist is not None:
            body["shortlist"] = shortlist
        if callback_url:
            body["callback_url"] = callback_url
        return self._json("POST", "/v1/rankings", json=body)

    def distill(self, dataset: str | Mapping[str, Any], teachers: Iterable[str] = (), *,
                callback_url: str | None = None, **config: Any) -> dict:
        """Start distilling a student; ``config`` takes the API's options (student_arch: "auto", a size or a
        timm name; epochs, min_steps, lam, tau, reg, ce_only, seed). Returns the queued job."""
        body = {"dataset_id": _dataset_id(dataset), "teacher_ids": list(teachers),
                **{k: v for k, v in config.items() if v is not None}}
        if callback_url:
            body["callback_url"] = callback_url
        return self._json("POST", "/v1/distillations", json=body)

    def job(self, job: str | Mapping[str, Any]) -> dict:
        return self._json("GET", f"/v1/jobs/{_job_id(job)}")

    def jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit, "offset": offset}.items()
                  if v is not None}
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job: str | Mapping[str, Any]) -> dict:
        return self._json("DELETE", f"/v1/jobs/{_job_id(job)}")

    def ranking(self, ranking_id: str) -> dict:
        return self._json("GET", f"/v1/rankings/{ranking_id}")

    def student(self, student_id: str) -> dict:
        return self._json("GET", f"/v1/students/{student_id}")

    # --------------------------------------------------------------------------------------------- jobs

    def wait(self, job: str | Mapping[str, Any], *, progress: bool = True, timeout: float | None = None,
             raise_on_failure: bool = True) -> dict:
        """Poll the job until it ends; with ``progress``, a bar (stderr; plain lines when it is not a terminal)
        follows its progress, message and queue position.
        Returns the final job; raises :class:`JobFailed` when it failed or was cancelled (unless
        ``raise_on_failure`` is false) and TimeoutError after ``timeout`` seconds."""
        job_id = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from hubscout.progress import progress_bar

            kind = job.get("kind", "job") if isinstance(job, Mapping) else "job"
            bar = progress_bar(total=100, desc=kind, unit="%", bar_format="{percentage:3.0f}%|{bar}| {desc}")
        hiccups = 0
        try:
            while True:
                try:
                    current = self.job(job_id)
                    hiccups = 0
                except ClientError as e:
                    # A restarting server is no reason to give up on a job that keeps running without it.
                    if (e.status is None or e.status in TRANSIENT) and hiccups < 10:
                        hiccups += 1
                        time.sleep(min(self.poll_interval * 2 ** hiccups, 10))
                        continue
                    raise
                if bar is not None:
                    bar.update(round(100 * current["progress"], 1) - bar.n)  # before a new state is reported
                    bar.set_description_str(job_line(current)[:100], refresh=False)
                if current["status"] in FINAL:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} still {current['status']} after {timeout} s")
                time.sleep(self.poll_interval)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and current["status"] != "succeeded":
            raise JobFailed(current)
        return current

    # --------------------------------------------------------------------------------------------- download

    def download(self, student_id: str, dest: str | os.PathLike, *, extract: bool | None = None) -> Path:
        """Download a student. Into a folder (created; ``hubscout.distill.load_student(dest)`` loads it) or, when
        ``dest`` ends in ``.zip`` or ``extract`` is false, as the zip itself. The archive is checked against the
        sha256 the server announces."""
        dest = Path(dest)
        if extract is None:
            extract = dest.suffix.lower() != ".zip"
        fd, tmp_name = tempfile.mkstemp(prefix=".student-", suffix=".zip",
                                        dir=dest.parent if dest.parent.is_dir() else None)
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                try:
                    with self._http.stream("GET", f"/v1/students/{student_id}/download") as r:
                        if r.status_code >= 400:
                            r.read()
                            raise _problem(r)
                        etag = r.headers.get("etag", "").strip('"')
                        for chunk in r.iter_bytes(1 << 20):
                            h.update(chunk)
                            f.write(chunk)
                except httpx.TransportError as e:
                    raise ClientError(None, "Connection failed", f"download from {self.url} failed: {e}") from e
            if etag and h.hexdigest() != etag:
                raise ClientError(None, "Corrupt download", f"the archive's sha256 {h.hexdigest()} is not the "
                                                            f"server's {etag}")
            if not extract:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(tmp, dest)
                return dest
            _extract_flat(tmp, dest)
            return dest
        finally:
            tmp.unlink(missing_ok=True)


def job_line(job: Mapping[str, Any]) -> str:
    """One line on a job: kind, status, message, and where a queued one stands (``queue``) or how long it took."""
    text = f"{job['kind']} {job['status']}"
    queue = job.get("queue")
    if queue:
        running = ", ".join(f"{r['kind']} {r['progress']:.0%}" for r in queue["running"]) or "nothing"
        text += f": position {queue['position']} in the queue (running: {running}"
        text += f"; {queue['queued_ahead']} queued ahead)" if queue["queued_ahead"] else ")"
    elif job.get("message") and job["message"] != job["status"]:
        text += f": {job['message']}"
    if job["status"] in FINAL and job.get("computing_s") is not None:
        text += f" (queued {job.get('queued_s') or 0:.1f} s, computed {job['computing_s']:.1f} s)"
    return text


def _extract_flat(archive: Path, dest: Path) -> None:
    """A student archive holds plain files at its root; anything else (folders, ``..``) is refused."""
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        for n in names:
            p = PurePosixPath(n)
            if len(p.parts) != 1 or p.name in ("", ".", "..") or "\\" in n:
                raise ClientError(None, "Unexpected archive", f"the student archive holds {n!r}")
        dest.mkdir(parents=True, exist_ok=True)
        for n in names:
            # Owner-only, like a student saved locally: it is learned from the user's data.
            fd = os.open(dest / n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.chmod(dest / n, 0o600)  # an existing file keeps its mode through O_CREAT
            with zf.open(n) as src, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out)
