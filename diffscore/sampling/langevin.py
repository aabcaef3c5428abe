"""Langevin dynamics and annealed Langevin dynamics (NCSN sampling).

Source: Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data Distribution":
Langevin dynamics eq. (2), annealed Langevin dynamics Algorithm 1, inpainting Algorithm 2, and the
geometric noise levels of Section 4.2 (sigma_1 = 1, sigma_L = 0.01, L = 10). The optional final denoising
step is Tweedie's formula ``x + sigma_L^2 s(x, sigma_L)`` (Jolicoeur-Martineau et al. 2021;
Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative Models").

Here the score is a function of the noise level, ``score_sigma(x, sigma) -> like x`` with ``sigma`` a (B,)
tensor: the NCSN parameterization, with no SDE or time variable involved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import (
    PLAUSIBLE_FACTOR,
    FiniteMonitor,
    Generator,
    check_count,
    check_data,
    check_mask,
    check_positive,
    check_stats,
    randn,
)

__all__ = ["geometric_sigmas", "langevin_dynamics", "annealed_langevin", "annealed_langevin_inpaint"]

#: ``score_sigma(x, sigma) -> like x``: the score of the data perturbed by N(0, sigma^2 I); sigma is (B,).
SigmaScoreFn = Callable[[Tensor, Tensor], Tensor]
#: ``callback(level, step, x)``: called after every Langevin step (level index i, step index within it).
Callback = Callable[[int, int, Tensor], None]


def geometric_sigmas(
    sigma_max: float = 1.0,
    sigma_min: float = 0.01,
    num: int = 10,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Noise levels ``sigma_1 > ... > sigma_L`` in geometric progression (Song & Ermon 2019, Sec. 4.2).

    Args:
        sigma_max: sigma_1, the largest level (paper: 1).
        sigma_min: sigma_L, the smallest level (paper: 0.01).
        num: L, the number of levels (paper: 10).

    Returns:
        (L,) tensor, decreasing, with both ends exact.

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max`` and ``num`` is an int >= 2.
    """
    sigma_max = check_positive("sigma_max", sigma_max)
    sigma_min = check_positive("sigma_min", sigma_min)
    if not sigma_min < sigma_max:
        raise ValueError(
            f"sigma_min must be below sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    check_count("num", num, 2)
    ratio = math.log(sigma_min / sigma_max) / (num - 1)
    levels = [sigma_max * math.exp(ratio * i) for i in range(num - 1)] + [sigma_min]
    return torch.tensor(levels, device=device, dtype=dtype or torch.get_default_dtype())


def _check_sigmas(sigmas: Tensor | Sequence[float], like: Tensor) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=like.dtype, device=like.device)
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all() & (sigmas > 0).all()):
        raise ValueError("sigmas must be finite and > 0")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L)")
    return sigmas


def _limit(x0: Tensor, scale: float = 1.0) -> float:
    """The plausible bound on |x|: 1e4 times the largest of 1, the initial noise scale and max |x0|
    (one host sync, before the loop)."""
    return PLAUSIBLE_FACTOR * max(1.0, float(scale), float(x0.detach().abs().amax()))


def _finish(
    x: Tensor,
    score_sigma: Callable[[Tensor, Tensor], Tensor],
    sigmas: Tensor,
    levels: list[float],
    monitor: FiniteMonitor,
    k: int,
    n_steps_each: int,
    denoise: bool,
    stats: dict[str, Any] | None,
) -> Tensor:
    """After k annealed Langevin steps: Tweedie's step at sigma_L (``denoise``), the check, ``nfe``.
    ``levels``: ``sigmas`` on the host."""
    if denoise:
        x = x + levels[-1] ** 2 * score_sigma(x, sigmas[-1].expand(x.shape[0]))
        monitor.update(x, k - 1)
    _raise_if_bad(monitor, lambda k: f"sigma = {levels[k // n_steps_each]:.6g} (step {k})")
    if stats is not None:
        stats["nfe"] = k + int(denoise)
    return x


def _raise_if_bad(monitor: FiniteMonitor, where: Callable[[int], str]) -> None:
    """After the loop (one host sync): FloatingPointError naming where the first bad step was."""
    i = monitor.first_bad()
    if i >= 0:
        raise FloatingPointError(
            f"non-finite or implausibly large {monitor.name} at {where(i)} (plausible: |x| <= "
            f"{monitor.limit:.3g})"
        )


def langevin_dynamics(
    score: Callable[[Tensor], Tensor],
    x0: Tensor,
    step_size: float,
    n_steps: int,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Unadjusted Langevin dynamics ``x <- x + (eps / 2) score(x) + sqrt(eps) z`` (Song & Ermon 2019, eq. 2).

    Args:
        score: ``score(x) -> like x``, the score of the target density.
        x0: (B, *shape) starting states.
        step_size: eps > 0.
        n_steps: T >= 1 steps.
        generator: a torch.Generator, or a list of B of them (sample k then depends on generator k alone).
        stats: optional dict that receives ``nfe`` (score evaluations).

    Returns:
        x_T shaped like ``x0``.

    Raises:
        TypeError: ``stats`` is not a dict or None (checked before any work).
        ValueError / TypeError: bad ``x0``, ``step_size``, ``n_steps``.
        FloatingPointError: the state went non-finite or beyond 1e4 times max(1, max |x0|) (checked
            once, after the loop).
    """
    check_stats(stats)
    check_data("x0", x0, min_ndim=1)
    step_size = check_positive("step_size", step_size)
    n_steps = check_count("n_steps", n_steps, 1)
    monitor = FiniteMonitor("Langevin state", _limit(x0))
    x = x0
    for k in range(n_steps):
        z = randn(x.shape, generator, x.device, x.dtype)
        x = x + 0.5 * step_size * score(x) + math.sqrt(step_size) * z
        monitor.update(x, k)
    _raise_if_bad(monitor, lambda i: f"step {i}")
    if stats is not None:
        stats["nfe"] = n_steps
    return x


def annealed_langevin(
    score_sigma: SigmaScoreFn,
    sigmas: Tensor | Sequence[float],
    x0: Tensor,
    step_size: float = 2e-5,
    n_steps_each: int = 100,
    generator: Generator = None,
    denoise: bool = False,
    callback: Callback | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level ``i``: ``alpha_i = eps * sigma_i^2 / sigma_L^2``, then ``n_steps_each`` steps of
    ``x <- x + (alpha_i / 2) score_sigma(x, sigma_i) + sqrt(alpha_i) z``.

    Args:
        score_sigma: ``score_sigma(x, sigma) -> like x`` with ``sigma`` shaped (B,).
        sigmas: (L,) strictly decreasing noise levels (e.g. :func:`geometric_sigmas`).
        x0: (B, *shape) initial states (the paper draws them from a uniform distribution).
        step_size: eps, the step at the last level sigma_L (paper: 2e-5 with sigma_L = 0.01).
        n_steps_each: T, Langevin steps per level (paper: 100).
        generator: a torch.Generator, or a list of B of them (sample k then depends on generator k alone).
        denoise: finish with Tweedie's formula ``x + sigma_L^2 score_sigma(x, sigma_L)`` (one more NFE).
        callback: ``callback(i, t, x)`` after step t of level i.
        stats: optional dict that receives ``nfe`` (score evaluations).

    Returns:
        Samples shaped like ``x0``.

    Raises:
        TypeError: ``stats`` is not a dict or None (checked before any work).
        ValueError / TypeError: ``sigmas`` not strictly decreasing and positive, bad ``x0``,
            ``step_size`` <= 0, ``n_steps_each`` < 1.
        FloatingPointError: the state went non-finite or beyond 1e4 times max(1, sigma_1, max |x0|)
            (checked once, after the loop, naming sigma).
    """
    check_stats(stats)
    check_data("x0", x0, min_ndim=1)
    sigmas = _check_sigmas(sigmas, x0)
    step_size = check_positive("step_size", step_size)
    n_steps_each = check_count("n_steps_each", n_steps_each, 1)
    levels = sigmas.tolist()  # host copy, made once before the loop
    monitor = FiniteMonitor("annealed Langevin state", _limit(x0, levels[0]))
    x, batch, k = x0, x0.shape[0], 0
    for i, sigma_i in enumerate(levels):
        alpha_i = step_size * (sigma_i / levels[-1]) ** 2
        sigma = sigmas[i].expand(batch)
        for t in range(n_steps_each):
            z = randn(x.shape, generator, x.device, x.dtype)
            x = x + 0.5 * alpha_i * score_sigma(x, sigma) + math.sqrt(alpha_i) * z
            monitor.update(x, k)
            k += 1
            if callback is not None:
                callback(i, t, x)
    x = _finish(x, score_sigma, sigmas, levels, monitor, k, n_steps_each, denoise, stats)
    return x


def annealed_langevin_inpaint(
    score_sigma: SigmaScoreFn,
    sigmas: Tensor | Sequence[float],
    x_known: Tensor,
    mask: Tensor,
    x0: Tensor | None = None,
    step_size: float = 2e-5,
    n_steps_each: int = 100,
    generator: Generator = None,
    denoise: bool = False,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Inpainting with annealed Langevin dynamics (Song & Ermon 2019, Algorithm 2).

    At each level i one ``y_i = x_known + sigma_i z`` is drawn; after every Langevin step the known
    entries are replaced: ``x <- (1 - m) x + m y_i``.

    Args:
        x_known: (B, *shape) image; only its entries where ``mask == 1`` are used.
        mask: 0/1 tensor broadcastable to ``x_known``, 1 where the entry is known.
        x0: (B, *shape) initial state; default ``x_known`` on known entries and ``sigma_1 z`` elsewhere.
        The other arguments are those of :func:`annealed_langevin`.

    Returns:
        Samples shaped like ``x_known``, equal to ``x_known`` exactly on the known entries (the last
        replacement uses ``x_known`` itself instead of a noisy copy; with ``denoise`` Tweedie's step is
        applied before it).

    Raises:
        TypeError: ``stats`` is not a dict or None (checked before any work).
        ValueError / TypeError: a mask of the wrong shape or with entries outside {0, 1}, and the
            errors of :func:`annealed_langevin`.
    """
    check_stats(stats)
    check_data("x_known", x_known, min_ndim=1)
    mask = check_mask(mask, x_known)
    sigmas = _check_sigmas(sigmas, x_known)
    step_size = check_positive("step_size", step_size)
    n_steps_each = check_count("n_steps_each", n_steps_each, 1)
    levels = sigmas.tolist()
    dev, dt = x_known.device, x_known.dtype
    if x0 is None:
        x0 = mask * x_known + (1 - mask) * levels[0] * randn(x_known.shape, generator, dev, dt)
    else:
        check_data("x0", x0, min_ndim=1)
        if x0.shape != x_known.shape:
            raise ValueError(f"x0 must be shaped like x_known {tuple(x_known.shape)}, got {tuple(x0.shape)}")
    monitor = FiniteMonitor("annealed Langevin state", _limit(x0, levels[0]))
    x, batch, k = x0, x0.shape[0], 0
    for i, sigma_i in enumerate(levels):
        alpha_i = step_size * (sigma_i / levels[-1]) ** 2
        sigma = sigmas[i].expand(batch)
        y = x_known + sigma_i * randn(x.shape, generator, dev, dt)
        for _ in range(n_steps_each):
            z = randn(x.shape, generator, dev, dt)
            x = x + 0.5 * alpha_i * score_sigma(x, sigma) + math.sqrt(alpha_i) * z
            x = (1 - mask) * x + mask * y
            monitor.update(x, k)
            k += 1
    x = _finish(x, score_sigma, sigmas, levels, monitor, k, n_steps_each, denoise, stats)
    return torch.where(mask.bool(), x_known, x)
