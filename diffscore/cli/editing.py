"""``diffscore edit`` and ``interpolate``: SDEdit on images, and paths between two images through latents.

The command-line side of :mod:`diffscore.editing`; see docs/encoding.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import distributed as dd
from ..data import bin_centers, quantize, save_image_grid
from ..editing import SPACES, edit, interpolate
from ..evaluation.progress import SolveProgress
from ..io import read_tensor, write_tensors
from ..likelihood import fixed_grid_methods
from ..score import ModelCard, ScoreModel
from .common import (
    add_model_arg,
    add_runtime_args,
    check_images,
    check_outputs,
    check_samples,
    load_model,
    positive_float,
    positive_int,
)
from .generate import add_sampler_args, describe_sampler, sample_options

__all__ = ["add_commands", "read_images"]


def read_images(path: str, card: ModelCard, flag: str = "--input") -> Tensor:
    """Images for the model from a file, as floats in its data range (B, *image_shape), on the CPU.

    A ``.png`` holds one image of exactly the model's size (gray for 1 channel, RGB for 3); its 8-bit
    levels map to the model's bins (``k = round(v (num_bins - 1) / 255)``, the inverse of the PNGs that
    diffscore writes) and to their centers. A ``.safetensors`` / ``.pt`` file holds a batch of floats in
    the data range or of integer bins. Errors name ``flag`` (or the file).
    """
    num_bins, data_range = card.num_bins, card.data_range
    p = Path(path)
    if p.suffix.lower() == ".png":
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {str(p)!r}")
        shape = card.image_shape or ()
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError("the model's config.json has no (C, H, W) image_shape with C = 1 or 3")
        with Image.open(p) as im:
            if im.size != (shape[2], shape[1]):
                raise ValueError(
                    f"{flag} {str(p)!r} is {im.size[0]}x{im.size[1]} pixels; the model's images are "
                    f"{shape[2]}x{shape[1]}"
                )
            array = np.asarray(im.convert("L" if shape[0] == 1 else "RGB"), dtype=np.int64)
        levels = torch.from_numpy(array.reshape(shape[1], shape[2], -1)).permute(2, 0, 1)[None]
        x = (levels * (num_bins - 1) + 127) // 255  # round(v (num_bins - 1) / 255)
        return bin_centers(x.to(torch.uint8 if num_bins <= 256 else torch.int32), num_bins, data_range)
    x = check_samples(read_tensor(path, ("x", "images", "samples", "data")), card, flag)
    x = bin_centers(x, num_bins, data_range) if not x.is_floating_point() else x
    return check_images(x, card, flag)


def _inputs(paths: list[str], model: ScoreModel) -> list[Tensor]:
    """The images of each ``--input`` file, on the model's device and in its dtype."""
    p = next(iter(model.parameters()))
    return [read_images(path, model.card).to(p.device, p.dtype) for path in paths]


def _tensors_path(args: argparse.Namespace) -> Path:
    """Check ``--out`` (PNG) and ``--tensors`` before any work; returns the tensors path."""
    p = Path(args.tensors) if args.tensors else Path(args.out).with_suffix(".safetensors")
    check_outputs([(args.out, (".png",), "--out"), (str(p), (".safetensors",), "--tensors")])
    return p


def run_edit(args: argparse.Namespace) -> int:
    """``diffscore edit``: SDEdit of the images of ``--input`` (PNG rows: input, noised, edited)."""
    if not 0.0 < args.strength <= 1.0:
        raise ValueError(f"--strength must lie in (0, 1], got {args.strength:g}")
    tensors_path = _tensors_path(args)
    model, card = load_model(args)
    num_bins, data_range = card.num_bins, card.data_range
    x = torch.cat(_inputs(args.input, model))
    options = sample_options(args, card)
    p = next(iter(model.parameters()))
    start = time.perf_counter()
    edited, noised = [], []
    batch = args.batch_size or x.shape[0]
    with torch.no_grad(), SolveProgress(f"edit ({args.method})", x.shape[0], not args.no_progress) as bar:
        score = bar.wrap(model)
        for indices in dd.shard_batches(x.shape[0], batch, 0, 1):
            gens = dd.sample_generators(args.seed, indices, p.device)
            out = edit(model.sde, score, x[indices], args.strength, args.method, gens, **options)
            edited.append(out.edited)
            noised.append(out.noised)
            bar.advance(len(indices))
    edited_x, noised_x = torch.cat(edited), torch.cat(noised)
    rows = torch.cat([x, noised_x, edited_x]).cpu()
    grid = save_image_grid(quantize(rows, num_bins, data_range), args.out, nrow=x.shape[0], num_bins=num_bins)
    tensors = write_tensors(tensors_path, {"input": x, "noised": noised_x, "edited": edited_x})
    print(
        f"edited {x.shape[0]} images (strength {args.strength:g}: t_start = {out.t_start:g}; "
        f"{describe_sampler(args.method, options)}; {bar.nfe} NFE, {time.perf_counter() - start:.1f} s): "
        f"wrote {grid} (rows: input, noised, edited) and {tensors}"
    )
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    """``diffscore interpolate``: ``--frames`` images from A to B, one PNG row per pair and ``--space``."""
    if len(args.input) != 2:
        raise ValueError(f"--input must be given twice (the two ends, A and B), got {len(args.input)}")
    spaces = args.space or ["latent"]
    if args.time is not None and "time" not in spaces:
        raise ValueError("--time is the time of --space time; add --space time or drop --time")
    if args.time is not None and not 0.0 < args.time < 1.0:
        raise ValueError(f"--time (a fraction of T) must lie in (0, 1), got {args.time:g}")
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 (the two ends included), got {args.frames}")
    if args.method in fixed_grid_methods() and args.step_size is None:
        raise ValueError(f"--method {args.method} is a fixed-step solver: give --step-size (e.g. 1e-3)")
    tensors_path = _tensors_path(args)
    model, card = load_model(args)
    num_bins, data_range = card.num_bins, card.data_range
    a, b = _inputs(args.input, model)
    if a.shape != b.shape:
        raise ValueError(f"the two --input files must hold as many images, got {a.shape[0]} and {b.shape[0]}")
    solver = dict(
        eps=args.eps,
        rtol=args.rtol,
        atol=args.atol,
        method=args.method,
        options=None if args.step_size is None else {"step_size": args.step_size},
    )
    start = time.perf_counter()
    paths = {}
    with torch.no_grad(), SolveProgress("interpolate", enabled=not args.no_progress) as bar:
        for space in spaces:
            t = None if space != "time" else model.sde.T * (0.5 if args.time is None else args.time)
            paths[space] = interpolate(model.sde, bar.wrap(model), a, b, args.frames, space, t, **solver)
    rows = torch.stack(list(paths.values()), dim=1).flatten(0, 2).cpu()  # pair, space, frame
    grid = save_image_grid(
        quantize(rows, num_bins, data_range), args.out, nrow=args.frames, num_bins=num_bins
    )
    tensors = write_tensors(tensors_path, {space: x.flatten(0, 1) for space, x in paths.items()})
    print(
        f"interpolated {a.shape[0]} pair(s), {args.frames} frames ({', '.join(spaces)}; {bar.nfe} NFE, "
        f"{time.perf_counter() - start:.1f} s): wrote {grid} (rows: {', '.join(spaces)} per pair) "
        f"and {tensors}"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Register ``edit`` and ``interpolate`` on the subparsers of the ``diffscore`` parser."""
    inputs = ".png (one image of the model's size) or .safetensors / .pt (a batch: floats or integer bins)"
    p = sub.add_parser(
        "edit", help="SDEdit: noise images to strength x T, denoise (PNG rows: input, noised, edited)"
    )
    add_model_arg(p)
    p.add_argument("--input", action="append", required=True, help=f"images: {inputs}; repeat for more")
    p.add_argument(
        "--strength",
        type=float,
        required=True,
        help="fraction of the time axis to noise over, in (0, 1]: small keeps the input, 1 is a fresh sample",
    )
    p.add_argument(
        "--method",
        default="pc",
        help="sampler from t_start (docs/samplers.md); the training run's sampler comes with its options",
    )
    add_sampler_args(p)
    p.add_argument("--out", required=True, help="PNG grid (rows: input, noised, edited)")
    p.add_argument("--tensors", default=None, help=".safetensors of the three rows (default: next to --out)")
    add_runtime_args(p, progress=True)
    p.set_defaults(func=run_edit)

    p = sub.add_parser("interpolate", help="images on a path from A to B through the latents (a PNG strip)")
    add_model_arg(p)
    p.add_argument("--input", action="append", required=True, help=f"give twice, A then B: {inputs}")
    p.add_argument("--frames", type=positive_int, default=8, help="images per path, ends included (>= 2)")
    p.add_argument(
        "--space",
        action="append",
        choices=SPACES,
        help="latent (slerp at T, default), data (straight line), time (slerp at --time); repeat: more rows",
    )
    p.add_argument("--time", type=float, default=None, help="--space time: the fraction of T (default 0.5)")
    p.add_argument("--eps", type=positive_float, default=1e-5)
    p.add_argument("--rtol", type=positive_float, default=1e-5)
    p.add_argument("--atol", type=positive_float, default=1e-5)
    p.add_argument(
        "--method", default="dopri8", help="torchdiffeq method (default dopri8, as encode / decode)"
    )
    p.add_argument("--step-size", type=positive_float, default=None, help="step of a fixed-step --method")
    p.add_argument("--out", required=True, help="PNG strip")
    p.add_argument("--tensors", default=None, help=".safetensors of the paths (default: next to --out)")
    add_runtime_args(p, progress=True)
    p.set_defaults(func=run_interpolate)
