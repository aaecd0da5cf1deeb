"""Where the tensors go: device choice (``HUBSCOUT_DEVICE``), and what a CUDA device gets that the CPU does not.

On CUDA: bf16 autocast for forwards and training where the device supports it, channels-last models and inputs,
pinned host batches copied without blocking, and a batch size chosen from the free device memory. On the CPU the
training helpers are the identity: the same tensors, dtypes and batch sizes as without them, so a student's
training does not change. Teacher forwards (ranking, specifications, a distillation's teacher views) are the one
thing the CPU shares with CUDA: channels-last (:func:`prepare_for_inference`), because oneDNN's convolutions run
1.5 to 1.7 times faster in it on the 224-px EfficientNet-Lite teachers at one thread (1.0 to 3 times on the six
small demo teachers timed), for outputs that agree with the default layout's to about 1e-5.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

ENV = "HUBSCOUT_DEVICE"
CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else ``$HUBSCOUT_DEVICE`` (auto, cpu, cuda or cuda:N; default auto: CUDA when
    there is one). Asking for CUDA where there is none is an error, not a silent fall-back to the CPU."""
    if isinstance(device, torch.device):
        return device
    name = (device or os.environ.get(ENV) or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}: use one of {', '.join(CHOICES)} (or cuda:N)")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for (${ENV} or --device) but torch sees no CUDA device")
    return dev


def is_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA device that supports it (Ampere and later), else None: full precision."""
    if not is_cuda(device):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision where it is safe and fast (bf16 on CUDA); nothing at all on the CPU."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on ``device``; channels-last on CUDA, where convolutions run faster in it."""
    model = model.to(device)
    if is_cuda(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A model that only runs forwards (a teacher), on ``device`` and channels-last on every device: on the CPU
    too, unlike :func:`prepare_model`, since a forward's outputs differ from the default layout's only by float
    rounding, and a forward is what a ranking pays for. Converts ``model`` in place, as ``Module.to`` does."""
    return model.to(device).to(memory_format=torch.channels_last)


def inference_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch for a :func:`prepare_for_inference` model: :func:`to_device`, then channels-last on the CPU
    as well (an image batch; anything else as it is)."""
    x = to_device(x, device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``: pinned and copied without blocking (and channels-last) on CUDA; the very same
    tensor on the CPU."""
    if not is_cuda(device):
        return x
    if x.device.type == "cpu":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def batch_size_for(device: torch.device, input_shape: tuple[int, int, int], default: int,
                   bytes_per_input_byte: float = 60.0, fraction: float = 0.5, largest: int = 1024) -> int:
    """``default`` on the CPU. On CUDA: the largest power of two, at least ``default``, at most ``largest``,
    whose inputs times ``bytes_per_input_byte`` (the activations a forward keeps, a generous guess for the
    ImageNet-size CNNs here) fit in ``fraction`` of the free device memory."""
    if not is_cuda(device):
        return default
    free, _ = torch.cuda.mem_get_info(device)
    per_image = 4 * input_shape[0] * input_shape[1] * input_shape[2] * bytes_per_input_byte
    fit = int(free * fraction // max(per_image, 1.0))
    size = default
    while size * 2 <= min(fit, largest):
        size *= 2
    return size


def describe(device: torch.device) -> dict[str, Any]:
    """What a result file records about the device."""
    dev = torch.device(device)
    if is_cuda(dev):
        return {"device": str(dev), "name": torch.cuda.get_device_name(dev),
                "autocast": str(autocast_dtype(dev)).replace("torch.", "") if autocast_dtype(dev) else None}
    return {"device": "cpu", "name": "cpu", "autocast": None, "torch_threads": torch.get_num_threads()}
