"""Datasets, scalers and dequantization.

Every image loader returns *integers*: a uint8 tensor of bin indices in ``{0, ..., num_bins - 1}``
shaped ``(N, C, H, W)`` inside an :class:`ImageData`, together with ``num_bins`` (17 for the 8x8
digits, 256 for 8-bit images). Turning integers into model inputs is a separate, explicit step:

* **scalers** map bin ``k`` to ``k / (num_bins - 1)`` (:func:`to_unit`, [0, 1]) or
  ``2 k / (num_bins - 1) - 1`` (:func:`to_symmetric`, [-1, 1]), so bin 0 and the top bin land on the
  ends of the interval; :func:`from_unit` / :func:`from_symmetric` round model samples back to bins;
* **dequantization** maps bin ``k`` to the cell ``[k / num_bins, (k + 1) / num_bins)`` of the data
  range: :func:`uniform_dequantize` draws a uniform point in the cell (Theis et al. 2016; Ho et al.
  2019), :func:`bin_centers` takes its midpoint and :func:`quantize` returns the cell of a point.
  Data that a model's likelihood is reported on in bits/dim must be dequantized exactly once, with
  the same ``num_bins`` and ``data_range`` that the bits/dim formula uses; a model trained for such an
  evaluation should see data mapped the same way (:func:`bin_centers` or :func:`uniform_dequantize`),
  not the scaler's grid.

No loader dequantizes or rescales; no loader flips or augments (digits must not be mirrored).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ._checks import Generator, rand, randn
from .checkpoint import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageData",
    "bin_centers",
    "checkerboard",
    "eight_gaussians",
    "from_symmetric",
    "from_unit",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "quantize",
    "save_image_grid",
    "to_symmetric",
    "to_unit",
    "two_moons",
    "uniform_dequantize",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File name endings (case-insensitive) that :func:`load_image_folder` reads."""

DataRange = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# The container every image loader returns
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ImageData:
    """Integer images with their labels and the number of gray levels per channel.

    Attributes:
        images: uint8 tensor (N, C, H, W) of bin indices in {0, ..., num_bins - 1}.
        labels: int64 tensor (N,) of class indices into ``classes``, or None for unlabelled data.
        num_bins: number of intensity levels per channel (17 for the 8x8 digits, 256 for 8-bit
            images); the ``num_bins`` of bits/dim and of the scalers below.
        classes: class names, ``classes[labels[i]]`` is the name of image i; empty when unlabelled.

    Batches: :meth:`dataset` / :meth:`loader` give ``torch.utils.data`` objects whose batches are
    tuples ``(images,)`` or ``(images, labels)``, so ``batch[0]`` is always the uint8 images.
    """

    images: Tensor
    labels: Tensor | None
    num_bins: int
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4:
            raise ValueError("images must be a tensor shaped (N, C, H, W)")
        if self.images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {self.images.dtype}")
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]
        ):
            raise ValueError(f"labels must be int64 shaped ({self.images.shape[0]},) or None")
        if not 2 <= self.num_bins <= 256:
            raise ValueError(f"num_bins must lie in [2, 256] for uint8 images, got {self.num_bins}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape (C, H, W) of one image: the ``shape[1:]`` to sample with."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def dataset(self) -> TensorDataset:
        """A ``TensorDataset`` of ``(images,)`` or ``(images, labels)`` (no copy)."""
        if self.labels is None:
            return TensorDataset(self.images)
        return TensorDataset(self.images, self.labels)

    def loader(
        self,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> DataLoader:
        """A ``DataLoader`` over :meth:`dataset`; ``generator`` (CPU) fixes the shuffling order.

        Extra keyword arguments (``num_workers``, ``pin_memory``, ``sampler`` ...) go to DataLoader.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return DataLoader(
            self.dataset(),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            **kwargs,
        )


# --------------------------------------------------------------------------------------------------
# scikit-learn's 8x8 digits
# --------------------------------------------------------------------------------------------------

DIGITS_NUM_BINS = 17
_SPLITS = ("train", "validation", "test", "all")


def _check_count(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


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
    n_test = _check_count("n_test", n_test, 0)
    n_validation = _check_count("n_validation", n_validation, 0)

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


# --------------------------------------------------------------------------------------------------
# Folders of PNG / JPEG files
# --------------------------------------------------------------------------------------------------


def _resample_filter(resample: str) -> Image.Resampling:
    filters = {
        "nearest": Image.Resampling.NEAREST,
        "box": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
        "hamming": Image.Resampling.HAMMING,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    if resample not in filters:
        raise ValueError(f"resample must be one of {tuple(filters)}, got {resample!r}")
    return filters[resample]


def _read_image(path: Path, image_size: int, mode: str, resample) -> Tensor:
    """Decode one file, resize its shorter side to ``image_size``, center-crop; uint8 (C, H, W)."""
    with Image.open(path) as opened:
        im = ImageOps.exif_transpose(opened).convert(mode)
    w, h = im.size
    if min(w, h) != image_size:
        if w <= h:
            size = (image_size, max(image_size, round(h * image_size / w)))
        else:
            size = (max(image_size, round(w * image_size / h)), image_size)
        im = im.resize(size, resample=resample)
        w, h = im.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_image_folder(
    root: str | os.PathLike,
    image_size: int,
    channels: int = 3,
    *,
    skip_bad: bool = False,
    resample: str = "bicubic",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ImageData:
    """All PNG / JPEG images under ``root`` (recursively), as uint8 squares of side ``image_size``.

    Each file is decoded with Pillow, turned upright by its EXIF orientation, converted to RGB
    (``channels=3``) or to 8-bit gray (``channels=1``, Pillow's ITU-R 601-2 luma
    L = 0.299 R + 0.587 G + 0.114 B), resized so that its shorter side is ``image_size`` (the longer
    side scaled by the same factor and rounded; no resize when the shorter side already fits) with the
    ``resample`` filter (Pillow antialiases when shrinking), then center-cropped to
    ``image_size x image_size`` (the crop starts at ``(longer - image_size) // 2``). An alpha channel is
    discarded. Files are taken in sorted path order; names that start with "." (hidden files, macOS
    "._" resource forks) and folders that start with "." are ignored.

    Labels: when every image lies inside a first-level sub-folder of ``root``, the sub-folder names,
    sorted, are the classes and ``labels`` index them; otherwise ``labels`` is None.

    Args:
        root: folder to search.
        image_size: side of the output squares, in pixels.
        channels: 3 for RGB, 1 for grayscale.
        skip_bad: False (default) raises on the first file Pillow cannot read; True skips such files
            with one warning listing them.
        resample: Pillow filter name: "nearest", "box", "bilinear", "hamming", "bicubic", "lanczos".
        extensions: file name endings to read (case-insensitive).

    Returns:
        ImageData with images uint8 (N, channels, image_size, image_size) in 0..255 and
        ``num_bins = 256``. Everything is decoded into memory at once.

    Raises:
        FileNotFoundError: ``root`` does not exist. NotADirectoryError: ``root`` is a file.
        ValueError: no image file under ``root`` (the message names the folder); a file Pillow cannot
            decode (the message names the file) unless ``skip_bad``; bad ``image_size``,
            ``channels`` or ``resample``.
    """
    root = Path(root).expanduser()
    _check_count("image_size", image_size, 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    resample_filter = _resample_filter(resample)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"root must be a folder, {str(root)!r} is not")
    endings = tuple(e.lower() for e in extensions)

    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        files += [
            Path(folder) / name
            for name in names
            if not name.startswith(".") and name.lower().endswith(endings)
        ]
    files.sort()
    if not files:
        raise ValueError(f"no image files ({', '.join(endings)}) found under folder {str(root)!r}")

    parts = [f.relative_to(root).parts for f in files]
    labelled = all(len(p) >= 2 for p in parts)
    classes = tuple(sorted({p[0] for p in parts})) if labelled else ()
    class_index = {name: i for i, name in enumerate(classes)}

    mode = "RGB" if channels == 3 else "L"
    images, labels, bad = [], [], []
    for path, p in zip(files, parts, strict=True):
        try:
            image = _read_image(path, image_size, mode, resample_filter)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            if not skip_bad:
                raise ValueError(f"cannot read image file {str(path)!r}: {err}") from err
            bad.append(str(path))
            continue
        images.append(image)
        if labelled:
            labels.append(class_index[p[0]])
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.warn(
            f"skipped {len(bad)} unreadable image file(s) under {str(root)!r}: {shown}", stacklevel=2
        )
    if not images:
        raise ValueError(f"no readable image file under folder {str(root)!r} ({len(bad)} unreadable)")
    return ImageData(
        torch.stack(images),
        torch.tensor(labels, dtype=torch.int64) if labelled else None,
        256,
        classes,
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 and MNIST through torchvision (optional extra), from files already on disk
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Toy 2-D distributions
# --------------------------------------------------------------------------------------------------


def _float_dtype(dtype: torch.dtype | None) -> torch.dtype:
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    return dtype


def _check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def two_moons(
    n: int,
    noise: float = 0.0,
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n i.i.d. points of two interleaving half circles (the scikit-learn ``make_moons`` shape).

    Each point picks a moon with probability 1/2 and an angle theta ~ U[0, pi]: the upper moon is
    (cos theta, sin theta), the lower one (1 - cos theta, 1/2 - sin theta); then N(0, noise^2 I) is
    added. Without noise the mean is (1/2, 1/4).

    Args:
        n: number of points. noise: standard deviation of the added Gaussian noise (>= 0).
        generator: torch.Generator, or a list of n of them (point k then depends on generator k only).
        device, dtype: of the result (default dtype: torch's default).

    Returns:
        Tensor (n, 2).

    Raises:
        TypeError / ValueError: ``n`` not a positive int, ``noise`` negative, bad ``generator``.
    """
    _check_count("n", n, 1)
    noise = _check_nonnegative("noise", noise)
    dtype = _float_dtype(dtype)
    u = rand((n, 2), generator, device=device, dtype=dtype)
    eps = randn((n, 2), generator, device=device, dtype=dtype)
    theta = math.pi * u[:, 1]
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    return torch.where(u[:, :1] < 0.5, upper, lower) + noise * eps


def eight_gaussians(
    n: int,
    radius: float = 2.0 * math.sqrt(2.0),
    std: float = 0.5 / math.sqrt(2.0),
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n i.i.d. points of an equal-weight mixture of 8 Gaussians on a circle.

    Component k in {0, ..., 7} (probability 1/8 each) has mean radius * (cos(k pi / 4), sin(k pi / 4))
    and covariance std^2 I. The defaults, radius 4 / sqrt(2) and std 0.5 / sqrt(2), are the "8
    gaussians" toy set of FFJORD (Grathwohl et al. 2019), whose code divides by 1.414.

    Args:
        n: number of points. radius: distance of the means from the origin (> 0).
        std: standard deviation of each component (>= 0).
        generator: torch.Generator, or a list of n of them (point k then depends on generator k only).
        device, dtype: of the result (default dtype: torch's default).

    Returns:
        Tensor (n, 2).

    Raises:
        TypeError / ValueError: ``n`` not a positive int, ``radius`` <= 0, ``std`` < 0, bad ``generator``.
    """
    _check_count("n", n, 1)
    radius = _check_nonnegative("radius", radius)
    if radius == 0.0:
        raise ValueError("radius must be > 0, got 0.0")
    std = _check_nonnegative("std", std)
    dtype = _float_dtype(dtype)
    u = rand((n,), generator, device=device, dtype=dtype)
    eps = randn((n, 2), generator, device=device, dtype=dtype)
    angle = (math.pi / 4) * torch.floor(8 * u).clamp(max=7)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return means + std * eps


def checkerboard(
    n: int,
    squares: int = 4,
    width: float = 8.0,
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n i.i.d. points uniform on the black squares of a checkerboard.

    The board covers [-width/2, width/2]^2 with squares x squares cells of side width / squares. Cell
    (i, j), counted from the lower-left corner (i along x, j along y, from 0), is black when i + j is
    even; the density is uniform on the union of black cells. The defaults (a 4x4 board on
    [-4, 4]^2, 8 black cells) are the "checkerboard" toy set of FFJORD (Grathwohl et al. 2019).

    Args:
        n: number of points. squares: cells per side (>= 1). width: side of the board (> 0).
        generator: torch.Generator, or a list of n of them (point k then depends on generator k only).
        device, dtype: of the result (default dtype: torch's default).

    Returns:
        Tensor (n, 2).

    Raises:
        TypeError / ValueError: ``n`` or ``squares`` not a positive int, ``width`` <= 0, bad
        ``generator``.
    """
    _check_count("n", n, 1)
    _check_count("squares", squares, 1)
    width = _check_nonnegative("width", width)
    if width == 0.0:
        raise ValueError("width must be > 0, got 0.0")
    dtype = _float_dtype(dtype)
    black = [(i, j) for i in range(squares) for j in range(squares) if (i + j) % 2 == 0]
    cells = torch.tensor(black, device=device, dtype=dtype)
    u = rand((n, 3), generator, device=device, dtype=dtype)
    pick = torch.floor(len(black) * u[:, 0]).clamp(max=len(black) - 1).long()
    return (cells[pick] + u[:, 1:]) * (width / squares) - width / 2


# --------------------------------------------------------------------------------------------------
# Scalers, dequantization, quantization
# --------------------------------------------------------------------------------------------------


def _check_num_bins(num_bins: int) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise TypeError(f"num_bins must be an int, got {type(num_bins).__name__}")
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    return num_bins


def _check_range(data_range: DataRange) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError) as err:
        raise TypeError(f"data_range must be a pair of numbers (lo, hi), got {data_range!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    return lo, hi


def _check_bins(name: str, x: Tensor, num_bins: int) -> None:
    """Raise unless ``x`` holds integers in [0, num_bins) (integer dtype or integer-valued floats)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    if x.numel() == 0:
        return
    if x.is_floating_point() and not bool((x == torch.round(x)).all()):
        raise ValueError(f"{name} must hold integer values (bin indices), found non-integers or NaN")
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= num_bins:
        raise ValueError(f"{name} must lie in [0, num_bins) = [0, {num_bins}), found [{low}, {high}]")


def _out_float_dtype(x: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return _float_dtype(dtype)
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _check_float(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _bin_dtype(num_bins: int) -> torch.dtype:
    return torch.uint8 if num_bins <= 256 else torch.int64


def to_unit(x_int: Tensor, num_bins: int, dtype: torch.dtype | None = None) -> Tensor:
    """Scale bin indices to [0, 1]: ``x_int / (num_bins - 1)`` (bin 0 -> 0, top bin -> 1).

    Args:
        x_int: integers in {0, ..., num_bins - 1}, any shape, integer or integer-valued float dtype.
        num_bins: number of levels (>= 2).
        dtype: float dtype of the result (default: x_int's if floating, else torch's default).

    Returns:
        Float tensor like ``x_int`` on its device.

    Raises:
        ValueError: ``x_int`` has non-integers or values outside [0, num_bins); ``num_bins`` < 2.
        TypeError: ``x_int`` is not a tensor, or is bool.
    """
    num_bins = _check_num_bins(num_bins)
    _check_bins("x_int", x_int, num_bins)
    return x_int.to(_out_float_dtype(x_int, dtype)) / (num_bins - 1)


def to_symmetric(x_int: Tensor, num_bins: int, dtype: torch.dtype | None = None) -> Tensor:
    """Scale bin indices to [-1, 1]: ``2 x_int / (num_bins - 1) - 1`` (bin 0 -> -1, top bin -> 1).

    Same arguments and errors as :func:`to_unit`.
    """
    return 2.0 * to_unit(x_int, num_bins, dtype) - 1.0


def from_unit(x: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`to_unit` for model samples: ``round(x (num_bins - 1))`` clipped to the bins.

    Rounding is to the nearest integer (ties to even); values outside [0, 1] are clipped to bin 0 or
    ``num_bins - 1``. Exact inverse of :func:`to_unit` on its outputs.

    Args:
        x: float tensor, any shape. num_bins: number of levels (>= 2).

    Returns:
        Tensor like ``x``: uint8 when num_bins <= 256, else int64.

    Raises:
        ValueError: ``x`` has NaN or inf; ``num_bins`` < 2. TypeError: ``x`` not a float tensor.
    """
    num_bins = _check_num_bins(num_bins)
    _check_float("x", x)
    return torch.round(x * (num_bins - 1)).clamp(0, num_bins - 1).to(_bin_dtype(num_bins))


def from_symmetric(x: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`to_symmetric`: ``round((x + 1) / 2 (num_bins - 1))`` clipped to the bins.

    Same conventions and errors as :func:`from_unit`.
    """
    num_bins = _check_num_bins(num_bins)
    _check_float("x", x)
    return from_unit((x + 1.0) / 2.0, num_bins)


def _cell_index(y: Tensor, num_bins: int, lo: float, hi: float) -> Tensor:
    return torch.floor((y - lo) / (hi - lo) * num_bins)


def bin_centers(
    x_int: Tensor,
    num_bins: int,
    data_range: DataRange = (-1.0, 1.0),
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Midpoints of the dequantization cells: ``lo + (hi - lo) (x_int + 1/2) / num_bins``.

    The deterministic counterpart of :func:`uniform_dequantize` (the cell's mean); bin 0 maps to
    ``lo + (hi - lo) / (2 num_bins)``, not to ``lo`` as with the scalers.

    Args:
        x_int: integers in {0, ..., num_bins - 1}, any shape.
        num_bins: number of levels (>= 2). data_range: (lo, hi), lo < hi.
        dtype: float dtype of the result (default: x_int's if floating, else torch's default).

    Returns:
        Float tensor like ``x_int`` on its device.

    Raises:
        ValueError: ``x_int`` has non-integers or values outside [0, num_bins); bad ``num_bins`` or
            ``data_range``.
    """
    num_bins = _check_num_bins(num_bins)
    lo, hi = _check_range(data_range)
    _check_bins("x_int", x_int, num_bins)
    x = x_int.to(_out_float_dtype(x_int, dtype))
    return lo + (hi - lo) * (x + 0.5) / num_bins


def uniform_dequantize(
    x_int: Tensor,
    num_bins: int,
    data_range: DataRange = (-1.0, 1.0),
    generator: Generator = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform dequantization: ``lo + (hi - lo) (x_int + u) / num_bins`` with u ~ U[0, 1) per entry.

    Bin k becomes a uniform point of the cell [lo + (hi - lo) k / num_bins, lo + (hi - lo) (k + 1) /
    num_bins) (Theis et al. 2016, sec. 3.1; Ho et al. 2019). With this map, a continuous density p on
    data_range gives the discrete log-likelihood bound used for bits/dim,
    ``log P(x_int) >= E_u[log p(y)] + D log((hi - lo) / num_bins)``. Apply it exactly once, outside
    the loaders.

    Floating-point rounding could place a draw within a few ulps of a cell edge on the wrong side;
    such a draw (probability of order num_bins times the dtype's epsilon) is replaced by the cell's
    center, so ``quantize(y) == x_int`` always holds in the result's dtype.

    Args:
        x_int: integers in {0, ..., num_bins - 1}, shape (B, *shape) (any shape with one generator).
        num_bins: number of levels (>= 2). data_range: (lo, hi), lo < hi.
        generator: None, a torch.Generator, or a list of B of them: row b then depends on generator
            b only, so a sample's noise does not depend on its batch-mates
            (:func:`diffscore._checks.rand`).
        dtype: float dtype of the result (default: x_int's if floating, else torch's default).

    Returns:
        Float tensor like ``x_int`` on its device.

    Raises:
        ValueError: ``x_int`` has non-integers or values outside [0, num_bins); bad ``num_bins`` or
            ``data_range``; a generator list whose length is not B.
        TypeError: bad ``generator``.
    """
    num_bins = _check_num_bins(num_bins)
    lo, hi = _check_range(data_range)
    _check_bins("x_int", x_int, num_bins)
    dtype = _out_float_dtype(x_int, dtype)
    x = x_int.to(dtype)
    u = rand(x.shape, generator, device=x.device, dtype=dtype)
    y = lo + (hi - lo) * (x + u) / num_bins
    center = lo + (hi - lo) * (x + 0.5) / num_bins
    return torch.where(_cell_index(y, num_bins, lo, hi) == x, y, center)


def quantize(y: Tensor, num_bins: int, data_range: DataRange = (-1.0, 1.0)) -> Tensor:
    """The cell of each value: ``floor((y - lo) / (hi - lo) num_bins)`` clipped to {0, ..., num_bins - 1}.

    Inverse of :func:`uniform_dequantize` and :func:`bin_centers`; use it to turn samples of a model
    trained on dequantized data into integers (values outside data_range go to the end bins).

    Args:
        y: float tensor, any shape. num_bins: number of levels (>= 2). data_range: (lo, hi), lo < hi.

    Returns:
        Tensor like ``y``: uint8 when num_bins <= 256, else int64.

    Raises:
        ValueError: ``y`` has NaN or inf; bad ``num_bins`` or ``data_range``. TypeError: ``y`` not a
            float tensor.
    """
    num_bins = _check_num_bins(num_bins)
    lo, hi = _check_range(data_range)
    _check_float("y", y)
    return _cell_index(y, num_bins, lo, hi).clamp(0, num_bins - 1).to(_bin_dtype(num_bins))


# --------------------------------------------------------------------------------------------------
# Writing image grids
# --------------------------------------------------------------------------------------------------


def save_image_grid(
    x: Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    data_range: DataRange = (-1.0, 1.0),
    *,
    num_bins: int = 256,
    scale: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
) -> Path:
    """Write images as one PNG grid, atomically (a temporary file in the same folder, then a rename).

    Float images are read on ``data_range``: clipped to it and mapped linearly onto 0..255
    (``round(255 (x - lo) / (hi - lo))``). Integer images are bin indices in {0, ..., num_bins - 1},
    mapped to ``round(255 k / (num_bins - 1))`` (so 17-level digits use the full gray range). Each
    image is enlarged by the integer factor ``scale`` (each pixel becomes a scale x scale block), then
    the images are laid out row by row, ``nrow`` per row, with ``padding`` pixels of gray level
    ``pad_value`` between and around them. The PNG is (rows * scale * H + (rows + 1) * padding)
    pixels high and (nrow * scale * W + (nrow + 1) * padding) wide, 8-bit gray for C = 1 and RGB for
    C = 3.

    Args:
        x: (B, C, H, W) or one (C, H, W) image, C = 1 or 3, on any device.
        path: output file, ending in ".png"; missing parent folders are created.
        nrow: images per row (default ceil(sqrt(B))).
        data_range: (lo, hi) of float images.
        num_bins: levels of integer images.
        scale: enlargement factor (default: the smallest integer making the larger image side at
            least 64 pixels, e.g. 8 for 8x8 digits, 1 for images of 64 pixels or more).
        padding: pixels between and around the images (>= 0). pad_value: their gray level, 0..255.

    Returns:
        The path written.

    Raises:
        ValueError: bad shape or channel count, NaN or inf in float images, integer images outside
            [0, num_bins), path not ending in ".png", bad ``nrow``, ``scale``, ``padding`` or
            ``pad_value``.
        TypeError: ``x`` not a tensor, or a bool tensor.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"x must be shaped (B, C, H, W) or (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    b, c, h, w = x.shape
    nrow = math.ceil(math.sqrt(b)) if nrow is None else _check_count("nrow", nrow, 1)
    scale = math.ceil(64 / max(h, w)) if scale is None else _check_count("scale", scale, 1)
    padding = _check_count("padding", padding, 0)
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in 0..255, got {pad_value!r}")

    if x.is_floating_point():
        lo, hi = _check_range(data_range)
        _check_float("x", x)
        pixels = torch.round((x.clamp(lo, hi) - lo) * (255.0 / (hi - lo)))
    else:
        num_bins = _check_num_bins(num_bins)
        _check_bins("x", x, num_bins)
        # round(255 k / (num_bins - 1)) in exact integer arithmetic (halves round up)
        pixels = (x.long() * 510 + (num_bins - 1)) // (2 * (num_bins - 1))
    pixels = pixels.to(device="cpu", dtype=torch.uint8)
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)

    rows = math.ceil(b / nrow)
    th, tw = scale * h, scale * w
    height, width = rows * th + (rows + 1) * padding, nrow * tw + (nrow + 1) * padding
    canvas = torch.full((c, height, width), pad_value, dtype=torch.uint8)
    for k in range(b):
        top = padding + (k // nrow) * (th + padding)
        left = padding + (k % nrow) * (tw + padding)
        canvas[:, top : top + th, left : left + tw] = pixels[k]
    array = canvas.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[:, :, 0] if c == 1 else array)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"

    return atomic_write(path, lambda f: image.save(f, format="PNG"))
