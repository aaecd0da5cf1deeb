"""Run a hubscout student with onnxruntime, numpy and Pillow alone (no torch, no hubscout).

Copied as ``predict.py`` into every student folder and download, beside ``model.onnx`` and ``config.json``:

    pip install onnxruntime numpy pillow
    python predict.py image.png [more.jpg ...]        # one line per image: file, class, probability

or from Python: ``from predict import Predictor; Predictor(".").predict(["a.png"])`` (class names) and
``.probabilities(images)`` (N×classes, columns in ``classes`` order, ``labels.json``'s order).

It prepares an image the way the student was trained (hubscout.data.to_tensor): pixels to [0, 1]; grey to three
channels by repetition, colour to grey by ITU-R BT.601 luma; bilinear resize to the input side (antialiased
when shrinking, as Pillow does); per-channel normalisation by the mean and std in config.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class Predictor:
    def __init__(self, folder: str | Path = Path(__file__).parent):
        import onnxruntime as ort

        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        self.classes = [str(c) for c in cfg["classes"]]
        inp = cfg["input"]
        self.size, self.channels = int(inp["size"]), int(inp["channels"])
        self.mean = np.array(inp["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.array(inp["std"], dtype=np.float32).reshape(-1, 1, 1)
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def prepare(self, image) -> np.ndarray:
        """A path, a PIL image or a uint8 H×W or H×W×C array → the float32 C×S×S the network takes."""
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                a = self._pixels(im)
        elif isinstance(image, Image.Image):
            a = self._pixels(image)
        else:
            a = np.asarray(image)
            a = a[..., None] if a.ndim == 2 else a
        x = a.astype(np.float32) / 255.0  # H×W×C
        if x.shape[-1] != self.channels:
            x = np.repeat(x, 3, axis=-1) if self.channels == 3 else (x * LUMA).sum(-1, keepdims=True)
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F")
                             .resize((self.size, self.size), Image.BILINEAR)) if x.shape[:2] != (self.size,
                                                                                                   self.size)
                  else x[..., c] for c in range(x.shape[-1])]
        return ((np.stack(planes) - self.mean) / self.std).astype(np.float32)

    @staticmethod
    def _pixels(im: Image.Image) -> np.ndarray:
        im = im if im.mode in ("L", "RGB") else im.convert("RGB")
        a = np.asarray(im, dtype=np.uint8)
        return a[..., None] if a.ndim == 2 else a

    def probabilities(self, images) -> np.ndarray:
        x = np.stack([self.prepare(im) for im in images])
        logits = self.session.run(["logits"], {"input": x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, images) -> list[str]:
        return [self.classes[i] for i in self.probabilities(images).argmax(axis=1)]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1])
        return 2 if not argv else 0
    p = Predictor()
    probs = p.probabilities(argv)
    for path, row in zip(argv, probs):
        print(f"{path}\t{p.classes[int(row.argmax())]}\t{row.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
