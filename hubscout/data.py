"""Labelled image datasets: loading (ImageFolder zip, npz), validation, content hashing, adaptation to a model.

A dataset in memory is uint8 images ``N×H×W×C`` (C is 1 or 3), int64 labels and class names. Its content hash
is taken over that canonical form, so the same images zipped twice, or sent as npz, hash alike.

Class order (label index ``i`` is ``classes[i]``) follows one rule for both formats: the order the file stores.
An npz stores it in its ``classes`` array (without one, the classes are the label indices ``0..K-1``); a zip in a
``classes.txt`` at its root, one folder name a line (without one, the folder names sorted). :func:`write_image_folder_zip`
writes ``classes.txt``, so a dataset saved as zip and as npz loads with the same order.
"""
from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from hubscout.teachers import InputConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
CLASSES_FILE = "classes.txt"  # class order of an ImageFolder zip, one folder name a line
ARCHIVE_SUFFIXES = {".zip", ".npz", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}


@dataclass(frozen=True)
class Limits:
    """Bounds on what a dataset file may expand to; the service tightens them from its settings."""

    max_samples: int = 200_000
    max_classes: int = 1_000
    max_pixels: int = 2_000_000_000  # total uint8 values after decoding
    max_side: int = 1024
    max_ratio: float = 200.0  # zip expansion ratio, beyond which we call it a bomb
    max_members: int = 250_000


DEFAULT_LIMITS = Limits()


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the problem for the user."""


class DatasetTooLarge(DatasetError):
    """A dataset over one of the ``Limits`` (samples, classes, entries, decoded size, image side); ``limit`` is the
    bound it passed. The service answers it with 413 rather than 422: nothing is wrong with it but its size."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


@dataclass
class Dataset:
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise DatasetError("images must be a uint8 array")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DatasetError(f"images must be N×H×W or N×H×W×C with C in (1, 3), got shape {images.shape}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError("labels must be a 1-D integer array")
        if len(labels) != len(images):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        classes = [str(c) for c in self.classes]
        if len(set(classes)) != len(classes):
            raise DatasetError("class names must be unique")
        if len(classes) < 2:
            raise DatasetError(f"a dataset needs at least 2 classes, got {len(classes)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"labels must lie in [0, {len(classes) - 1}], got [{labels.min()}, {labels.max()}]")
        counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DatasetError(f"class(es) with no sample: {', '.join(empty[:10])}")
        self.images = np.ascontiguousarray(images)
        self.labels = labels.astype(np.int64)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        header = {"shape": list(self.images.shape), "classes": self.classes}
        h.update(json.dumps(header, sort_keys=True).encode())
        h.update(self.images.tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def subset(self, index: Sequence[int] | np.ndarray, name: str | None = None) -> "Dataset":
        """Rows ``index``; classes left without samples are dropped and labels renumbered."""
        index = np.asarray(index)
        labels = self.labels[index]
        present = np.unique(labels)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        return Dataset(self.images[index], remap[labels], [self.classes[i] for i in present],
                       name=self.name if name is None else name)

    def split(self, fraction: float, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Stratified split: ``fraction`` of every class (at least one sample when it has two) goes right."""
        rng = np.random.default_rng(seed)
        left, right = [], []
        for c in range(self.num_classes):
            idx = rng.permutation(np.flatnonzero(self.labels == c))
            n = int(round(fraction * len(idx)))
            n = min(max(n, 1 if len(idx) > 1 else 0), len(idx) - 1)
            right.extend(idx[:n])
            left.extend(idx[n:])
        return self.subset(np.sort(left)), self.subset(np.sort(right))

    def save(self, path: str | Path) -> Path:
        """Write as ``.npz`` (images, labels, classes); the format :func:`load_dataset` reads."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(f, images=self.images, labels=self.labels, classes=np.array(self.classes, dtype=str))
        return path


# ---------------------------------------------------------------------------------------------------- loading

def load_dataset(path: str | Path, limits: Limits = DEFAULT_LIMITS, name: str | None = None) -> Dataset:
    """Read an ``.npz`` (``images``, ``labels``, optional ``classes``) or an ImageFolder ``.zip``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such file: {path.name}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DatasetError(f"cannot read {path.name}: {e}") from e
    if magic[:2] != b"PK":
        raise DatasetError("unreadable archive: expected a .zip (ImageFolder) or an .npz file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DatasetError(f"unreadable archive: {e}") from e
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        is_npz = names and all(n.endswith(".npy") for n in names)
        ds = _read_npz(zf, limits) if is_npz else _read_image_folder(zf, limits)
    ds.name = name if name is not None else path.stem
    return ds


def _check_members(zf: zipfile.ZipFile, limits: Limits) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DatasetTooLarge(f"archive has {len(infos)} entries, more than the limit of {limits.max_members}",
                              limits.max_members)
    total = 0
    for info in infos:
        p = PurePosixPath(info.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise DatasetError(f"archive entry with an unsafe path: {info.filename!r}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"archive entry is a symbolic link: {info.filename!r}")
        if info.flag_bits & 0x1:
            raise DatasetError(f"archive entry is encrypted: {info.filename!r}")
        total += info.file_size
        # Small entries compress wildly (blank images); only a large expansion is a bomb.
        if info.file_size > 1 << 20 and info.file_size > max(info.compress_size, 1) * limits.max_ratio:
            raise DatasetError(f"archive entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}"
                               f" times: refusing a likely zip bomb")
    if total > limits.max_pixels:
        raise DatasetTooLarge(f"archive expands to {total} bytes, more than the limit of {limits.max_pixels}",
                              limits.max_pixels)
    return infos


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype an npz member declares, read from its header alone (nothing allocated)."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(int(x) for x in shape), dtype


def _read_npz(zf: zipfile.ZipFile, limits: Limits) -> Dataset:
    _check_members(zf, limits)
    arrays = {}
    for info in zf.infolist():
        key = info.filename[:-4]
        if key not in ("images", "labels", "classes"):
            continue
        try:
            shape, dtype = _npy_header(zf, info)
            if dtype.hasobject:
                raise ValueError("object arrays are refused")
            # numpy allocates what the header declares before reading a byte: a few bytes of header must not
            # claim terabytes, so the declared size has to fit in what the member actually holds.
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > info.file_size:
                raise DatasetError(f"npz member {key!r} declares shape {shape} ({declared} bytes) but holds "
                                   f"only {info.file_size} bytes")
            with zf.open(info) as f:
                # allow_pickle=False: an npz from a user must never run code.
                arrays[key] = np.lib.format.read_array(io.BufferedReader(f), allow_pickle=False)  # type: ignore[arg-type]
        except DatasetError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, SyntaxError) as e:
            raise DatasetError(f"npz member {key!r} is unreadable (object arrays are refused): {e}") from e
    for key in ("images", "labels"):
        if key not in arrays:
            raise DatasetError(f"npz file has no {key!r} array")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8:
        raise DatasetError(f"npz images must be uint8, got {images.dtype}")
    if labels.ndim != 1:
        raise DatasetError(f"npz labels must be a 1-D array, got shape {labels.shape}")
    if len(labels) > limits.max_samples:
        raise DatasetTooLarge(f"{len(labels)} samples, more than the limit of {limits.max_samples}",
                              limits.max_samples)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"npz labels must be integers, got {labels.dtype}")
    if "classes" in arrays:
        if arrays["classes"].size > limits.max_classes:
            raise DatasetTooLarge(f"{arrays['classes'].size} classes, more than the limit of {limits.max_classes}",
                                  limits.max_classes)
        classes = [str(c) for c in arrays["classes"].tolist()]
    else:
        # Classes are 0..max(label): the bound is checked on the largest label before any list is built.
        n = int(labels.max()) + 1 if len(labels) else 0
        if n > limits.max_classes:
            raise DatasetTooLarge(f"labels up to {n - 1} mean {n} classes, more than the limit of "
                                  f"{limits.max_classes}", limits.max_classes)
        classes = [str(i) for i in range(n)]
    if len(classes) > limits.max_classes:
        raise DatasetTooLarge(f"{len(classes)} classes, more than the limit of {limits.max_classes}",
                              limits.max_classes)
    if images.ndim >= 3 and max(images.shape[1:3]) > limits.max_side:
        raise DatasetTooLarge(f"images of {images.shape[1]}×{images.shape[2]} exceed the {limits.max_side}px "
                              f"limit", limits.max_side)
    return Dataset(images, labels, classes)


def _read_image_folder(zf: zipfile.ZipFile, limits: Limits) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    infos = _check_members(zf, limits)
    files = []
    folders = set()
    order = None
    for info in infos:
        p = PurePosixPath(info.filename)
        if p.name.startswith(".") or "__MACOSX" in p.parts:
            continue
        if str(p) == CLASSES_FILE:
            order = _read_class_order(zf, info)
            continue
        if info.is_dir():
            folders.add(p)
            continue
        if p.suffix.lower() in ARCHIVE_SUFFIXES:
            raise DatasetError(f"nested archives are not accepted: {info.filename!r}")
        if len(p.parts) < 2:
            raise DatasetError(f"file {info.filename!r} is not inside a class folder (expected <class>/<image>)")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{info.filename!r} is not an image (accepted: png, jpg, bmp)")
        files.append((p.parts[-2], info))
    if not files:
        raise DatasetError("archive holds no images (expected <class>/<image> entries)")
    # A folder with nothing under it is a class the user meant to have and left empty: say so rather than
    # silently rank without it.
    holding = {parent for _, info in files for parent in PurePosixPath(info.filename).parents}
    empty = sorted(str(f) for f in folders - holding)
    if empty:
        raise DatasetError(f"class folder(s) with no image: {', '.join(empty[:10])}")
    if len(files) > limits.max_samples:
        raise DatasetTooLarge(f"{len(files)} images, more than the limit of {limits.max_samples}",
                              limits.max_samples)
    _check_same_named_classes(files)
    classes = sorted({c for c, _ in files})
    if order is not None:
        if sorted(order) != classes:
            missing, extra = sorted(set(classes) - set(order)), sorted(set(order) - set(classes))
            raise DatasetError(f"{CLASSES_FILE} does not list the class folders exactly"
                               + (f"; folders not listed: {', '.join(missing[:10])}" if missing else "")
                               + (f"; listed without a folder: {', '.join(extra[:10])}" if extra else ""))
        classes = order
    if len(classes) > limits.max_classes:
        raise DatasetTooLarge(f"{len(classes)} classes, more than the limit of {limits.max_classes}",
                              limits.max_classes)
    index = {c: i for i, c in enumerate(classes)}
    files.sort(key=lambda t: t[1].filename)
    _check_decoded_size(zf, [info for _, info in files], limits)
    decoded, labels = [], []
    for cls, info in files:
        try:
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                decoded.append(_to_8bit(im))
        except DatasetError:
            raise
        except Image.DecompressionBombError as e:  # a header claiming a huge image, refused before decoding
            raise DatasetError(f"{info.filename!r} is too large: {e}") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f"{info.filename!r} is not a readable image: {e}") from e
        labels.append(index[cls])
    # Mixed modes become RGB unless all are grey; mixed sizes go to the most common size.
    mode = "L" if all(im.mode == "L" for im in decoded) else "RGB"
    sizes = [im.size for im in decoded]
    size = max(set(sizes), key=sizes.count)
    arrays = []
    for im in decoded:
        im = im.convert(mode)
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[..., None] if a.ndim == 2 else a)
    return Dataset(np.stack(arrays), np.array(labels, dtype=np.int64), classes)


def _read_class_order(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> list[str]:
    if info.file_size > 1 << 20:
        raise DatasetError(f"{CLASSES_FILE} is over 1 MiB")
    try:
        text = zf.read(info).decode("utf-8")
    except (UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{CLASSES_FILE} is not readable UTF-8 text: {e}") from e
    order = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(order)) != len(order):
        raise DatasetError(f"{CLASSES_FILE} names a class twice")
    return order


def _check_same_named_classes(files: list[tuple[str, zipfile.ZipInfo]]) -> None:
    """``p/cat`` and ``q/cat`` would both become class ``cat``: refuse rather than silently merge them."""
    parents: dict[str, set[str]] = {}
    for cls, info in files:
        parents.setdefault(cls, set()).add(str(PurePosixPath(info.filename).parent))
    clashes = sorted((c, sorted(ps)) for c, ps in parents.items() if len(ps) > 1)
    if clashes:
        named = "; ".join(f"{c!r} in {', '.join(ps[:5])}" for c, ps in clashes[:10])
        raise DatasetError(f"class folders with the same name in different parents would be merged: {named}; "
                           f"rename them or zip one level")


_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _bands(mode: str) -> int:
    """uint8 values per pixel once decoded and converted (16-bit grey is scaled to 8 bits, the rest is RGB)."""
    return 1 if mode in _SIXTEEN_BIT or mode in ("1", "L") else 3


def _check_decoded_size(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Width × height × channels from every image header (PIL reads headers lazily, decoding nothing), summed
    over the archive and checked against ``max_pixels`` before the first image is decoded; also the stacked
    array, where every image is resized to the most common size."""
    from PIL import Image, UnidentifiedImageError

    total = 0
    sizes: dict[tuple[int, int], int] = {}
    grey = True
    for info in infos:
        try:
            with zf.open(info) as f, Image.open(f) as im:
                w, h = im.size
                mode = im.mode
        except Image.DecompressionBombError as e:
            raise DatasetError(f"{info.filename!r} is too large: {e}") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f"{info.filename!r} is not a readable image: {e}") from e
        if max(w, h) > limits.max_side:
            raise DatasetTooLarge(f"{info.filename!r} is {w}×{h}, over the {limits.max_side}px limit",
                                  limits.max_side)
        total += w * h * _bands(mode)
        if total > limits.max_pixels:
            raise DatasetTooLarge(f"the images decode to more than the limit of {limits.max_pixels} bytes "
                                  f"(counted from their headers, up to {info.filename!r})", limits.max_pixels)
        sizes[(w, h)] = sizes.get((w, h), 0) + 1
        grey = grey and _bands(mode) == 1
    w, h = max(sizes, key=sizes.get)
    stacked = len(infos) * w * h * (1 if grey else 3)
    if stacked > limits.max_pixels:
        raise DatasetTooLarge(f"{len(infos)} images resized to the most common size {w}×{h} take {stacked} bytes, "
                              f"more than the limit of {limits.max_pixels}", limits.max_pixels)


def _to_8bit(im):
    """An image in L or RGB (kept as is) or converted to one; 16-bit grey is scaled (>> 8), not clipped at 255
    as PIL's own conversion does."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.int64)
        return Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), mode="L")
    return im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy()


def write_image_folder_zip(dataset: Dataset, path: str | Path, fmt: str = "png") -> Path:
    """Write ``dataset`` as an ImageFolder ``.zip`` (``<class>/<index>.<fmt>``) with its class order in
    ``classes.txt``, so it loads with the classes in the same order as its npz."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CLASSES_FILE, "".join(c + "\n" for c in dataset.classes))
        for i, (img, y) in enumerate(zip(dataset.images, dataset.labels)):
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format=fmt.upper())
            zf.writestr(f"{dataset.classes[y]}/{i:06d}.{fmt}", buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- model inputs

def to_tensor(images: np.ndarray, cfg: "InputConfig") -> "torch.Tensor":
    """uint8 ``N×H×W×C`` → float ``N×C×S×S`` in ``cfg``'s channels, size and normalisation."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] != cfg.channels:
        if cfg.channels == 3:
            # Copied to three channels before resizing, not after: resizing one channel is 4× faster on the CPU
            # but rounds differently in the last bit, and the ranking's numbers must not change.
            x = x.expand(-1, 3, -1, -1)
        else:
            # ITU-R BT.601 luma, what PIL's convert("L") uses.
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[-2:] != (cfg.size, cfg.size):
        x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > cfg.size)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (x - mean).div_(std)  # in place: one 224-px batch allocation less


def iter_batches(images: np.ndarray, cfg: "InputConfig", batch_size: int = 64) -> Iterator["torch.Tensor"]:
    """Model-ready batches, converted one at a time so a large dataset never sits in memory as floats."""
    for start in range(0, len(images), batch_size):
        yield to_tensor(images[start:start + batch_size], cfg)
