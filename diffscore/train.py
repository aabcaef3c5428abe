"""Deprecated: moved to :mod:`diffscore.training` and :mod:`diffscore.evaluation`."""

from ._compat import moved

__getattr__ = moved(
    __name__,
    {
        "diffscore.training": ("Trainer", "train", "check_bf16", "load_splits"),
        "diffscore.evaluation": ("evaluate_bpd", "gaussian_baseline_bpd", "summarize", "generate_samples"),
    },
)
