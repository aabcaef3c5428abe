"""Evaluation of trained models over datasets: bits/dim per image with summaries and a closed-form
Gaussian baseline (:mod:`~diffscore.evaluation.bpd`), and sample generation with per-sample seeds
(:mod:`~diffscore.evaluation.samples`). Work is split over the processes of a torchrun job.
"""

from .bpd import evaluate_bpd, gaussian_baseline_bpd, summarize
from .samples import generate_samples

__all__ = ["evaluate_bpd", "gaussian_baseline_bpd", "summarize", "generate_samples"]
