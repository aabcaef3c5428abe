"""Scoring image sets: an extractor bundled with image conventions, and the main job's quality report.

:class:`QualityEvaluator` holds a feature extractor (and optionally a classifier for the Inception
Score) with the conventions that turn images into its input: integer images (bins
``{0, ..., num_bins - 1}``) are mapped to the midpoints of their dequantization cells
(:func:`diffscore.data.bin_centers`), float images are taken as they are (on ``data_range``).
:func:`quality_report` scores model samples against a test split beside the floor (training images)
and a baseline (draws of the Gaussian fit), at equal N; :func:`format_quality_report` makes the one
line ``diffscore train`` prints. Used with the digits extractor
(:func:`diffscore.evaluation.digits_evaluator`) or Inception-v3
(:func:`diffscore.evaluation.inception_evaluator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data import bin_centers, gaussian_moments, quantize
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
    "QualityEvaluator",
    "QualityScores",
    "format_quality_report",
    "gaussian_fit_samples",
    "quality_report",
]


# ---- the evaluator ---------------------------------------------------------------------------------------
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
    mean, cov = gaussian_moments(train, num_bins, data_range, torch.float64)
    z = torch.randn((num, mean.shape[0]), generator=generator, dtype=torch.float64)
    y = mean + z @ torch.linalg.cholesky(cov).T
    return quantize(y, num_bins, data_range).reshape(num, *train.shape[1:])


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
