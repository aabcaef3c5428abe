"""Fast deterministic samplers for the probability-flow ODE: EDM's Heun sampler and DPM-Solver.

Both work in the sigma parameterization of any diffscore SDE. With ``x_t = alpha(t) x_0 + std(t) z`` put
``sigma(t) = std(t) / alpha(t)`` and ``y = x / alpha``; then ``y = x_0 + sigma z`` and the probability
flow (Song et al. 2021, eq. 13) becomes

    dy / dsigma = eps_hat(x, t),    eps_hat(x, t) = -std(t) * score(x, t)     (the noise prediction),

whatever the SDE (VE: alpha = 1; VP and sub-VP: alpha < 1). The score is always called at the true time
``t = sde.t_from_sigma(sigma)``.

* :func:`heun`: Karras et al. 2022 ("Elucidating the design space...", EDM), Algorithm 1: second-order
  Heun steps in sigma on the grid of their eq. (5) with rho = 7, the last step (to sigma = 0) an Euler
  step.
* :func:`dpm_solver`: Lu et al. 2022 ("DPM-Solver"), Algorithms 1 and 2 (singlestep DPM-Solver-1, -2, -3,
  exponential integrators in ``lambda = log(alpha / std) = -log sigma``), and the "DPM-Solver-fast" step
  allocation of their Sec. 3.4.

Both build their time grids once, on the state's device, and run without host synchronisation; a
non-finite state raises FloatingPointError (naming the time) once the loop has finished.
Both run under ``torch.no_grad()``: a score that needs gradients (e.g. a guided score) must enable them
itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import (
    CheckedScore,
    FiniteMonitor,
    Generator,
    check_int,
    check_positive,
    check_stats,
    state_limit,
)
from ..score import ScoreFn
from ..sde import SDE

__all__ = ["heun", "dpm_solver", "karras_sigmas", "dpm_solver_orders", "SKIP_TYPES"]

#: Time grids of :func:`dpm_solver`: uniform in lambda = -log sigma (Lu et al.'s "logSNR", their choice for
#: low resolution), uniform in t, or uniform in sqrt(t) ("time_quadratic").
SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")


def _check_sde_state(sde: SDE, score: ScoreFn, x_T: Tensor) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffscore SDE, got {type(sde).__name__}")
    if not callable(score):
        raise TypeError("score must be callable: score(x, t) -> like x")
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.ndim < 2:
        raise TypeError("x_T must be a floating-point tensor shaped (B, *shape)")


def _batch_times(t: Tensor, batch: int) -> Tensor:
    """(K,) grid of times -> (K, B) contiguous, so that row k is a ready (B,) time argument."""
    return t[:, None].repeat(1, batch)


def karras_sigmas(
    sde: SDE,
    eps: float,
    num_steps: int,
    rho: float = 7.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The EDM noise-level grid (Karras et al. 2022, eq. 5), from ``sigma(T)`` down to ``sigma(eps)``.

    ``sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for
    ``i = 0, ..., N - 1`` with ``sigma_max = sde.sigma(T)`` and ``sigma_min = sde.sigma(eps)``; the two ends
    are exact.

    Returns:
        (num_steps,) decreasing sigmas (dimensionless, ``std / alpha``).

    Raises:
        ValueError / TypeError: ``num_steps`` < 2, ``rho`` <= 0, ``eps`` outside [0, T).
    """
    n = check_int("num_steps", num_steps, 2)
    rho = check_positive("rho", rho)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must be a real number in [0, T) = [0, {sde.T}), got {eps!r}")
    dtype = dtype or torch.get_default_dtype()
    ends = torch.tensor([sde.T, float(eps)], dtype=dtype, device=device)
    alpha, std = sde.alpha_std(ends)
    ends = std / alpha
    w = torch.arange(n, dtype=dtype, device=device) / (n - 1)
    inv = ends.pow(1.0 / rho)
    sigmas = torch.lerp(inv[0], inv[1], w).pow(rho)
    sigmas[0], sigmas[-1] = ends[0], ends[1]
    return sigmas


class _NoisePrediction:
    """``eps_hat(x, t) = -std(t) score(x, t)`` with a call counter; ``-std`` comes precomputed per grid point.

    The samplers combine states with ``torch.addcmul`` and in-place updates of fresh results, so a step
    allocates few state-sized tensors: with a cheap score (the mixture oracle) allocation is most of the
    cost of a step.
    """

    def __init__(self, score: ScoreFn) -> None:
        self.score = CheckedScore(score)  # raises naming the score for a wrong shape or dtype

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def __call__(self, x: Tensor, t: Tensor, neg_std: Tensor) -> Tensor:
        return torch.mul(self.score(x, t), neg_std)


def _monitor(monitor: FiniteMonitor, x: Tensor, step: int, scale: Tensor | None = None) -> None:
    # one aminmax reduction (no state-sized temporary); NaN, inf and |scale x| > limit all count as bad
    monitor.update(x, step, scale)


@torch.no_grad()
def heun(
    sde: SDE,
    score: ScoreFn,
    x_T: Tensor,
    eps: float,
    generator: Generator = None,
    num_steps: int = 18,
    rho: float = 7.0,
    denoise: bool = True,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) for the probability flow of ``sde``.

    Integrates ``d(x / alpha) / dsigma = eps_hat`` (module docstring) with Heun's method on the grid of
    :func:`karras_sigmas` (``num_steps`` = N levels from ``sigma(T)`` to ``sigma(eps)``), then, when
    ``denoise`` is True, takes EDM's final Euler step from ``sigma(eps)`` to sigma = 0, which is exactly
    the Tweedie denoiser ``(x + std^2 score) / alpha`` at eps (the "denoise" step of Song et al. 2021).

    Args:
        sde, score: the forward SDE and ``score(x, t)`` (t a (B,) tensor of true times).
        x_T: (B, *shape) state at T (e.g. a prior draw).
        eps: end time in [0, T); with eps = 0 the grid already ends at sigma = 0.
        generator: unused (the sampler is deterministic given ``x_T``).
        num_steps: N >= 2 noise levels. NFE = 2N - 1 with ``denoise`` (EDM's count: N = 18 gives 35),
            2N - 2 without; 2N - 3 when eps = 0 (the grid then ends at sigma = 0 with an Euler step).
        rho: the grid's exponent (EDM: 7).
        denoise: finish with the Euler step to sigma = 0 (output at t = 0) instead of stopping at eps.
        stats: optional dict that receives ``nfe``.

    Returns:
        Samples shaped like ``x_T``: at t = 0 (``denoise``) or at t = eps.

    Raises:
        TypeError: ``stats`` is not a dict or None (checked before any work).
        ValueError / TypeError: ``num_steps`` < 2, ``rho`` <= 0, a bad ``sde``/``score``/``x_T``;
            a ``score`` returning a non-tensor (TypeError) or a tensor not shaped like the state (ValueError).
        FloatingPointError: the state turned non-finite (names the first bad time).
    """
    check_stats(stats)
    _check_sde_state(sde, score, x_T)
    sigmas = karras_sigmas(sde, eps, num_steps, rho, device=x_T.device, dtype=x_T.dtype)
    t = sde.inverse_sigma(sigmas)
    t[0], t[-1] = sde.T, float(eps)
    if denoise and eps > 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        t = torch.cat([t, t.new_zeros(1)])
    alpha, std = sde.alpha_std(t)
    tb = _batch_times(t, x_T.shape[0])
    dsig = sigmas[1:] - sigmas[:-1]
    n_steps = sigmas.shape[0] - 1
    # the last step is an Euler step exactly when it ends at sigma = 0 (known on the host: eps, denoise)
    last_euler = denoise or eps == 0
    neg_std, half_dsig = -std, 0.5 * dsig
    eps_hat = _NoisePrediction(score)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))

    y = x_T / alpha[0]
    for i in range(n_steps):
        d = eps_hat(alpha[i] * y, tb[i], neg_std[i])
        y_euler = torch.addcmul(y, d, dsig[i])  # y + (sigma_{i+1} - sigma_i) d
        if i == n_steps - 1 and last_euler:
            y = y_euler
        else:
            d_next = eps_hat(alpha[i + 1] * y_euler, tb[i + 1], neg_std[i + 1])
            y = torch.addcmul(y, d.add_(d_next), half_dsig[i])  # y + (sigma_{i+1} - sigma_i) (d + d') / 2
        _monitor(monitor, y, i + 1, alpha[i + 1])
    monitor.check(t)
    if stats is not None:
        stats["nfe"] = eps_hat.nfe
    return alpha[-1] * y


def dpm_solver_orders(nfe: int, order: int = 3) -> list[int]:
    """DPM-Solver-fast's allocation of ``nfe`` evaluations to steps (Lu et al. 2022, Sec. 3.4).

    Order 3: ``K = nfe // 3 + 1`` steps, all of order 3 except a tail ``[2, 1]`` (nfe = 0 mod 3), ``[1]``
    (1 mod 3) or ``[2]`` (2 mod 3). Order 2: steps of order 2 and, for odd ``nfe``, a last one of order 1.
    Order 1: ``nfe`` steps of order 1. The orders always sum to ``nfe``.

    Raises:
        ValueError / TypeError: ``nfe`` < 1 or ``order`` not in {1, 2, 3}.
    """
    nfe = check_int("nfe", nfe, 1)
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    k = nfe // 3 + 1
    tail = {0: [2, 1], 1: [1], 2: [2]}[nfe % 3]
    return [3] * (k - len(tail)) + tail


def _dpm_times(sde: SDE, eps: float, num_steps: int, skip_type: str, like: Tensor) -> Tensor:
    """(num_steps + 1,) decreasing times from T to eps on the chosen grid."""
    kw = dict(dtype=like.dtype, device=like.device)
    w = torch.arange(num_steps + 1, **kw) / num_steps
    if skip_type == "time_uniform":
        t = torch.lerp(torch.tensor(sde.T, **kw), torch.tensor(eps, **kw), w)
    elif skip_type == "time_quadratic":
        t = torch.lerp(torch.tensor(math.sqrt(sde.T), **kw), torch.tensor(math.sqrt(eps), **kw), w).square()
    else:
        ends = torch.tensor([sde.T, eps], **kw)
        alpha, std = sde.alpha_std(ends)
        lam = torch.log(alpha / std)
        t = sde.inverse_sigma(torch.exp(-torch.lerp(lam[0], lam[1], w)))
    t[0], t[-1] = sde.T, eps
    return t


@torch.no_grad()
def dpm_solver(
    sde: SDE,
    score: ScoreFn,
    x_T: Tensor,
    eps: float,
    generator: Generator = None,
    num_steps: int | None = None,
    order: int = 3,
    nfe: int | None = None,
    skip_type: str = "logSNR",
    denoise: bool = False,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Singlestep DPM-Solver (Lu et al. 2022, Algorithms 1 and 2) for the probability flow of ``sde``.

    In ``lambda = log(alpha / std)`` the exact flow from s to t is
    ``x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat d lambda``
    (their eq. 3.4), with the noise prediction ``eps_hat = -std * score``. DPM-Solver-k expands
    ``eps_hat`` to order k - 1 in lambda (intermediate points at ``r = 1/2`` for k = 2, ``r = 1/3, 2/3``
    for k = 3) and integrates the rest exactly. Works for VE, VP and sub-VP (for VE, alpha = 1 and
    ``lambda = -log std``; DPM-Solver-1 is then DDIM / Euler in sigma).

    Args:
        sde, score: the forward SDE and ``score(x, t)``.
        x_T: (B, *shape) state at T.
        eps: end time in (0, T) (lambda(0) is infinite, so eps = 0 is refused).
        generator: unused (deterministic given ``x_T``).
        num_steps: steps of order ``order`` each: NFE = ``order * num_steps``. Default 10 when ``nfe`` is
            not given.
        order: 1, 2 or 3.
        nfe: instead of ``num_steps``, a budget of score evaluations spent as in DPM-Solver-fast
            (:func:`dpm_solver_orders`: steps of order ``order``, the last ones lower; NFE = ``nfe``).
        skip_type: the step grid, one of ``SKIP_TYPES``: "logSNR" (uniform in lambda, the default),
            "time_uniform" or "time_quadratic" (uniform in sqrt(t)). Intermediate points are placed in
            lambda in all cases.
        denoise: add the Tweedie step ``(x + std^2 score) / alpha`` at eps (one more NFE; output at t = 0).
        stats: optional dict that receives ``nfe``.

    Returns:
        Samples shaped like ``x_T`` at t = eps (or t = 0 with ``denoise``).

    Raises:
        TypeError: ``stats`` is not a dict or None (checked before any work).
        ValueError / TypeError: eps = 0, both or neither-valid ``num_steps``/``nfe``, bad ``order`` or
            ``skip_type``, a bad ``sde``/``score``/``x_T``; a ``score`` returning a non-tensor
            (TypeError) or a tensor not shaped like the state (ValueError).
        FloatingPointError: the state turned non-finite (names the first bad time).
    """
    check_stats(stats)
    _check_sde_state(sde, score, x_T)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < sde.T:
        raise ValueError(
            f"eps must lie in (0, T) = (0, {sde.T}) for dpm_solver (lambda(0) = inf), got {eps!r}"
        )
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
    if nfe is not None:
        if num_steps is not None:
            raise ValueError("give either num_steps (fixed order) or nfe (DPM-Solver-fast), not both")
        orders = dpm_solver_orders(nfe, order)
    else:
        orders = [order] * check_int("num_steps", 10 if num_steps is None else num_steps, 1)
    eps = float(eps)
    k = len(orders)
    t_grid = _dpm_times(sde, eps, k, skip_type, x_T)

    # every time the solver visits, computed once: s (step start), s1, s2 (intermediate), t (step end)
    alpha_g, std_g = sde.alpha_std(t_grid)
    lam_g = torch.log(alpha_g / std_g)
    h = lam_g[1:] - lam_g[:-1]
    # r1, r2 of each step (Lu et al.: 1/2 for DPM-Solver-2, 1/3 and 2/3 for -3; unused entries set to 1)
    r = torch.tensor([[0.5, 1.0] if o == 2 else [1 / 3, 2 / 3] for o in orders], dtype=x_T.dtype)
    r = r.to(x_T.device)
    lam_mid = lam_g[:-1, None] + r * h[:, None]  # (K, 2)
    t_mid = sde.inverse_sigma(torch.exp(-lam_mid))
    alpha_mid, std_mid = sde.alpha_std(t_mid)
    em1_h = torch.expm1(h)
    em1_rh = torch.expm1(r * h[:, None])
    phi2_h = em1_h / h - 1  # (e^h - 1) / h - 1
    phi2_r2h = em1_rh[:, 1] / (r[:, 1] * h) - 1
    # coefficients of Lu et al.'s updates, per step (signs folded in, so each update is a few addcmul)
    ratio = alpha_g[1:] / alpha_g[:-1]  # alpha_t / alpha_s
    c_lin = -std_g[1:] * em1_h  # -sigma_t (e^h - 1)
    ratio_mid = alpha_mid / alpha_g[:-1, None]  # alpha_{s_j} / alpha_s
    c_mid = -std_mid * em1_rh  # -sigma_{s_j} (e^{r_j h} - 1)
    c_2 = c_lin / (2 * r[:, 0])  # -sigma_t / (2 r1) (e^h - 1)
    c_21 = -std_mid[:, 1] * r[:, 1] / r[:, 0] * phi2_r2h  # -sigma_{s2} r2 / r1 ((e^{r2 h} - 1) / (r2 h) - 1)
    c_3 = -std_g[1:] / r[:, 1] * phi2_h  # -sigma_t / r2 ((e^h - 1) / h - 1)
    neg_std, neg_std_mid = -std_g, -std_mid
    b = x_T.shape[0]
    tb, tb_mid = _batch_times(t_grid, b), t_mid.T[:, :, None].repeat(1, 1, b)

    eps_hat = _NoisePrediction(score)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    x = x_T
    for i, o in enumerate(orders):
        e_s = eps_hat(x, tb[i], neg_std[i])
        if o == 1:  # DPM-Solver-1 (DDIM): x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_s
            x = torch.mul(x, ratio[i]).addcmul_(e_s, c_lin[i])
            _monitor(monitor, x, i + 1)
            continue
        # u1 = (alpha_{s1} / alpha_s) x - sigma_{s1} (e^{r1 h} - 1) eps_s;  D1 = eps(u1, s1) - eps_s
        u1 = torch.mul(x, ratio_mid[i, 0]).addcmul_(e_s, c_mid[i, 0])
        d1 = eps_hat(u1, tb_mid[0, i], neg_std_mid[i, 0]).sub_(e_s)
        if o == 2:  # Algorithm 1: x_t = DPM-Solver-1 step - sigma_t / (2 r1) (e^h - 1) D1
            x = torch.mul(x, ratio[i]).addcmul_(e_s, c_lin[i]).addcmul_(d1, c_2[i])
        else:  # Algorithm 2
            # u2 = (alpha_{s2} / alpha_s) x - sigma_{s2} (e^{r2 h} - 1) eps_s - sigma_{s2} r2 / r1 (...) D1
            u2 = torch.mul(x, ratio_mid[i, 1]).addcmul_(e_s, c_mid[i, 1]).addcmul_(d1, c_21[i])
            d2 = eps_hat(u2, tb_mid[1, i], neg_std_mid[i, 1]).sub_(e_s)
            # x_t = DPM-Solver-1 step - sigma_t / r2 ((e^h - 1) / h - 1) D2
            x = torch.mul(x, ratio[i]).addcmul_(e_s, c_lin[i]).addcmul_(d2, c_3[i])
        _monitor(monitor, x, i + 1)
    if denoise:
        # Tweedie: E[x_0 | x_eps] = (x + std^2 score) / alpha = (x - std eps_hat) / alpha
        e = eps_hat(x, tb[-1], neg_std[-1])
        x = torch.addcmul(x, e, neg_std[-1]).div_(alpha_g[-1])
        _monitor(monitor, x, k)
    monitor.check(t_grid)
    if stats is not None:
        stats["nfe"] = eps_hat.nfe
    return x
