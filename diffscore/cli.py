"""The ``diffscore`` command: ``train``, ``sample``, ``bpd``, ``encode``, ``decode``.

``diffscore train`` with no arguments trains the default "digits" preset on scikit-learn's bundled 8x8
digits (no download) into ``runs/digits`` and reports test bits/dim beside a Gaussian baseline. The
other commands read a model directory written by training (``runs/digits`` or ``runs/digits/model``).
See docs/cli.md for a tour.

Under ``torchrun`` (``python -m torch.distributed.run ... -m diffscore.cli``) ``train`` is data-parallel
and ``bpd`` and ``sample`` split their images over the processes; only the main process prints and
writes files (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["main", "build_parser"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---- shared helpers -------------------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count (``--threads``; default: at most 2)."""
    threads = 1 if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _model_dir(path: str) -> Path:
    """A model directory: ``path`` itself, or ``path/model`` for a training run's output directory."""
    p = Path(path)
    if not (p / "model.safetensors").is_file() and (p / "model" / "model.safetensors").is_file():
        return p / "model"
    return p


@contextmanager
def _distributed(args: argparse.Namespace) -> Iterator[bool]:
    """Join the torchrun job, if any (:func:`diffscore.distributed.init_distributed`): ``args.device``
    becomes this process's device (``cuda`` -> ``cuda:<LOCAL_RANK>``). Yields whether this is the main
    process; leaves the process group on exit."""
    from . import distributed as dd

    info, device = dd.init_distributed(args.device)
    args.device = str(device)
    try:
        yield info.is_main
    finally:
        dd.shutdown()


def _load_model(args: argparse.Namespace):
    from .checkpoint import read_json
    from .score import ScoreModel

    directory = _model_dir(args.model)
    model = ScoreModel.from_pretrained(directory, map_location=args.device)
    model = model.to(_DTYPES[args.dtype])
    metadata = read_json(directory / "config.json").get("metadata", {})
    return model, metadata


def _data_info(metadata: dict[str, Any]) -> tuple[int, tuple[float, float]]:
    num_bins = int(metadata.get("num_bins", 256))
    lo, hi = metadata.get("data_range", (-1.0, 1.0))
    return num_bins, (float(lo), float(hi))


def _read_tensor(path: str, keys: Sequence[str]) -> Tensor:
    """A tensor from a ``.safetensors`` file (the only tensor, or the first of ``keys`` present) or a
    ``.pt`` file holding one plain tensor (read with ``torch.load(weights_only=True)``)."""
    from .checkpoint import read_tensors

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if p.suffix == ".safetensors":
        tensors = read_tensors(p)
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        for key in keys:
            if key in tensors:
                return tensors[key]
        raise ValueError(f"{str(p)!r} holds {sorted(tensors)}; expected one tensor or one named {list(keys)}")
    if p.suffix == ".pt":
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{str(p)!r} is not a readable tensor file ({err})") from err
        if not isinstance(obj, Tensor):
            raise ValueError(f"{str(p)!r} must hold one plain tensor, got {type(obj).__name__}")
        return obj
    raise ValueError(f"{str(p)!r}: tensor files must end in .safetensors or .pt")


def _write_tensor(path: str | Path, tensor: Tensor, key: str) -> Path:
    """Write ``tensor`` atomically to ``.safetensors`` (under ``key``) or ``.pt`` (a plain tensor)."""
    from .checkpoint import atomic_write, write_tensors

    p = Path(path)
    if p.suffix == ".safetensors":
        return write_tensors(p, {key: tensor})
    if p.suffix == ".pt":
        t = tensor.detach().cpu().contiguous()
        return atomic_write(p, lambda f: torch.save(t, f))
    raise ValueError(f"{str(p)!r}: tensor files must end in .safetensors or .pt")


def _print_stats(label: str, stats: dict[str, Any]) -> None:
    print(
        f"{label}: mean {stats['mean']:.4f}  median {stats['median']:.4f}  "
        f"worst {stats['worst']:.4f} (image {stats['worst_index']})  [{stats['n']} images]"
    )


# ---- commands ---------------------------------------------------------------------------------------
def _cmd_train(args: argparse.Namespace) -> int:
    from .config import apply_overrides, get_preset
    from .train import train

    config = get_preset(args.preset)
    overrides = list(args.set or [])
    for flag, field in (
        ("dataset", "dataset"),
        ("data_root", "data_root"),
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("seed", "seed"),
        ("net", "net"),
        ("sde", "sde"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.insert(0, f"{field}={value}")
    config = apply_overrides(config, overrides)
    out = args.out or os.path.join("runs", args.preset)
    with _distributed(args):
        train(
            config,
            out,
            device=args.device,
            dtype=_DTYPES[args.dtype],
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            bf16=args.bf16,
        )
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    with _distributed(args) as main:
        return _sample(args, main)


def _sample(args: argparse.Namespace, main: bool) -> int:
    from .config import parse_value
    from .data import save_image_grid
    from .train import generate_samples

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, metadata = _load_model(args)
    num_bins, data_range = _data_info(metadata)
    shape = tuple(metadata.get("image_shape") or ())
    if not shape:
        raise ValueError("the model's config.json has no metadata.image_shape; cannot choose a sample shape")
    options: dict[str, Any] = {}
    if args.steps is not None:
        options["num_steps"] = args.steps
    if args.rtol is not None:
        options["rtol"] = args.rtol
    if args.atol is not None:
        options["atol"] = args.atol
    if args.eps is not None:
        options["eps"] = args.eps
    for key in ("predictor", "corrector", "snr"):  # predictor-corrector options (method pc), only when given
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.corrector_steps is not None:
        options["n_steps"] = args.corrector_steps
    for item in args.option or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--option must look like key=value, got {item!r}")
        options[key] = parse_value(text)
    start = time.perf_counter()
    x, x_int = generate_samples(
        model,
        args.num,
        shape,
        num_bins,
        data_range,
        args.method,
        args.seed,
        batch_size=args.batch_size,
        **options,
    )
    if not main:
        return 0
    out = Path(args.out)
    grid = save_image_grid(x_int, out, nrow=args.nrow or math.ceil(math.sqrt(args.num)), num_bins=num_bins)
    tensors = Path(args.tensors) if args.tensors else out.with_suffix(".safetensors")
    _write_tensor(tensors, x, "samples")
    print(
        f"{args.num} samples ({args.method}) in {time.perf_counter() - start:.1f} s: "
        f"wrote {grid} and {tensors}"
    )
    return 0


def _cmd_bpd(args: argparse.Namespace) -> int:
    with _distributed(args) as main:
        return _bpd(args, main)


def _bpd(args: argparse.Namespace, main: bool) -> int:
    from .config import TrainConfig
    from .train import evaluate_bpd, load_splits, summarize

    model, metadata = _load_model(args)
    num_bins, data_range = _data_info(metadata)
    config = TrainConfig.from_dict(metadata["train_config"]) if "train_config" in metadata else TrainConfig()
    if args.dataset is not None or args.data_root is not None:
        config = TrainConfig.from_dict(
            {
                **config.to_dict(),
                "dataset": args.dataset or config.dataset,
                "data_root": args.data_root or config.data_root,
            }
        )
    data = load_splits(config)[args.split]
    if data.num_bins != num_bins:
        raise ValueError(
            f"the {args.split} split has {data.num_bins} bins but the model was trained on {num_bins}"
        )
    images = data.images[: args.limit]
    eps = args.eps if args.eps is not None else float(metadata.get("likelihood_eps", 1e-5))
    start = time.perf_counter()
    bpd, nfe = evaluate_bpd(
        model,
        images,
        num_bins,
        data_range,
        divergence=args.divergence,
        seed=args.seed,
        batch_size=args.batch_size,
        eps=eps,
        rtol=args.rtol,
        atol=args.atol,
        progress=main and not args.no_progress,
    )
    if not main:
        return 0
    stats = summarize(bpd)
    label = (
        f"{config.dataset} {args.split} bits/dim ({args.divergence} divergence, uniform dequantization, "
        f"{num_bins} bins on [{data_range[0]:g}, {data_range[1]:g}], {nfe} NFE, "
        f"{time.perf_counter() - start:.0f} s)"
    )
    _print_stats(label, stats)
    if args.output:
        _write_tensor(args.output, bpd, "bpd")
    return 0


def _check_images(x: Tensor, metadata: dict[str, Any], flag: str = "--input") -> Tensor:
    """Raise ValueError naming ``flag`` unless ``x`` is a float (B, *image_shape) batch for this model."""
    shape = tuple(metadata.get("image_shape") or ())
    if not x.is_floating_point():
        raise ValueError(f"{flag} must hold floating-point data in the model's range, got {x.dtype}")
    if shape and tuple(x.shape[1:]) != shape:
        want = ", ".join(map(str, shape))
        raise ValueError(f"{flag} must hold a batch shaped (B, {want}), got {tuple(x.shape)}")
    return x


def _flow_args(args: argparse.Namespace) -> dict[str, Any]:
    return dict(eps=args.eps, rtol=args.rtol, atol=args.atol, method=args.method)


def _cmd_encode(args: argparse.Namespace) -> int:
    from .likelihood import encode

    model, metadata = _load_model(args)
    x = _read_tensor(args.input, ("x", "samples", "data"))
    x = _check_images(x, metadata).to(args.device or "cpu", _DTYPES[args.dtype])
    stats: dict[str, Any] = {}
    with torch.no_grad():
        z = encode(model.sde, model, x, stats=stats, **_flow_args(args))
    path = _write_tensor(args.output, z, "z")
    print(f"encoded {x.shape[0]} inputs ({stats['nfe']} NFE): wrote {path}")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from .data import quantize, save_image_grid
    from .likelihood import decode

    model, metadata = _load_model(args)
    z = _read_tensor(args.input, ("z", "latents"))
    z = _check_images(z, metadata).to(args.device or "cpu", _DTYPES[args.dtype])
    stats: dict[str, Any] = {}
    with torch.no_grad():
        x = decode(model.sde, model, z, stats=stats, **_flow_args(args))
    path = _write_tensor(args.output, x, "x")
    print(f"decoded {z.shape[0]} latents ({stats['nfe']} NFE): wrote {path}")
    if args.png:
        num_bins, data_range = _data_info(metadata)
        grid = save_image_grid(quantize(x.cpu(), num_bins, data_range), args.png, num_bins=num_bins)
        print(f"wrote {grid}")
    return 0


# ---- the parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``diffscore`` command."""
    from .config import DATASETS, PRESETS
    from .sde import SDES

    parser = argparse.ArgumentParser(
        prog="diffscore",
        description="Score-based generative models: train, sample, bits/dim, encode, decode.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
        p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
        p.add_argument(
            "--threads", type=int, default=None, help="CPU threads for torch (default 1, see docs/cli.md)"
        )

    def model_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default="runs/digits", help="model directory, or a training run's directory"
        )

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
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="draw samples: a PNG grid and the raw tensors")
    model_arg(p)
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--method", default="ode", help="ode, sde, pc, heun, dpm_solver, sde_adaptive")
    p.add_argument("--steps", type=int, default=None, help="num_steps of fixed-step methods")
    p.add_argument("--rtol", type=float, default=None, help="ode / adaptive tolerance")
    p.add_argument("--atol", type=float, default=None)
    p.add_argument("--eps", type=float, default=None, help="end time (default 1e-3 VP, 1e-5 VE)")
    p.add_argument("--predictor", default=None, help="pc: euler_maruyama, reverse_diffusion, ancestral, none")
    p.add_argument("--corrector", default=None, help="pc: langevin, annealed_langevin, none")
    p.add_argument("--snr", type=float, default=None, help="pc: corrector signal-to-noise ratio")
    p.add_argument("--corrector-steps", type=int, default=None, help="pc: corrector steps per noise level")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="other sampler options")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="samples per solve (default: all at once)")
    p.add_argument("--nrow", type=int, default=None)
    p.add_argument("--out", default="samples.png", help="PNG grid (default samples.png)")
    p.add_argument(
        "--tensors", default=None, help=".safetensors or .pt for the raw samples (default: next to --out)"
    )
    common(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("bpd", help="bits/dim of a data split (mean, median, worst)")
    model_arg(p)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"))
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--eps", type=float, default=None, help="likelihood eps (default: the model's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise and probes")
    p.add_argument("--dataset", default=None, help="override the model's dataset")
    p.add_argument("--data-root", default=None)
    p.add_argument("--output", default=None, help="write the per-image bits/dim (.safetensors or .pt)")
    p.add_argument("--no-progress", action="store_true")
    common(p)
    p.set_defaults(func=_cmd_bpd)

    for name, doc, func in (
        ("encode", "data file -> latent file (probability-flow ODE from eps to T)", _cmd_encode),
        ("decode", "latent file -> data file (probability-flow ODE from T to eps)", _cmd_decode),
    ):
        p = sub.add_parser(name, help=doc)
        model_arg(p)
        p.add_argument("--input", required=True, help=".safetensors or .pt tensor file (B, *shape)")
        p.add_argument("--output", required=True, help=".safetensors or .pt tensor file")
        p.add_argument("--eps", type=float, default=1e-5)
        p.add_argument("--rtol", type=float, default=1e-5)
        p.add_argument("--atol", type=float, default=1e-5)
        p.add_argument(
            "--method",
            default="dopri8",
            help="torchdiffeq method (default dopri8: on the trained digits model dopri5 at 1e-5 round-trips "
            "to ~6e-3 max abs, dopri8 to 2e-4, at about 4x the NFE; see docs/encoding.md)",
        )
        if name == "decode":
            p.add_argument("--png", default=None, help="also write the decoded images as a PNG grid")
        common(p)
        p.set_defaults(func=func)
    from .cli_controllable import add_commands

    add_commands(sub)  # inpaint, colorize, classifier train, conditional
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffscore`` command; returns the exit status (2 for a usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup(args)
        return args.func(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"diffscore {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
