"""What the ``diffscore`` commands share: common flags, the model they load, tensor files, torchrun."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import distributed as dd
from .._checks import check_bins
from ..io import check_output
from ..score import ModelCard, ScoreModel

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def add_runtime_args(p: argparse.ArgumentParser, progress: bool = False) -> None:
    """``--device``, ``--dtype`` and ``--threads`` (where and how a command computes), and with
    ``progress`` the ``--no-progress`` switch."""
    p.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:<index> or mps (default cpu)"
    )
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (default 1, see docs/cli.md)",
    )
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """``--model``: a model directory or a training run's directory."""
    p.add_argument("--model", default="runs/digits", help="model directory, or a training run's directory")


def setup(args: argparse.Namespace) -> None:
    """Check ``--device`` (before any work) and set torch's CPU thread count (``--threads``; default 1)."""
    if getattr(args, "device", None) is not None:
        try:
            dd.check_device(args.device)
        except ValueError as err:
            raise ValueError(f"--device: {err}") from None
    torch.set_num_threads(1 if getattr(args, "threads", None) is None else args.threads)


def model_dir(path: str) -> Path:
    """A model directory: ``path`` itself, or ``path/model`` for a training run's output directory."""
    p = Path(path)
    if not (p / "model.safetensors").is_file() and (p / "model" / "model.safetensors").is_file():
        return p / "model"
    return p


@contextmanager
def distributed(args: argparse.Namespace) -> Iterator[bool]:
    """Join the torchrun job, if any (:func:`diffscore.distributed.init_distributed`): ``args.device``
    becomes this process's device (``cuda`` -> ``cuda:<LOCAL_RANK>``). Yields whether this is the main
    process; leaves the process group on exit."""
    info, device = dd.init_distributed(args.device)
    args.device = str(device)
    try:
        yield info.is_main
    finally:
        dd.shutdown()


def load_model(args: argparse.Namespace) -> tuple[ScoreModel, ModelCard]:
    """The ``--model`` on ``--device`` in ``--dtype``, and its card (read with it, once)."""
    model = ScoreModel.from_pretrained(model_dir(args.model), map_location=args.device)
    return model.to(DTYPES[args.dtype]), model.card


def check_images(x: Tensor, card: ModelCard, flag: str = "--input", data: bool = True) -> Tensor:
    """Raise ValueError naming ``flag`` unless ``x`` is a float (B, *image_shape) batch for this model,
    with finite entries and, for ``data`` (not latents), values inside the model's data range (up to a
    tenth of its width: dequantized data lie inside it, samples slightly outside)."""
    shape = card.image_shape or ()
    if not x.is_floating_point():
        raise ValueError(f"{flag} must hold floating-point data in the model's range, got {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0 or (shape and tuple(x.shape[1:]) != shape):
        want = ", ".join(map(str, shape)) if shape else "..."
        raise ValueError(f"{flag} must hold a batch shaped (B, {want}), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{flag} holds NaN or inf")
    if data:
        lo, hi = card.data_range
        slack = 0.1 * (hi - lo)
        if float(x.min()) < lo - slack or float(x.max()) > hi + slack:
            raise ValueError(
                f"{flag} holds values in [{float(x.min()):g}, {float(x.max()):g}] but the model's data lie "
                f"in [{lo:g}, {hi:g}]; scale the images to that range (e.g. x / 127.5 - 1 for 8-bit images)"
            )
    return x


def check_samples(x: Tensor, card: ModelCard, flag: str, min_num: int = 1) -> Tensor:
    """Images as a command reads them: gray levels (integers in ``[0, num_bins)``) or floats in the
    model's data range (:func:`check_images`), at least ``min_num`` of them; errors name ``flag``."""
    if x.ndim < 1 or x.shape[0] < min_num:
        raise ValueError(f"{flag} must hold at least {min_num} images, got {tuple(x.shape)}")
    if x.is_floating_point():
        return check_images(x, card, flag)
    check_bins(flag, x, card.num_bins)
    return x


def check_outputs(pairs: Sequence[tuple[str | None, Sequence[str], str]]) -> None:
    """Check every output path of a command before it starts working: ``(path or None, suffixes, flag)``
    (:func:`diffscore.io.check_output`: the right suffix, and absent or written by diffscore)."""
    for path, suffixes, flag in pairs:
        if path is not None:
            check_output(path, suffixes, flag)


def print_stats(label: str, stats: dict[str, Any]) -> None:
    """One line: mean, median and worst of a :func:`diffscore.evaluation.summarize` dict."""
    print(
        f"{label}: mean {stats['mean']:.4f}  median {stats['median']:.4f}  "
        f"worst {stats['worst']:.4f} (image {stats['worst_index']})  [{stats['n']} images]"
    )
