"""Argument checks shared by the data modules (each raises TypeError / ValueError naming the argument)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_data_range, check_float_dtype

DataRange = tuple[float, float]


def float_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """``dtype`` or torch's default, checked to be floating point (TypeError otherwise)."""
    return check_float_dtype(dtype)


def check_num_bins(num_bins: int) -> int:
    """``num_bins`` if it is an int >= 2 (TypeError / ValueError otherwise)."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise TypeError(f"num_bins must be an int, got {type(num_bins).__name__}")
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    return num_bins


def check_range(data_range: DataRange) -> tuple[float, float]:
    """``(lo, hi)`` as floats if a pair of numbers, finite with lo < hi (TypeError / ValueError
    otherwise; :func:`diffscore._checks.check_data_range`, shared with the likelihood)."""
    return check_data_range(data_range)


def check_float(name: str, x: Tensor) -> None:
    """Raise unless ``x`` is a floating-point tensor with finite entries (naming ``name``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
