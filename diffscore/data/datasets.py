"""Datasets: scikit-learn's bundled 8x8 digits, CIFAR-10 and MNIST from disk, and train / validation /
test splits of every dataset the trainer knows (:func:`load_splits`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from .images import ImageData, load_image_folder

__all__ = [
    "CIFAR10_FILES",
    "MNIST_FILES",
    "DATASETS",
    "DIGITS_NUM_BINS",
    "load_digits",
    "load_cifar10",
    "load_mnist",
    "load_splits",
]

#: Datasets :func:`load_splits` (and so the trainer) can load.
DATASETS = ("digits", "cifar10", "mnist", "image_folder")

DIGITS_NUM_BINS = 17
_SPLITS = ("train", "validation", "test", "all")


def _largest_remainder(counts: Tensor, total: int) -> Tensor:
    """Integer quotas proportional to ``counts`` summing to ``total`` (Hamilton's method).

    Each class gets ``floor(counts * total / sum)``; the leftover units go to the largest fractional
    parts, ties to the lower class index. Integer arithmetic only, so the result is exact.
    """
    n = int(counts.sum())
    scaled = counts * total
    quota = scaled // n
    leftover = total - int(quota.sum())
    order = torch.sort(-(scaled % n), stable=True).indices
    quota[order[:leftover]] += 1
    return quota


def load_digits(
    split: str = "train",
    seed: int = 0,
    *,
    n_test: int = 297,
    n_validation: int = 150,
) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits, as integers, in a seeded stratified split.

    Source: ``sklearn.datasets.load_digits`` (no download), the test part of the UCI "Optical
    Recognition of Handwritten Digits" data (Alpaydin & Kaynak 1998): 1797 images of 8x8 pixels,
    each pixel a count in {0, ..., 16} (the number of "on" pixels in a 4x4 block of a 32x32
    bitmap), so ``num_bins = 17``; 0 is background. Classes 0-9 hold 174 to 183 images each.

    Split (the same for every call with the same ``seed``, ``n_test`` and ``n_validation``; another
    seed gives another split): ``n_test`` images (default 297) are drawn for the test set, then
    ``n_validation`` (default 150) of the remaining ones for validation; the rest (default 1350) is
    the training set. Both draws are stratified by class: class c gets its share of each set by the
    largest-remainder rule (for the defaults, 29 or 30 test and 15 validation images per class; the
    shares do not depend on the seed) and its images are picked by ``torch.randperm`` with a CPU
    generator seeded with ``seed``, so the split does not depend on NumPy's or scikit-learn's random
    streams. Within a split the images keep their order in scikit-learn's array.

    Args:
        split: "train", "validation", "test", or "all" (the 1797 images in scikit-learn's order).
        seed: seed of the split.
        n_test, n_validation: sizes of the test and validation sets (the training set keeps at
            least one image).

    Returns:
        ImageData with images uint8 (N, 1, 8, 8) in {0, ..., 16}, labels int64 (N,) in {0, ..., 9},
        ``num_bins = 17`` and ``classes = ("0", ..., "9")``.

    Raises:
        ValueError: unknown ``split``; negative sizes or sizes leaving no training image.
        TypeError: ``seed``, ``n_test`` or ``n_validation`` not an int.
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    n_test = check_int("n_test", n_test, 0)
    n_validation = check_int("n_validation", n_validation, 0)

    bunch = _sklearn_digits()
    images = torch.from_numpy(np.rint(bunch.images)).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    classes = tuple(str(c) for c in range(10))
    n = labels.shape[0]
    if n_test + n_validation >= n:
        raise ValueError(
            f"n_test + n_validation must be < {n} (the number of digits) so that training data remain, "
            f"got {n_test} + {n_validation}"
        )
    if split == "all":
        return ImageData(images, labels, DIGITS_NUM_BINS, classes)

    counts = torch.bincount(labels, minlength=10)
    test_quota = _largest_remainder(counts, n_test)
    validation_quota = _largest_remainder(counts - test_quota, n_validation)
    g = torch.Generator(device="cpu").manual_seed(seed)
    chosen = []
    for c in range(10):
        members = torch.nonzero(labels == c).squeeze(1)
        members = members[torch.randperm(members.shape[0], generator=g)]
        t, v = int(test_quota[c]), int(validation_quota[c])
        part = {"test": members[:t], "validation": members[t : t + v], "train": members[t + v :]}[split]
        chosen.append(part)
    index = torch.sort(torch.cat(chosen)).values
    return ImageData(images[index].contiguous(), labels[index], DIGITS_NUM_BINS, classes)


def _torchvision_datasets(loader: str):
    try:
        from torchvision import datasets
    except ImportError as err:
        raise ImportError(
            f"{loader} needs torchvision, an optional extra: pip install 'diffscore[vision]' "
            "(or pip install torchvision, with the build matching your torch)"
        ) from err
    return datasets


def _check_split(split: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split == "train"


CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_cifar10(root: str | os.PathLike, split: str = "train", download: bool = False) -> ImageData:
    """CIFAR-10 (Krizhevsky 2009) through ``torchvision.datasets.CIFAR10``, from files on disk.

    torchvision reads ``<root>/cifar-10-batches-py/`` holding ``data_batch_1`` ... ``data_batch_5``,
    ``test_batch`` and ``batches.meta`` (what ``cifar-10-python.tar.gz`` from
    https://www.cs.toronto.edu/~kriz/cifar-10.html unpacks to when extracted inside ``root``); it
    checks the MD5 sums of all six batches whichever split is asked for. Nothing is downloaded unless
    ``download=True``.

    Args:
        root: folder that contains ``cifar-10-batches-py``.
        split: "train" (50000 images) or "test" (10000 images).
        download: let torchvision download and extract the archive into ``root`` if it is missing.

    Returns:
        ImageData with images uint8 (N, 3, 32, 32) in 0..255, labels int64 (N,), ``num_bins = 256``,
        torchvision's class names.

    Raises:
        ImportError: torchvision is not installed (``pip install 'diffscore[vision]'``).
        FileNotFoundError: files missing (the message names the folder and files expected) or
            rejected by torchvision's checksum, and ``download`` is False.
        ValueError: ``split`` is not "train" or "test".
    """
    train = _check_split(split)
    datasets = _torchvision_datasets("load_cifar10")
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py"
    expected = (*CIFAR10_FILES, "batches.meta")
    missing = [name for name in expected if not (folder / name).is_file()]
    hint = (
        f"put {', '.join(expected)} in {str(folder)!r} (extract cifar-10-python.tar.gz from "
        f"https://www.cs.toronto.edu/~kriz/cifar-10.html inside {str(root)!r}), or pass download=True"
    )
    if missing and not download:
        raise FileNotFoundError(f"CIFAR-10 files missing: {', '.join(missing)}; {hint}")
    try:
        ds = datasets.CIFAR10(root=str(root), train=train, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"torchvision could not load CIFAR-10 from {str(folder)!r} ({err}); {hint}"
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageData(images, labels, 256, tuple(ds.classes))


def load_mnist(root: str | os.PathLike, split: str = "train", download: bool = False) -> ImageData:
    """MNIST (LeCun et al. 1998) through ``torchvision.datasets.MNIST``, from files on disk.

    torchvision reads the four uncompressed IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` from
    ``<root>/MNIST/raw/`` (all four, whichever split is asked for), or its older cache
    ``<root>/MNIST/processed/training.pt`` and ``test.pt``. Nothing is downloaded unless
    ``download=True``.

    Args:
        root: folder that contains ``MNIST/``.
        split: "train" (60000 images) or "test" (10000 images).
        download: let torchvision download the files into ``<root>/MNIST/raw`` if they are missing.

    Returns:
        ImageData with images uint8 (N, 1, 28, 28) in 0..255, labels int64 (N,), ``num_bins = 256``,
        torchvision's class names.

    Raises:
        ImportError: torchvision is not installed (``pip install 'diffscore[vision]'``).
        FileNotFoundError: files missing (the message names the folder and files expected) and
            ``download`` is False.
        ValueError: ``split`` is not "train" or "test".
    """
    train = _check_split(split)
    datasets = _torchvision_datasets("load_mnist")
    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    processed = root / "MNIST" / "processed"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    legacy = all((processed / name).is_file() for name in ("training.pt", "test.pt"))
    hint = (
        f"put the uncompressed files {', '.join(MNIST_FILES)} in {str(raw)!r} "
        "(gunzip the .gz files from http://yann.lecun.com/exdb/mnist/), or pass download=True"
    )
    if missing and not legacy and not download:
        raise FileNotFoundError(f"MNIST files missing: {', '.join(missing)}; {hint}")
    try:
        ds = datasets.MNIST(root=str(root), train=train, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"torchvision could not load MNIST from {str(raw)!r} ({err}); {hint}"
        ) from err
    images = torch.as_tensor(ds.data, dtype=torch.uint8).unsqueeze(1).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageData(images, labels, 256, tuple(ds.classes))


def _holdout(data: ImageData, sizes: tuple[int, ...], seed: int) -> list[ImageData]:
    """Split ``data`` by a seeded permutation into parts of ``sizes`` and the rest (first in the list)."""
    n = len(data)
    if sum(sizes) >= n:
        raise ValueError(f"hold-out sizes {sizes} leave no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], sum(sizes)
    parts.append(perm[start:])
    for size in sizes:
        parts.append(perm[start - size : start])
        start -= size

    def take(idx: Tensor) -> ImageData:
        idx = torch.sort(idx).values
        labels = None if data.labels is None else data.labels[idx]
        return ImageData(data.images[idx].contiguous(), labels, data.num_bins, data.classes)

    return [take(p) for p in parts]


def load_splits(
    dataset: str = "digits",
    data_root: str | os.PathLike | None = None,
    *,
    split_seed: int = 0,
    val_size: int = 1000,
    test_size: int = 1000,
    image_size: int = 32,
    channels: int = 3,
) -> dict[str, ImageData]:
    """The ``train``, ``validation`` and ``test`` splits of ``dataset`` as integer images.

    digits: :func:`load_digits` (1350 / 150 / 297, stratified, ``split_seed``). cifar10, mnist: the
    official test set; ``val_size`` images of the official training set held out by a permutation
    seeded with ``split_seed``. image_folder: ``test_size`` and ``val_size`` images of the folder
    ``data_root`` (squares of ``image_size``, ``channels`` 1 or 3) held out the same way.

    Raises:
        ValueError: unknown dataset (the message lists the valid ones), or a missing ``data_root``.
    """
    if dataset == "digits":
        return {s: load_digits(s, seed=split_seed) for s in ("train", "validation", "test")}
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if data_root is None:
        raise ValueError(f"dataset {dataset!r} needs data_root (--data-root or --set data_root=PATH)")
    if dataset in ("cifar10", "mnist"):
        load = load_cifar10 if dataset == "cifar10" else load_mnist
        train, val = _holdout(load(data_root, "train"), (val_size,), split_seed)
        return {"train": train, "validation": val, "test": load(data_root, "test")}
    folder = load_image_folder(data_root, image_size, channels)
    train, test, val = _holdout(folder, (test_size, val_size), split_seed)
    return {"train": train, "validation": val, "test": test}
