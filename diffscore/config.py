"""Deprecated: moved to :mod:`diffscore.training.config` (and :mod:`diffscore.data`)."""

from ._compat import moved

__getattr__ = moved(
    __name__,
    {
        "diffscore.training.config": (
            "TrainConfig",
            "PRESETS",
            "get_preset",
            "apply_overrides",
            "parse_value",
            "build_net",
        ),
        "diffscore.data": ("DATASETS", "gaussian_moments"),
    },
)
