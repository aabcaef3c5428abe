"""``diffscore train``: train a score model from a preset (default: the digits) into a run folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..io import read_json
from ..sde import SDES
from ..training import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    get_preset,
    latest_checkpoint,
    train,
)
from ..training.checkpoints import check_state
from ..training.config import DATASETS
from .common import DTYPES, add_runtime_args, distributed, positive_int

#: Flags that set a config field (flag attribute -> TrainConfig field).
_FIELD_FLAGS = ("dataset", "data_root", "steps", "batch_size", "lr", "seed", "net", "sde")


def _config(args: argparse.Namespace, out: str) -> TrainConfig:
    """The run's config: the preset's (a new run) or the checkpoint's (``--resume``), with the flags and
    ``--set`` overrides applied (a resumed run accepts only resumable fields; the trainer checks)."""
    overrides = [f"{flag}={getattr(args, flag)}" for flag in _FIELD_FLAGS if getattr(args, flag) is not None]
    overrides += list(args.set or [])
    if not args.resume:
        config = apply_overrides(get_preset(args.preset or "digits"), overrides)
        if args.sde is not None and config.objective == "ncsn":
            raise ValueError("--sde does not apply to an ncsn run: its noise levels are the network's sigmas")
        return config
    if args.preset is not None:
        raise ValueError("--preset starts a new run; --resume continues the run in --out with its own config")
    ckpt = latest_checkpoint(Path(out) / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(
            f"nothing to resume: {str(Path(out) / 'checkpoints')!r} holds no complete checkpoint; "
            "run without --resume to start a new run"
        )
    state = check_state(read_json(ckpt / "state.json"), ckpt)
    return apply_overrides(TrainConfig.from_dict(state["config"]), overrides)


def run(args: argparse.Namespace) -> int:
    """``diffscore train``: a new run from a preset, or ``--resume`` of the run in ``--out``."""
    args.out = args.out or os.path.join("runs", args.preset or "digits")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    config = _config(args, args.out)
    with distributed(args):
        train(
            config,
            args.out,
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
        default=None,
        help=f"training preset of a new run, one of: {', '.join(sorted(PRESETS))} (default digits)",
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
    p.add_argument(
        "--steps", type=positive_int, default=None, help="optimizer steps (with --resume: train further)"
    )
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint, with its config (--steps extends it)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="start afresh, deleting what a previous run wrote in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--bf16", action="store_true", help="bf16 autocast in the training forward pass (docs/distributed.md)"
    )
    add_runtime_args(p)
    p.set_defaults(func=run)
