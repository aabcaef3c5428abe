"""Integer images: the :class:`ImageData` container, folders of PNG / JPEG files, and PNG grids.

Every image loader returns *integers*: a uint8 tensor of bin indices in ``{0, ..., num_bins - 1}``
shaped ``(N, C, H, W)`` inside an :class:`ImageData`, together with ``num_bins`` (17 for the 8x8
digits, 256 for 8-bit images). No loader dequantizes, rescales, flips or augments.
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
from PIL import Image, ImageOps, PngImagePlugin
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from .._checks import check_bins, check_int
from ..io import atomic_write, check_output
from ._validate import DataRange, check_float, check_num_bins, check_range

__all__ = ["IMAGE_EXTENSIONS", "ImageData", "load_image_folder", "save_image_grid"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File name endings (case-insensitive) that :func:`load_image_folder` reads."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """Integer images with their labels and the number of gray levels per channel.

    Attributes:
        images: (N, C, H, W) bin indices in {0, ..., num_bins - 1}: uint8 for up to 256 bins, int32
            for more (16-bit images: 65536 bins).
        labels: int64 tensor (N,) of class indices into ``classes``, or None for unlabelled data.
        num_bins: number of intensity levels per channel (17 for the 8x8 digits, 256 for 8-bit
            images, 65536 for 16-bit ones); the ``num_bins`` of bits/dim and of the scalers.
        classes: class names, ``classes[labels[i]]`` is the name of image i; empty when unlabelled.

    Batches: :meth:`dataset` / :meth:`loader` give ``torch.utils.data`` objects whose batches are
    tuples ``(images,)`` or ``(images, labels)``, so ``batch[0]`` is always the integer images.
    """

    images: Tensor
    labels: Tensor | None
    num_bins: int
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4:
            raise ValueError("images must be a tensor shaped (N, C, H, W)")
        if not 2 <= self.num_bins <= 65536:
            raise ValueError(f"num_bins must lie in [2, 65536], got {self.num_bins}")
        want = torch.uint8 if self.num_bins <= 256 else torch.int32
        if self.images.dtype != want:
            raise TypeError(f"images of {self.num_bins} bins must be {want}, got {self.images.dtype}")
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]
        ):
            raise ValueError(f"labels must be int64 shaped ({self.images.shape[0]},) or None")

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


def _bit_depth(path: Path) -> int:
    """16 for a 16-bit PNG (read from its header), else 8.

    Raises:
        ValueError: a 16-bit color PNG (Pillow reads those as 8-bit: their depth would be lost).
    """
    if path.suffix.lower() != ".png":
        return 8
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or head[24] != 16:
        return 8
    if head[25] not in (0, 4):  # 0: gray, 4: gray + alpha
        raise ValueError(
            f"{str(path)!r} is a 16-bit color PNG, which Pillow reads as 8-bit; convert it to 8-bit or to "
            "16-bit grayscale"
        )
    return 16


def _read_image(path: Path, image_size: int, mode: str, resample) -> Tensor:
    """Decode one file, resize its shorter side to ``image_size``, center-crop: (C, H, W), uint8 for
    ``mode`` "RGB" or "L", int32 in 0..65535 for "I" (16-bit gray; resized in float32 and rounded)."""
    with Image.open(path) as opened:
        im = ImageOps.exif_transpose(opened)
        im = im.convert("I").convert("F") if mode == "I" else im.convert(mode)
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
    if mode == "I":
        array = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 65535).astype(np.int32)
    else:
        array = np.asarray(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _image_files(root: Path, endings: tuple[str, ...]) -> list[Path]:
    """The image files under ``root`` in sorted path order, hidden files and folders skipped."""
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
    return files


def load_image_folder(
    root: str | os.PathLike,
    image_size: int,
    channels: int = 3,
    *,
    skip_bad: bool = False,
    resample: str = "bicubic",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ImageData:
    """All PNG / JPEG images under ``root`` (recursively), as integer squares of side ``image_size``.

    8-bit files give uint8 images and ``num_bins = 256``. A folder of 16-bit grayscale PNGs (with
    ``channels=1``) is read at full depth: int32 images in 0..65535 and ``num_bins = 65536``. A folder
    mixing 8- and 16-bit files, and 16-bit color PNGs, are refused (nothing is silently cut to 8 bits).

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
        extensions: file name endings to read (case-insensitive); a string is one ending.

    Returns:
        ImageData with images (N, channels, image_size, image_size): uint8 in 0..255 and
        ``num_bins = 256``, or int32 in 0..65535 and ``num_bins = 65536`` for 16-bit files. Everything
        is decoded into memory at once.

    Raises:
        FileNotFoundError: ``root`` does not exist. NotADirectoryError: ``root`` is a file.
        ValueError: no image file under ``root`` (the message names the folder); a file Pillow cannot
            decode (the message names the file) unless ``skip_bad``; 16-bit color files, 16-bit files
            with ``channels=3``, or a folder mixing 8- and 16-bit files (the message names a file of
            each); bad ``image_size``, ``channels`` or ``resample``.
    """
    root = Path(root).expanduser()
    check_int("image_size", image_size, 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    resample_filter = _resample_filter(resample)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"root must be a folder, {str(root)!r} is not")
    if isinstance(extensions, str):  # one ending, not its characters
        extensions = (extensions,)
    endings = tuple(e.lower() for e in extensions)

    files = _image_files(root, endings)
    parts = [f.relative_to(root).parts for f in files]
    labelled = all(len(p) >= 2 for p in parts)
    classes = tuple(sorted({p[0] for p in parts})) if labelled else ()
    class_index = {name: i for i, name in enumerate(classes)}

    depths = {path: _bit_depth(path) for path in files}
    deep = [f for f, d in depths.items() if d == 16]
    if deep and len(deep) < len(files):
        shallow = next(f for f, d in depths.items() if d == 8)
        raise ValueError(
            f"folder {str(root)!r} mixes 16-bit ({str(deep[0])!r}) and 8-bit ({str(shallow)!r}) images; "
            "convert them to one depth"
        )
    if deep and channels != 1:
        raise ValueError(f"16-bit images (e.g. {str(deep[0])!r}) are grayscale: load them with channels=1")
    mode = "I" if deep else "RGB" if channels == 3 else "L"
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
        65536 if deep else 256,
        classes,
    )


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
    """Write images as one PNG grid, atomically (a temporary file in the same folder, then a rename),
    marked as diffscore's (PNG text ``Software: diffscore``).

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
        FileExistsError: ``path`` exists and diffscore did not write it (it is never replaced).
        TypeError: ``x`` not a tensor, or a bool tensor.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"x must be shaped (B, C, H, W) or (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    path = check_output(path, (".png",), "path")
    b, c, h, w = x.shape
    nrow = math.ceil(math.sqrt(b)) if nrow is None else check_int("nrow", nrow, 1)
    scale = math.ceil(64 / max(h, w)) if scale is None else check_int("scale", scale, 1)
    padding = check_int("padding", padding, 0)
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in 0..255, got {pad_value!r}")

    if x.is_floating_point():
        lo, hi = check_range(data_range)
        check_float("x", x)
        pixels = torch.round((x.clamp(lo, hi) - lo) * (255.0 / (hi - lo)))
    else:
        num_bins = check_num_bins(num_bins)
        check_bins("x", x, num_bins)
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

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "diffscore")  # diffscore's mark: diffscore.io.written_by_diffscore
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))
