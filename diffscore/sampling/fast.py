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

Both take their time grid from :func:`~diffscore.sample` and keep the schedule on the host (float64), so
they run without host synchronisation; a non-finite state raises FloatingPointError (naming the time)
once the loop has finished.
Both run under ``torch.no_grad()``: a score that needs gradients (e.g. a guided score) must enable them
itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import CheckedScore, FiniteMonitor, Generator, state_limit
from ..score import ScoreFn
from ..sde import SDE
from .grids import lambda_of

__all__ = ["heun", "dpm_solver", "dpm_solver_orders"]


class _NoisePrediction:
    """``eps_hat(x, t) = -std(t) score(x, t)`` at a host time t, with a call counter; the schedule at host
    times (float64, no device synchronisation)."""

    def __init__(self, score: ScoreFn, sde: SDE) -> None:
        self.score = CheckedScore(score)  # raises naming the score for a wrong shape or dtype
        self.sde = sde

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def alpha_std(self, t: float) -> tuple[float, float]:
        alpha, std = self.sde.alpha_std(torch.tensor([t], dtype=torch.float64))
        return float(alpha), float(std)

    def time_at(self, lam: float) -> float:
        """The time ``t_lambda(lam)`` where ``log(alpha / std) = lam``."""
        return float(self.sde.inverse_sigma(torch.tensor([math.exp(-lam)], dtype=torch.float64)))

    def __call__(self, x: Tensor, t: float) -> Tensor:
        return -self.alpha_std(t)[1] * self.score(
            x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        )


@torch.no_grad()
def heun(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    denoise: bool,
) -> Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) for the probability flow of ``sde``.

    Integrates ``d(x / alpha) / dsigma = eps_hat`` (module docstring) with Heun's method on the grid
    ``ts`` (EDM's: the Karras grid of :mod:`~diffscore.sampling.grids`, N levels from ``sigma(T)`` to
    ``sigma(eps)``), then, when ``denoise`` is True, takes EDM's final Euler step from ``sigma(eps)`` to
    sigma = 0, which is exactly the Tweedie denoiser ``(x + std^2 score) / alpha`` at eps (the "denoise"
    step of Song et al. 2021).

    Args:
        sde, score: the forward SDE and ``score(x, t)`` (t a (B,) tensor of true times).
        x: (B, *shape) state at ``ts[0]`` (e.g. a prior draw at T).
        ts: (N,) decreasing times (float64); with ``ts[-1] = 0`` the grid already ends at sigma = 0.
        generator: unused (the sampler is deterministic given ``x``).
        stats: optional dict that receives ``nfe``: 2N - 1 with ``denoise`` (EDM's count: N = 18 gives
            35), 2N - 2 without; 2N - 3 when eps = 0 (the grid then ends at sigma = 0 with an Euler step).
        denoise: finish with the Euler step to sigma = 0 (output at t = 0) instead of stopping at eps.

    Returns:
        Samples shaped like ``x``: at t = 0 (``denoise``) or at t = eps.
    """
    eps_hat = _NoisePrediction(score, sde)
    to_zero = denoise and ts[-1] > 0  # append EDM's last step, to sigma = 0
    times = ts.tolist() + ([0.0] if to_zero else [])
    alpha, std = zip(*map(eps_hat.alpha_std, times), strict=True)
    sigma = [s / a for a, s in zip(alpha, std, strict=True)]
    sigma[-1] = 0.0 if to_zero else sigma[-1]
    n = len(times) - 1
    last_euler = denoise or times[-1] == 0  # the last step ends at t = 0: an Euler step
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    y = x / alpha[0]  # y = x / alpha: the flow is dy / dsigma = eps_hat
    for i in range(n):
        d = eps_hat(alpha[i] * y, times[i])  # d_i = dy / dsigma at sigma_i
        y_next = y + (sigma[i + 1] - sigma[i]) * d  # Euler step to sigma_{i+1}
        if i < n - 1 or not last_euler:  # second-order correction
            d_next = eps_hat(alpha[i + 1] * y_next, times[i + 1])
            y_next = y + (sigma[i + 1] - sigma[i]) * (d + d_next) / 2
        y = y_next
        monitor.update(y, i + 1, alpha[i + 1])
    monitor.check(times)
    if stats is not None:
        stats["nfe"] = eps_hat.nfe
    return alpha[-1] * y


def dpm_solver_orders(nfe: int, order: int = 3) -> list[int]:
    """DPM-Solver-fast's allocation of ``nfe`` evaluations to steps (Lu et al. 2022, Sec. 3.4).

    Order 3: ``K = nfe // 3 + 1`` steps, all of order 3 except a tail ``[2, 1]`` (nfe = 0 mod 3), ``[1]``
    (1 mod 3) or ``[2]`` (2 mod 3). Order 2: steps of order 2 and, for odd ``nfe``, a last one of order 1.
    Order 1: ``nfe`` steps of order 1. The orders always sum to ``nfe`` (``nfe`` >= 1, ``order`` in
    {1, 2, 3}).
    """
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    k = nfe // 3 + 1
    tail = {0: [2, 1], 1: [1], 2: [2]}[nfe % 3]
    return [3] * (k - len(tail)) + tail


@torch.no_grad()
def dpm_solver(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    orders: list[int],
    denoise: bool,
) -> Tensor:
    """Singlestep DPM-Solver (Lu et al. 2022, Algorithms 1 and 2) for the probability flow of ``sde``.

    In ``lambda = log(alpha / sigma)`` (``sigma = std``) the exact flow from s to t is
    ``x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat d lambda``
    (their eq. 3.4), with the noise prediction ``eps_hat = -std * score``. DPM-Solver-k expands
    ``eps_hat`` to order k - 1 in lambda (intermediate points at ``r = 1/2`` for k = 2, ``r = 1/3, 2/3``
    for k = 3) and integrates the rest exactly. Works for VE, VP and sub-VP (for VE, alpha = 1 and
    ``lambda = -log std``; DPM-Solver-1 is then DDIM / Euler in sigma).

    Args:
        sde, score: the forward SDE and ``score(x, t)``.
        x: (B, *shape) state at ``ts[0]``.
        ts: (K + 1,) decreasing times (float64) ending at eps > 0; intermediate points are placed in lambda.
        generator: unused (deterministic given ``x``).
        stats: optional dict that receives ``nfe`` (``sum(orders)``, +1 with ``denoise``).
        orders: the K steps' orders, each 1, 2 or 3 (DPM-Solver-fast: :func:`dpm_solver_orders`).
        denoise: add the Tweedie step ``(x + std^2 score) / alpha`` at eps (one more NFE; output at t = 0).

    Returns:
        Samples shaped like ``x`` at t = eps (or t = 0 with ``denoise``).
    """
    times, lam = ts.tolist(), lambda_of(sde, ts).tolist()
    eps_hat = _NoisePrediction(score, sde)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    for i, k in enumerate(orders):
        (a_s, _sig_s), (a_t, sig_t) = eps_hat.alpha_std(times[i]), eps_hat.alpha_std(times[i + 1])
        h = lam[i + 1] - lam[i]
        e_s = eps_hat(x, times[i])
        x_ddim = a_t / a_s * x - sig_t * math.expm1(h) * e_s  # DPM-Solver-1 (DDIM)
        if k == 1:
            x = x_ddim
            monitor.update(x, i + 1)
            continue
        r1 = 0.5 if k == 2 else 1 / 3
        s1 = eps_hat.time_at(lam[i] + r1 * h)  # s_1 = t_lambda(lambda_s + r_1 h)
        a_1, sig_1 = eps_hat.alpha_std(s1)
        u1 = a_1 / a_s * x - sig_1 * math.expm1(r1 * h) * e_s  # u_1: DPM-Solver-1 from s to s_1
        d1 = eps_hat(u1, s1) - e_s  # D_1 = eps(u_1, s_1) - eps(x, s)
        if k == 2:  # Algorithm 1
            x = x_ddim - sig_t / (2 * r1) * math.expm1(h) * d1
        else:  # Algorithm 2, r_2 = 2/3
            r2 = 2 / 3
            s2 = eps_hat.time_at(lam[i] + r2 * h)
            a_2, sig_2 = eps_hat.alpha_std(s2)
            phi_r2 = math.expm1(r2 * h) / (r2 * h) - 1
            u2 = a_2 / a_s * x - sig_2 * math.expm1(r2 * h) * e_s - sig_2 * r2 / r1 * phi_r2 * d1
            d2 = eps_hat(u2, s2) - e_s  # D_2 = eps(u_2, s_2) - eps(x, s)
            x = x_ddim - sig_t / r2 * (math.expm1(h) / h - 1) * d2
        monitor.update(x, i + 1)
    if denoise:  # Tweedie: E[x_0 | x_eps] = (x - std eps_hat) / alpha
        a, sig = eps_hat.alpha_std(times[-1])
        x = (x - sig * eps_hat(x, times[-1])) / a
        monitor.update(x, len(orders))
    monitor.check(times)
    if stats is not None:
        stats["nfe"] = eps_hat.nfe
    return x
