"""The ``hubscout`` command line: teachers, demo data, ranking, distillation, evaluation, and the server."""
from __future__ import annotations

import importlib
import json
import os
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
from hubscout.scores import METRICS

app = typer.Typer(help="Rank a model repository's teachers for your labelled task, and distil a student.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
teachers_app = typer.Typer(help="Manage the teacher repository.", no_args_is_help=True)
zoo_app = typer.Typer(help="Build the demo teacher repository.", no_args_is_help=True)
data_app = typer.Typer(help="Ready-made target datasets.", no_args_is_help=True)
app.add_typer(teachers_app, name="teachers")
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")

console = Console(stderr=True)
DEFAULT_REPO = os.environ.get("HUBSCOUT_REPO", "demo-zoo")
RepoOpt = typer.Option(DEFAULT_REPO, "--repo", help="Teacher repository folder (env HUBSCOUT_REPO).")
ServerOpt = typer.Option(None, "--server", envvar="HUBSCOUT_SERVER",
                         help="Run on the hubscout server at this URL instead of locally.")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="HUBSCOUT_API_KEY", show_default=False,
                         help="API key for --server.")


def _fail(msg: str, code: int = 2) -> None:
    # soft_wrap: one line whatever the terminal's width, so scripts and logs get the whole message intact.
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _guard(fn):
    """Turn the library's user-facing errors into a one-line message and exit code 2, not a traceback."""
    import functools

    from hubscout.client import ClientError
    from hubscout.data import DatasetError
    from hubscout.teachers import TeacherError, TeacherNotFound

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except ClientError as e:
            _fail(f"server: {e}")
        except TeacherNotFound as e:
            _fail(f"unknown teacher: {e.args[0]}")
        except (DatasetError, TeacherError, ValueError, FileNotFoundError) as e:
            _fail(str(e))
    return wrapper


def _repo(path: str):
    from hubscout.teachers import Repository

    repo = Repository(path)
    if not repo.root.is_dir():
        _fail(f"no teacher repository at {path} (build one with `hubscout zoo demo --out {path}`)")
    return repo


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _client(server: str, api_key: str | None):
    from hubscout.client import Client

    return Client(server, api_key=api_key)


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
    weights: Path = typer.Option(..., exists=True, dir_okay=False, help="safetensors state dict"),
    labels: Path = typer.Option(..., exists=True, dir_okay=False, help="JSON list or one label per line"),
    name: str = typer.Option(..., help="human-readable name"),
    teacher_id: Optional[str] = typer.Option(None, "--id", help="id (default: slug of the name)"),
    input_size: int = typer.Option(224, help="square input side"),
    channels: int = typer.Option(3, help="input channels (1 or 3)"),
    mean: str = typer.Option("0.485,0.456,0.406", help="per-channel mean, comma separated"),
    std: str = typer.Option("0.229,0.224,0.225", help="per-channel std, comma separated"),
    task: str = typer.Option("", help="what the teacher was trained for"),
    metadata: str = typer.Option("{}", help="extra metadata as a JSON object"),
    spec_sample: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
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
        from hubscout.data import load_dataset
        from hubscout.sources import sample_per_class
        from hubscout.spec import SPEC_SAMPLES_PER_CLASS

        sample = sample_per_class(load_dataset(spec_sample), SPEC_SAMPLES_PER_CLASS)
        unknown = [c for c in sample.classes if c not in label_list]
        if unknown:
            raise ValueError(f"--spec-sample classes not among the labels: {', '.join(unknown[:10])}")
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
    table = Table("id", "arch", "classes", "params", "task")
    for t in rows:
        n_classes = t.get("num_classes", len(t.get("labels", [])))
        table.add_row(t["id"], t["arch"], str(n_classes), f"{t['num_params']:,}",
                      str(t["metadata"].get("task", "")))
    Console().print(table)


@teachers_app.command("spec")
@_guard
def teachers_spec(repo: str = RepoOpt) -> None:
    """Compute the search specification of every teacher that lacks one (see docs/method.md)."""
    from hubscout.spec import ensure_specifications

    n = ensure_specifications(_repo(repo), show_progress=True)
    console.print(f"{n} specification(s) computed")


@teachers_app.command("show")
@_guard
def teachers_show(teacher_id: str, repo: str = RepoOpt) -> None:
    """Show one teacher's description."""
    _print_json(_repo(repo).get(teacher_id).to_dict())


# ------------------------------------------------------------------------------------------------ demo data

@zoo_app.command("demo")
@_guard
def zoo_demo(out: Path = typer.Option(Path(DEFAULT_REPO), help="output folder"),
             quick: bool = typer.Option(False, help="a small repository (for tests)"),
             seed: int = typer.Option(0)) -> None:
    """Build the demo repository offline: ImageNet EfficientNet-Lite teachers + small teachers on real data."""
    from hubscout.zoo import build_demo_zoo

    from hubscout.spec import ensure_specifications

    repo = build_demo_zoo(out, quick=quick, seed=seed, show_progress=True)
    ensure_specifications(repo, show_progress=True)
    console.print(f"demo repository at {out}: {len(repo)} teachers")


@data_app.command("demo-target")
@_guard
def data_demo_target(name: str = typer.Argument(..., help="target name (see `hubscout data targets`)"),
                     shots: int = typer.Option(10, help="samples per class"),
                     out: Path = typer.Option(..., help="output .npz or .zip"),
                     seed: int = typer.Option(0), split: str = typer.Option("train", help="train or test")) -> None:
    """Write a ready-made few-shot target dataset (.npz, or an ImageFolder .zip)."""
    from hubscout.data import write_image_folder_zip
    from hubscout.sources import demo_target

    ds = demo_target(name, shots=shots, seed=seed, split=split)
    if out.suffix == ".zip":
        write_image_folder_zip(ds, out)
    else:
        ds.save(out)
    console.print(f"wrote {out}: {len(ds)} images, classes {', '.join(ds.classes)}")


@data_app.command("targets")
def data_targets() -> None:
    """List the ready-made targets."""
    from hubscout.sources import TARGETS

    for name in TARGETS:
        typer.echo(name)


# ---------------------------------------------------------------------------------------------------- rank

@app.command("rank")
@_guard
def rank_cmd(
    dataset: Path = typer.Argument(..., exists=True, dir_okay=False, help=".zip (ImageFolder) or .npz"),
    repo: str = RepoOpt,
    metric: str = typer.Option("ot", help=f"{', '.join(METRICS)}, a comma list, or all (first orders)"),
    top: Optional[int] = typer.Option(None, "--top", help="show the best K"),
    teachers: Optional[str] = typer.Option(None, "--teachers", help="comma-separated teacher ids"),
    cost: str = typer.Option(DEFAULT_COST, help="OT cost matrix: " + ", ".join(COSTS)),
    cache_dir: Optional[Path] = typer.Option(None, help="cache teacher outputs here"),
    shortlist: Optional[int] = typer.Option(None, help="score all teachers from their specifications first and "
                                                       "run only the best K (large repositories)"),
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
        _local_only(server, **{"--cost": cost != DEFAULT_COST, "--cache-dir": cache_dir is not None,
                               "--shortlist": shortlist is not None})
        with _client(server, api_key) as c:
            ds = c.upload(dataset)
            job = c.wait(c.rank(ds["id"], metrics=[m for m in metric.split(",") if m], teachers=teacher_ids,
                                top_k=top), progress=not as_json)
            result = c.ranking(job["result_id"])
    else:
        from hubscout.data import load_dataset
        from hubscout.extract import FileCache
        from hubscout.rank import rank

        ds = load_dataset(dataset)
        result = rank(ds, _repo(repo), metrics=metric, top_k=top, teacher_ids=teacher_ids,
                      cache=FileCache(cache_dir) if cache_dir else None, cost=cost, show_progress=not as_json,
                      shortlist_k=shortlist).to_dict()
    if plot is not None:
        from hubscout.plots import plot_ranking_dir

        written = plot_ranking_dir(result, plot)
        console.print(f"wrote {', '.join(str(p) for p in written)}")
    if as_json:
        _print_json(result)
        return
    _print_ranking(result, where=f" on {server}" if server else "")


def _print_ranking(r: dict, where: str = "") -> None:
    """The ranking table, from ``Ranking.to_dict()`` or the API's ranking (the same fields)."""
    metrics = r["metrics"]
    table = Table("rank", "teacher", *[f"{m} ({'↓' if r['directions'][m] == 'lower' else '↑'})" for m in metrics],
                  "plan: class←teacher class (mass)", "nearest by cost", "s")
    for e in r["teachers"]:
        corr = "; ".join(f"{c}←{pairs[0][0]} {pairs[0][1]:.0%}" for c, pairs in list(e["correspondences"].items())[:4]
                         if pairs)
        near = "; ".join(f"{c}≈{pairs[0][0]}" for c, pairs in list((e.get("matches") or {}).items())[:4] if pairs)
        table.add_row(str(e["rank"]), e["teacher_id"], *[_score(e["scores"][m]["value"]) for m in metrics], corr,
                      near, f"{e.get('forward_s', 0) + e.get('score_s', 0):.2f}")
    Console().print(table)
    if r.get("shortlist"):
        sl = r["shortlist"]
        console.print(f"shortlist: {sl['kept']} of {sl['considered']} teachers by specification in "
                      f"{sl['elapsed_s']:.2f} s")
    console.print(f"{r['n_samples']} samples, {len(r['classes'])} classes, ranked in {r['elapsed_s']:.1f} s{where}")


def _score(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"  # the API sends a non-finite score as null


# ------------------------------------------------------------------------------------------------- distill

@app.command("distill")
@_guard
def distill_cmd(
    dataset: Path = typer.Argument(..., exists=True, dir_okay=False),
    teacher: str = typer.Option(..., "--teacher", help="teacher id, or several comma-separated"),
    out: Path = typer.Option(..., help="output folder for the student"),
    repo: str = RepoOpt,
    student: Optional[str] = typer.Option(None, "--student", help="timm architecture of the student"),
    epochs: Optional[int] = typer.Option(None),
    min_steps: Optional[int] = typer.Option(None, help="at least this many optimiser steps (tiny datasets)"),
    lam: Optional[float] = typer.Option(None, help="weight of the OT term"),
    tau: Optional[float] = typer.Option(None, help="softening temperature"),
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
    if server:
        with _client(server, api_key) as c:
            ds = c.upload(dataset)
            job = c.wait(c.distill(ds["id"], ids, ce_only=ce_only, seed=seed, **overrides), progress=not as_json)
            metrics = c.student(job["result_id"])["metrics"]
            c.download(job["result_id"], out)
    else:
        from hubscout.data import load_dataset
        from hubscout.distill import DistillConfig, distill
        from hubscout.rank import weigh_teachers

        ds = load_dataset(dataset)
        r = _repo(repo)
        cfg = DistillConfig.from_dict({**DistillConfig().to_dict(),
                                       **{k: v for k, v in overrides.items() if v is not None},
                                       "ce_only": ce_only, "seed": seed})
        mixture, relatedness = weigh_teachers(ds, r, ids, ce_only=cfg.ce_only)
        result = distill(ds, r, ids, cfg, mixture=mixture, relatedness=relatedness, show_progress=not as_json)
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
        console.print(f"student saved to {out}: train accuracy {metrics.get('train_accuracy', 0):.3f}, "
                      f"validation accuracy {val_text}")


@app.command("evaluate")
@_guard
def evaluate_cmd(student_dir: Path = typer.Argument(..., exists=True, file_okay=False),
                 dataset: Path = typer.Argument(..., exists=True, dir_okay=False),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Accuracy of a saved student on a labelled dataset."""
    from hubscout.data import load_dataset
    from hubscout.distill import evaluate, load_student

    res = evaluate(load_student(student_dir), load_dataset(dataset))
    if as_json:
        _print_json(res)
    else:
        typer.echo(f"accuracy {res['accuracy']:.4f} on {res['n']} samples")


# --------------------------------------------------------------------------------------------------- serve

@app.command("serve")
def serve_cmd(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000)) -> None:
    """Run the REST API (embedded default: SQLite, a local Celery worker, local storage)."""
    # The library never imports the service: the API is loaded by name, as uvicorn loads "app.main:app".
    importlib.import_module("app.main").serve(host=host, port=port)


if __name__ == "__main__":
    app()
