"""Portable copies of a student: an ONNX graph for runtimes without torch, and a model card for people.

The ONNX model takes the tensor the torch model takes (``input``: float32 N×C×S×S, already resized and
normalised as the card says) and returns its logits (``logits``: N×classes); the batch axis is dynamic. The
class names and the input configuration are stored in the graph's metadata too, so the file describes itself.
"""
from __future__ import annotations

import copy
import datetime as dt
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from hubscout.teachers import InputConfig

ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
# Opset 17 is the newest the TorchScript exporter of torch 2.x writes without warnings, and every onnxruntime
# since 1.12 runs it.
ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

__all__ = ["ExportError", "export_onnx", "model_card", "ONNX_FILE", "CARD_FILE", "INPUT_NAME", "OUTPUT_NAME"]


class ExportError(RuntimeError):
    """The model could not be written as ONNX; the message names the architecture and the cause."""


def export_onnx(model: torch.nn.Module, input_cfg: InputConfig, path: str | Path, *,
                metadata: Mapping[str, Any] | None = None, arch: str = "") -> Path:
    """Write ``model`` (in eval mode, on the CPU; the caller's model is left untouched) as ONNX at ``path``.

    ``metadata`` values are stored as the graph's metadata_props (non-strings as JSON). The file appears
    complete or not at all."""
    import onnx

    path = Path(path)
    # A CPU copy: the export traces the model, and the caller's may live on a GPU or be in training mode.
    m = copy.deepcopy(model).cpu().eval()
    dummy = torch.zeros(2, input_cfg.channels, input_cfg.size, input_cfg.size)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter (dynamo=False) needs no onnxscript; its deprecation notice is not for users.
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (dummy,), buf, dynamo=False, opset_version=ONNX_OPSET, do_constant_folding=True,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load_from_string(buf.getvalue())
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value)
        onnx.checker.check_model(proto)
    except Exception as e:  # the exporter raises many types; the caller needs one, with the cause kept
        raise ExportError(f"could not export {arch or type(model).__name__} to ONNX: {type(e).__name__}: {e}") from e
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ model card

def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v) + "`"
    return str(v)


def _cell(text: Any) -> str:
    return _fmt(text).replace("|", "\\|").replace("\n", " ")


def model_card(config: Mapping[str, Any], metrics: Mapping[str, Any], *, created: dt.datetime | None = None,
               files: Mapping[str, str] | None = None) -> str:
    """A Markdown model card from a student's ``config.json`` content and its metrics: the task, the classes,
    the teachers and their relatedness, the hyper-parameters, the metrics, the data hash, the version and date,
    and how to run it."""
    created = created or dt.datetime.now(dt.timezone.utc)
    classes = list(config.get("classes") or [])
    inp = config.get("input") or {}
    hp = dict(config.get("hyperparameters") or {})
    teachers = list(config.get("teachers") or [])
    task = config.get("dataset_name") or "an unnamed labelled image task"
    channels = inp.get("channels")
    size = inp.get("size")
    lines = [
        f"# Student for {task}",
        "",
        f"A `{config.get('arch')}` image classifier over {len(classes)} classes, distilled by hubscout "
        f"{config.get('hubscout_version', '?')} on {created.strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## Task",
        "",
        f"- dataset: {task}",
        f"- data sha256: `{config.get('dataset_sha256') or 'unknown'}` (content hash of the decoded images, "
        "labels and class names)",
        f"- training samples: {_fmt(metrics.get('n_train'))}, held-out validation samples: "
        f"{_fmt(metrics.get('n_val'))} (both drawn from the uploaded dataset)",
        "",
        "| index | class |",
        "|---:|---|",
        *[f"| {i} | {_cell(c)} |" for i, c in enumerate(classes)],
        "",
        "## Teachers",
        "",
    ]
    if not teachers:
        lines.append("None: trained with cross-entropy only.")
    else:
        lines += [
            "Each teacher's softened prediction is transported onto the student's under a cost relating the two "
            "label spaces (arXiv 2204.11526). Several teachers are weighted by their OT relatedness to the task "
            "(the transport cost from the teacher's predictions to the labels; lower is closer).",
            "",
            "| teacher | name | OT relatedness (cost) | weight in the loss | weights sha256 |",
            "|---|---|---:|---:|---|",
            *[f"| {_cell(t.get('id'))} | {_cell(t.get('name'))} | {_cell(t.get('ot_relatedness'))} | "
              f"{_cell(t.get('weight'))} | `{str(t.get('weights_sha256', ''))[:16]}…` |" for t in teachers],
        ]
        if len(teachers) == 1:
            lines += ["", "One teacher: it takes the whole weight, so its relatedness was not computed."]
    student = metrics.get("student") or {}
    schedule = metrics.get("schedule") or {}
    control = metrics.get("ce_only") or {}
    # What was asked (the config) and what ran (the metrics) under names that cannot be read as each other.
    asked = {"epochs": "epochs (asked; null: the default)", "min_steps": "min_steps (asked; null: the default)"}
    if student:  # students saved before sizes and schedules were recorded have neither
        lines += [
            "",
            "## Student",
            "",
            f"- {_fmt(student.get('params'))} parameters"
            + (f", size `{student['size']}`" if student.get("size") else "")
            + f"; the smallest teacher has {_fmt(student.get('teacher_params'))}",
            f"- {_fmt(student.get('note'))}",
            *(["- **larger than its teacher(s)**, as asked"] if student.get("larger_than_teachers") else []),
        ]
    lines += [
        "",
        "## Training",
        "",
        *([f"Schedule: {schedule['note']}.", ""] if schedule.get("note") else []),
        "| hyper-parameter | value |",
        "|---|---|",
        *[f"| {_cell(asked.get(k, k))} | {_cell(v)} |" for k, v in hp.items()],
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {_cell(label)} | {_cell(metrics.get(k))} |"
          for k, label in (("train_accuracy", "train_accuracy"), ("val_accuracy", "val_accuracy"),
                           ("epochs", "epochs run"), ("steps", "optimiser steps run"), ("elapsed_s", "elapsed_s"),
                           ("device", "device")) if k in metrics],
        *([f"| CE-only val_accuracy (same student, split, schedule and seed) | {_cell(control.get('val_accuracy'))} |",
           f"| gain over CE-only | {_cell(metrics.get('gain_vs_ce'))} |"] if control else []),
        "",
        "Validation accuracy is measured on the held-out part of the uploaded data, not on an independent test "
        "set; with a few shots per class it is a rough estimate. The CE-only control is the same student trained "
        "on the labels alone: the gain over it is what the teachers added.",
        "",
        "## Input",
        "",
        f"{'RGB' if channels == 3 else 'Greyscale'} images resized to {size}×{size} (bilinear), scaled to [0, 1], "
        f"then normalised per channel with mean {_fmt(inp.get('mean'))} and std {_fmt(inp.get('std'))}. "
        "`hubscout.data.to_tensor(images, student.input)` does exactly this for uint8 N×H×W×C arrays.",
        "",
        "## Files",
        "",
    ]
    for name, what in (files or {}).items():
        lines.append(f"- `{name}`: {what}")
    lines += [
        "",
        "Without hubscout or torch (`pip install onnxruntime numpy pillow`): `python predict.py image.png ...` "
        "prepares each image as above and prints its class; `from predict import Predictor` does it from Python.",
        "",
        "```python",
        "from hubscout.distill import load_student      # torch",
        "student = load_student('.')                     # then student.predict(uint8_images)",
        "",
        "import numpy as np, onnxruntime as ort          # no torch needed",
        f"session = ort.InferenceSession('{ONNX_FILE}')",
        f"logits = session.run(['{OUTPUT_NAME}'], {{'{INPUT_NAME}': x.astype(np.float32)}})[0]  "
        f"# x: N×{channels}×{size}×{size}, prepared as above",
        "```",
        "",
    ]
    return "\n".join(lines)
