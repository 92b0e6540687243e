"""Dataset loaders on small files written here, quantization, and the stratified split."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genladder.config import DataConfig
from genladder.data import from_unit, load_split, quantize, stratified_split, to_unit
from genladder.prepare import prepare, resize
from genladder.runtime import DataError
from genladder.sources import MNIST_FILES, check_source_files, load_source


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (magic 0x0000080N, big-endian sizes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_files(root: Path, folder: str, n_train: int = 30, n_test: int = 10) -> dict:
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize(("source", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_load(tmp_path, source, folder):
    arrays = make_mnist_files(tmp_path, folder)
    raw = load_source(DataConfig(source=source), tmp_path)
    assert raw.images.shape == (40, 1, 28, 28)
    assert raw.images.dtype == np.float32
    np.testing.assert_allclose(raw.images[0, 0], arrays["train"][0][0] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(raw.labels[30:], arrays["t10k"][1])
    assert len(raw.class_names) == 10


def test_idx_missing_file_names_it_and_fix(tmp_path):
    make_mnist_files(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / MNIST_FILES[2]).unlink()
    with pytest.raises(DataError) as info:
        check_source_files(DataConfig(source="mnist"), tmp_path)
    assert MNIST_FILES[2] in str(info.value)
    assert "download: true" in str(info.value)


def test_idx_gzipped_file_suggests_gunzip(tmp_path):
    make_mnist_files(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw" / MNIST_FILES[0]
    raw.rename(raw.with_name(raw.name + ".gz"))
    with pytest.raises(DataError, match="gunzip"):
        check_source_files(DataConfig(source="mnist"), tmp_path)


def write_cifar(root: Path, per_batch: int = 12) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(per_batch)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
        first = data if first is None else first
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return first


def test_cifar_batches_load(tmp_path):
    first = write_cifar(tmp_path)
    raw = load_source(DataConfig(source="cifar10"), tmp_path)
    assert raw.images.shape == (72, 3, 32, 32)
    # Row layout: 1024 red values, then green, then blue, each row-major.
    np.testing.assert_allclose(raw.images[0, 1, 0, 0], first[0, 1024] / 255.0, atol=1e-6)
    assert raw.class_names[3] == "c3"


def test_cifar_corrupt_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_source(DataConfig(source="cifar10"), tmp_path)


def test_image_folder_loads_grey_and_rgb(tmp_path):
    for cls, colour in (("cats", (200, 10, 10)), ("dogs", (10, 200, 10))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 12), colour).save(tmp_path / cls / f"{i}.png")
    raw = load_source(DataConfig(source="imagefolder", image_size=8), tmp_path)
    assert raw.images.shape == (6, 3, 8, 8)
    assert raw.class_names == ["cats", "dogs"]
    np.testing.assert_allclose(raw.images[0, :, 4, 4], np.array([200, 10, 10]) / 255.0, atol=1e-6)

    grey = tmp_path / "grey"
    (grey / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 128).save(grey / "a" / "x.png")
    assert load_source(DataConfig(source="imagefolder", image_size=8), grey).images.shape == (1, 1, 8, 8)


def test_image_folder_missing_is_named(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        check_source_files(DataConfig(source="imagefolder"), tmp_path / "nope")


@pytest.mark.parametrize("levels", [2, 4, 16, 256])
def test_quantize_round_trip(levels):
    values = np.linspace(0, 1, levels, dtype=np.float32)
    q = quantize(values, levels)
    np.testing.assert_array_equal(q, np.arange(levels))
    back = from_unit(to_unit(torch.from_numpy(q), levels), levels)
    np.testing.assert_array_equal(back.numpy(), q)


def test_quantize_rounds_to_nearest_level():
    # With 4 levels the level centres are 0, 1/3, 2/3, 1.
    q = quantize(np.array([0.0, 0.16, 0.17, 0.5, 0.84, 1.2, -0.1]), 4)
    np.testing.assert_array_equal(q, [0, 0, 1, 2, 3, 3, 0])


def test_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(5), 40)
    a = stratified_split(labels, 0.1, 0.25, seed=7)
    b = stratified_split(labels, 0.1, 0.25, seed=7)
    c = stratified_split(labels, 0.1, 0.25, seed=8)
    for split in a:
        np.testing.assert_array_equal(a[split], b[split])
    assert not np.array_equal(a["test"], c["test"])
    for split, per_class in (("val", 4), ("test", 10), ("train", 26)):
        np.testing.assert_array_equal(np.bincount(labels[a[split]]), [per_class] * 5)
    union = np.concatenate(list(a.values()))
    assert len(np.unique(union)) == len(labels)


def test_resize_keeps_range_and_shape():
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    out = resize(images, 16)
    assert out.shape == (3, 1, 16, 16)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_prepare_writes_every_output(tmp_path):
    cfg = DataConfig(source="digits", image_size=8, levels=4, max_per_class=20)
    stats = prepare(cfg, tmp_path / "raw", out_dir=tmp_path / "data" / "prepared")
    assert stats["num_images"] == {"train": 140, "val": 20, "test": 40}
    images, labels, meta = load_split("train", root=tmp_path)
    assert images.dtype == torch.uint8
    assert images.shape == (140, 1, 8, 8)
    assert int(images.max()) <= 3
    assert meta["levels"] == 4
    assert meta["num_classes"] == 10
    assert (tmp_path / "data" / "prepared" / "preview.png").stat().st_size > 0
    assert sum(stats["level_histogram"]) == 140 * 64


def test_prepare_bytes_are_reproducible(tmp_path):
    cfg = DataConfig(source="digits", max_per_class=10)
    prepare(cfg, tmp_path, out_dir=tmp_path / "a")
    prepare(cfg, tmp_path, out_dir=tmp_path / "b")
    for name in ("train.npz", "val.npz", "test.npz", "meta.json", "stats.json", "preview.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
