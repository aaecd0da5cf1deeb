"""A saved student's ONNX copy predicts what the torch student predicts, and its model card says what it is."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import hubscout
from hubscout.data import iter_batches
from hubscout.distill import DistillConfig, distill, load_student
from hubscout.export import CARD_FILE, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, ExportError, export_onnx
from hubscout.rank import relatedness_scores, weights_from_scores
from hubscout.teachers import InputConfig

TEACHERS = ["fashion-footwear", "fashion-clothes"]
FAST = dict(student_arch="test_resnet", epochs=3, min_steps=0, batch_size=16, teacher_views=1, sinkhorn_iters=10)


@pytest.fixture(scope="module")
def saved(quick_repo, tmp_path_factory):
    """A two-teacher student of the real footwear target (relatedness-weighted, as the CLI does), saved."""
    from hubscout.sources import demo_target

    target = demo_target("footwear", 10, seed=0)
    scores = relatedness_scores(target, quick_repo, TEACHERS)
    student = distill(target, quick_repo, TEACHERS, DistillConfig(**FAST), mixture=weights_from_scores(scores),
                      relatedness=dict(zip(TEACHERS, scores)), device="cpu")
    out = student.save(tmp_path_factory.mktemp("student") / "s")
    return out, student, scores, target


def test_onnx_predicts_like_torch_on_real_images(saved, footwear_test):
    out, student, _, _ = saved
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    loaded = load_student(out)
    torch_logits, onnx_logits = [], []
    # Batches of two sizes: the batch axis is dynamic.
    for x in iter_batches(footwear_test.images, student.input, batch_size=64):
        with torch.inference_mode():
            torch_logits.append(loaded.model(x).numpy())
        onnx_logits.append(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    t, o = np.concatenate(torch_logits), np.concatenate(onnx_logits)
    assert t.shape == o.shape == (300, 3)
    np.testing.assert_allclose(o, t, rtol=1e-4, atol=1e-4)
    assert (o.argmax(1) == t.argmax(1)).all()
    assert (o.argmax(1) == loaded.predict(footwear_test)).all()
    # The graph describes itself.
    meta = {p.key: p.value for p in onnx.load(str(out / ONNX_FILE)).metadata_props}
    assert json.loads(meta["classes"]) == student.classes
    assert json.loads(meta["input"]) == student.input.to_dict()


def test_model_card_names_task_classes_teachers_metrics_and_data(saved):
    out, student, scores, target = saved
    card = (out / CARD_FILE).read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset_name"] == target.name and card.startswith(f"# Student for {target.name}")
    for c in target.classes:
        assert f"| {c} |" in card
    for tid, score in zip(TEACHERS, scores):
        assert tid in card and f"{score:.4f}" in card
    # The recorded relatedness and weights are the ones the distillation used.
    assert [t["ot_relatedness"] for t in cfg["teachers"]] == pytest.approx(scores)
    assert [t["weight"] for t in cfg["teachers"]] == pytest.approx(weights_from_scores(scores))
    assert f"`{target.sha256}`" in card and student.dataset_sha256 == target.sha256
    assert f"| train_accuracy | {student.metrics['train_accuracy']:.4f} |" in card
    assert f"| lam | {student.config.lam:.4f} |" in card and "| student_arch | test_resnet |" in card
    assert f"hubscout {hubscout.__version__}" in card and ONNX_FILE in card


def test_export_failure_is_loud(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigh(x.flatten(1) @ x.flatten(1).T)[0]  # no ONNX operator for eigh

    with pytest.raises(ExportError, match="could not export Unexportable to ONNX.*eigh"):
        export_onnx(Unexportable(), InputConfig(8, 1, (0.5,), (0.5,)), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_predict_py_runs_the_onnx_student_on_image_files_without_torch(saved, footwear_test, tmp_path):
    """The download's predict.py, in a fresh interpreter where torch and hubscout cannot be imported, classifies
    real image files as the torch student classifies the same images."""
    import subprocess
    import sys

    from PIL import Image

    out, _, _, _ = saved
    assert (out / "predict.py").is_file()
    loaded = load_student(out)
    picks = [0, 1, 150, 299]
    paths = []
    for i in picks:
        p = tmp_path / f"img{i}.png"
        Image.fromarray(footwear_test.images[i][..., 0]).save(p)  # grey 28×28, as a user's file
        paths.append(str(p))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for mod in ("torch", "hubscout", "timm"):  # a module named like these fails to import
        (blocker / f"{mod}.py").write_text("raise ImportError('not available to predict.py')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    run = subprocess.run([sys.executable, str(out / "predict.py"), *paths], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [line.split("\t") for line in run.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == paths
    expected = [loaded.classes[k] for k in loaded.predict(footwear_test.images[picks])]
    assert [line[1] for line in lines] == expected
    # The probabilities match torch's on the same pixels.
    sys.path.insert(0, str(out))
    try:
        from predict import Predictor
    finally:
        sys.path.remove(str(out))
    probs = Predictor(out).probabilities(paths)
    np.testing.assert_allclose(probs, loaded.predict_proba(footwear_test.images[picks]), atol=2e-3)
