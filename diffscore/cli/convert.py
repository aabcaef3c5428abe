"""``diffscore convert``: published checkpoints (score_sde_pytorch, diffusers) -> diffscore model folders."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..convert import RELEASED, from_diffusers, from_score_sde
from .common import add_runtime_args


def run_score_sde(args: argparse.Namespace) -> int:
    """``diffscore convert score_sde_pytorch``: a .pth checkpoint -> a model folder."""
    start = time.perf_counter()
    out = from_score_sde(
        args.checkpoint, args.config, args.out, weights=args.weights, overwrite=args.overwrite
    )
    print(
        f"converted {args.checkpoint} ({args.weights} weights) in {time.perf_counter() - start:.1f} s: "
        f"wrote {out}"
    )
    return 0


def run_diffusers(args: argparse.Namespace) -> int:
    """``diffscore convert diffusers``: a ScoreSdeVePipeline folder -> a model folder."""
    start = time.perf_counter()
    out = from_diffusers(args.model_dir, args.out, overwrite=args.overwrite)
    print(f"converted {args.model_dir} in {time.perf_counter() - start:.1f} s: wrote {out}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``convert score_sde_pytorch`` and ``convert diffusers`` (docs/pretrained.md)."""
    p = sub.add_parser("convert", help="convert a published checkpoint into a diffscore model folder")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = formats.add_parser("score_sde_pytorch", help="a score_sde_pytorch .pth checkpoint (EMA weights)")
    q.add_argument("checkpoint", help="the .pth file (read with torch.load(weights_only=True))")
    q.add_argument(
        "--config",
        required=True,
        help=f"a preset ({', '.join(sorted(RELEASED))}) or the checkpoint's config exported to JSON",
    )
    q.add_argument("--weights", default="ema", choices=("ema", "raw"), help="EMA (default) or raw weights")
    q.add_argument("--out", required=True, help="the model folder to write")
    q.add_argument("--overwrite", action="store_true", help="replace a model diffscore wrote in --out")
    add_runtime_args(q)
    q.set_defaults(func=run_score_sde)
    q = formats.add_parser("diffusers", help="a diffusers ScoreSdeVePipeline folder (unet/, scheduler/)")
    q.add_argument("model_dir", help="the pipeline folder")
    q.add_argument("--out", required=True, help="the model folder to write")
    q.add_argument("--overwrite", action="store_true", help="replace a model diffscore wrote in --out")
    add_runtime_args(q)
    q.set_defaults(func=run_diffusers)
