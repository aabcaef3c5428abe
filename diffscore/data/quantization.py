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

import torch
from torch import Tensor

from .._checks import Generator, rand
from ._validate import DataRange, check_bins, check_float, check_num_bins, check_range, float_dtype

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
            ``data_range``.
    """
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    check_bins("x_int", x_int, num_bins)
    x = x_int.to(_out_float_dtype(x_int, dtype))
    return lo + (hi - lo) * (x + 0.5) / num_bins


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
    center, so ``quantize(y) == x_int`` always holds in the result's dtype.

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
            ``data_range``; a generator list whose length is not B.
        TypeError: bad ``generator``.
    """
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    check_bins("x_int", x_int, num_bins)
    dtype = _out_float_dtype(x_int, dtype)
    x = x_int.to(dtype)
    u = rand(x.shape, generator, device=x.device, dtype=dtype)
    y = lo + (hi - lo) * (x + u) / num_bins
    center = lo + (hi - lo) * (x + 0.5) / num_bins
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
        ValueError: ``y`` has NaN or inf; bad ``num_bins`` or ``data_range``. TypeError: ``y`` not a
            float tensor.
    """
    num_bins = check_num_bins(num_bins)
    lo, hi = check_range(data_range)
    check_float("y", y)
    return _cell_index(y, num_bins, lo, hi).clamp(0, num_bins - 1).to(_bin_dtype(num_bins))


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
    """
    dtype = dtype or torch.get_default_dtype()
    lo, hi = (float(v) for v in data_range)
    s = (hi - lo) / num_bins
    x = x_int.reshape(x_int.shape[0], -1).to(dtype)
    m = x.mean(0)
    xc = x - m
    cov = xc.T @ xc / x.shape[0]
    eye = torch.eye(x.shape[1], dtype=dtype, device=x.device)
    return lo + s * (m + 0.5), s * s * (cov + eye / 12)
