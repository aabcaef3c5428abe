"""``diffscore fid``: FID, KID and Inception Score of a model's samples (or of a folder of images) against a
reference set (docs/quality.md).

The extractor is the digits classifier for digits models (the "digits FID", trained once and cached;
no download) and Inception-v3 otherwise (``--inception-weights``, optional extra ``diffscore[metrics]``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..data import bin_centers, load_image_folder, load_splits
from ..evaluation import (
    INCEPTION_WEIGHTS_FILE,
    FeatureStats,
    QualityEvaluator,
    digits_evaluator,
    generate_samples,
    inception_evaluator,
)
from ..io import atomic_write, check_output, claim, owns, read_tensor
from ..score import ModelCard
from .common import (
    add_model_arg,
    add_runtime_args,
    check_outputs,
    check_samples,
    load_model,
    model_dir,
    positive_int,
)
from .generate import add_sampler_args, describe_sampler, sample_options

SPLITS = ("train", "validation", "test")
#: The fewest images the metrics take (KID's jackknife needs 3 per set).
MIN_IMAGES = 3


def _evaluator(args: argparse.Namespace, card: ModelCard) -> tuple[QualityEvaluator, str]:
    num_bins, data_range = card.num_bins, card.data_range
    extractor = args.extractor or ("digits" if card.dataset == "digits" else "inception")
    if extractor == "inception":
        if args.inception_weights is None:
            raise ValueError(
                "--extractor inception needs --inception-weights PATH (a local file: no download)"
            )
        ev = inception_evaluator(
            args.inception_weights, num_bins=num_bins, data_range=data_range, device=args.device
        )
        return ev, "Inception"
    if card.dataset != "digits":
        raise ValueError("--extractor digits scores digits models only; use --extractor inception")
    directory = model_dir(args.model)
    cache = None
    if args.extractor_cache is not None:
        cache = Path(args.extractor_cache)
    elif owns(directory):  # the model of a training run: cache the extractor beside it, in the run folder
        cache = claim(directory.parent / "digits_classifier")
    split_seed = card.training_data.split_seed
    ev = digits_evaluator(cache, split_seed=split_seed, data_range=data_range, device=args.device, echo=print)
    return ev, "digits"


def _reference(args: argparse.Namespace, card: ModelCard, ev: QualityEvaluator) -> tuple[FeatureStats, str]:
    if args.reference_stats is not None:
        return FeatureStats.load(args.reference_stats), str(args.reference_stats)
    if args.reference in SPLITS:
        source = card.training_data
        if args.data_root is not None:
            source = replace(source, data_root=args.data_root)
        images = load_splits(**asdict(source))[args.reference].images
        return ev.reference(images), f"the {source.dataset} {args.reference} split"
    return ev.reference(_folder_images(args.reference, card, ev)), str(args.reference)


def _folder_images(path: str, card: ModelCard, ev: QualityEvaluator) -> torch.Tensor:
    """The images of a folder, as floats on the model's data range (their bins' centres)."""
    shape = card.image_shape or ()
    if len(shape) != 3:
        raise ValueError("the model's config.json has no (C, H, W) metadata.image_shape to read images at")
    folder = load_image_folder(path, shape[1], shape[0])
    return bin_centers(folder.images, folder.num_bins, ev.data_range)


def run_fid(args: argparse.Namespace) -> int:
    """``diffscore fid``: FID / KID / IS of samples or images against a reference set."""
    check_outputs(
        [(args.output, (".json",), "--output"), (args.save_reference, (".safetensors",), "--save-reference")]
    )
    if args.samples is None and args.num < MIN_IMAGES:
        raise ValueError(
            f"--num must be at least {MIN_IMAGES} (KID's jackknife needs 3 images), got {args.num}"
        )
    model, card = load_model(args)
    images = None
    if args.samples is not None and not Path(args.samples).is_dir():  # checked before the extractor
        images = read_tensor(args.samples, ("samples_int", "samples"))
        images = check_samples(images, card, "--samples", MIN_IMAGES)
    ev, label = _evaluator(args, card)
    reference, against = _reference(args, card, ev)
    if args.save_reference is not None:
        reference.save(args.save_reference, metadata={"extractor": label, "reference": against})
    start = time.perf_counter()
    if args.samples is not None:
        if images is None:
            images = check_samples(_folder_images(args.samples, card, ev), card, "--samples", MIN_IMAGES)
        what = f"{images.shape[0]} images of {args.samples}"
    else:
        options = sample_options(args, card)
        _, images = generate_samples(
            model, args.num, card.image_shape or (), card.num_bins, card.data_range, args.method, args.seed,
            batch_size=args.batch_size, progress=not args.no_progress, **options,
        )  # fmt: skip
        what = f"{args.num} samples ({describe_sampler(args.method, options)})"
    scores = ev.score(images, reference).to_dict()
    kid = f"KID x 1e3 {1e3 * scores['kid']:.2f} +- {1e3 * scores['kid_std_err']:.2f}"
    score = "" if scores["is"] is None else f"  IS {scores['is']:.2f} +- {scores['is_std']:.2f}"
    print(
        f"{label} FID {scores['fid']:.3f}  {kid}{score}  ({what} against {against}, {reference.num} images; "
        f"{time.perf_counter() - start:.0f} s)"
    )
    if args.output is not None:
        text = json.dumps({**scores, "extractor": label, "reference": against, "samples": what}, indent=2)
        atomic_write(check_output(args.output, (".json",), "--output"), lambda f: f.write(text.encode()))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``fid`` on the subparsers of the ``diffscore`` parser."""
    p = sub.add_parser("fid", help="FID / KID / IS of a model's samples against a reference set")
    add_model_arg(p)
    p.add_argument(
        "--reference", default="test", help="train, validation, test (the model's data) or a folder of images"
    )
    p.add_argument(
        "--reference-stats", default=None, help="saved reference statistics (.safetensors) instead"
    )
    p.add_argument(
        "--save-reference", default=None, help="write the reference statistics here (.safetensors)"
    )
    p.add_argument(
        "--data-root", default=None, help="where the model's dataset lies (cifar10, mnist, images)"
    )
    p.add_argument(
        "--samples", default=None, help="score these images (a folder or tensor file), not new samples"
    )
    p.add_argument("--num", type=positive_int, default=1000, help="samples to draw (default 1000)")
    p.add_argument(
        "--method", default="pc", help="the sampler (see diffscore sample; the run's own with its options)"
    )
    add_sampler_args(p)
    p.add_argument(
        "--extractor", choices=("digits", "inception"), default=None, help="default: digits for digits models"
    )
    p.add_argument("--inception-weights", default=None, help=f"the local file {INCEPTION_WEIGHTS_FILE}")
    p.add_argument("--extractor-cache", default=None, help="folder caching the digits extractor")
    p.add_argument("--output", default=None, help="also write the scores as JSON")
    add_runtime_args(p, progress=True)
    p.set_defaults(func=run_fid)
