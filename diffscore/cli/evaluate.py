"""``diffscore bpd``: bits/dim of a data split (mean, median, worst) with a named estimator: the exact ODE
likelihood with uniform or truncated-normal dequantization, or the variational bound (ELBO)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from typing import Any

from ..data import DATASETS, load_splits
from ..evaluation import evaluate_bound, evaluate_bpd, summarize
from ..io import write_tensor
from ..score import TrainingData
from .common import (
    add_model_arg,
    add_runtime_args,
    check_outputs,
    distributed,
    load_model,
    positive_int,
    print_stats,
)


def run_bpd(args: argparse.Namespace) -> int:
    """``diffscore bpd``: bits/dim of a split (in a torchrun job, split over the processes)."""
    with distributed(args) as main:
        return _bpd(args, main)


def _training_data(args: argparse.Namespace, card: TrainingData) -> TrainingData:
    """The model's data splits, with ``--dataset`` / ``--data-root`` applied."""
    if args.dataset is not None and args.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {args.dataset!r}")
    return replace(card, dataset=args.dataset or card.dataset, data_root=args.data_root or card.data_root)


#: ``--estimator`` -> what the printed line calls it.
ESTIMATORS = {
    "ode": "exact ODE, uniform dequantization",
    "ode-truncated-normal": "exact ODE, truncated-normal dequantization",
    "elbo": "variational bound (ELBO), categorical decoder",
}


def _bpd(args: argparse.Namespace, main: bool) -> int:
    check_outputs([(args.output, (".safetensors", ".pt"), "--output")])
    model, card = load_model(args)
    if args.estimator is None:  # the number a paper reports for this kind of model
        args.estimator = "elbo" if card.decoder == "categorical" else "ode"
    if args.estimator == "elbo" and card.decoder != "categorical":
        raise ValueError(
            f"--estimator elbo needs a model trained with a categorical decoder over the bins (its "
            f"config.json metadata says decoder: categorical, e.g. runs/digits/bound_model); "
            f"{args.model!r} has none: use --estimator ode"
        )
    num_bins, data_range = card.num_bins, card.data_range
    source = _training_data(args, card.training_data)
    data = load_splits(**asdict(source))[args.split]
    if data.num_bins != num_bins:
        raise ValueError(
            f"the {args.split} split has {data.num_bins} bins but the model was trained on {num_bins}"
        )
    images = data.images[: args.limit]
    eps = args.eps if args.eps is not None else card.likelihood_eps
    start = time.perf_counter()
    if args.estimator == "elbo":
        if not main:
            return 0
        samples = args.samples or 256
        res = evaluate_bound(
            model, images, num_bins, data_range, n_samples=samples, eps=eps, seed=args.seed,
            batch_size=args.batch_size,
        )  # fmt: skip
        detail = f"{ESTIMATORS['elbo']}, {samples} draws per image, {res['nfe']} NFE per image"
    else:
        samples = args.samples or 1
        res = evaluate_bpd(
            model, images, num_bins, data_range, divergence=args.divergence, seed=args.seed,
            batch_size=args.batch_size, eps=eps, rtol=args.rtol, atol=args.atol,
            progress=main and not args.no_progress, n_samples=samples,
            dequantization="uniform" if args.estimator == "ode" else "truncated_normal",
        )  # fmt: skip
        draws = f", {samples} weighted draws per image" if samples > 1 else ""
        detail = f"{args.divergence} divergence, {ESTIMATORS[args.estimator]}{draws}, {res['nfe']} NFE"
        if not main:
            return 0
    bpd = res["bpd"]
    detail += (
        f", +- {res['stderr_mean']:.4f} s.e. of the mean"
        if samples > 1
        else ", 1 draw per image (no s.e.: --samples 2+)"
    )
    stats = summarize(bpd)
    label = (
        f"{source.dataset} {args.split} bits/dim ({detail}, "
        f"{num_bins} bins on [{data_range[0]:g}, {data_range[1]:g}], {time.perf_counter() - start:.0f} s)"
    )
    print_stats(label, stats)
    if args.output:
        write_tensor(args.output, bpd, "bpd")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``bpd`` on the subparsers of the ``diffscore`` parser."""
    p = sub.add_parser("bpd", help="bits/dim of a data split (mean, median, worst)")
    add_model_arg(p)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument(
        "--estimator",
        default=None,
        choices=tuple(ESTIMATORS),
        help="ode: exact ODE likelihood, uniform dequantization; ode-truncated-normal: the same with a "
        "truncated normal of width std(eps) in each bin (i-DODE); elbo: the variational bound with a "
        "categorical decoder (models trained for it, e.g. runs/digits/bound_model). Default: elbo for a "
        "model with that decoder, ode otherwise",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help="draws per image: of the ELBO (default 256), or of the dequantization for the ode estimators "
        "(default 1; more give the importance-weighted bound and its standard error)",
    )
    p.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"))
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--eps", type=float, default=None, help="likelihood eps (default: the model's)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise and probes")
    p.add_argument("--dataset", default=None, help="override the model's dataset")
    p.add_argument("--data-root", default=None)
    p.add_argument("--output", default=None, help="write the per-image bits/dim (.safetensors or .pt)")
    add_runtime_args(p, progress=True)
    p.set_defaults(func=run_bpd)
