"""The digits FID: a feature extractor trained on the digits train split, and the metric front-ends.

Inception-v3 is an ImageNet network for 299 x 299 RGB photographs; its features say little about 8x8
gray digits, and its weights cannot be downloaded everywhere. As MNIST papers do with a LeNet-style
classifier, the "digits FID" uses a small convolutional classifier
(:class:`~diffscore.nets.FeatureClassifier`) trained here on the digits *train* split: its 64
penultimate features replace Inception's pool features, and its class probabilities replace
Inception's for an Inception-Score analogue (at most 10, the number of classes). These numbers are
domain-specific: comparable between models evaluated with the same extractor (same seed, same
training recipe, same split), never with Inception FIDs.

The extractor is trained deterministically (seeded initialisation, data order and dequantization
noise, CPU, float32, about 10 s on one core) and cached as ``model.safetensors`` + ``config.json`` in a
folder (:func:`digits_classifier`); a cache written with other settings is retrained, not reused.

Images enter every front-end either as integers (bins ``{0, ..., num_bins - 1}``, mapped to the
midpoints of their dequantization cells, :func:`diffscore.data.bin_centers`) or as float images already
on ``data_range``; the classifier is trained on uniformly dequantized data, so both are in its domain.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import bin_centers, load_digits, quantize, uniform_dequantize
from ..nets.feature_classifier import FeatureClassifier
from .quality import (
    FeatureStats,
    ISResult,
    KIDResult,
    extract_features,
    feature_stats,
    fid,
    inception_score,
    kid,
)

__all__ = [
    "DIGITS_CLASSIFIER_FORMAT",
    "ClassifierFeatures",
    "QualityEvaluator",
    "QualityScores",
    "digits_classifier",
    "digits_evaluator",
    "gaussian_fit_samples",
    "quality_report",
    "format_quality_report",
    "train_feature_classifier",
]

#: Version of the cached extractor folder layout and training recipe; a cache of another version is retrained.
DIGITS_CLASSIFIER_FORMAT = 1

#: The training recipe of the digits extractor (recorded in the cache's config.json).
DIGITS_RECIPE: dict[str, Any] = dict(
    epochs=30, batch_size=64, lr=2e-3, weight_decay=1e-4, width=32, feature_dim=64
)


# ---- the extractor ------------------------------------------------------------------------------------
class ClassifierFeatures(nn.Module):
    """The penultimate features of a classifier with a ``features(x)`` method, as an extractor module."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(classifier, "features", None)):
            raise TypeError("classifier must have a features(x) method")
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


def train_feature_classifier(
    images: Tensor,
    labels: Tensor,
    num_bins: int,
    data_range: tuple[float, float] = (-1.0, 1.0),
    *,
    seed: int = 0,
    epochs: int = DIGITS_RECIPE["epochs"],
    batch_size: int = DIGITS_RECIPE["batch_size"],
    lr: float = DIGITS_RECIPE["lr"],
    weight_decay: float = DIGITS_RECIPE["weight_decay"],
    width: int = DIGITS_RECIPE["width"],
    feature_dim: int = DIGITS_RECIPE["feature_dim"],
) -> FeatureClassifier:
    """Train a :class:`~diffscore.nets.FeatureClassifier` on integer images, deterministically.

    Adam (AdamW's decoupled weight decay) on the cross-entropy, with the learning rate decayed by a
    cosine over ``epochs`` epochs; every epoch sees every image once, freshly uniformly dequantized
    (:func:`diffscore.data.uniform_dequantize`) onto ``data_range``, in a seeded order. Finally the
    features are standardized on the training images (bin centres):
    :meth:`~diffscore.nets.FeatureClassifier.standardize_features`. Initialisation,
    order and noise come from generators seeded with ``seed``, and the training runs on the CPU in
    float32, so the same arguments give the same weights on the same machine and torch build.

    Args:
        images: uint8 (N, C, H, W) bins in {0, ..., num_bins - 1}, H = W divisible by 4.
        labels: int64 (N,) class indices; the number of classes is ``max(labels) + 1``.
        num_bins, data_range: how bins map to floats (as for the score model).

    Returns:
        The trained classifier in eval mode, on the CPU.
    """
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, C, H, H), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1] or labels.dtype != torch.int64:
        raise ValueError("labels must be int64 shaped (N,)")
    num_classes = int(labels.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(images.shape[1], images.shape[2], num_classes, width, feature_dim)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / (epochs * steps_per_epoch)))
    )
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        x_all = uniform_dequantize(images, num_bins, data_range, generator=g, dtype=torch.float32)
        for idx in order.split(batch_size):
            loss = nn.functional.cross_entropy(net(x_all[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    net.standardize_features(bin_centers(images, num_bins, data_range, dtype=torch.float32))
    return net


@torch.no_grad()
def _accuracy(net: nn.Module, images: Tensor, labels: Tensor, num_bins: int, data_range) -> float:
    x = bin_centers(images, num_bins, data_range, dtype=torch.float32)
    return float((net(x).argmax(1) == labels).double().mean())


def digits_classifier(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    split_seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: torch.device | str | None = None,
    echo: Callable[[str], None] | None = None,
) -> FeatureClassifier:
    """The digits feature extractor: trained on the digits train split, cached in ``cache_dir``.

    When ``cache_dir`` holds a ``config.json`` whose format, seed, split seed, data range and recipe
    (``DIGITS_RECIPE``) match, the weights are read from its ``model.safetensors``; otherwise the
    classifier is trained (:func:`train_feature_classifier` on ``load_digits("train", split_seed)``)
    and, when ``cache_dir`` is given, written there atomically (the folder is assembled under a
    temporary name and renamed into place). ``config.json`` also records the accuracy on the
    validation and test splits (bin centres) and the training time.

    Args:
        cache_dir: folder of the cache (e.g. ``<run>/digits_classifier``), or None for no cache.
        seed: training seed. split_seed: seed of the digits split (the score model's ``split_seed``,
            so that the extractor never sees the test images the metric compares against).
        data_range: where bins are mapped (the score model's ``data_range``).
        device: where to put the returned classifier (training is on the CPU).
        echo: called with one line when the classifier is trained rather than loaded.

    Returns:
        The classifier in eval mode with gradients off; ``ClassifierFeatures(net)`` gives its features.

    Raises:
        ValueError: a corrupt cache (its files name the path).
    """
    from ..checkpoint import atomic_directory, read_json, read_tensors, write_json, write_tensors

    lo, hi = (float(v) for v in data_range)
    wanted = dict(
        format=DIGITS_CLASSIFIER_FORMAT,
        seed=seed,
        split_seed=split_seed,
        data_range=[lo, hi],
        recipe=DIGITS_RECIPE,
    )
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and (cache / "config.json").is_file():
        config = read_json(cache / "config.json")
        if {k: config.get(k) for k in wanted} == wanted:
            net = FeatureClassifier(**{k: v for k, v in config["net"].items() if k != "name"})
            net.load_state_dict(read_tensors(cache / "model.safetensors"))
            return net.eval().requires_grad_(False).to(device or "cpu")
    start = time.perf_counter()
    train = load_digits("train", seed=split_seed)
    net = train_feature_classifier(
        train.images,
        train.labels,
        train.num_bins,
        (lo, hi),
        seed=seed,
        **{k: v for k, v in DIGITS_RECIPE.items()},
    )
    seconds = time.perf_counter() - start
    accuracy = {
        split: _accuracy(net, d.images, d.labels, d.num_bins, (lo, hi))
        for split, d in (
            ("train", train),
            *((s, load_digits(s, seed=split_seed)) for s in ("validation", "test")),
        )
    }
    if echo is not None:
        echo(
            f"trained the digits feature extractor in {seconds:.0f} s (accuracy: validation "
            f"{accuracy['validation']:.3f}, test {accuracy['test']:.3f})"
        )
    if cache is not None:
        with atomic_directory(cache) as tmp:
            write_tensors(tmp / "model.safetensors", net.state_dict())
            write_json(
                tmp / "config.json", {**wanted, "net": net.config, "accuracy": accuracy, "seconds": seconds}
            )
    return net.to(device or "cpu")


# ---- front-ends ---------------------------------------------------------------------------------------
def _as_float_images(images: Tensor, num_bins: int, data_range: tuple[float, float]) -> Tensor:
    """Integer bins -> cell midpoints (float32); float images are checked and returned as float32."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be shaped (N, *shape) with N >= 1, got {tuple(images.shape)}")
    if images.is_floating_point():
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or inf")
        return images.to(torch.float32)
    if images.dtype == torch.bool or images.is_complex():
        raise TypeError(f"images must be integer bins or float images, got {images.dtype}")
    return bin_centers(images, num_bins, data_range, dtype=torch.float32)


@dataclass(frozen=True)
class QualityScores:
    """FID, KID and (with a classifier) the Inception-Score analogue of one image set against a reference.

    Attributes:
        fid: Frechet distance of the features. kid: :class:`~diffscore.evaluation.KIDResult`.
        inception_score: :class:`~diffscore.evaluation.ISResult` or None. num: images scored.
    """

    fid: float
    kid: KIDResult
    inception_score: ISResult | None
    num: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``fid``, ``kid`` and ``kid_std_err`` (mean and s.e. over subsets), ``is`` and
        ``is_std`` (or None), ``num``."""
        return {
            "fid": self.fid,
            "kid": self.kid.mean,
            "kid_std_err": self.kid.std_err,
            "is": None if self.inception_score is None else self.inception_score.mean,
            "is_std": None if self.inception_score is None else self.inception_score.std,
            "num": self.num,
        }


@dataclass
class QualityEvaluator:
    """Feature extractor, optional classifier and image conventions, bundled for scoring image sets.

    Attributes:
        extractor: module mapping float images (B, *shape) on ``data_range`` to (B, F) features.
        classifier: module mapping the same images to (B, K) logits, for the Inception Score; or None.
        num_bins, data_range: how integer images map to floats (:func:`diffscore.data.bin_centers`).
        batch_size: images per extractor call.
        kid_subsets, kid_subset_size: see :func:`~diffscore.evaluation.kid`.
        is_splits: :func:`~diffscore.evaluation.inception_score` splits. seed: seed of the KID subsets.
        device: where the modules run (default: their parameters').
    """

    extractor: nn.Module
    classifier: nn.Module | None = None
    num_bins: int = 256
    data_range: tuple[float, float] = (-1.0, 1.0)
    batch_size: int = 500
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    seed: int = 0
    device: torch.device | str | None = None
    _cache: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def features(self, images: Tensor) -> Tensor:
        """(N, F) float64 features of integer or float images."""
        x = _as_float_images(images, self.num_bins, self.data_range)
        return extract_features(self.extractor, x, self.batch_size, self.device)

    def logits(self, images: Tensor) -> Tensor:
        """(N, K) float64 logits of the classifier (raises ValueError without one)."""
        if self.classifier is None:
            raise ValueError("this evaluator has no classifier for the Inception Score")
        x = _as_float_images(images, self.num_bins, self.data_range)
        return extract_features(self.classifier, x, self.batch_size, self.device)

    def reference(self, images: Tensor) -> FeatureStats:
        """Statistics of a reference set, keeping its features for KID (save with ``.save(path)``)."""
        return feature_stats(self.features(images), keep_features=True)

    def score(self, images: Tensor, reference: Tensor | FeatureStats) -> QualityScores:
        """FID, KID (the reference's features are needed: pass images or stats with features) and the
        Inception-Score analogue of ``images`` against ``reference``.

        Raises:
            ValueError: a reference without stored features; feature dimensions that differ.
        """
        ref = reference if isinstance(reference, FeatureStats) else self.reference(reference)
        if ref.features is None:
            raise ValueError(
                "the reference statistics hold no features, which KID needs (keep_features=True)"
            )
        feats = self.features(images)
        k = kid(
            feats,
            ref.features,
            self.kid_subsets,
            self.kid_subset_size,
            generator=torch.Generator().manual_seed(self.seed),
        )
        score = None
        if self.classifier is not None:
            splits = min(self.is_splits, images.shape[0])
            score = inception_score(self.logits(images), num_splits=splits)
        return QualityScores(fid(feats, ref), k, score, feats.shape[0])


def digits_evaluator(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    split_seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: torch.device | str | None = None,
    echo: Callable[[str], None] | None = None,
    **options: Any,
) -> QualityEvaluator:
    """A :class:`QualityEvaluator` with the digits extractor (:func:`digits_classifier`, cached in
    ``cache_dir``): digits FID from its features, the Inception-Score analogue from its logits,
    17 bins on ``data_range``. ``options`` go to :class:`QualityEvaluator` (e.g. ``kid_subsets``)."""
    net = digits_classifier(
        cache_dir, seed=seed, split_seed=split_seed, data_range=data_range, device=device, echo=echo
    )
    return QualityEvaluator(ClassifierFeatures(net), net, num_bins=17, data_range=data_range, **options)


def gaussian_fit_samples(
    train: Tensor,
    num: int,
    num_bins: int,
    data_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """``num`` draws of the full-covariance Gaussian fit to the dequantized training images, as bins.

    The fit is the maximum-likelihood Gaussian of the uniformly dequantized training data (mean
    ``lo + s (mean(x) + 1/2)``, covariance ``s^2 (Cov(x) + I / 12)``, ``s = (hi - lo) / num_bins``: the
    baseline of the main job's bits/dim); the draws are quantized (:func:`diffscore.data.quantize`) like
    model samples. Returns uint8 (num, *image shape).
    """
    lo, hi = (float(v) for v in data_range)
    s = (hi - lo) / num_bins
    x = train.reshape(train.shape[0], -1).to(torch.float64)
    m = x.mean(0)
    cov = s * s * (torch.cov(x.T, correction=0) + torch.eye(x.shape[1], dtype=torch.float64) / 12)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn((num, x.shape[1]), generator=generator, dtype=torch.float64)
    y = lo + s * (m + 0.5) + z @ chol.T
    return quantize(y, num_bins, (lo, hi)).reshape(num, *train.shape[1:])


def quality_report(
    evaluator: QualityEvaluator,
    samples: Tensor,
    train: Tensor,
    test: Tensor | FeatureStats,
    *,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score model samples against the test split beside the floor and the Gaussian baseline.

    * ``samples``: the images given (integers or floats) against ``test``;
    * ``floor``: ``len(samples)`` training images (a seeded random subset, or all of them when there
      are fewer) against ``test``: what a perfect model that reproduced the training distribution
      would score with this many samples (FID is biased upwards at small N, so the floor uses the same
      N as the samples);
    * ``gaussian``: ``len(samples)`` draws of the Gaussian fit to the training images
      (:func:`gaussian_fit_samples`) against ``test``.

    Returns:
        ``{"samples": ..., "floor": ..., "gaussian": ...}``, each :meth:`QualityScores.to_dict`.
    """
    ref = test if isinstance(test, FeatureStats) else evaluator.reference(test)
    n = samples.shape[0]
    g = torch.Generator().manual_seed(seed)
    floor = train if n >= train.shape[0] else train[torch.randperm(train.shape[0], generator=g)[:n]]
    gauss = gaussian_fit_samples(train, n, evaluator.num_bins, evaluator.data_range, generator=g)
    return {
        name: evaluator.score(images, ref).to_dict()
        for name, images in (("samples", samples), ("floor", floor), ("gaussian", gauss))
    }


def format_quality_report(report: dict[str, dict[str, Any]], label: str = "digits") -> str:
    """One line: ``sample quality (<label> FID / KID x 1e3 vs N test images): samples ...  floor ...
    Gaussian fit ...`` (KID with its standard error over subsets)."""

    def part(name: str, r: dict[str, Any]) -> str:
        return f"{name} {r['fid']:.2f} / {1e3 * r['kid']:.2f} +- {1e3 * r['kid_std_err']:.2f}"

    n = report["samples"]["num"]
    return (
        f"sample quality ({label} FID / KID x 1e3, {n} images each vs the test split): "
        f"{part('samples', report['samples'])}  {part('floor (train images)', report['floor'])}  "
        f"{part('Gaussian fit', report['gaussian'])}"
    )
