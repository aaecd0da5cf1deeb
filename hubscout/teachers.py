"""The teacher repository: a folder of ``<id>/{model.safetensors,teacher.json}``.

A teacher is a timm architecture name, safetensors weights, its label names, the input it expects and free
metadata. Loading never unpickles anything: weights are safetensors only, and adding a teacher checks that they
fit the architecture and the label count before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

WEIGHTS_FILE = "model.safetensors"
META_FILE = "teacher.json"


class TeacherError(ValueError):
    """A teacher that cannot be added or loaded (bad weights, wrong shapes, unknown architecture...)."""


class TeacherNotFound(KeyError):
    pass


@dataclass(frozen=True)
class InputConfig:
    """What a model expects: square ``size``, ``channels`` (1 or 3), per-channel ``mean``/``std`` on [0,1]."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise TeacherError(f"input channels must be 1 or 3, got {self.channels}")
        if self.size < 8 or self.size > 1024:
            raise TeacherError(f"input size must be in [8, 1024], got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise TeacherError("input mean/std must have one value per channel")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise TeacherError("input mean/std must be finite numbers")
        if any(s <= 0 for s in self.std):
            raise TeacherError("input std must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputConfig":
        try:
            return cls(int(d["size"]), int(d["channels"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])))
        except (KeyError, TypeError, ValueError) as e:
            raise TeacherError(f"bad input config {dict(d)!r}: {e}") from e


IMAGENET_INPUT = InputConfig(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Teacher:
    id: str
    name: str
    arch: str
    labels: list[str]
    input: InputConfig
    weights_sha256: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def weights_path(self) -> Path:
        if self.root is None:
            raise TeacherError(f"teacher {self.id} has no folder")
        return self.root / WEIGHTS_FILE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"] = self.input.to_dict()
        d.pop("root")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: Path | None = None) -> "Teacher":
        try:
            return cls(
                id=str(d["id"]), name=str(d["name"]), arch=str(d["arch"]), labels=[str(x) for x in d["labels"]],
                input=InputConfig.from_dict(d["input"]), weights_sha256=str(d["weights_sha256"]),
                arch_kwargs=dict(d.get("arch_kwargs") or {}), metadata=dict(d.get("metadata") or {}),
                num_params=int(d.get("num_params") or 0), root=root,
            )
        except (KeyError, TypeError) as e:
            raise TeacherError(f"bad teacher description: missing or wrong field {e}") from e

    @property
    def outputs_key(self) -> str:
        """What a teacher's outputs on a dataset depend on: weights, architecture, its options and its input."""
        blob = json.dumps({"weights": self.weights_sha256, "arch": self.arch, "arch_kwargs": self.arch_kwargs,
                           "input": self.input.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def build_model(self) -> torch.nn.Module:
        return build_model(self.arch, self.num_classes, self.input.channels, self.arch_kwargs)

    def load_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        model = self.build_model()
        model.load_state_dict(read_weights(self.weights_path), strict=True)
        return model.eval().to(device)


# timm.create_model reads files or the network for these: a teacher.json must not be able to ask for that.
_FORBIDDEN_KWARG = re.compile(r"pretrained|checkpoint|path|file|dir|url|cfg|hub|overlay", re.IGNORECASE)


def check_arch_kwargs(arch_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture options are plain numbers, booleans and short names, never anything that names a file."""
    out = dict(arch_kwargs or {})
    for k, v in out.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", str(k)) or _FORBIDDEN_KWARG.search(str(k)):
            raise TeacherError(f"architecture option {k!r} is not allowed")
        vals = v if isinstance(v, (list, tuple)) else [v]
        if len(vals) > 16 or not all(isinstance(x, (int, float, bool)) or (isinstance(x, str) and len(x) <= 40
                                                                        and "/" not in x) for x in vals):
            raise TeacherError(f"architecture option {k!r} must be numbers, booleans or short names")
    return out


def build_model(arch: str, num_classes: int, in_chans: int, arch_kwargs: Mapping[str, Any] | None = None) -> torch.nn.Module:
    import timm

    arch_kwargs = check_arch_kwargs(arch_kwargs)
    if not timm.is_model(arch):
        raise TeacherError(f"unknown timm architecture {arch!r}")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **(arch_kwargs or {}))
    except TypeError as e:
        raise TeacherError(f"bad arguments for {arch}: {e}") from e


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else (pickles included) with a TeacherError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TeacherError(f"weights are not a readable safetensors file: {e}") from e


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:64] or "teacher"


def weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TeacherError(f"weights are not a readable safetensors file: {e}") from e


def check_shapes(arch: str, labels: list[str], input: InputConfig, shapes: Mapping[str, tuple[int, ...]],
                 arch_kwargs: Mapping[str, Any] | None = None, max_params: int | None = None) -> int:
    """Compare the weights' tensor names and shapes with ``arch`` built on the meta device (no memory, no
    initialisation), so that an architecture blown up by its options costs nothing before it is refused.
    Returns the architecture's parameter count."""
    if len(labels) < 2:
        raise TeacherError("a teacher needs at least 2 labels")
    if len(set(labels)) != len(labels):
        raise TeacherError("teacher labels must be unique")
    with torch.device("meta"):
        try:
            model = build_model(arch, len(labels), input.channels, arch_kwargs)
        except TeacherError:
            raise
        except (ValueError, RuntimeError, AssertionError, NotImplementedError) as e:
            raise TeacherError(f"cannot build {arch} with these options: {e}") from e
    n_params = sum(p.numel() for p in model.parameters())
    if max_params is not None and n_params > max_params:
        raise TeacherError(f"{arch} with these options has {n_params} parameters, more than the limit of "
                           f"{max_params}")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != tuple(shapes[k]))
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + (
            [f"{k}: {tuple(shapes[k])} instead of {expected[k]}" for k in wrong[:3]])
        raise TeacherError(f"weights do not fit {arch} with {len(labels)} classes and {input.channels} input "
                           f"channels: {'; '.join(parts)}")
    return n_params


def validate_weights(arch: str, labels: list[str], input: InputConfig, state: Mapping[str, torch.Tensor],
                     arch_kwargs: Mapping[str, Any] | None = None, max_params: int | None = None) -> torch.nn.Module:
    """Check ``state`` against ``arch`` (shapes first, on the meta device), build it and load ``state`` strictly;
    return the model or raise a TeacherError that names the problem."""
    check_shapes(arch, labels, input, {k: tuple(t.shape) for k, t in state.items()}, arch_kwargs, max_params)
    for k, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise TeacherError(f"weights contain NaN or Inf (tensor {k!r})")
    model = build_model(arch, len(labels), input.channels, arch_kwargs)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        msg = str(e).split("\n\t")
        raise TeacherError(f"weights do not fit {arch} with {len(labels)} classes and {input.channels} input "
                           f"channels: {' '.join(m.strip() for m in msg[:4])}") from e
    return model


class Repository:
    """A folder of teachers. Writes go to a temporary folder first and are renamed into place, so a failed add
    never leaves half a teacher behind."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r})"

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / META_FILE).is_file())

    def list(self) -> list[Teacher]:
        return [self.get(i) for i in self.ids()]

    def __len__(self) -> int:
        return len(self.ids())

    def __contains__(self, teacher_id: str) -> bool:
        return _safe_id(teacher_id) and (self.root / teacher_id / META_FILE).is_file()

    def get(self, teacher_id: str) -> Teacher:
        if teacher_id not in self:
            raise TeacherNotFound(teacher_id)
        folder = self.root / teacher_id
        with open(folder / META_FILE) as f:
            return Teacher.from_dict(json.load(f), root=folder)

    def add(self, *, arch: str, weights: str | Path | Mapping[str, torch.Tensor], labels: list[str], name: str,
            input: InputConfig, arch_kwargs: Mapping[str, Any] | None = None,
            metadata: Mapping[str, Any] | None = None, teacher_id: str | None = None,
            overwrite: bool = False, max_params: int | None = None) -> Teacher:
        """Validate and store a teacher. ``weights`` is a safetensors path or an in-memory state dict. A file's
        header is checked against the architecture before any tensor is read; ``max_params`` bounds it."""
        from safetensors.torch import save_file

        if isinstance(weights, (str, Path)):
            check_shapes(arch, list(labels), input, weights_header(Path(weights)), arch_kwargs, max_params)
            state = read_weights(Path(weights))
        else:
            state = dict(weights)
        model = validate_weights(arch, list(labels), input, state, arch_kwargs, max_params)
        teacher_id = teacher_id or slugify(name)
        if not _safe_id(teacher_id):
            raise TeacherError(f"bad teacher id {teacher_id!r}: use letters, digits, '-', '_' and '.'")
        if teacher_id in self and not overwrite:
            raise TeacherError(f"teacher {teacher_id!r} already exists")
        made: list[Teacher] = []

        def fill(tmp: Path) -> None:
            # Contiguous copies: safetensors refuses shared or strided storage.
            save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
            made.append(Teacher(
                id=teacher_id, name=name, arch=arch, labels=list(labels), input=input,
                weights_sha256=file_sha256(tmp / WEIGHTS_FILE), arch_kwargs=dict(arch_kwargs or {}),
                metadata=dict(metadata or {}), num_params=sum(p.numel() for p in model.parameters()),
            ))
            (tmp / META_FILE).write_text(json.dumps(made[0].to_dict(), indent=2))

        dest = self.install(teacher_id, fill)
        teacher = made[0]
        teacher.root = dest
        return teacher

    def install(self, teacher_id: str, fill, prefix: str = ".add-") -> Path:
        """Put a teacher folder in place: ``fill(tmp)`` writes its files into a fresh folder beside the others,
        which then replaces any folder of that id, so a reader finds the old teacher or the new one, never half of
        one, and a failed ``fill`` leaves nothing behind. Returns the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        try:
            fill(tmp)
            dest = self.root / teacher_id
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def remove(self, teacher_id: str) -> None:
        if teacher_id not in self:
            raise TeacherNotFound(teacher_id)
        shutil.rmtree(self.root / teacher_id)


def _safe_id(teacher_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", teacher_id or "")) and ".." not in teacher_id


def load_labels(path: str | Path) -> list[str]:
    """Labels from a JSON list or a text file with one label per line."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(data, list) or not all(isinstance(x, (str, int)) for x in data):
        raise TeacherError("labels must be a JSON list of names or one name per line")
    return [str(x) for x in data]

