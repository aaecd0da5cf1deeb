"""Dataset formats (ImageFolder zip, npz), their errors, content hashing and model-input conversion."""
from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from hubscout.data import Dataset, DatasetError, Limits, load_dataset, to_tensor, write_image_folder_zip
from hubscout.teachers import InputConfig


def make_dataset(n_per_class=3, classes=("cat", "dog"), size=(6, 5), channels=1, seed=0) -> Dataset:
    """Samples sorted by class, classes in alphabetical order: the order an ImageFolder zip reads back."""
    rng = np.random.default_rng(seed)
    n = n_per_class * len(classes)
    shape = (n, *size) if channels is None else (n, *size, channels)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    return Dataset(images, labels, list(classes))


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


GREY = np.full((4, 4), 200, np.uint8)


def good_members() -> dict[str, bytes]:
    return {"a/1.png": png_bytes(GREY), "b/1.png": png_bytes(GREY)}


# ---------------------------------------------------------------------------------------------- ImageFolder zip

@pytest.mark.parametrize("fmt", ["png", "bmp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_zip_round_trip_is_lossless(tmp_path, fmt, channels):
    ds = make_dataset(channels=channels)
    back = load_dataset(write_image_folder_zip(ds, tmp_path / f"d.zip", fmt=fmt))
    assert back.classes == ["cat", "dog"]
    assert back.images.shape == (6, 6, 5, channels)
    np.testing.assert_array_equal(back.images, ds.images)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert back.name == "d"


def test_image_folder_zip_jpeg_is_close(tmp_path):
    ds = Dataset(np.full((4, 16, 16, 3), 120, np.uint8), np.array([0, 0, 1, 1]), ["x", "y"])
    back = load_dataset(write_image_folder_zip(ds, tmp_path / "d.zip", fmt="jpeg"))
    assert back.images.shape == (4, 16, 16, 3)
    assert np.abs(back.images.astype(int) - 120).max() <= 3


def test_image_folder_mixed_modes_and_sizes(tmp_path):
    members = {
        "a/1.png": png_bytes(np.zeros((8, 8), np.uint8)),
        "a/2.png": png_bytes(np.zeros((8, 8, 3), np.uint8)),
        "b/1.bmp": png_bytes(np.zeros((4, 4), np.uint8), "BMP"),  # resized to the common 8×8
        "b/.hidden.png": b"not an image, but skipped",
        "__MACOSX/a/._1.png": b"resource fork, skipped",
    }
    ds = load_dataset(write_zip(tmp_path / "m.zip", members))
    assert ds.images.shape == (3, 8, 8, 3)
    assert ds.class_counts() == {"a": 2, "b": 1}


def test_image_folder_classes_sorted_and_nested_root(tmp_path):
    members = {"root/zebra/1.png": png_bytes(GREY), "root/ant/1.png": png_bytes(GREY),
               "root/ant/2.png": png_bytes(GREY)}
    ds = load_dataset(write_zip(tmp_path / "n.zip", members))
    assert ds.classes == ["ant", "zebra"]
    assert ds.labels.tolist() == [0, 0, 1]


def test_zip_and_npz_of_one_target_load_with_one_class_order(tmp_path):
    # Not alphabetical, and labels interleaved: the order must come from the file, not from sorting names.
    ds = make_dataset(n_per_class=2, classes=("sandal", "sneaker", "ankle-boot"), channels=3)
    ds = ds.subset(np.random.default_rng(0).permutation(len(ds)))
    zipped = load_dataset(write_image_folder_zip(ds, tmp_path / "t.zip"))
    via_npz = load_dataset(ds.save(tmp_path / "t.npz"))
    assert zipped.classes == via_npz.classes == ["sandal", "sneaker", "ankle-boot"]
    with zipfile.ZipFile(tmp_path / "t.zip") as zf:
        assert zf.read("classes.txt").decode().split() == ["sandal", "sneaker", "ankle-boot"]

    def by_name(d):
        return sorted((d.classes[y], img.tobytes()) for img, y in zip(d.images, d.labels))

    assert by_name(zipped) == by_name(via_npz) == by_name(ds)  # every image keeps its class under both formats


def test_zip_classes_txt_must_list_the_folders(tmp_path):
    members = {"b/1.png": png_bytes(GREY), "a/1.png": png_bytes(GREY)}
    assert load_dataset(write_zip(tmp_path / "sorted.zip", members)).classes == ["a", "b"]
    ordered = load_dataset(write_zip(tmp_path / "o.zip", {**members, "classes.txt": b"b\na\n"}))
    assert ordered.classes == ["b", "a"] and [ordered.classes[y] for y in ordered.labels] == ["a", "b"]
    expect_error(write_zip(tmp_path / "x.zip", {**members, "classes.txt": b"b\nc\n"}), "classes.txt",
                 "not listed: a", "without a folder: c")


# ---------------------------------------------------------------------------------------------- npz

@pytest.mark.parametrize("channels", [None, 1, 3])
def test_npz_round_trip(tmp_path, channels):
    ds = make_dataset(channels=channels)
    back = load_dataset(ds.save(tmp_path / "d.npz"))
    assert back.images.shape == (6, 6, 5, 1 if channels is None else channels)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert back.classes == ds.classes
    assert back.sha256 == ds.sha256


def test_npz_without_classes_names_them_by_index(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 2]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.classes == ["0", "1", "2"]
    assert ds.images.shape == (3, 4, 4, 1)


# ---------------------------------------------------------------------------------------------- hashing

def test_hash_is_stable_across_zip_and_npz(tmp_path):
    ds = make_dataset(channels=3)
    zipped = load_dataset(write_image_folder_zip(ds, tmp_path / "a.zip"))
    zipped_again = load_dataset(write_image_folder_zip(zipped, tmp_path / "b.zip"))
    via_npz = load_dataset(zipped.save(tmp_path / "c.npz"))
    assert ds.sha256 == zipped.sha256 == zipped_again.sha256 == via_npz.sha256
    # a grey dataset hashes alike whether stored N×H×W or N×H×W×1
    flat = make_dataset(channels=None)
    assert flat.sha256 == make_dataset(channels=1).sha256


def test_hash_changes_with_content(tmp_path):
    ds = make_dataset()
    other = Dataset(ds.images.copy(), ds.labels.copy(), ds.classes)
    other.images[0, 0, 0, 0] ^= 1
    renamed = Dataset(ds.images, ds.labels, ["cat", "wolf"])
    relabelled = Dataset(ds.images, ds.labels[::-1].copy(), ds.classes)
    assert len({ds.sha256, other.sha256, renamed.sha256, relabelled.sha256}) == 4


# ---------------------------------------------------------------------------------------------- errors

def expect_error(path, *words, limits=None):
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **({"limits": limits} if limits else {}))
    message = str(info.value).lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {message!r}"
    return message


def test_error_missing_file(tmp_path):
    expect_error(tmp_path / "nope.zip", "no such file")


def test_error_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"hello, this is text")
    expect_error(tmp_path / "x.zip", "unreadable archive")


def test_error_truncated_archive(tmp_path):
    data = write_zip(tmp_path / "ok.zip", good_members()).read_bytes()
    (tmp_path / "bad.zip").write_bytes(data[:30])
    expect_error(tmp_path / "bad.zip", "unreadable archive")


def test_error_file_that_is_not_an_image(tmp_path):
    expect_error(write_zip(tmp_path / "t.zip", {**good_members(), "a/notes.txt": b"hi"}), "notes.txt", "not an image")


def test_error_image_file_that_does_not_decode(tmp_path):
    expect_error(write_zip(tmp_path / "t.zip", {**good_members(), "a/broken.png": b"\x89PNG garbage"}),
                 "broken.png", "not a readable image")


def test_error_file_outside_class_folder(tmp_path):
    expect_error(write_zip(tmp_path / "t.zip", {**good_members(), "loose.png": png_bytes(GREY)}), "class folder")


def test_error_empty_archive(tmp_path):
    expect_error(write_zip(tmp_path / "e.zip", {"a/": b""}), "no images")


def test_error_fewer_than_two_classes(tmp_path):
    expect_error(write_zip(tmp_path / "one.zip", {"a/1.png": png_bytes(GREY), "a/2.png": png_bytes(GREY)}),
                 "at least 2 classes")


def test_error_class_with_no_sample(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]),
             classes=np.array(["a", "b", "c"]))
    expect_error(tmp_path / "d.npz", "no sample", "c")


def test_error_labels_out_of_range(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 5]),
             classes=np.array(["a", "b"]))
    expect_error(tmp_path / "d.npz", "labels must lie in [0, 1]")
    np.savez(tmp_path / "n.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, -1]))
    expect_error(tmp_path / "n.npz", "labels must lie in")


def test_error_mismatched_lengths(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 4, 4), np.uint8), labels=np.array([0, 1, 1]))
    expect_error(tmp_path / "d.npz", "4 images but 3 labels")


def test_error_npz_wrong_types_and_shapes(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), np.float32), labels=np.array([0, 1]))
    expect_error(tmp_path / "f.npz", "uint8")
    np.savez(tmp_path / "l.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0.0, 1.0]))
    expect_error(tmp_path / "l.npz", "labels must be integers")
    np.savez(tmp_path / "s.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array(1))
    expect_error(tmp_path / "s.npz", "1-d")
    np.savez(tmp_path / "c.npz", images=np.zeros((2, 4, 4, 2), np.uint8), labels=np.array([0, 1]))
    expect_error(tmp_path / "c.npz", "n×h×w×c")
    np.savez(tmp_path / "m.npz", images=np.zeros((2, 4, 4), np.uint8))
    expect_error(tmp_path / "m.npz", "no 'labels'")


def test_error_pickled_object_array_in_npz(tmp_path):
    np.savez(tmp_path / "p.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]),
             classes=np.array(["a", {"evil": 1}], dtype=object))
    expect_error(tmp_path / "p.npz", "classes", "object arrays are refused")


def test_error_parent_path_in_zip(tmp_path):
    expect_error(write_zip(tmp_path / "t.zip", {**good_members(), "../evil/1.png": png_bytes(GREY)}),
                 "unsafe path", "../evil/1.png")
    expect_error(write_zip(tmp_path / "a.zip", {**good_members(), "/abs/1.png": png_bytes(GREY)}), "unsafe path")


def test_error_symlink_in_zip(tmp_path):
    path = write_zip(tmp_path / "s.zip", good_members())
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("a/link.png")
        info.create_system = 3  # unix
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    expect_error(path, "symbolic link", "a/link.png")


@pytest.mark.parametrize("inner", ["a/inner.zip", "a/more.tar.gz", "data.npz"])
def test_error_nested_archive(tmp_path, inner):
    expect_error(write_zip(tmp_path / "t.zip", {**good_members(), inner: b"PK\x03\x04..."}), "nested archive", inner)


def test_error_image_over_size_limit(tmp_path):
    members = {**good_members(), "a/big.png": png_bytes(np.zeros((40, 20), np.uint8))}
    expect_error(write_zip(tmp_path / "t.zip", members), "big.png", "40", limits=Limits(max_side=32))


def test_error_image_header_claiming_a_huge_size(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    expect_error(write_zip(tmp_path / "t.zip", {**good_members(), "a/bomb.png": png}), "bomb.png", "too large")


def test_error_too_many_samples(tmp_path):
    ds = make_dataset(n_per_class=3)
    expect_error(write_image_folder_zip(ds, tmp_path / "d.zip"), "6 images", limits=Limits(max_samples=5))
    expect_error(ds.save(tmp_path / "d.npz"), "6 samples", limits=Limits(max_samples=5))


def test_dataset_constructor_errors():
    with pytest.raises(DatasetError, match="class names must be unique"):
        Dataset(np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), ["a", "a"])
    with pytest.raises(DatasetError, match="uint8"):
        Dataset(np.zeros((2, 4, 4), np.int32), np.array([0, 1]), ["a", "b"])


# ---------------------------------------------------------------------------------------------- subset/split

def test_split_is_stratified_and_seeded():
    ds = make_dataset(n_per_class=10, classes=("a", "b", "c"))
    left, right = ds.split(0.2, seed=1)
    assert right.class_counts() == {"a": 2, "b": 2, "c": 2}
    assert left.class_counts() == {"a": 8, "b": 8, "c": 8}
    assert ds.split(0.2, seed=1)[1].sha256 == right.sha256
    assert ds.split(0.2, seed=2)[1].sha256 != right.sha256


def test_subset_drops_empty_classes():
    ds = make_dataset(n_per_class=2, classes=("a", "b", "c"))
    sub = ds.subset([0, 1, 4])
    assert sub.classes == ["a", "c"]
    assert sub.labels.tolist() == [0, 0, 1]


# ---------------------------------------------------------------------------------------------- to_tensor

GREY_CFG = InputConfig(32, 1, (0.5,), (0.25,))
RGB_CFG = InputConfig(16, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_to_tensor_grey_to_rgb_and_normalisation():
    images = np.full((2, 16, 16, 1), 51, np.uint8)  # 0.2
    x = to_tensor(images, RGB_CFG)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    expected = (0.2 - torch.tensor(RGB_CFG.mean)) / torch.tensor(RGB_CFG.std)
    torch.testing.assert_close(x[0, :, 5, 5], expected)


def test_to_tensor_rgb_to_grey_uses_luma():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    images[..., 0] = 255  # pure red
    cfg = InputConfig(8, 1, (0.0,), (1.0,))
    x = to_tensor(images, cfg)
    assert x.shape == (1, 1, 8, 8)
    torch.testing.assert_close(x, torch.full((1, 1, 8, 8), 0.299))
    expected = np.asarray(Image.fromarray(images[0]).convert("L"), np.float32) / 255
    assert np.abs(x[0, 0].numpy() - expected).max() < 1 / 255 + 1e-6


@pytest.mark.parametrize("size", [8, 28, 32, 224])
def test_to_tensor_resizes(size):
    images = np.full((3, 28, 28, 1), 255, np.uint8)
    cfg = InputConfig(size, 1, (0.5,), (0.5,))
    x = to_tensor(images, cfg)
    assert x.shape == (3, 1, size, size)
    torch.testing.assert_close(x, torch.ones_like(x))  # a constant image stays constant: (1 - .5) / .5


def test_to_tensor_keeps_rgb_channels_apart():
    images = np.zeros((1, 4, 4, 3), np.uint8)
    images[..., 1] = 255
    x = to_tensor(images, InputConfig(8, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
