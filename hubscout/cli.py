"""The ``hubscout`` command line: teachers, demo data, ranking, distillation, evaluation, and the server."""
from __future__ import annotations

import importlib
import json
import os
import shlex
import sys

# Before torch loads: busy-waiting OpenMP threads make training 10-20× slower when the cores are shared
# (measured building the demo zoo on 2 busy cores); passive waiting costs nothing on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from hubscout.ot import COSTS, DEFAULT_COST
from hubscout.scores import DEFAULT_METRICS, METRICS

app = typer.Typer(help="Rank a model repository's teachers for your labelled task, and distil a student.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
teachers_app = typer.Typer(help="Manage the teacher repository.", no_args_is_help=True)
zoo_app = typer.Typer(help="Build the demo teacher repository.", no_args_is_help=True)
data_app = typer.Typer(help="Ready-made target datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="The jobs of a hubscout server (--server or HUBSCOUT_SERVER).", no_args_is_help=True)
students_app = typer.Typer(help="Students distilled on a hubscout server.", no_args_is_help=True)
app.add_typer(teachers_app, name="teachers")
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")
app.add_typer(students_app, name="students")

# Exit codes, one per kind of failure, so a script can tell them apart (README, "Exit codes").
EXIT_OK = 0
EXIT_USAGE = 2  # a bad command line or option value (also click's own usage errors)
EXIT_INPUT = 3  # a local file or folder missing or unreadable: dataset, weights, labels, student, repository
EXIT_REJECTED = 4  # the request was refused: a 4xx answer of the server, an unknown teacher
EXIT_JOB_FAILED = 5  # the job ran and failed, or was cancelled
EXIT_UNREACHABLE = 6  # no answer from the server (or the model hub), or it is unavailable (5xx)
EXIT_TIMEOUT = 7  # `jobs wait --timeout` ran out with the job still queued or running

console = Console(stderr=True)
DEFAULT_REPO = os.environ.get("HUBSCOUT_REPO", "demo-zoo")
RepoOpt = typer.Option(DEFAULT_REPO, "--repo", help="Teacher repository folder (env HUBSCOUT_REPO; default "
                                                    "./demo-zoo, the one `hubscout serve` builds).")
ServerOpt = typer.Option(None, "--server", envvar="HUBSCOUT_SERVER",
                         help="Run on the hubscout server at this URL instead of locally.")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="HUBSCOUT_API_KEY", show_default=False,
                         help="API key for --server.")


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    # soft_wrap: one line whatever the terminal's width, so scripts and logs get the whole message intact.
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _guard(fn):
    """Turn the library's user-facing errors into a one-line message and their exit code, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:
            # Imported here, not when the module loads: `hubscout serve` must answer before torch is imported.
            from hubscout.client import ClientError, JobFailed
            from hubscout.data import DatasetError
            from hubscout.hub import HubUnavailable
            from hubscout.students import StudentDoesNotFit, StudentError
            from hubscout.teachers import TeacherError, TeacherNotFound

            if isinstance(e, JobFailed):
                _fail(f"job {e.job['id']} {e.job['status']}: {e.job.get('error') or e.job.get('message') or ''}",
                      EXIT_JOB_FAILED)
            if isinstance(e, ClientError):
                unreachable = e.status is None or e.status >= 500
                _fail(f"server: {e}", EXIT_UNREACHABLE if unreachable else EXIT_REJECTED)
            if isinstance(e, TeacherNotFound):
                _fail(f"unknown teacher: {e.args[0]}", EXIT_REJECTED)
            if isinstance(e, HubUnavailable):
                _fail(str(e), EXIT_UNREACHABLE)
            if isinstance(e, StudentDoesNotFit):  # a bad --student for this data: a usage error
                _fail(str(e), EXIT_USAGE)
            if isinstance(e, (DatasetError, TeacherError, StudentError, FileNotFoundError)):
                _fail(str(e), EXIT_INPUT)
            if isinstance(e, ValueError):
                _fail(str(e), EXIT_USAGE)
            raise
    return wrapper


def _existing(value: Optional[Path]) -> Optional[Path]:
    """Option callback: a missing input file is EXIT_INPUT, not click's usage error."""
    if value is not None and not value.exists():
        _fail(f"no such file or folder: {value}", EXIT_INPUT)
    return value


def _repo(path: str):
    from hubscout.teachers import Repository

    repo = Repository(path)
    if not repo.root.is_dir():
        _fail(f"no teacher repository at {Path(path).resolve()}: name one with --repo PATH or HUBSCOUT_REPO=PATH "
              f"(a folder of teachers: the project's ./demo-zoo, built by `hubscout serve`, or one you made with "
              f"`hubscout teachers add`), or rank on a server with --server URL", EXIT_INPUT)
    return repo


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _client(server: str, api_key: str | None):
    from hubscout.client import Client

    return Client(server, api_key=api_key)


def _need_server(server: str | None) -> str:
    if not server:
        _fail("this command talks to a hubscout server: pass --server URL or set HUBSCOUT_SERVER")
    return server


def _local_only(server: str | None, **options) -> None:
    """Options the API does not offer, refused with --server rather than silently ignored."""
    used = [name for name, set_ in options.items() if set_]
    if server and used:
        _fail(f"{', '.join(used)} not available with --server")


# ------------------------------------------------------------------------------------------------- teachers

@teachers_app.command("add")
@_guard
def teachers_add(
    arch: str = typer.Option(..., help="timm architecture name, e.g. resnet10t"),
    weights: Path = typer.Option(..., callback=_existing, dir_okay=False, help="safetensors state dict"),
    labels: Path = typer.Option(..., callback=_existing, dir_okay=False, help="JSON list or one label per line"),
    name: str = typer.Option(..., help="human-readable name"),
    teacher_id: Optional[str] = typer.Option(None, "--id", help="id (default: slug of the name)"),
    input_size: int = typer.Option(224, help="square input side"),
    channels: int = typer.Option(3, help="input channels (1 or 3)"),
    mean: str = typer.Option("0.485,0.456,0.406", help="per-channel mean, comma separated"),
    std: str = typer.Option("0.229,0.224,0.225", help="per-channel std, comma separated"),
    task: str = typer.Option("", help="what the teacher was trained for"),
    metadata: str = typer.Option("{}", help="extra metadata as a JSON object"),
    spec_sample: Optional[Path] = typer.Option(None, callback=_existing, dir_okay=False,
                                               help="a labelled sample of its training data (.npz or ImageFolder "
                                                    ".zip, classes among the labels) for its specification"),
    spec: bool = typer.Option(True, help="compute its search specification now (else: `teachers spec` later)"),
    repo: str = RepoOpt,
) -> None:
    """Validate a teacher's weights against its architecture and labels, then add it with its specification."""
    from hubscout.teachers import InputConfig, Repository, load_labels

    mean_v = tuple(float(x) for x in mean.split(","))
    std_v = tuple(float(x) for x in std.split(","))
    if channels == 1 and len(mean_v) == 3:
        mean_v, std_v = mean_v[:1], std_v[:1]
    try:
        meta = json.loads(metadata)
    except json.JSONDecodeError as e:
        raise ValueError(f"--metadata is not JSON: {e}") from e
    if task:
        meta["task"] = task
    label_list = load_labels(labels)
    sample = None
    if spec_sample is not None:
        from hubscout.data import DatasetError, load_dataset
        from hubscout.sources import sample_per_class
        from hubscout.spec import SPEC_SAMPLES_PER_CLASS

        sample = sample_per_class(load_dataset(spec_sample), SPEC_SAMPLES_PER_CLASS)
        unknown = [c for c in sample.classes if c not in label_list]
        if unknown:
            raise DatasetError(f"--spec-sample classes not among the labels: {', '.join(unknown[:10])}")
    r = Repository(repo)
    t = r.add(arch=arch, weights=weights, labels=label_list, name=name,
              input=InputConfig(input_size, channels, mean_v, std_v), metadata=meta, teacher_id=teacher_id)
    from hubscout.spec import (SPEC_SAMPLE_FILE, ReferenceEmbedder, repo_cache_dir, save_specification,
                               specification_for)

    try:
        if sample is not None:
            sample.save(r.root / t.id / SPEC_SAMPLE_FILE)
        if spec:
            s = specification_for(t, ReferenceEmbedder(), probe_cache_dir=repo_cache_dir(r))
            save_specification(r, s)
    except BaseException:
        r.remove(t.id)  # no teacher without the specification asked for
        raise
    console.print(f"added teacher [bold]{t.id}[/bold] ({t.arch}, {t.num_classes} classes, {t.num_params:,} params)")
    if spec:
        console.print(f"specification: {s.source}, {len(s.rows)} of {s.num_classes} classes described from "
                      f"{s.n_samples} images")


@teachers_app.command("import-timm")
@_guard
def teachers_import_timm(
    name: str = typer.Argument(..., help="timm model with pretrained weights, e.g. resnet50.a1_in1k or "
                                         "convnext_tiny (its default tag); see timm.list_pretrained()"),
    teacher_id: Optional[str] = typer.Option(None, "--id", help="id (default: timm-<model>)"),
    overwrite: bool = typer.Option(False, help="replace a teacher with the same id"),
    repo: str = RepoOpt,
) -> None:
    """Register a timm model with its pretrained weights (downloaded from the model hub) as a teacher."""
    from hubscout.hub import import_timm
    from hubscout.teachers import Repository

    t = import_timm(Repository(repo), name, teacher_id=teacher_id, overwrite=overwrite)
    console.print(f"added teacher [bold]{t.id}[/bold] ({t.arch}, {t.num_classes} classes, {t.num_params:,} params, "
                  f"{t.input.size}×{t.input.size} input); `hubscout teachers spec` adds it to --shortlist searches")


@teachers_app.command("list")
@_guard
def teachers_list(repo: str = RepoOpt, as_json: bool = typer.Option(False, "--json"),
                  server: Optional[str] = ServerOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """List the repository's teachers (or the server's, with --server)."""
    if server:
        with _client(server, api_key) as c:
            rows = c.teachers()
    else:
        rows = [t.to_dict() for t in _repo(repo).list()]
    if as_json:
        _print_json(rows)
        return
    table = _table("id", "arch", "classes", "params", "task")
    for t in rows:
        n_classes = t.get("num_classes", len(t.get("labels", [])))
        table.add_row(t["id"], t["arch"], str(n_classes), f"{t['num_params']:,}",
                      str(t["metadata"].get("task", "")))
    _out().print(table)


@teachers_app.command("spec")
@_guard
def teachers_spec(repo: str = RepoOpt) -> None:
    """Compute the search specification of every teacher that lacks one (see docs/method.md)."""
    from hubscout.spec import ensure_specifications

    n = ensure_specifications(_repo(repo), show_progress=True)
    console.print(f"{n} specification(s) computed")


@teachers_app.command("show")
@_guard
def teachers_show(teacher_id: str, repo: str = RepoOpt, server: Optional[str] = ServerOpt,
                  api_key: Optional[str] = ApiKeyOpt) -> None:
    """Show one teacher's description as JSON (the server's, with --server)."""
    if server:
        with _client(server, api_key) as c:
            _print_json(c.teacher(teacher_id))
        return
    _print_json(_repo(repo).get(teacher_id).to_dict())


# ------------------------------------------------------------------------------------------------ demo data

@zoo_app.command("demo")
@_guard
def zoo_demo(out: Path = typer.Option(Path(DEFAULT_REPO), help="output folder"),
             quick: bool = typer.Option(False, help="a small repository (for tests)"),
             seed: int = typer.Option(0),
             train: bool = typer.Option(False, help="train the small teachers from scratch (minutes) instead of "
                                                    "restoring their committed, sha256-checked weights")) -> None:
    """Build the demo repository offline: ImageNet EfficientNet-Lite teachers + small teachers on real data."""
    from hubscout.zoo import build_demo_zoo

    from hubscout.spec import ensure_specifications

    repo = build_demo_zoo(out, quick=quick, seed=seed, show_progress=True, restore=not train)
    ensure_specifications(repo, show_progress=True)
    console.print(f"demo repository at {out}: {len(repo)} teachers")


@data_app.command("demo-target")
@_guard
def data_demo_target(name: str = typer.Argument(..., help="target name (see `hubscout data targets`)"),
                     shots: Optional[int] = typer.Option(None, help="samples per class (default: 10 of the train "
                                                                    "split, all of the test split)"),
                     out: Path = typer.Option(..., help="output .npz or .zip"),
                     seed: int = typer.Option(0), split: str = typer.Option("train", help="train or test")) -> None:
    """Write a ready-made few-shot target dataset (.npz, or an ImageFolder .zip with its class order in
    classes.txt: both load with the classes in the order printed)."""
    from hubscout.data import write_image_folder_zip
    from hubscout.sources import demo_target

    if split == "test":
        ds = demo_target(name, seed=seed, split=split, max_per_class=shots)
    else:
        ds = demo_target(name, shots=10 if shots is None else shots, seed=seed, split=split)
    if out.suffix == ".zip":
        write_image_folder_zip(ds, out)
    else:
        ds.save(out)
    console.print(f"wrote {out}: {len(ds)} images, classes {', '.join(ds.classes)}")


@data_app.command("targets")
def data_targets() -> None:
    """List the ready-made targets: name, classes and description."""
    from hubscout.sources import TARGETS

    table = _table("target", "classes", "description")
    for t in TARGETS.values():
        table.add_row(t.name, ", ".join(t.classes), t.description)
    _out().print(table)


# ---------------------------------------------------------------------------------------------------- rank

@app.command("rank")
@_guard
def rank_cmd(
    dataset: Path = typer.Argument(..., callback=_existing, dir_okay=False, help=".zip (ImageFolder) or .npz"),
    repo: str = RepoOpt,
    metric: str = typer.Option(",".join(DEFAULT_METRICS),
                               help=f"{', '.join(METRICS)}, a comma list, or all (first orders)"),
    top: Optional[int] = typer.Option(None, "--top", help="show the best K"),
    teachers: Optional[str] = typer.Option(None, "--teachers", help="comma-separated teacher ids"),
    cost: str = typer.Option(DEFAULT_COST, help="OT cost matrix: " + ", ".join(COSTS)),
    cache_dir: Optional[Path] = typer.Option(None, help="cache teacher outputs here"),
    shortlist: Optional[int] = typer.Option(None, help="score all teachers from their specifications first and "
                                                       "run only the best K and those their specifications "
                                                       "cannot rule out (default 10, or the server's; 0: every "
                                                       "teacher; repositories of at most 32 are always ranked "
                                                       "exhaustively)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output, no progress bars"),
    plot: Optional[Path] = typer.Option(None, "--plot", file_okay=False,
                                        help="write ranking.png and the best teachers' transport plans "
                                             "(plan-<teacher>.png) into this folder"),
    server: Optional[str] = ServerOpt,
    api_key: Optional[str] = ApiKeyOpt,
) -> None:
    """Rank the repository's teachers for DATASET (locally, or on a server with --server)."""
    teacher_ids = [t for t in teachers.split(",") if t] if teachers else None
    if server:
        _local_only(server, **{"--cost": cost != DEFAULT_COST, "--cache-dir": cache_dir is not None})
        with _client(server, api_key) as c:
            ds = c.upload(dataset)
            job = c.wait(c.rank(ds["id"], metrics=[m for m in metric.split(",") if m], teachers=teacher_ids,
                                top_k=top, shortlist=shortlist), progress=not as_json)
            result = c.ranking(job["result_id"])
    else:
        job = None
        from hubscout.data import load_dataset
        from hubscout.extract import FileCache
        from hubscout.rank import rank
        from hubscout.spec import DEFAULT_SHORTLIST_K

        ds = load_dataset(dataset)
        result = rank(ds, _repo(repo), metrics=metric, top_k=top, teacher_ids=teacher_ids,
                      cache=FileCache(cache_dir) if cache_dir else None, cost=cost, show_progress=not as_json,
                      shortlist_k=DEFAULT_SHORTLIST_K if shortlist is None else shortlist).to_dict()
    if plot is not None:
        from hubscout.plots import plot_ranking_dir

        written = plot_ranking_dir(result, plot)
        console.print(f"wrote {', '.join(str(p) for p in written)}")
    if as_json:
        _print_json(result)
        return
    named = ["--metric", metric] if metric != ",".join(DEFAULT_METRICS) else []
    again = ["hubscout", "rank", str(dataset), "--shortlist", "0"] + named \
        + (["--teachers", teachers] if teachers else []) + (["--server", server] if server else ["--repo", repo])
    _print_ranking(result, where=f" on {server}" if server else "", again=shlex.join(again), job=job)


LIST_SHOWN = 6  # classes per cell of the ranking table; the rest is counted, never dropped silently


def _out() -> Console:
    """stdout, for tables: rich fits them to the terminal's width (COLUMNS, 80 when piped) and wraps cells."""
    return Console(soft_wrap=False)


def _table(*columns: str, whole: dict[str, int] | None = None) -> Table:
    """fold: a cell too long for its column wraps onto the next line instead of ending in "…". ``whole``: columns
    kept at least this wide (ids, numbers), so that the prose columns wrap first."""
    from rich import box

    # No vertical rules: at 80 columns the eight border characters are the room an id or a number needs.
    table = Table(box=box.SIMPLE_HEAD, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold", min_width=(whole or {}).get(c))
    return table


def _class_lines(per_class: dict, fmt) -> str:
    """One line per target class (``fmt(class, pairs)``), at most LIST_SHOWN, and "+N more" for the rest."""
    lines = [fmt(c, pairs) for c, pairs in per_class.items() if pairs]
    more = len(lines) - LIST_SHOWN
    return "\n".join(lines[:LIST_SHOWN] + ([f"+{more} more (--json: all)"] if more > 0 else []))


def _print_ranking(r: dict, where: str = "", job: dict | None = None, again: str = "") -> None:
    """The ranking table, from ``Ranking.to_dict()`` or the API's ranking (the same fields). Where the terminal is
    too narrow for the table even wrapped, one block per teacher instead."""
    from rich.markup import escape

    metrics = r["metrics"]
    heads = [f"{m} ({'↓' if r['directions'][m] == 'lower' else '↑'})" for m in metrics]
    widest = max([len(e["teacher_id"]) for e in r["teachers"]] + [7])
    table = _table("rank", "teacher", *heads, "plan: your class ← teacher class (share of its mass)",
                   "nearest by cost (lower: nearer)", whole={"teacher": min(widest, 24), **{h: 7 for h in heads}})
    blocks = []
    for e in r["teachers"]:
        corr = _class_lines(e["correspondences"], lambda c, pairs: f"{c} ← {pairs[0][0]} {pairs[0][1]:.0%}")
        near = _class_lines(e.get("matches") or {}, lambda c, pairs: f"{c} ≈ {pairs[0][0]} ({pairs[0][1]:.3g})")
        took = f"{e.get('forward_s', 0) + e.get('score_s', 0):.2f} s" + (" (cached)" if e.get("cached") else "")
        scores = [_score(e["scores"][m]["value"]) for m in metrics]
        table.add_row(str(e["rank"]), f"{e['teacher_id']}\n{took}", *scores, corr, near)
        blocks.append("\n".join([f"{e['rank']}. {e['teacher_id']} ({took})",
                                 "   " + " · ".join(f"{h} {v}" for h, v in zip(heads, scores)),
                                 "   plan: " + corr.replace("\n", "; "),
                                 "   nearest by cost: " + near.replace("\n", "; ")]))
    out = _out()
    # What the table needs before its cells would break inside words (rich would fold them to one character):
    # whole ids and numbers, 14 characters for each class column, 2 of padding per column.
    needed = 6 + min(widest, 24) + 2 + sum(max(9, len(h)) + 2 for h in heads) + 2 * 16
    if needed <= out.width:
        out.print(table)
    else:
        for block in blocks:
            out.print(escape(block), soft_wrap=False, highlight=False)
    sl = r.get("shortlist")
    if sl and sl.get("mode", "shortlist") == "shortlist":
        console.print(f"shortlist: {len(sl['shortlisted'])} best of {sl['considered']} teachers by specification, "
                      f"{len(sl.get('uncertain_run', []))} more their specifications cannot rule out, "
                      f"{len(sl['unspecified_run'])} without one, in {sl['elapsed_s']:.2f} s")
        if sl["not_run_count"]:
            names = ", ".join(sl["not_run"][:8]) + (", …" if sl["not_run_count"] > 8 else "")
            console.print(f"skipped {sl['not_run_count']} teachers, {sl.get('skip_reason', 'ruled out')}: {names}")
            if again:
                console.print(f"rank them too: {again}")
    elif sl:
        console.print(f"exhaustive: {sl['rule']}")
    took = f"ranked in {r['elapsed_s']:.1f} s"
    if job is not None and job.get("computing_s") is not None:
        took = f"queued {job.get('queued_s') or 0:.1f} s, ranked in {job['computing_s']:.1f} s"
    console.print(f"{r['n_samples']} samples, classes {', '.join(r['classes'])} (label index order), {took}{where}")


def _score(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"  # the API sends a non-finite score as null


# ------------------------------------------------------------------------------------------------- distill

@app.command("distill")
@_guard
def distill_cmd(
    dataset: Path = typer.Argument(..., callback=_existing, dir_okay=False),
    teacher: str = typer.Option(..., "--teacher", help="teacher id, or several comma-separated"),
    out: Path = typer.Option(..., help="output folder for the student"),
    repo: str = RepoOpt,
    student: Optional[str] = typer.Option(
        None, "--student", help="SIZE|ARCH: auto (default: never larger than the teacher, at most 5 M parameters), "
                                "a size from `hubscout students sizes`, or a timm architecture"),
    epochs: Optional[int] = typer.Option(None, help="exactly this many epochs (unless --min-steps asks for more)"),
    min_steps: Optional[int] = typer.Option(None, help="at least this many optimiser steps (tiny datasets)"),
    lam: Optional[float] = typer.Option(None, help="weight of the distillation term, in [0, 100]"),
    tau: Optional[float] = typer.Option(None, help="softening temperature, in [0.1, 20]"),
    ce_only: bool = typer.Option(False, "--ce-only", help="train with cross-entropy only, for comparison"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot", file_okay=False,
                                        help="write the training curves (curves.png) into this folder"),
    server: Optional[str] = ServerOpt,
    api_key: Optional[str] = ApiKeyOpt,
) -> None:
    """Distil a student for DATASET from one or more teachers (several are weighted by relatedness); with
    --server it trains there and is downloaded to --out."""
    ids = [t for t in teacher.split(",") if t]
    overrides = {"student_arch": student, "epochs": epochs, "min_steps": min_steps, "lam": lam, "tau": tau}
    # The CE-only control is trained beside the student (or read from the repository's cache): the line below
    # the result says what the teachers added.
    if server:
        with _client(server, api_key) as c:
            ds = c.upload(dataset)
            job = c.wait(c.distill(ds["id"], ids, ce_only=ce_only, seed=seed, **overrides), progress=not as_json)
            metrics = c.student(job["result_id"])["metrics"]
            c.download(job["result_id"], out)
    else:
        from hubscout.data import load_dataset
        from hubscout.distill import DirControlCache, DistillConfig, distill
        from hubscout.rank import weigh_teachers
        from hubscout.spec import repo_cache_dir

        ds = load_dataset(dataset)
        r = _repo(repo)
        cfg = DistillConfig.from_dict({**DistillConfig().to_dict(),
                                       **{k: v for k, v in overrides.items() if v is not None},
                                       "ce_only": ce_only, "seed": seed})
        mixture, relatedness = weigh_teachers(ds, r, ids, ce_only=cfg.ce_only)
        result = distill(ds, r, ids, cfg, mixture=mixture, relatedness=relatedness, show_progress=not as_json,
                         ce_control=True, control_cache=DirControlCache(repo_cache_dir(r) / "ce-controls"))
        result.save(out)
        metrics = result.metrics
    summary = {"out": str(out), **{k: v for k, v in metrics.items() if k != "curves"}}
    if plot is not None:
        from hubscout.plots import plot_training_curves

        path = plot_training_curves(metrics["curves"], plot / "curves.png",
                                    title=f"from {', '.join(ids) or 'labels only (CE)'}")
        console.print(f"wrote {path}")
    if as_json:
        _print_json(summary)
    else:
        val = metrics.get("val_accuracy")
        # Too few samples to hold any out leaves no validation accuracy.
        val_text = "n/a (no validation split)" if val is None else f"{val:.3f}"
        typer.echo(f"student saved to {out}: train accuracy {metrics.get('train_accuracy', 0):.3f}, "
                   f"validation accuracy {val_text}")
        console.print(_control_line(metrics))
        chosen = metrics.get("student") or {}
        if chosen:
            console.print(f"student {chosen['arch']}" + (f" ({chosen['size']})" if chosen.get("size") else "")
                          + f", {chosen['params']:,} parameters: {chosen['note']}")
        if metrics.get("schedule"):
            console.print(f"schedule: {metrics['schedule']['note']}")


def _control_line(metrics: dict) -> str:
    ctrl = metrics.get("ce_only") or {}
    if ctrl.get("same_student"):
        return "this is the CE-only student (no teachers)"
    ce, gain = ctrl.get("val_accuracy"), metrics.get("gain_vs_ce")
    if ce is None:
        return "CE-only control: n/a (no validation split)"
    return (f"CE-only control on the same validation split: {ce:.3f}"
            + (" (cached)" if ctrl.get("cached") else "") + (f", gain {gain:+.3f}" if gain is not None else ""))


@students_app.command("sizes")
@_guard
def students_cmd(classes: int = typer.Option(10, help="parameter counts for this many classes"),
                 channels: int = typer.Option(3, help="1 (greyscale) or 3 (RGB)"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Students by size, smallest first, with their parameter counts (names for `distill --student`)."""
    from hubscout.students import MAX_DEFAULT_PARAMS, size_table

    rows = size_table(classes, channels)
    if as_json:
        _print_json(rows)
        return
    table = Table("size", "arch", "options", "parameters")
    for r in rows:
        table.add_row(r["name"], r["arch"], ", ".join(f"{k}={v}" for k, v in r["kwargs"].items()), f"{r['params']:,}")
    Console().print(table)
    console.print(f"auto (the default): the largest size with at most {MAX_DEFAULT_PARAMS:,} parameters and at most "
                  "as many as the smallest teacher; any timm architecture may be named instead")


@app.command("evaluate")
@_guard
def evaluate_cmd(student_dir: Path = typer.Argument(..., callback=_existing, file_okay=False),
                 dataset: Path = typer.Argument(..., callback=_existing, dir_okay=False),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Accuracy of a saved student on a labelled dataset."""
    from hubscout.data import load_dataset
    from hubscout.distill import evaluate, load_student

    res = evaluate(load_student(student_dir), load_dataset(dataset))
    if as_json:
        _print_json(res)
    else:
        typer.echo(f"accuracy {res['accuracy']:.4f} on {res['n']} samples")


# ---------------------------------------------------------------------------------------------------- jobs

def _print_jobs(rows: list[dict]) -> None:
    from hubscout.client import job_line

    table = _table("job", "kind", "status", "state", whole={"job": max([len(j["id"]) for j in rows] + [3])})
    for j in rows:
        state = job_line(j).split(" ", 2)[2] if len(job_line(j).split(" ", 2)) > 2 else ""
        table.add_row(j["id"], j["kind"], j["status"],
                      f"{j['progress']:.0%} · created {j['created_at'][:19].replace('T', ' ')}" +
                      (f" · {state.lstrip(': ')}" if state else ""))
    _out().print(table)


@jobs_app.command("list")
@_guard
def jobs_list(status: Optional[str] = typer.Option(None, help="queued, running, succeeded, failed or cancelled"),
              kind: Optional[str] = typer.Option(None, help="ranking or distillation"),
              limit: int = typer.Option(20, help="newest first, at most this many"),
              as_json: bool = typer.Option(False, "--json"),
              server: Optional[str] = ServerOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """List your jobs on the server, newest first."""
    with _client(_need_server(server), api_key) as c:
        page = c.jobs(status=status, kind=kind, limit=limit)
    if as_json:
        _print_json(page)
        return
    _print_jobs(page["items"])
    if page["total"] > len(page["items"]):
        console.print(f"{len(page['items'])} of {page['total']} jobs (--limit for more)")


@jobs_app.command("show")
@_guard
def jobs_show(job_id: str, server: Optional[str] = ServerOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """One job as JSON: status, progress, queue position, timings, error, result link."""
    with _client(_need_server(server), api_key) as c:
        _print_json(c.job(job_id))


@jobs_app.command("wait")
@_guard
def jobs_wait(job_id: str, timeout: Optional[float] = typer.Option(None, help="give up after this many seconds "
                                                                           f"(exit {EXIT_TIMEOUT})"),
              as_json: bool = typer.Option(False, "--json", help="print the final job as JSON, no progress"),
              server: Optional[str] = ServerOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """Wait for a job to end; exit 0 when it succeeded, 5 when it failed or was cancelled."""
    from hubscout.client import job_line

    with _client(_need_server(server), api_key) as c:
        try:
            job = c.wait(job_id, progress=not as_json, timeout=timeout)
        except TimeoutError as e:
            _fail(str(e), EXIT_TIMEOUT)
    if as_json:
        _print_json(job)
    else:
        typer.echo(f"{job['id']}: {job_line(job)}")


@jobs_app.command("cancel")
@_guard
def jobs_cancel(job_id: str, server: Optional[str] = ServerOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """Cancel a queued or running job."""
    with _client(_need_server(server), api_key) as c:
        job = c.cancel(job_id)
    typer.echo(f"{job['id']}: {job['status']}")


@students_app.command("download")
@_guard
def students_download(job_id: str = typer.Argument(..., help="the distillation job (its student has its id)"),
                      out: Path = typer.Option(..., help="a folder (unzipped) or a .zip"),
                      server: Optional[str] = ServerOpt, api_key: Optional[str] = ApiKeyOpt) -> None:
    """Download a distilled student (safetensors, ONNX, predict.py, model card), sha256-checked."""
    with _client(_need_server(server), api_key) as c:
        path = c.download(job_id, out)
    typer.echo(f"student saved to {path}")


# --------------------------------------------------------------------------------------------------- serve

@app.command("serve")
def serve_cmd(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000)) -> None:
    """Run the REST API (embedded default: SQLite, a local Celery worker, local storage)."""
    # The library never imports the service: the API is loaded by name, as uvicorn loads "app.main:app".
    importlib.import_module("app.main").serve(host=host, port=port)


if __name__ == "__main__":
    app()
