"""Toy 2-D distributions (FFJORD's and scikit-learn's shapes), drawn from the caller's generators."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import Generator, check_int, rand, randn
from ._validate import float_dtype

__all__ = ["two_moons", "eight_gaussians", "checkerboard"]


def _check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def two_moons(
    n: int,
    noise: float = 0.0,
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n i.i.d. points of two interleaving half circles (the scikit-learn ``make_moons`` shape).

    Each point picks a moon with probability 1/2 and an angle theta ~ U[0, pi]: the upper moon is
    (cos theta, sin theta), the lower one (1 - cos theta, 1/2 - sin theta); then N(0, noise^2 I) is
    added. Without noise the mean is (1/2, 1/4).

    Args:
        n: number of points. noise: standard deviation of the added Gaussian noise (>= 0).
        generator: torch.Generator, or a list of n of them (point k then depends on generator k only).
        device, dtype: of the result (default dtype: torch's default).

    Returns:
        Tensor (n, 2).

    Raises:
        TypeError / ValueError: ``n`` not a positive int, ``noise`` negative, bad ``generator``.
    """
    check_int("n", n, 1)
    noise = _check_nonnegative("noise", noise)
    dtype = float_dtype(dtype)
    u = rand((n, 2), generator, device=device, dtype=dtype)
    eps = randn((n, 2), generator, device=device, dtype=dtype)
    theta = math.pi * u[:, 1]
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    return torch.where(u[:, :1] < 0.5, upper, lower) + noise * eps


def eight_gaussians(
    n: int,
    radius: float = 2.0 * math.sqrt(2.0),
    std: float = 0.5 / math.sqrt(2.0),
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n i.i.d. points of an equal-weight mixture of 8 Gaussians on a circle.

    Component k in {0, ..., 7} (probability 1/8 each) has mean radius * (cos(k pi / 4), sin(k pi / 4))
    and covariance std^2 I. The defaults, radius 4 / sqrt(2) and std 0.5 / sqrt(2), are the "8
    gaussians" toy set of FFJORD (Grathwohl et al. 2019), whose code divides by 1.414.

    Args:
        n: number of points. radius: distance of the means from the origin (> 0).
        std: standard deviation of each component (>= 0).
        generator: torch.Generator, or a list of n of them (point k then depends on generator k only).
        device, dtype: of the result (default dtype: torch's default).

    Returns:
        Tensor (n, 2).

    Raises:
        TypeError / ValueError: ``n`` not a positive int, ``radius`` <= 0, ``std`` < 0, bad ``generator``.
    """
    check_int("n", n, 1)
    radius = _check_nonnegative("radius", radius)
    if radius == 0.0:
        raise ValueError("radius must be > 0, got 0.0")
    std = _check_nonnegative("std", std)
    dtype = float_dtype(dtype)
    u = rand((n,), generator, device=device, dtype=dtype)
    eps = randn((n, 2), generator, device=device, dtype=dtype)
    angle = (math.pi / 4) * torch.floor(8 * u).clamp(max=7)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return means + std * eps


def checkerboard(
    n: int,
    squares: int = 4,
    width: float = 8.0,
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n i.i.d. points uniform on the black squares of a checkerboard.

    The board covers [-width/2, width/2]^2 with squares x squares cells of side width / squares. Cell
    (i, j), counted from the lower-left corner (i along x, j along y, from 0), is black when i + j is
    even; the density is uniform on the union of black cells. The defaults (a 4x4 board on
    [-4, 4]^2, 8 black cells) are the "checkerboard" toy set of FFJORD (Grathwohl et al. 2019).

    Args:
        n: number of points. squares: cells per side (>= 1). width: side of the board (> 0).
        generator: torch.Generator, or a list of n of them (point k then depends on generator k only).
        device, dtype: of the result (default dtype: torch's default).

    Returns:
        Tensor (n, 2).

    Raises:
        TypeError / ValueError: ``n`` or ``squares`` not a positive int, ``width`` <= 0, bad
        ``generator``.
    """
    check_int("n", n, 1)
    check_int("squares", squares, 1)
    width = _check_nonnegative("width", width)
    if width == 0.0:
        raise ValueError("width must be > 0, got 0.0")
    dtype = float_dtype(dtype)
    black = [(i, j) for i in range(squares) for j in range(squares) if (i + j) % 2 == 0]
    cells = torch.tensor(black, device=device, dtype=dtype)
    u = rand((n, 3), generator, device=device, dtype=dtype)
    pick = torch.floor(len(black) * u[:, 0]).clamp(max=len(black) - 1).long()
    return (cells[pick] + u[:, 1:]) * (width / squares) - width / 2
