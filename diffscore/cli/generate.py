"""``diffscore sample``, ``encode`` and ``decode``: samples as PNG grids and tensors; data <-> latents."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data import quantize, save_image_grid
from ..evaluation import generate_samples
from ..evaluation.progress import SolveProgress
from ..io import read_tensor, write_tensor
from ..likelihood import decode, encode, fixed_grid_methods
from ..score import ModelCard
from ..training import parse_value
from .common import (
    DTYPES,
    add_model_arg,
    add_runtime_args,
    check_images,
    check_outputs,
    distributed,
    load_model,
    positive_float,
    positive_int,
)

#: Below this many steps ``diffscore sample --method pc`` prints a note steering to the multistep samplers.
PC_STEPS_NOTE = 500


def sample_options(args: argparse.Namespace, card: ModelCard) -> dict[str, Any]:
    """The sampler options: those of the training run that wrote the model (its ``sample_options``) when
    ``--method`` is the run's ``sample_method``, then the ones given on the command line over them
    (options given nowhere keep the sampler's defaults)."""
    options: dict[str, Any] = dict(card.sample_options) if args.method == card.sample_method else {}
    for flag, key in (("steps", "num_steps"), ("rtol", "rtol"), ("atol", "atol"), ("eps", "eps")):
        if getattr(args, flag) is not None:
            options[key] = getattr(args, flag)
    for key in ("predictor", "corrector", "snr", "order", "grid", "variant"):  # only when given
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.no_unipc_corrector:
        options["use_corrector"] = False
    if args.corrector_steps is not None:
        options["n_steps"] = args.corrector_steps
    for item in args.option or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--option must look like key=value, got {item!r}")
        options[key] = parse_value(text)
    return options


def describe_sampler(method: str, options: dict[str, Any]) -> str:
    """``method`` and its options as the commands print them, e.g. ``pc, num_steps=500, eps=0.1``."""
    return ", ".join([method, *(f"{k}={v}" for k, v in options.items())])


def run_sample(args: argparse.Namespace) -> int:
    """``diffscore sample``: a PNG grid and the raw samples (in a torchrun job, split over the processes)."""
    with distributed(args) as main:
        return _sample(args, main)


def _sample(args: argparse.Namespace, main: bool) -> int:
    tensors = Path(args.tensors) if args.tensors else Path(args.out).with_suffix(".safetensors")
    check_outputs([(args.out, (".png",), "--out"), (str(tensors), (".safetensors", ".pt"), "--tensors")])
    model, card = load_model(args)
    num_bins, data_range, shape = card.num_bins, card.data_range, card.image_shape
    if not shape:
        raise ValueError("the model's config.json has no metadata.image_shape; cannot choose a sample shape")
    options = sample_options(args, card)
    if args.method == "pc" and options.get("num_steps", PC_STEPS_NOTE) < PC_STEPS_NOTE and main:
        print(
            f"note: pc with {options['num_steps']} steps is far from the data distribution (a gap of +66 "
            "nats at 100 NFE, +1270 at 20 on the benchmark mixture, docs/samplers.md); below "
            f"{PC_STEPS_NOTE} steps --method sde_dpmpp_2m (stochastic) or unipc do better",
            file=sys.stderr,
        )
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
        progress=main and not args.no_progress,
        **options,
    )
    if not main:
        return 0
    nrow = args.nrow or math.ceil(math.sqrt(args.num))
    grid = save_image_grid(x_int, args.out, nrow=nrow, num_bins=num_bins)
    write_tensor(tensors, x, "samples")
    seconds = time.perf_counter() - start
    sampler = describe_sampler(args.method, options)
    print(f"{args.num} samples ({sampler}) in {seconds:.1f} s: wrote {grid} and {tensors}")
    return 0


def _flow_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.method in fixed_grid_methods() and args.step_size is None:
        raise ValueError(
            f"--method {args.method} is a fixed-step solver: give --step-size (e.g. 1e-3) or choose an "
            "adaptive method such as dopri5"
        )
    options = None if args.step_size is None else {"step_size": args.step_size}
    return dict(eps=args.eps, rtol=args.rtol, atol=args.atol, method=args.method, options=options)


def _solve(args: argparse.Namespace, model: Any, flow: Any, x: torch.Tensor, label: str) -> tuple[Any, int]:
    """``flow`` (encode or decode) of ``x`` under ``model`` with a progress bar; returns (result, NFE)."""
    stats: dict[str, Any] = {}
    solver = _flow_args(args)
    with torch.no_grad(), SolveProgress(label, enabled=not args.no_progress) as bar:
        out = flow(model.sde, bar.wrap(model), x, stats=stats, **solver)
    return out, stats["nfe"]


def run_encode(args: argparse.Namespace) -> int:
    """``diffscore encode``: data file -> latent file."""
    check_outputs([(args.output, (".safetensors", ".pt"), "--output")])
    _flow_args(args)  # the solver's flags, before any work
    model, card = load_model(args)
    x = read_tensor(args.input, ("x", "samples", "data"))
    x = check_images(x, card).to(args.device or "cpu", DTYPES[args.dtype])
    z, nfe = _solve(args, model, encode, x, "encode")
    path = write_tensor(args.output, z, "z")
    print(f"encoded {x.shape[0]} inputs ({nfe} NFE): wrote {path}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    """``diffscore decode``: latent file -> data file (and a PNG grid)."""
    check_outputs([(args.output, (".safetensors", ".pt"), "--output"), (args.png, (".png",), "--png")])
    _flow_args(args)  # the solver's flags, before any work
    model, card = load_model(args)
    z = read_tensor(args.input, ("z", "latents"))
    z = check_images(z, card, data=False).to(args.device or "cpu", DTYPES[args.dtype])
    x, nfe = _solve(args, model, decode, z, "decode")
    path = write_tensor(args.output, x, "x")
    print(f"decoded {z.shape[0]} latents ({nfe} NFE): wrote {path}")
    if args.png:
        x_int = quantize(x.cpu(), card.num_bins, card.data_range)
        grid = save_image_grid(x_int, args.png, num_bins=card.num_bins)
        print(f"wrote {grid}")
    return 0


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """The sampler's options (read back by :func:`sample_options`), its seed and its batch size."""
    p.add_argument("--steps", type=positive_int, default=None, help="num_steps of fixed-step methods")
    p.add_argument("--rtol", type=float, default=None, help="ode / adaptive tolerance")
    p.add_argument("--atol", type=float, default=None)
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        help="end time (default 1e-3 VP / sub-VP; VE: where std = sigma_min, docs/sdes.md)",
    )
    p.add_argument(
        "--grid",
        default=None,
        help="time grid: logsnr, karras, time_quadratic, time_uniform; time_power for dpmpp, unipc, "
        "sde_dpmpp_2m and sde_dpmpp_3m, exponent by --option power=P (docs/samplers.md)",
    )
    p.add_argument("--order", type=positive_int, default=None, help="dpmpp, unipc: solver order 1-3")
    p.add_argument(
        "--variant",
        default=None,
        choices=("bh1", "bh2", "taylor", "reference", "midpoint", "heun"),
        help="unipc: B(h) bh1 / bh2; dpmpp, sde_dpmpp_3m: the 3M coefficient taylor / reference; "
        "sde_dpmpp_2m: midpoint / heun (default: per SDE and steps, docs/samplers.md)",
    )
    p.add_argument("--no-unipc-corrector", action="store_true", help="unipc: predictor only (UniP)")
    p.add_argument("--predictor", default=None, help="pc: euler_maruyama, reverse_diffusion, ancestral, none")
    p.add_argument(
        "--corrector",
        default=None,
        help="pc: langevin (step 2 alpha (snr std)^2), annealed_langevin (the same), langevin_score_norm "
        "(the paper's per-sample norms), none",
    )
    p.add_argument("--snr", type=float, default=None, help="pc: corrector signal-to-noise ratio")
    p.add_argument(
        "--corrector-steps", type=positive_int, default=None, help="pc: corrector steps per noise level"
    )
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="other sampler options")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="samples per solve (default: all at once)"
    )


def add_commands(sub: Any) -> None:
    """Register ``sample``, ``encode`` and ``decode`` on the subparsers of the ``diffscore`` parser."""
    p = sub.add_parser("sample", help="draw samples: a PNG grid and the raw tensors")
    add_model_arg(p)
    p.add_argument("--num", type=positive_int, default=64, help="number of samples")
    p.add_argument(
        "--method",
        default="unipc",
        help="unipc (default: the fastest good sampler; 20 NFE unless --steps), dpmpp, sde_dpmpp_2m, "
        "sde_dpmpp_3m (stochastic), heun, dpm_solver, ode, sde, pc, sde_adaptive (docs/samplers.md); "
        "the training run's sampler (pc for diffscore train) comes with the run's options",
    )
    add_sampler_args(p)
    p.add_argument("--nrow", type=positive_int, default=None)
    p.add_argument("--out", default="samples.png", help="PNG grid (default samples.png)")
    p.add_argument(
        "--tensors", default=None, help=".safetensors or .pt for the raw samples (default: next to --out)"
    )
    add_runtime_args(p, progress=True)
    p.set_defaults(func=run_sample)

    for name, doc, func in (
        ("encode", "data file -> latent file (probability-flow ODE from eps to T)", run_encode),
        ("decode", "latent file -> data file (probability-flow ODE from T to eps)", run_decode),
    ):
        p = sub.add_parser(name, help=doc)
        add_model_arg(p)
        p.add_argument("--input", required=True, help=".safetensors or .pt tensor file (B, *shape)")
        p.add_argument("--output", required=True, help=".safetensors or .pt tensor file")
        p.add_argument("--eps", type=float, default=1e-5)
        p.add_argument("--rtol", type=float, default=1e-5)
        p.add_argument("--atol", type=float, default=1e-5)
        p.add_argument(
            "--method",
            default="dopri8",
            help="torchdiffeq method (default dopri8: on the trained digits model dopri5 at 1e-5 round-trips "
            "to ~1e-2 max abs, dopri8 to ~1e-4, at about 4x the NFE; see docs/encoding.md)",
        )
        p.add_argument(
            "--step-size",
            type=positive_float,
            default=None,
            help="step of a fixed-step --method (euler, rk4, ...)",
        )
        if name == "decode":
            p.add_argument("--png", default=None, help="also write the decoded images as a PNG grid")
        add_runtime_args(p, progress=True)
        p.set_defaults(func=func)
