"""``diffscore inpaint``, ``colorize``, ``classifier train`` and ``conditional``: controllable generation.

The command-line side of :mod:`diffscore.controllable` (Song et al. 2021, Sec. 5 and App. I):
inpainting of masked images, colorization of gray images, and class-conditional sampling with a
time-dependent classifier (eq. 14, ``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``).
See docs/controllable.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..controllable import classifier_log_prob, colorize, conditional_score, inpaint
from ..data import ImageData, bin_centers, load_splits, make_mask, quantize, save_image_grid
from ..evaluation.progress import SolveProgress
from ..io import check_directory, read_tensor, write_tensors
from ..nets.classifier import CLASSIFIER_FILES, CLASSIFIER_KIND, load_classifier, save_classifier
from ..sampling import sample
from ..score import ModelCard
from ..training import classifier_accuracy, train_classifier
from .common import (
    add_model_arg,
    add_runtime_args,
    check_images,
    check_outputs,
    check_samples,
    load_model,
    positive_int,
)

#: PC settings of ``--method``: "pc" (reverse-diffusion predictor + Langevin corrector, Song et al.
#: 2021 Algorithm 1) and "sde" (the same predictor, no corrector).
_METHODS = {"pc": ("reverse_diffusion", "langevin"), "sde": ("reverse_diffusion", "none")}


def _pc_options(args: argparse.Namespace) -> dict[str, Any]:
    predictor, corrector = _METHODS[args.method]
    options = dict(
        predictor=args.predictor or predictor,
        corrector=args.corrector or corrector,
        snr=args.snr,
        n_steps=args.corrector_steps,
        num_steps=args.steps,
    )
    if args.grid is not None:
        options["grid"] = args.grid
    if getattr(args, "known_noise", None) is not None:
        options["known_noise"] = args.known_noise
    return options


def _splits(card: ModelCard) -> dict[str, ImageData]:
    return load_splits(**asdict(card.training_data))


def _image_shape(card: ModelCard) -> tuple[int, ...]:
    shape = card.image_shape or ()
    if len(shape) != 3:
        raise ValueError("the model's config.json has no (C, H, W) metadata.image_shape")
    return shape


def _outputs(args: argparse.Namespace) -> Path:
    """Check ``--out`` (PNG) and ``--tensors`` before any work; returns the tensors path."""
    p = Path(args.tensors) if args.tensors else Path(args.out).with_suffix(".safetensors")
    check_outputs([(args.out, (".png",), "--out"), (str(p), (".safetensors",), "--tensors")])
    return p


def _progress(args: argparse.Namespace, label: str) -> SolveProgress:
    return SolveProgress(label, enabled=not args.no_progress)


def run_inpaint(args: argparse.Namespace) -> int:
    """``diffscore inpaint``: fill in the hidden pixels of a split or of ``--input`` (PNG and tensors)."""
    tensors_path = _outputs(args)
    model, card = load_model(args)
    num_bins, data_range = card.num_bins, card.data_range
    p = next(iter(model.parameters()))
    if args.input:
        x = check_samples(read_tensor(args.input, ("x", "images", "samples", "data")), card, "--input")
        x = bin_centers(x, num_bins, data_range) if not x.is_floating_point() else x
    else:
        x = bin_centers(_splits(card)[args.split].images[: args.num], num_bins, data_range)
    x = check_images(x, card).to(p.device, p.dtype)
    mask = make_mask(args.mask, x.shape[1:], args.seed).to(p.device, p.dtype)
    gen = torch.Generator(p.device).manual_seed(args.seed)
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    with torch.no_grad(), _progress(args, "inpaint") as bar:
        out = inpaint(model.sde, bar.wrap(model), x, mask, generator=gen, stats=stats, **_pc_options(args))
    known = torch.broadcast_to(mask.bool(), x.shape)
    middle = 0.5 * (data_range[0] + data_range[1])  # hidden pixels shown mid-gray
    masked = torch.where(known, x, torch.full_like(x, middle))
    rows = torch.cat([x, masked, out]).cpu()
    grid = save_image_grid(quantize(rows, num_bins, data_range), args.out, nrow=x.shape[0], num_bins=num_bins)
    tensors = write_tensors(
        tensors_path, {"original": x, "mask": torch.broadcast_to(mask, x.shape), "inpainted": out}
    )
    print(
        f"inpainted {x.shape[0]} images ({args.mask}, {stats['nfe']} NFE, "
        f"{time.perf_counter() - start:.1f} s): wrote {grid} (rows: original, masked, inpainted) "
        f"and {tensors}"
    )
    return 0


def run_colorize(args: argparse.Namespace) -> int:
    """``diffscore colorize``: color the gray images of ``--input`` with a 3-channel model."""
    tensors_path = _outputs(args)
    model, card = load_model(args)
    shape = _image_shape(card)
    if shape[0] != 3:
        raise ValueError(
            f"colorize needs a model of 3-channel (RGB) images; this model's images are shaped {shape}"
        )
    data_range = card.data_range
    p = next(iter(model.parameters()))
    gray = read_tensor(args.input, ("gray", "x", "images")).to(p.device, p.dtype)
    if gray.ndim != 4 or gray.shape[1] != 1 or tuple(gray.shape[2:]) != shape[1:]:
        raise ValueError(
            f"--input must hold gray images shaped (B, 1, {shape[1]}, {shape[2]}), got {tuple(gray.shape)}"
        )
    weights = [float(w) for w in args.weights.split(",")]
    gen = torch.Generator(p.device).manual_seed(args.seed)
    with torch.no_grad(), _progress(args, "colorize") as bar:
        rgb = colorize(model.sde, bar.wrap(model), gray, weights, generator=gen, **_pc_options(args))
    rows = torch.cat([gray.expand(-1, 3, -1, -1), rgb]).cpu()
    grid = save_image_grid(rows, args.out, nrow=gray.shape[0], data_range=data_range)
    tensors = write_tensors(tensors_path, {"gray": gray, "colorized": rgb})
    print(f"colorized {gray.shape[0]} images: wrote {grid} (rows: gray, colorized) and {tensors}")
    return 0


def run_classifier_train(args: argparse.Namespace) -> int:
    """``diffscore classifier train``: a time-dependent classifier on the model's labelled data."""
    check_directory(args.out, CLASSIFIER_FILES, kind=CLASSIFIER_KIND)  # before the training
    model, card = load_model(args)
    num_bins, data_range = card.num_bins, card.data_range
    splits = _splits(card)
    train, test = splits["train"], splits["test"]
    if train.labels is None:
        raise ValueError("the model's dataset has no labels; a classifier needs labelled data")
    start = time.perf_counter()
    clf, losses = train_classifier(
        model.sde,
        train.images,
        train.labels,
        num_bins,
        data_range,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_classes=len(train.classes) or int(train.labels.max()) + 1,
        hidden=args.hidden,
    )
    x_test = bin_centers(test.images, num_bins, data_range)
    accuracy = {
        f"{t:g}": classifier_accuracy(clf, x_test, test.labels, t * model.sde.T) for t in (0.0, 0.25, 0.5)
    }
    last = sum(losses[-50:]) / len(losses[-50:])
    save_classifier(clf, args.out, test_accuracy=accuracy, steps=args.steps, final_loss=last)
    print(
        f"classifier trained in {time.perf_counter() - start:.0f} s ({args.steps} steps, last-50 loss "
        f"{last:.3f} nats); test accuracy at t/T = "
        + ", ".join(f"{k}: {v:.3f}" for k, v in accuracy.items())
        + f"; wrote {args.out}"
    )
    return 0


def _parse_labels(text: str, num_classes: int) -> list[int]:
    try:
        labels = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--label must be an int or a comma-separated list of ints, got {text!r}") from None
    if not labels or any(not 0 <= v < num_classes for v in labels):
        raise ValueError(f"--label must lie in [0, {num_classes}), got {text!r}")
    return labels


def run_conditional(args: argparse.Namespace) -> int:
    """``diffscore conditional``: class-conditional samples guided by a classifier."""
    tensors_path = _outputs(args)
    model, card = load_model(args)
    num_bins, data_range = card.num_bins, card.data_range
    shape = _image_shape(card)
    p = next(iter(model.parameters()))
    clf = load_classifier(args.classifier, p.device).to(p.dtype)
    if clf.image_shape != shape:
        raise ValueError(f"--classifier was trained on images {clf.image_shape}, the model's are {shape}")
    labels = _parse_labels(args.label, clf.config["num_classes"])
    y = torch.tensor(labels, device=p.device).repeat_interleave(args.num)
    score = conditional_score(model, classifier_log_prob(clf, y), args.scale)
    gen = torch.Generator(p.device).manual_seed(args.seed)
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    with torch.no_grad(), _progress(args, "conditional") as bar:
        x = sample(
            model.sde,
            bar.wrap(score),
            (y.shape[0], *shape),
            "pc",
            gen,
            device=p.device,
            dtype=p.dtype,
            stats=stats,
            **_pc_options(args),
        )
    accuracy = classifier_accuracy(clf, x, y, 0.0)
    grid = save_image_grid(
        quantize(x.cpu(), num_bins, data_range), args.out, nrow=args.num, num_bins=num_bins
    )
    tensors = write_tensors(tensors_path, {"samples": x, "labels": y})
    print(
        f"{y.shape[0]} samples of classes {labels} (scale {args.scale:g}, "
        f"{time.perf_counter() - start:.1f} s): "
        f"the classifier at t = 0 agrees on {accuracy:.3f}; wrote {grid} (one row per class) and {tensors}"
    )
    return 0


# ---- the parsers ------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, progress: bool = True) -> None:
    add_model_arg(p)
    add_runtime_args(p, progress)
    p.add_argument("--seed", type=int, default=0)


def _sampler_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument(
        "--method", default="pc", choices=sorted(_METHODS), help="pc (with corrector) or sde (none)"
    )
    p.add_argument("--steps", type=positive_int, default=steps, help=f"predictor steps N (default {steps})")
    p.add_argument("--predictor", default=None, help="reverse_diffusion, euler_maruyama, ancestral, none")
    p.add_argument("--corrector", default=None, help="langevin, annealed_langevin, langevin_score_norm, none")
    p.add_argument(
        "--grid", default=None, help="time grid: time_uniform (default), logsnr, karras, time_quadratic"
    )
    p.add_argument("--snr", type=float, default=0.16, help="corrector signal-to-noise ratio (default 0.16)")
    p.add_argument(
        "--corrector-steps", type=positive_int, default=1, help="corrector steps M per step (default 1)"
    )
    p.add_argument("--out", required=True, help="PNG grid")
    p.add_argument(
        "--tensors", default=None, help=".safetensors for the raw tensors (default: next to --out)"
    )


def _known_noise_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--known-noise",
        default=None,
        choices=("predicted", "fresh"),
        help="the noise on the known part: the model's own prediction (default; exact for Gaussian data) "
        "or fresh draws (the paper's)",
    )


def add_commands(subparsers: Any) -> None:
    """Register ``inpaint``, ``colorize``, ``classifier`` (``classifier train``) and ``conditional`` on
    the ``diffscore`` parser's subparsers (the object ``ArgumentParser.add_subparsers`` returns)."""
    p = subparsers.add_parser("inpaint", help="fill in masked pixels (PNG rows: original, masked, inpainted)")
    p.add_argument(
        "--mask",
        required=True,
        help="hidden region: left_half, right_half, top_half, center_box, random[:p], or a .png "
        "(white = known) / .safetensors / .pt file of 0s and 1s (1 = known)",
    )
    p.add_argument("--input", default=None, help=".safetensors / .pt images (float data, or integer bins)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--num", type=positive_int, default=16, help="images of --split (without --input)")
    _sampler_args(p, 500)
    _known_noise_arg(p)
    _common(p)
    p.set_defaults(func=run_inpaint)

    p = subparsers.add_parser("colorize", help="color gray images (needs a 3-channel model)")
    p.add_argument("--input", required=True, help=".safetensors / .pt gray images (B, 1, H, W)")
    p.add_argument("--weights", default="0.3333333333,0.3333333333,0.3333333333", help="gray = weights . rgb")
    _sampler_args(p, 500)
    _known_noise_arg(p)
    _common(p)
    p.set_defaults(func=run_colorize)

    p = subparsers.add_parser("classifier", help="time-dependent classifiers for conditional sampling")
    csub = p.add_subparsers(dest="classifier_command", required=True, metavar="ACTION")
    q = csub.add_parser("train", help="train classifier(x, t) on the model's labelled data under its SDE")
    q.add_argument("--out", required=True, help="output directory (classifier.safetensors, config.json)")
    q.add_argument("--steps", type=positive_int, default=2000)
    q.add_argument("--batch-size", type=positive_int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--hidden", type=positive_int, default=256)
    _common(q, progress=False)
    q.set_defaults(func=run_classifier_train)

    p = subparsers.add_parser(
        "conditional", help="class-conditional samples with a time-dependent classifier"
    )
    p.add_argument("--classifier", required=True, help="directory written by `diffscore classifier train`")
    p.add_argument("--label", required=True, help="class, or comma-separated classes (one grid row each)")
    p.add_argument("--num", type=positive_int, default=8, help="samples per class")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale (1: exact conditional score)")
    _sampler_args(p, 500)
    _common(p)
    p.set_defaults(func=run_conditional)
