"""Scalers, dequantization and quantization: integer bins <-> points of a continuous data range.

* **scalers** map bin ``k`` to ``k / (num_bins - 1)`` (:func:`to_unit`, [0, 1]) or
  ``2 k / (num_bins - 1) - 1`` (:func:`to_symmetric`, [-1, 1]), so bin 0 and the top bin land on the
  ends of the interval; :func:`from_unit` / :func:`from_symmetric` round model samples back to bins;
* **dequantization** maps bin ``k`` to the cell ``[k / num_bins, (k + 1) / num_bins)`` of the data
  range: :func:`uniform_dequantize` draws a uniform point in the cell (Theis et al. 2016; Ho et al.
  2019), :func:`bin_centers` takes its midpoint and :func:`quantize` returns the cell of a point.
  Data that a model's likelihood is reported on in bits/dim must be dequantized exactly once, with
  the same ``num_bins`` and ``data_range`` that the bits/dim formula uses; a model trained for such an
  evaluation should see data mapped the same way (:func:`bin_centers` or :func:`uniform_dequantize`),
  not the scaler's grid.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._checks import Generator, check_bins, rand
from ._validate import DataRange, check_float, check_num_bins, check_range, float_dtype

__all__ = [
    "to_unit",
    "to_symmetric",
    "from_unit",
    "from_symmetric",
    "bin_centers",
    "uniform_dequantize",
    "quantize",
    "gaussian_moments",
]


def _out_float_dtype(x: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return float_dtype(dtype)
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _bin_dtype(num_bins: int) -> torch.dtype:
    return torch.uint8 if num_bins <= 256 else torch.int64


def to_unit(x_int: Tensor, num_bins: int, dtype: torch.dtype | None = None) -> Tensor:
    """Scale bin indices to [0, 1]: ``x_int / (num_bins - 1)`` (bin 0 -> 0, top bin -> 1).

    Args:
        x_int: integers in {0, ..., num_bins - 1}, any shape, integer or integer-valued float dtype.
        num_bins: number of levels (>= 2).
        dtype: float dtype of the result (default: x_int's if floating, else torch's default).

    Returns:
        Float tensor like ``x_int`` on its device.

    Raises:
        ValueError: ``x_int`` has non-integers or values outside [0, num_bins); ``num_bins`` < 2.
        TypeError: ``x_int`` is not a tensor, or is bool.
    """
    num_bins = check_num_bins(num_bins)
    check_bins("x_int", x_int, num_bins)
    return x_int.to(_out_float_dtype(x_int, dtype)) / (num_bins - 1)


def to_symmetric(x_int: Tensor, num_bins: int, dtype: torch.dtype | None = None) -> Tensor:
    """Scale bin indices to [-1, 1]: ``2 x_int / (num_bins - 1) - 1`` (bin 0 -> -1, top bin -> 1).

    Same arguments and errors as :func:`to_unit`.
    """
    return 2.0 * to_unit(x_int, num_bins, dtype) - 1.0


def from_unit(x: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`to_unit` for model samples: ``round(x (num_bins - 1))`` clipped to the bins.

    Rounding is to the nearest integer (ties to even); values outside [0, 1] are clipped to bin 0 or
    ``num_bins - 1``. Exact inverse of :func:`to_unit` on its outputs.

    Args:
        x: float tensor, any shape. num_bins: number of levels (>= 2).

    Returns:
        Tensor like ``x``: uint8 when num_bins <= 256, else int64.

    Raises:
        ValueError: ``x`` has NaN or inf; ``num_bins`` < 2. TypeError: ``x`` not a float tensor.
    """
    num_bins = check_num_bins(num_bins)
    check_float("x", x)
    return torch.round(x * (num_bins - 1)).clamp(0, num_bins - 1).to(_bin_dtype(num_bins))


def from_symmetric(x: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`to_symmetric`: ``round((x + 1) / 2 (num_bins - 1))`` clipped to the bins.

    Same conventions and errors as :func:`from_unit`.
    """
    num_bins = check_num_bins(num_bins)
    check_float("x", x)
    return from_unit((x + 1.0) / 2.0, num_bins)


def _cell_index(y: Tensor, num_bins: int, lo: float, hi: float) -> Tensor:
    return torch.floor((y - lo) / (hi - lo) * num_bins)


def _bin_of(y: Tensor, num_bins: int, lo: float, hi: float) -> Tensor:
    """:func:`quantize`'s arithmetic: the cell index clipped to the bins, as int64 (the clip happens in
    y's dtype only up to its largest finite value, so float16 with more than 65505 bins is clipped
    after the conversion instead of overflowing)."""
    top = min(num_bins - 1, torch.finfo(y.dtype).max)
    return _cell_index(y, num_bins, lo, hi).clamp(0, top).to(torch.int64).clamp_max(num_bins - 1)


def _centers(x: Tensor, num_bins: int, lo: float, hi: float) -> Tensor:
    """Cell midpoints of float bin indices ``x``, in x's dtype (the arithmetic of every center here)."""
    return lo + (hi - lo) * (x + 0.5) / num_bins


#: Floating dtypes, coarsest first: the candidates named when a dtype is too coarse.
_FLOATS = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
#: Largest num_bins whose round trip is checked bin by bin; above it only the a-priori bound counts.
_ENUMERATE_MAX = 2**20


def _round_trip_bound(num_bins: int, lo: float, hi: float, dtype: torch.dtype) -> bool:
    """A-priori sufficient condition for ``quantize(bin_centers(k)) == k`` for every bin in ``dtype``.

    With ``M = max(|lo|, |hi|)``, ``R = hi - lo`` and eps the dtype's machine epsilon, each rounding in
    the center's and in quantize's arithmetic moves the bin coordinate ``(y - lo) / R * num_bins`` by
    at most about ``num_bins eps (M / R)`` (a rounding of a value of size up to M, against the bin
    width R / num_bins) or ``num_bins eps`` (the division and the product); summed with margin they
    stay below 1/2, the distance from a center to its cell's edges, when
    ``num_bins eps (6 M / R + 3) <= 1/2``. It also requires the bin width above the dtype's smallest
    normal number and the range and ``(hi - lo) num_bins`` far from overflow, so that every rounding is
    relative.
    """
    fi = torch.finfo(dtype)
    m, r = max(abs(lo), abs(hi)), hi - lo
    if not (r / num_bins >= fi.tiny and 4 * m <= fi.max and 2 * r * num_bins <= fi.max):
        return False
    return num_bins * fi.eps * (6 * m / r + 3) <= 0.5


@functools.lru_cache(maxsize=256)
def _round_trips(num_bins: int, lo: float, hi: float, dtype: torch.dtype, device_type: str) -> bool:
    """Whether every bin's center, computed in ``dtype``, is finite and quantizes back to its bin
    (cached): the a-priori bound, else (up to ``_ENUMERATE_MAX`` bins) the round trip of every bin
    computed on a device of type ``device_type`` with the very arithmetic of :func:`bin_centers` and
    :func:`quantize`."""
    if _round_trip_bound(num_bins, lo, hi, dtype):
        return True
    if num_bins > _ENUMERATE_MAX:
        return False
    k = torch.arange(num_bins, device="cpu" if device_type == "meta" else device_type)
    y = _centers(k.to(dtype), num_bins, lo, hi)
    # a center that overflowed (float16: (hi - lo) (k + 1/2) above 65504) is not in its cell either
    return bool(torch.isfinite(y).all()) and bool(torch.equal(_bin_of(y, num_bins, lo, hi), k))


def _check_exact_dtype(dtype: torch.dtype, num_bins: int, lo: float, hi: float, device: torch.device) -> None:
    """Raise ValueError naming dtype and num_bins when ``dtype`` is too coarse for the round trip
    ``quantize(bin_centers(k)) == k`` on ``(lo, hi)``, with the coarsest dtype that is fine enough."""
    if _round_trips(num_bins, lo, hi, dtype, device.type):
        return
    finer = [d for d in _FLOATS if torch.finfo(d).eps < torch.finfo(dtype).eps]
    ok = next((d for d in finer if _round_trips(num_bins, lo, hi, d, device.type)), None)
    use = f"use {ok} (or a finer dtype)" if ok is not None else "no floating dtype resolves these bins"
    raise ValueError(
        f"dtype {dtype} is too coarse for num_bins={num_bins} on data_range=({lo:g}, {hi:g}): its spacing "
        f"near the ends of the range is too large against the bin width {(hi - lo) / num_bins:.3g}, so "
        f"some values would not quantize back to their bin; {use}"
    )


def bin_centers(
    x_int: Tensor,
    num_bins: int,
    data_range: DataRange = (-1.0, 1.0),
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Midpoints of the dequantization cells: ``lo + (hi - lo) (x_int + 1/2) / num_bins``.

    The deterministic counterpart of :func:`uniform_dequantize` (the cell's mean); bin 0 maps to
    ``lo + (hi - lo) / (2 num_bins)``, not to ``lo`` as with the scalers.

    Args:
        x_int: integers in {0, ..., num_bins - 1}, any shape.
        num_bins: number of levels (>= 2). data_range: (lo, hi), lo < hi.
        dtype: float dtype of the result (default: x_int's if floating, else torch's default).

    Returns:
        Float tensor like ``x_int`` on its device.

    Raises:
        ValueError: ``x_int`` has non-integers or values outside [0, num_bins); bad ``num_bins`` or
            ``data_range``; a ``dtype`` too coarse for ``num_bins`` on ``data_range`` (some center would
            not quantize back to its bin; the message names dtype, num_bins and a dtype that works).
        TypeError: ``x_int`` not a tensor of integers; ``data_range`` not a pair of numbers; ``dtype``
            not a floating-point dtype.
    """
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    check_bins("x_int", x_int, num_bins)
    dtype = _out_float_dtype(x_int, dtype)
    _check_exact_dtype(dtype, num_bins, lo, hi, x_int.device)
    return _centers(x_int.to(dtype), num_bins, lo, hi)


def uniform_dequantize(
    x_int: Tensor,
    num_bins: int,
    data_range: DataRange = (-1.0, 1.0),
    generator: Generator = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform dequantization: ``lo + (hi - lo) (x_int + u) / num_bins`` with u ~ U[0, 1) per entry.

    Bin k becomes a uniform point of the cell [lo + (hi - lo) k / num_bins, lo + (hi - lo) (k + 1) /
    num_bins) (Theis et al. 2016, sec. 3.1; Ho et al. 2019). With this map, a continuous density p on
    data_range gives the discrete log-likelihood bound used for bits/dim,
    ``log P(x_int) >= E_u[log p(y)] + D log((hi - lo) / num_bins)``. Apply it exactly once, outside
    the loaders.

    Floating-point rounding could place a draw within a few ulps of a cell edge on the wrong side;
    such a draw (probability of order num_bins times the dtype's epsilon) is replaced by the cell's
    center, so ``quantize(y) == x_int`` always holds in the result's dtype. That needs the centers
    themselves to quantize back, which a dtype too coarse for ``num_bins`` on ``data_range`` breaks
    (bfloat16 with 256 bins on (-1, 1)): such a dtype is refused (see :func:`bin_centers`).

    Args:
        x_int: integers in {0, ..., num_bins - 1}, shape (B, *shape) (any shape with one generator).
        num_bins: number of levels (>= 2). data_range: (lo, hi), lo < hi.
        generator: None, a torch.Generator, or a list of B of them: row b then depends on generator
            b only, so a sample's noise does not depend on its batch-mates
            (:func:`diffscore._checks.rand`).
        dtype: float dtype of the result (default: x_int's if floating, else torch's default).

    Returns:
        Float tensor like ``x_int`` on its device.

    Raises:
        ValueError: ``x_int`` has non-integers or values outside [0, num_bins); bad ``num_bins`` or
            ``data_range``; a ``dtype`` too coarse for ``num_bins`` on ``data_range`` (as
            :func:`bin_centers`); a generator list whose length is not B.
        TypeError: bad ``generator``; ``x_int`` not a tensor of integers; ``data_range`` not a pair of
            numbers; ``dtype`` not a floating-point dtype.
    """
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    check_bins("x_int", x_int, num_bins)
    dtype = _out_float_dtype(x_int, dtype)
    _check_exact_dtype(dtype, num_bins, lo, hi, x_int.device)
    x = x_int.to(dtype)
    u = rand(x.shape, generator, device=x.device, dtype=dtype)
    y = lo + (hi - lo) * (x + u) / num_bins
    center = _centers(x, num_bins, lo, hi)
    return torch.where(_cell_index(y, num_bins, lo, hi) == x, y, center)


def quantize(y: Tensor, num_bins: int, data_range: DataRange = (-1.0, 1.0)) -> Tensor:
    """The cell of each value: ``floor((y - lo) / (hi - lo) num_bins)`` clipped to {0, ..., num_bins - 1}.

    Inverse of :func:`uniform_dequantize` and :func:`bin_centers`; use it to turn samples of a model
    trained on dequantized data into integers (values outside data_range go to the end bins).

    Args:
        y: float tensor, any shape. num_bins: number of levels (>= 2). data_range: (lo, hi), lo < hi.

    Returns:
        Tensor like ``y``: uint8 when num_bins <= 256, else int64.

    Raises:
        ValueError: ``y`` has NaN or inf; bad ``num_bins`` or ``data_range``; ``num_bins - 1`` above
            the largest value of y's dtype (float16 with more than 65505 bins). TypeError: ``y`` not a
            float tensor, ``data_range`` not a pair of numbers.
    """
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    check_float("y", y)
    if num_bins - 1 > torch.finfo(y.dtype).max:
        raise ValueError(
            f"y of dtype {y.dtype} cannot hold the bin indices up to num_bins - 1 = {num_bins - 1}: "
            "convert y to torch.float32"
        )
    return _bin_of(y, num_bins, lo, hi).to(_bin_dtype(num_bins))


def gaussian_moments(
    x_int: Tensor, num_bins: int, data_range: DataRange, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D) of uniformly dequantized integer data, in closed form.

    With ``y = lo + s (x + u)``, ``s = (hi - lo) / num_bins`` and ``u ~ U[0, 1)^D`` independent of the
    images x: ``E y = lo + s (mean(x) + 1/2)`` and ``Cov y = s^2 (Cov(x) + I / 12)``, the moments of the
    dequantized empirical distribution (maximum-likelihood covariance, divisor N). These are the
    parameters of the maximum-likelihood Gaussian fit to the dequantized training data.

    Args:
        x_int: (N, *shape) integer images. num_bins, data_range: of the dequantization.
        dtype: float dtype of the result (default: torch's default).

    Raises:
        ValueError / TypeError: bad ``num_bins``, ``data_range`` or ``dtype`` (naming it).
    """
    dtype = float_dtype(dtype)
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    s = (hi - lo) / num_bins
    x = x_int.reshape(x_int.shape[0], -1).to(dtype)
    m = x.mean(0)
    xc = x - m
    cov = xc.T @ xc / x.shape[0]
    eye = torch.eye(x.shape[1], dtype=dtype, device=x.device)
    return lo + s * (m + 0.5), s * s * (cov + eye / 12)
