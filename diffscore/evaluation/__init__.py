"""Evaluation of trained models: bits/dim over a dataset, sample generation, and sample quality.

- :mod:`~diffscore.evaluation.bpd`: bits/dim per image with summaries and a closed-form Gaussian
  baseline; :mod:`~diffscore.evaluation.samples`: sample generation with per-sample seeds (both split
  over the processes of a torchrun job); :mod:`~diffscore.evaluation.progress`: progress bars of solves.
- :mod:`~diffscore.evaluation.quality`: FID, KID and Inception Score on features, in float64, with any
  feature extractor; :mod:`~diffscore.evaluation.sample_quality`: :class:`QualityEvaluator` (an
  extractor plus image conventions) and the main job's quality report.
- :mod:`~diffscore.evaluation.digits`: the digits classifier (trained on the digits train split,
  cached) whose features give the "digits FID"; :mod:`~diffscore.evaluation.inception`: torch-fidelity's
  Inception-v3 (optional extra ``diffscore[metrics]``, local weights file) for the standard FID / KID / IS.
"""

from __future__ import annotations

from .bpd import evaluate_bound, evaluate_bpd, gaussian_baseline_bpd, summarize
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
from .samples import generate_samples

__all__ = [
    "evaluate_bpd",
    "evaluate_bound",
    "gaussian_baseline_bpd",
    "summarize",
    "generate_samples",
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
