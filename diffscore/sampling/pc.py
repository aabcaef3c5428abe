"""Predictor-corrector sampling on the VE, VP and sub-VP SDEs.

Source: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations":
Algorithm 1 (PC sampling), Algorithms 2-3 (VE / VP PC samplers), Algorithms 4-5 (Langevin correctors),
Appendix E (reverse diffusion), Appendix F (ancestral sampling), Appendix G (signal-to-noise ratio).

The time grid ``T = t_0 > t_1 > ... > t_N = eps`` comes from :func:`~diffscore.sample` (uniform in t by
default; log-SNR uniform or Karras with ``grid=``, :mod:`diffscore.sampling.grids`; it may start below
T). Step ``i`` runs the predictor from
``t_i`` to ``t_{i+1}``, then ``n_steps`` corrector steps at ``t_{i+1}`` (Algorithm 1). Every per-step
coefficient comes from the continuous schedule and the actual grid, so ``N`` and the grid are free:

* the exact forward kernel ``x_{t_i} = a_i x_{t_{i+1}} + q_i z`` (``sde.transition``) gives the
  reverse-diffusion and ancestral predictors (for VE ``a_i = 1``, ``q_i^2 = sigma_i^2 - sigma_{i-1}^2``;
  for VP ``a_i = sqrt(1 - beta_i)``, ``q_i^2 = beta_i``, the paper's discretizations);
* the corrector's ``alpha`` of Algorithm 5 (``1 - beta_i`` for DDPM) is ``(alpha(t) / alpha(t - h))^2``
  for the corrector time t and the grid step h; it is 1 for VE and defined for sub-VP as well.

The default Langevin corrector takes the step ``2 alpha (snr std(t))^2``: Algorithms 4-5's
signal-to-noise rule ``2 alpha (snr ||z|| / ||s||)^2`` with both norms at their reference values
``E||z||^2 = D`` and ``||s||^2 = D / std(t)^2``. Its step depends on neither the state nor the batch,
which makes it correct in every dimension (docs/samplers.md derives it and measures the alternatives).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import CheckedScore, FiniteMonitor, Generator, bcast, randn, state_limit
from ..score import ScoreFn
from ..sde import SDE

__all__ = ["pc_sample", "PREDICTORS", "CORRECTORS", "PCSchedule"]


@dataclass(frozen=True)
class PCSchedule:
    """Per-step quantities on the grid ``T = t_0 > ... > t_N = eps``, on the state's device and dtype.

    Attributes:
        times: the N + 1 grid times as Python floats (for error messages; no host sync in the loop).
        t: (N + 1,) grid times.
        alpha, var: (N + 1,) ``alpha(t_k)`` and ``std(t_k)^2``.
        h: (N,) step sizes ``t_i - t_{i+1}``.
        f, g2: (N,) drift coefficient ``f(t_i)`` and ``g(t_i)^2`` (Euler-Maruyama).
        a, q2: (N,) forward kernel from ``t_{i+1}`` to ``t_i``: ``x_{t_i} = a_i x_{t_{i+1}} + q_i z``.
        corrector_alpha: (N + 1,) ``(alpha(t_k) / alpha(t_k - h))^2`` (index 0 unused: 1).
    """

    times: list[float]
    t: Tensor
    alpha: Tensor
    var: Tensor
    h: Tensor
    f: Tensor
    g2: Tensor
    a: Tensor
    q2: Tensor
    corrector_alpha: Tensor

    @classmethod
    def build(cls, sde: SDE, ts: Tensor, like: Tensor) -> PCSchedule:
        """The schedule on the (N + 1,) host grid ``ts``, on ``like``'s device and dtype."""
        times = ts.tolist()
        t = ts.to(dtype=like.dtype, device=like.device)
        alpha, std = sde.alpha_std(t)
        h = t[:-1] - t[1:]
        a, q = sde.transition(t[1:], t[:-1])
        c = sde.transition((t[1:] - h).clamp_min(0), t[1:])[0].square()
        return cls(
            times=times,
            t=t,
            alpha=alpha,
            var=std.square(),
            h=h,
            f=sde.f(t[:-1]),
            g2=sde.g2(t[:-1]),
            a=a,
            q2=q.square(),
            corrector_alpha=torch.cat([torch.ones_like(c[:1]), c]),
        )

    def time(self, k: int, x: Tensor) -> Tensor:
        """The grid time ``t_k`` as a (B,) tensor for a score call on ``x``."""
        return self.t[k].expand(x.shape[0])


# ---- predictors: (x at t_i, score, schedule, i, generator) -> x at t_{i+1} ----------------------------
def euler_maruyama(x: Tensor, score: ScoreFn, sch: PCSchedule, i: int, generator: Generator) -> Tensor:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6):
    ``x <- x - [f(t) x - g^2 s(x, t)] h + g sqrt(h) z``."""
    drift = sch.f[i] * x - sch.g2[i] * score(x, sch.time(i, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    return x - drift * sch.h[i] + (sch.g2[i] * sch.h[i]).sqrt() * z


def reverse_diffusion(x: Tensor, score: ScoreFn, sch: PCSchedule, i: int, generator: Generator) -> Tensor:
    """Reverse diffusion (Song et al. 2021, App. E and Algorithms 2-3) on the exact forward kernel
    ``x_{t_i} = a x_{t_{i+1}} + q z``: ``x <- (2 - a) x + q^2 s(x, t_i) + q z``."""
    s = score(x, sch.time(i, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    return (2 - sch.a[i]) * x + sch.q2[i] * s + sch.q2[i].sqrt() * z


def ancestral(x: Tensor, score: ScoreFn, sch: PCSchedule, i: int, generator: Generator) -> Tensor:
    """Ancestral sampling (Ho et al. 2020 eq. 6-7; Song et al. 2021 App. F): a draw from the Gaussian
    posterior ``q(x_{t_{i+1}} | x_{t_i}, x_0)`` at Tweedie's estimate of x_0, which works out to
    mean ``(x + q^2 s) / a`` and variance ``q^2 std(t_{i+1})^2 / std(t_i)^2``.

    For VE this is the paper's ancestral sampler exactly; for VP the variance is DDPM's
    ``beta~_i`` (the reference uses ``beta_i``, Ho et al.'s other choice).
    """
    s = score(x, sch.time(i, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    posterior_var = sch.q2[i] * sch.var[i + 1] / sch.var[i]
    return (x + sch.q2[i] * s) / sch.a[i] + posterior_var.sqrt() * z


# ---- correctors: (x, score, schedule, k, snr, generator) -> x, at the grid time t_k ------------------
def _norms(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


def _mean_chi(d: int) -> float:
    """E||z|| for z ~ N(0, I_d): sqrt(2) Gamma((d + 1) / 2) / Gamma(d / 2)."""
    return math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))


def langevin_corrector(
    x: Tensor, score: ScoreFn, sch: PCSchedule, k: int, snr: float, generator: Generator
) -> Tensor:
    """Langevin corrector (Song et al. 2021, Algorithms 4-5) with the step ``2 alpha (snr std(t))^2``:
    ``x <- x + step s + sqrt(2 step) z``.

    Algorithms 4-5 choose ``step = 2 alpha (r ||z|| / ||s||)^2`` so that the drift ``step s`` and the noise
    ``sqrt(2 step) z`` have the norm ratio r (the snr). Here both norms take their reference values:
    ``||z||^2 -> E||z||^2 = D`` and ``||s||^2 -> D / std(t)^2``, which is ``E||s||^2`` for data at a point
    and an upper bound of it for any data (``s = -E[z | x_t] / std``, so ``E||s||^2 <= E||z||^2 /
    std^2``). The step ``2 alpha snr^2 std^2`` then depends on neither the state nor the batch:

    * no state dependence: a step ``h(x)`` changes the chain's stationary law from p to ``p / h`` (the
      per-sample rule ``h ~ 1/||s(x)||^2`` turns p into ``p ||s||^2``, which for D <= 2 is not even
      normalisable near a mode: the reference rule diverges there);
    * the largest curvature of ``-log p_t`` is at most ``1 / std(t)^2`` for every data distribution
      (``-Hess log p_t = (I - Cov[z | x_t]) / std^2``), so ``step x curvature <= 2 snr^2`` (0.05 at snr
      0.16): the unadjusted-Langevin bias of the variance is at most ``snr^2 / (1 - snr^2)`` (2.6%) in
      the stiffest directions and smaller elsewhere, in any dimension;
    * the chain converges as the grid is refined (more steps only add more correct Langevin steps).

    It is NCSN's annealed rule ``alpha_i = eps sigma_i^2 / sigma_L^2`` (Song & Ermon 2019, Alg. 1) in
    continuous time, with ``eps / sigma_L^2 = 4 alpha snr^2``.
    """
    s = score(x, sch.time(k, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    step = 2 * sch.corrector_alpha[k] * snr**2 * sch.var[k]
    return torch.addcmul(x, s, step).add_(z.mul_((2 * step).sqrt()))


def langevin_score_norm_corrector(
    x: Tensor, score: ScoreFn, sch: PCSchedule, k: int, snr: float, generator: Generator
) -> Tensor:
    """The per-sample signal-to-noise step of Algorithms 4-5, as the paper's code writes it:
    ``step = 2 alpha (snr E||z|| / ||s||)^2`` with each sample's own score norm ``||s||``.

    Kept for comparison only: a step that depends on the state through ``||s(x)||`` samples from
    ``p ||s||^2`` instead of p, which is wrong by O(1/D) in high dimension (variance x1.07 at D = 64)
    and diverges for D <= 2 (measured in docs/samplers.md). Use ``"langevin"``.
    """
    s = score(x, sch.time(k, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    noise_norm = _mean_chi(x[0].numel())
    step = bcast(2 * sch.corrector_alpha[k] * (snr * noise_norm / _norms(s)).square(), x)
    return x + step * s + (2 * step).sqrt() * z


Predictor = Callable[[Tensor, ScoreFn, PCSchedule, int, Generator], Tensor]
Corrector = Callable[[Tensor, ScoreFn, PCSchedule, int, float, Generator], Tensor]

#: predictor name -> function (None: no predictor step).
PREDICTORS: dict[str, Predictor | None] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "none": None,
}
#: corrector name -> function (None: no corrector step).
#: "annealed_langevin" is the same step rule as "langevin" (NCSN's annealed step, see
#: :func:`langevin_corrector`), kept as a name.
CORRECTORS: dict[str, Corrector | None] = {
    "langevin": langevin_corrector,
    "annealed_langevin": langevin_corrector,
    "langevin_score_norm": langevin_score_norm_corrector,
    "none": None,
}


@torch.no_grad()
def pc_sample(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    predictor: str,
    corrector: str,
    snr: float,
    n_steps: int,
    denoise: bool,
    constraint: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1) from ``x`` at ``ts[0]`` to ``ts[-1]``.

    Args:
        sde: VESDE, VPSDE or SubVPSDE (any :class:`~diffscore.sde.SDE`).
        score: ``score(x, t) -> like x``, t shaped (B,).
        x: (B, *shape) starting state at ``ts[0]``.
        ts: (N + 1,) decreasing grid times ``t_0 > ... > t_N = eps`` (float64): N time steps.
        generator: a torch.Generator, or a list of B of them (sample k then depends on generator k alone).
        stats: optional dict that receives ``nfe`` (score evaluations: N + N M + denoise for the
            score-based predictors).
        predictor: a key of ``PREDICTORS``: "euler_maruyama", "reverse_diffusion", "ancestral", "none".
        corrector: a key of ``CORRECTORS``: "langevin" (step ``2 alpha (snr std(t))^2``, see
            :func:`langevin_corrector`), "annealed_langevin" (the same rule), "langevin_score_norm" (the
            per-sample rule, biased in low dimension; for comparison), "none".
        snr: the corrector's signal-to-noise ratio r > 0 (paper: 0.16 for VE on CIFAR-10).
        n_steps: M >= 0 corrector steps per time step.
        denoise: finish with Tweedie's formula ``x_0 = (x + std(eps)^2 s(x, eps)) / alpha(eps)``, the
            posterior mean E[x_0 | x_eps] (one more NFE; skipped when eps = 0, where it is the identity).
        constraint: optional ``constraint(x, t) -> x`` applied after every predictor and corrector update
            (used by inpainting to set known entries), t the current (B,) time.

    Returns:
        Samples shaped like ``x``.
    """
    score = CheckedScore(score)  # counts evaluations and checks each output's shape and dtype
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]
    sch = PCSchedule.build(sde, ts, x)
    num_steps = len(sch.times) - 1
    monitor = FiniteMonitor("PC sampler state", state_limit(sde.prior_std))
    for i in range(num_steps):
        if predict is not None:
            x = predict(x, score, sch, i, generator)  # x_{i+1} from x_i
            if constraint is not None:
                x = constraint(x, sch.time(i + 1, x))
        for _ in range(n_steps if correct is not None else 0):
            x = correct(x, score, sch, i + 1, snr, generator)  # Langevin at t_{i+1}
            if constraint is not None:
                x = constraint(x, sch.time(i + 1, x))
        monitor.update(x, i)
    if denoise and sch.times[-1] > 0:
        x = (x + sch.var[-1] * score(x, sch.time(num_steps, x))) / sch.alpha[-1]  # Tweedie
        monitor.update(x, num_steps - 1)
    monitor.check(sch.times[1:])
    if stats is not None:
        stats["nfe"] = score.nfe
    return x
