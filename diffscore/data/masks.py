"""Inpainting masks (1 = known pixel) from presets or files, for :func:`diffscore.inpaint`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..io import read_tensor

__all__ = ["MASK_PRESETS", "make_mask"]

#: Mask presets; each names the region that is HIDDEN (to be inpainted). ``random[:p]`` hides each
#: pixel with probability p (default 0.5).
MASK_PRESETS = ("left_half", "right_half", "top_half", "center_box", "random")


def _preset_mask(spec: str, shape: tuple[int, int, int], seed: int) -> Tensor | None:
    """The (1, 1, H, W) 0/1 mask (1 = known) of a preset, or None when ``spec`` is not a preset."""
    _, h, w = shape
    known = torch.ones(h, w)
    name, sep, arg = spec.partition(":")
    if name == "random":
        p = 0.5
        if sep:
            try:
                p = float(arg)
            except ValueError:
                raise ValueError(f"--mask random:p needs a number p in [0, 1], got {arg!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"--mask random:p needs p in [0, 1], got {p}")
        gen = torch.Generator().manual_seed(seed)
        known = (torch.rand(h, w, generator=gen) >= p).float()
    elif sep or name not in MASK_PRESETS:
        return None
    elif name == "left_half":
        known[:, : w // 2] = 0
    elif name == "right_half":
        known[:, w // 2 :] = 0
    elif name == "top_half":
        known[: h // 2] = 0
    else:  # center_box: the central (H/2, W/2) box is hidden
        top, left = (h - h // 2) // 2, (w - w // 2) // 2
        known[top : top + h // 2, left : left + w // 2] = 0
    return known[None, None]


def _read_mask_file(path: Path) -> Tensor:
    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            gray = torch.from_numpy(np.array(im.convert("L"))).float()
        if not bool(((gray == 0) | (gray == 255)).all()):
            raise ValueError(
                f"--mask {str(path)!r}: a PNG mask must be black (0, hidden) and white (255, known)"
            )
        return gray / 255
    if path.suffix in (".safetensors", ".pt"):
        return read_tensor(path, ("mask",)).float()
    raise ValueError(f"--mask {str(path)!r}: mask files must end in .png, .safetensors or .pt")


def make_mask(spec: str, image_shape: Sequence[int], seed: int = 0) -> Tensor:
    """A 0/1 inpainting mask (1 = known pixel) for images of shape ``image_shape`` = (C, H, W).

    Args:
        spec: a preset of :data:`MASK_PRESETS` naming the hidden region ("left_half", "right_half",
            "top_half", "center_box": the central H/2 x W/2 box, "random" or "random:p": each pixel
            hidden with probability p, default 0.5), or a file: a ``.png`` of H x W pixels (white 255 =
            known, black 0 = hidden) or a ``.safetensors`` / ``.pt`` tensor of 0s and 1s shaped (H, W),
            (C, H, W), (1, C, H, W) or (B, C, H, W) (any of these dimensions may be 1).
        image_shape: (C, H, W) of one image.
        seed: seed of the "random" preset.

    Returns:
        A float32 0/1 tensor of 4 dimensions that broadcasts to (B, C, H, W) (presets: (1, 1, H, W),
        the same pixels hidden in every channel and image).

    Raises:
        ValueError: an unknown preset or file type, a PNG that is not pure black and white, a tensor
            whose shape does not broadcast to (C, H, W) images or whose entries are not all 0 or 1
            (every message names ``--mask``); FileNotFoundError: a missing file.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    mask = _preset_mask(spec, (c, h, w), seed)
    if mask is not None:
        return mask
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--mask must be one of {', '.join(MASK_PRESETS)} (random:p) or an existing .png / "
            f".safetensors / .pt file, got {spec!r}"
        )
    mask = _read_mask_file(path)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None]
    if mask.ndim != 4 or any(m not in (1, s) for m, s in zip(mask.shape[1:], (c, h, w), strict=True)):
        raise ValueError(
            f"--mask {spec!r} has shape {tuple(mask.shape)}; it must broadcast to images of shape "
            f"(B, {c}, {h}, {w})"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"--mask {spec!r} must contain only 0 (hidden) and 1 (known) entries")
    return mask
