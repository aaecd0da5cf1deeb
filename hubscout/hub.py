"""Real teachers from timm's pretrained models: ``hubscout teachers import-timm NAME``.

timm downloads the weights from the Hugging Face hub (or, for a few models, from the URL in their pretrained
config); everything else a teacher needs is read from timm without the network: the class names from its
ImageNet label files (or the model's own ``label_names``), the input size and normalisation from the pretrained
config. The weights then go through :meth:`Repository.add` like any other teacher, stored as safetensors.

Only :func:`download_pretrained` touches the network, and it fails fast with :class:`HubUnavailable` and a
one-line reason when the hub cannot be reached, instead of retrying for most of a minute.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import torch

from hubscout.teachers import InputConfig, Repository, Teacher, TeacherError, slugify

__all__ = ["HubUnavailable", "download_pretrained", "import_timm", "timm_labels", "timm_input_config"]

PREFLIGHT_TIMEOUT_S = 5.0


class HubUnavailable(TeacherError):
    """The pretrained weights cannot be fetched from here: no network, the hub is down, or offline mode."""


def resolve(name: str):
    """timm's pretrained config for ``name`` (``arch`` or ``arch.tag``), or a TeacherError that says why not."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise TeacherError(f"unknown timm model {name!r} (see timm.list_pretrained())")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # an unknown tag
        raise TeacherError(f"{name}: {e}") from None
    if cfg is None or not cfg.has_weights:
        raise TeacherError(f"timm has no pretrained weights for {name!r}")
    return cfg


def full_name(cfg) -> str:
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def _readable(descriptions: list[str]) -> list[str]:
    """First synonym of each description, made unique with a numeric suffix."""
    labels = [d.split(",")[0].strip() or f"class {i}" for i, d in enumerate(descriptions)]
    seen: dict[str, int] = {}
    for i, name in enumerate(labels):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            labels[i] = f"{name} ({seen[name]})"
    return labels


def timm_labels(cfg) -> tuple[list[str], str]:
    """(class names, the label set's name) for a pretrained config, read from timm's files: no network."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    n = int(cfg.num_classes or 0)
    if n == 0:
        raise TeacherError(f"{full_name(cfg)} has no classifier head (num_classes 0): it is a feature extractor, "
                           "not a teacher")
    if cfg.label_names and len(cfg.label_names) == n:
        descriptions = cfg.label_descriptions or {}
        return _readable([descriptions.get(x, x) for x in cfg.label_names]), "its own label names"
    offset = int(cfg.label_offset or 0)
    subset = infer_imagenet_subset({"num_classes": n - offset})
    if subset is None:
        raise TeacherError(f"timm gives no class names for {full_name(cfg)} ({n} classes); add it with "
                           "`hubscout teachers add` and a labels file")
    if subset == "imagenet-1k":
        from hubscout.zoo import imagenet_labels

        labels = imagenet_labels()  # the same names as the demo repository's ImageNet teachers
    else:
        labels = _readable(ImageNetInfo(subset).label_descriptions())
    return ["background"] * offset + labels, subset


def timm_input_config(cfg) -> InputConfig:
    """Square side, channels and normalisation from the pretrained config (timm's own resolution of it)."""
    import timm

    data = timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    channels, height, width = data["input_size"]
    if height != width:
        raise TeacherError(f"{full_name(cfg)} expects {height}×{width} inputs; hubscout teachers take square ones")
    return InputConfig(int(height), int(channels), tuple(map(float, data["mean"])), tuple(map(float, data["std"])))


def _weights_host(cfg) -> str | None:
    """Where timm will fetch from: the Hugging Face endpoint for hub models, else the config's URL."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        return constants.ENDPOINT
    url = cfg.url[0] if isinstance(cfg.url, (tuple, list)) else cfg.url
    return url or None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def preflight(cfg) -> None:
    """One quick request to the weights' host, so that an unreachable hub is reported in seconds (the hub client
    would retry for most of a minute). Any HTTP answer means reachable."""
    import httpx

    target = _weights_host(cfg)
    if not target or _offline():
        return  # offline mode reads the local cache only: timm says whether the weights are there
    parts = urlsplit(target)
    probe = f"{parts.scheme}://{parts.netloc}/"
    try:
        httpx.head(probe, timeout=PREFLIGHT_TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as e:
        reason = str(e) or type(e).__name__
        raise HubUnavailable(f"cannot download the weights of {full_name(cfg)}: {probe} is unreachable from this "
                             f"machine ({reason}); import-timm needs network access to the model hub, or set "
                             "HF_HUB_OFFLINE=1 to use weights already in the local Hugging Face cache") from None


def download_pretrained(name: str) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True)``: the only step that needs the network."""
    import timm

    cfg = resolve(name)
    preflight(cfg)
    try:
        return timm.create_model(full_name(cfg), pretrained=True)
    except Exception as e:
        if not _is_network_error(e):
            raise
        if _offline():
            raise HubUnavailable(f"the weights of {full_name(cfg)} are not in the local Hugging Face cache and "
                                 "HF_HUB_OFFLINE is set; unset it on a machine that can reach the hub") from None
        raise HubUnavailable(f"cannot download the weights of {full_name(cfg)}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _is_network_error(e: BaseException) -> bool:
    import httpx

    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
        hub_errors: tuple[type[BaseException], ...] = (HfHubHTTPError, LocalEntryNotFoundError,
                                                        OfflineModeIsEnabled)
    except ImportError:  # an older huggingface_hub
        hub_errors = ()
    # OSError covers urllib's URLError (timm's URL downloads) and the socket errors beneath everything.
    return isinstance(e, (OSError, httpx.HTTPError, *hub_errors))


def import_timm(repo: Repository, name: str, *, teacher_id: str | None = None,
                overwrite: bool = False) -> Teacher:
    """Register timm model ``name`` (``arch`` or ``arch.tag``) with its pretrained weights as a teacher of
    ``repo``. Everything that can be checked without the network is checked before the download."""
    cfg = resolve(name)
    model_name = full_name(cfg)
    labels, label_set = timm_labels(cfg)
    input_cfg = timm_input_config(cfg)
    teacher_id = teacher_id or slugify(f"timm-{model_name}")
    if teacher_id in repo and not overwrite:
        raise TeacherError(f"teacher {teacher_id!r} already exists")
    model = download_pretrained(model_name)
    metadata: dict[str, Any] = {
        "task": f"{label_set} classification ({len(labels)} classes)" if label_set.startswith("imagenet")
        else f"classification ({len(labels)} classes)",
        "source": "timm",
        "timm_model": model_name,
        "hf_hub_id": cfg.hf_hub_id or None,
        "licence": cfg.license,
        "paper": cfg.paper_name,
        "origin_url": cfg.origin_url,
        "trained_here": False,
    }
    return repo.add(arch=model_name, weights=model.state_dict(), labels=labels,
                    name=f"{model_name} (timm, {label_set})", input=input_cfg,
                    metadata={k: v for k, v in metadata.items() if v is not None}, teacher_id=teacher_id,
                    overwrite=overwrite)
