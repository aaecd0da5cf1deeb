"""The pictures of a ranking and a distillation as PNG files (matplotlib, no display needed).

The same pictures as the web page draws: a teacher's transport plan as a heatmap (teacher classes × target
classes, class names on the axes), the ranking as a bar chart, and a student's training curves. Each function
takes the JSON forms the CLI prints and the API returns (``Ranking.to_dict()``, ``hubscout.ot.plan_summary``,
``metrics["curves"]``), so results read back from a file or from the service plot the same way.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never look for a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _clip(s: str, n: int = 28) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def safe_name(s: str) -> str:
    """A file-name-safe form of a teacher id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "teacher"


def plot_transport_plan(plan: Mapping[str, Any] | np.ndarray, out: str | Path, *,
                        teacher_classes: Sequence[str] | None = None, target_classes: Sequence[str] | None = None,
                        title: str = "", max_rows: int = 40) -> Path:
    """A heatmap of a transport plan: rows the teacher's classes, columns the target's, cells the share of each
    target class's mass that comes from a teacher class (columns sum to 1 over all the teacher's classes).

    ``plan`` is a plan summary (``hubscout.ot.plan_summary``, as stored in a ranking) or a raw (K, C) plan with
    ``teacher_classes`` and ``target_classes``. At most ``max_rows`` rows are drawn, those with the most mass.
    """
    from hubscout.ot import plan_summary

    if not isinstance(plan, Mapping):
        if teacher_classes is None or target_classes is None:
            raise ValueError("a raw plan needs teacher_classes and target_classes")
        plan = plan_summary(plan, teacher_classes, target_classes)
    share = np.asarray(plan["share"], dtype=np.float64)
    rows, cols = list(plan["teacher_classes"]), list(plan["target_classes"])
    if share.shape != (len(rows), len(cols)):
        raise ValueError(f"plan share is {share.shape} but names {len(rows)} rows and {len(cols)} columns")
    if len(rows) > max_rows:
        keep = np.sort(np.argsort(-share.sum(axis=1), kind="stable")[:max_rows])
        share, rows = share[keep], [rows[i] for i in keep]
    plt = _pyplot()
    w = min(14.0, 2.6 + 0.55 * len(cols) + 0.07 * max(len(_clip(r)) for r in rows))
    h = min(16.0, 1.8 + 0.28 * len(rows) + 0.06 * max(len(_clip(c)) for c in cols))
    fig, ax = plt.subplots(figsize=(w, h))
    from matplotlib.colors import PowerNorm

    # A square-root scale, as on the web page: the few-percent shares of a 1000-class teacher stay visible.
    im = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), aspect="auto",
                   interpolation="nearest")
    ax.set_xticks(range(len(cols)), [_clip(c) for c in cols], rotation=45, ha="left")
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), [_clip(r) for r in rows])
    ax.set_xlabel("target classes")
    ax.set_ylabel("teacher classes")
    if len(rows) * len(cols) <= 400:
        for (i, j), v in np.ndenumerate(share):
            if v >= 0.05:
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the target class")
    if plan.get("truncated") or len(rows) < len(plan["teacher_classes"]):
        title += (" — " if title else "") + (f"{len(rows)} of {plan.get('teacher_num_classes', len(rows))} "
                                             "teacher classes, most mass")
    if title:
        ax.set_title(title, fontsize=10, pad=12)
    fig.tight_layout()
    return _save(fig, out)


def plot_ranking(ranking: Mapping[str, Any], out: str | Path, *, metric: str | None = None, top: int | None = None,
                 title: str = "") -> Path:
    """Horizontal bars of every ranked teacher's score under ``metric`` (default: the ranking's primary), best at
    the top; ``ranking`` is ``Ranking.to_dict()`` or the API's ranking."""
    metric = metric or ranking["primary"]
    teachers = [t for t in ranking["teachers"] if metric in t["scores"]]
    if not teachers:
        raise ValueError(f"no teacher has a {metric!r} score")
    direction = ranking["directions"][metric]
    sign = 1.0 if direction == "lower" else -1.0
    teachers.sort(key=lambda t: (t["scores"][metric]["value"] is None,
                                 sign * (t["scores"][metric]["value"] or 0.0)))
    if top is not None:
        teachers = teachers[:top]
    names = [_clip(t["teacher_id"], 34) for t in teachers]
    vals = [t["scores"][metric]["value"] for t in teachers]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.36 * len(teachers)))
    y = np.arange(len(teachers))
    clean = [0.0 if v is None or not math.isfinite(v) else v for v in vals]
    colours = ["tab:blue" if i else "tab:green" for i in range(len(teachers))]
    ax.barh(y, clean, color=colours)
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # best first
    ax.axvline(0, color="k", lw=0.5)
    for yi, v in zip(y, vals):
        ax.text(0 if v is None else v, yi, " n/a" if v is None else f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlabel(f"{metric} ({'lower' if direction == 'lower' else 'higher'} is better)")
    ax.set_title(title or f"teachers ranked by {metric} ({ranking.get('n_samples', '?')} target images)",
                 fontsize=10)
    ax.margins(x=0.15)
    fig.tight_layout()
    return _save(fig, out)


def plot_training_curves(curves: Mapping[str, Sequence[Any]], out: str | Path, *, title: str = "") -> Path:
    """Loss (total, cross-entropy, OT term) and accuracy (train, validation) per epoch, side by side;
    ``curves`` is a student's ``metrics["curves"]`` (or a distillation job's ``curves``)."""
    epochs = list(curves.get("epoch") or [])
    if not epochs:
        raise ValueError("no epoch in the curves")

    def series(name: str) -> np.ndarray:
        vals = list(curves.get(name) or [])
        return np.array([np.nan if v is None else float(v) for v in vals + [None] * (len(epochs) - len(vals))])

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(epochs, series("loss"), "-", label="total", color="tab:blue")
    a.plot(epochs, series("ce"), "--", label="cross-entropy", color="tab:gray")
    if not np.all(np.isnan(series("ot"))):
        a.plot(epochs, series("ot"), ":", label="OT term", color="tab:orange")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(fontsize=8), a.grid(alpha=0.3)
    b.plot(epochs, series("train_acc"), "-", label="train", color="tab:blue")
    if not np.all(np.isnan(series("val_acc"))):
        b.plot(epochs, series("val_acc"), "-", label="validation", color="tab:green")
    b.set_ylim(0, 1.02)
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(fontsize=8), b.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def plot_ranking_dir(ranking: Mapping[str, Any], out_dir: str | Path, *, plans: int = 3) -> list[Path]:
    """What ``hubscout rank --plot DIR`` writes: ``ranking.png`` and ``plan-<teacher>.png`` for the best
    ``plans`` teachers that have a plan (the ot metric)."""
    out_dir = Path(out_dir)
    written = [plot_ranking(ranking, out_dir / "ranking.png")]
    with_plan = [t for t in ranking["teachers"] if t.get("plan")][:plans]
    for t in with_plan:
        written.append(plot_transport_plan(t["plan"], out_dir / f"plan-{safe_name(t['teacher_id'])}.png",
                                           title=f"#{t['rank']} {t['teacher_id']}: transport plan"))
    return written
