"""``diffscore train``: train a score model from a preset (default: the digits) into a run folder."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..sde import SDES
from ..training import PRESETS, apply_overrides, get_preset, train
from ..training.config import DATASETS
from .common import DTYPES, add_runtime_args, distributed

#: Flags that set a config field (flag attribute -> TrainConfig field).
_FIELD_FLAGS = ("dataset", "data_root", "steps", "batch_size", "lr", "seed", "net", "sde")


def run(args: argparse.Namespace) -> int:
    config = get_preset(args.preset)
    overrides = list(args.set or [])
    for flag in _FIELD_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            overrides.insert(0, f"{flag}={value}")
    config = apply_overrides(config, overrides)
    out = args.out or os.path.join("runs", args.preset)
    with distributed(args):
        train(
            config,
            out,
            device=args.device,
            dtype=DTYPES[args.dtype],
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            bf16=args.bf16,
        )
    return 0


def add_commands(sub: Any) -> None:
    """Register ``train`` on the subparsers of the ``diffscore`` parser."""
    p = sub.add_parser("train", help="train a score model (default: the digits preset)")
    p.add_argument(
        "--preset",
        default="digits",
        help=f"training preset, one of: {', '.join(sorted(PRESETS))} (default digits)",
    )
    p.add_argument("--out", default=None, help="output directory (default runs/<preset>)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set lr=1e-3 --set net_options.hidden=512 (repeatable)",
    )
    p.add_argument("--dataset", default=None, help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=None, help="folder of cifar10 / mnist files or of images")
    p.add_argument("--net", default=None, help="a network or network preset of diffscore.nets")
    p.add_argument("--sde", default=None, help=f"one of: {', '.join(SDES)}")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start afresh, deleting checkpoints in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--bf16", action="store_true", help="bf16 autocast in the training forward pass (docs/distributed.md)"
    )
    add_runtime_args(p)
    p.set_defaults(func=run)
