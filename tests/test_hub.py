"""`hubscout teachers import-timm`: timm's labels and input config, the repository, and a clean failure offline.

No test reaches the network: the registration test replaces only the download (a locally built timm model with
seeded random weights stands in for the pretrained one); the failure tests run the real command where the hub
cannot be reached."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from hubscout import hub
from hubscout.cli import EXIT_INPUT, EXIT_UNREACHABLE, app
from hubscout.data import to_tensor
from hubscout.teachers import Repository, TeacherError
from hubscout.zoo import imagenet_labels

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def fake_download(monkeypatch):
    """The download, and nothing else, replaced: a locally built model with seeded weights."""
    built: list[torch.nn.Module] = []

    def download(name: str) -> torch.nn.Module:
        torch.manual_seed(len(built))
        built.append(timm.create_model(name, pretrained=False).eval())
        return built[-1]

    monkeypatch.setattr(hub, "download_pretrained", download)
    return built


def test_import_registers_the_model_with_timms_labels_and_input(fake_download, tmp_path, footwear_target):
    repo_dir = tmp_path / "repo"
    res = runner.invoke(app, ["teachers", "import-timm", "test_resnet", "--repo", str(repo_dir)])
    assert res.exit_code == 0, res.output
    (source,) = fake_download
    repo = Repository(repo_dir)
    assert repo.ids() == ["timm-test-resnet-r160-in1k"]  # the default tag, resolved
    t = repo.get("timm-test-resnet-r160-in1k")
    assert t.arch == "test_resnet.r160_in1k" and t.labels == imagenet_labels() and t.num_classes == 1000
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    assert t.input.size == cfg.input_size[-1] == 160 and t.input.channels == 3
    assert t.input.mean == pytest.approx(cfg.mean) and t.input.std == pytest.approx(cfg.std)
    assert t.metadata["hf_hub_id"] == "timm/test_resnet.r160_in1k" and t.metadata["source"] == "timm"
    assert t.metadata["task"] == "imagenet-1k classification (1000 classes)"
    assert (t.root / "model.safetensors").is_file()

    # The stored teacher is the downloaded network: same outputs on real images.
    x = to_tensor(footwear_target.images[:8], t.input)
    with torch.inference_mode():
        np.testing.assert_array_equal(t.load_model()(x).numpy(), source(x).numpy())

    # Asked again: refused before anything is downloaded.
    res = runner.invoke(app, ["teachers", "import-timm", "test_resnet.r160_in1k", "--repo", str(repo_dir)])
    assert res.exit_code == EXIT_INPUT and "already exists" in res.output and len(fake_download) == 1


def test_labels_for_other_label_sets_and_models_without_any():
    labels, subset = hub.timm_labels(hub.resolve("convnext_tiny.fb_in22k"))
    assert subset == "imagenet-22k" and len(labels) == 21841 == len(set(labels))
    with pytest.raises(TeacherError, match="no classifier head"):
        hub.timm_labels(hub.resolve("vit_base_patch16_224.mae"))
    with pytest.raises(TeacherError, match="no class names"):
        hub.timm_labels(hub.resolve("vit_base_patch16_clip_224.openai"))
    with pytest.raises(TeacherError, match="unknown timm model"):
        hub.resolve("no_such_net")
    with pytest.raises(TeacherError, match="Invalid pretrained tag"):
        hub.resolve("resnet18.no_such_tag")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_in_one_line_and_adds_nothing(tmp_path):
    """The real command in a process of its own, pointed at a hub endpoint where nothing listens."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-cache"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "hubscout.cli", "teachers", "import-timm", "test_resnet",
                           "--repo", str(tmp_path / "repo")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == EXIT_UNREACHABLE, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert f"{endpoint}/ is unreachable from this machine" in lines[0]
    assert "needs network access to the model hub" in lines[0]
    assert Repository(tmp_path / "repo").ids() == []


def test_offline_mode_without_cached_weights_fails_clearly_and_adds_nothing(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE as huggingface_hub reads it (at import, so set on its constants here) and an empty cache:
    timm's real download path runs and finds nothing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    res = runner.invoke(app, ["teachers", "import-timm", "test_resnet", "--repo", str(tmp_path / "repo")])
    assert res.exit_code == EXIT_UNREACHABLE
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in res.output
    assert res.output.count("error:") == 1
    assert Repository(tmp_path / "repo").ids() == []
