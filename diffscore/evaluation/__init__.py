"""Evaluation: sample-quality metrics (FID, KID, Inception Score) and the digits feature extractor.

``quality``: the metrics on features, in float64, with any feature extractor. ``sample_quality``:
:class:`QualityEvaluator` (an extractor plus image conventions) and the main job's quality report.
``digits``: the digits classifier (trained on the digits train split, cached) whose features give
the "digits FID". ``inception``: torch-fidelity's Inception-v3 (optional extra
``diffscore[metrics]``, local weights file) as an extractor for the standard FID / KID / IS.
"""

from __future__ import annotations

from .digits import (
    DIGITS_RECIPE,
    ClassifierFeatures,
    digits_classifier,
    digits_evaluator,
    train_feature_classifier,
)
from .inception import INCEPTION_WEIGHTS_FILE, InceptionFeatures, MetricsUnavailableError, inception_evaluator
from .quality import (
    FeatureStats,
    ISResult,
    KIDResult,
    extract_features,
    feature_stats,
    fid,
    frechet_distance,
    inception_score,
    kid,
    mmd2_jackknife_variance,
    mmd2_unbiased,
    polynomial_kernel,
)
from .sample_quality import (
    QualityEvaluator,
    QualityScores,
    format_quality_report,
    gaussian_fit_samples,
    quality_report,
)

__all__ = [
    "DIGITS_RECIPE",
    "ClassifierFeatures",
    "FeatureStats",
    "INCEPTION_WEIGHTS_FILE",
    "ISResult",
    "InceptionFeatures",
    "KIDResult",
    "MetricsUnavailableError",
    "QualityEvaluator",
    "QualityScores",
    "digits_classifier",
    "digits_evaluator",
    "extract_features",
    "feature_stats",
    "fid",
    "format_quality_report",
    "frechet_distance",
    "gaussian_fit_samples",
    "inception_evaluator",
    "inception_score",
    "kid",
    "mmd2_jackknife_variance",
    "mmd2_unbiased",
    "polynomial_kernel",
    "quality_report",
    "train_feature_classifier",
]
