"""The shared reference embedding: ImageNet EfficientNet-Lite0 features at 112 px, the same model for every teacher."""
from __future__ import annotations

import numpy as np
import torch

from hubscout.data import iter_batches
from hubscout.device import inference_batch, prepare_for_inference
from hubscout.extract import default_device
from hubscout.pretrained import efficientnet_lite_state_dict, imagenet_input_config
from hubscout.teachers import InputConfig, build_model


REFERENCE_ARCH = "tf_efficientnet_lite0"
# Teachers here see 28-32 px images; 112 px keeps the reference features meaningful at a quarter of 224's cost.
REFERENCE_SIZE = 112
REFERENCE_NAME = f"{REFERENCE_ARCH}@{REFERENCE_SIZE}"
REFERENCE_DIM = 1280


class ReferenceEmbedder:
    """The shared embedding: pooled features of the ImageNet EfficientNet-Lite0 shipped with the package."""

    name = REFERENCE_NAME

    def __init__(self, device: str | torch.device | None = None, size: int = REFERENCE_SIZE):
        self.device = torch.device(device) if device is not None else default_device()
        base = imagenet_input_config(REFERENCE_ARCH)
        self.input = InputConfig(size, 3, base.mean, base.std)
        model = build_model(REFERENCE_ARCH, 1000, 3)
        model.load_state_dict(efficientnet_lite_state_dict("lite0"))
        self.model = prepare_for_inference(model.eval(), self.device)

    @torch.inference_mode()
    def embed(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """L2-normalised reference features (N×1280, float32) of uint8 images N×H×W×C."""
        out = []
        for x in iter_batches(images, self.input, batch_size):
            x = inference_batch(x, self.device)
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            out.append(torch.nn.functional.normalize(f.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, REFERENCE_DIM), np.float32)
