"""Predictor-corrector sampling on the VE, VP and sub-VP SDEs.

Source: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations":
Algorithm 1 (PC sampling), Algorithms 2-3 (VE / VP PC samplers), Algorithms 4-5 (Langevin correctors),
Appendix E (reverse diffusion), Appendix F (ancestral sampling), Appendix G (signal-to-noise ratio).

The time grid ``T = t_0 > t_1 > ... > t_N = eps`` is uniform and built once. Step ``i`` runs the
predictor from ``t_i`` to ``t_{i+1}``, then ``n_steps`` corrector steps at ``t_{i+1}`` (Algorithm 1).
Every per-step coefficient comes from the continuous schedule and the actual grid, so ``N`` is free:

* the exact forward kernel ``x_{t_i} = a_i x_{t_{i+1}} + q_i z`` (``sde.transition``) gives the
  reverse-diffusion and ancestral predictors (for VE ``a_i = 1``, ``q_i^2 = sigma_i^2 - sigma_{i-1}^2``;
  for VP ``a_i = sqrt(1 - beta_i)``, ``q_i^2 = beta_i``, the paper's discretizations);
* the corrector's ``alpha`` of Algorithm 5 (``1 - beta_i`` for DDPM) is ``(alpha(t) / alpha(t - h))^2``
  for the corrector time t and the grid step h; it is 1 for VE and defined for sub-VP as well.

The Langevin corrector computes its step from each sample's own score norm and the expected noise norm
(the reference implementation averages both norms over the batch, which makes each sample depend on
its batch-mates); see :func:`langevin_corrector` and docs/samplers.md for the O(1/D) cost of that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import FiniteMonitor, Generator, bcast, check_positive, randn
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
    def build(cls, sde: SDE, eps: float, num_steps: int, like: Tensor) -> PCSchedule:
        times = [sde.T - (sde.T - eps) * k / num_steps for k in range(num_steps)] + [eps]
        t = torch.tensor(times, dtype=like.dtype, device=like.device)
        alpha, std = sde._alpha_std(t)
        h = t[:-1] - t[1:]
        a, q = sde.transition(t[1:], t[:-1])
        c = sde.transition((t[1:] - h).clamp_min(0), t[1:])[0].square()
        return cls(
            times=times,
            t=t,
            alpha=alpha,
            var=std.square(),
            h=h,
            f=sde._f(t[:-1]),
            g2=sde._g2(t[:-1]),
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
    """Langevin corrector with the signal-to-noise step rule (Song et al. 2021, Algorithms 4-5):
    ``step = 2 alpha (snr ||z|| / ||s||)^2``, ``x <- x + step s + sqrt(2 step) z``.

    ``||s||`` is each sample's own score norm, so no sample depends on its batch-mates. ``||z||`` is
    its expectation ``E||z||`` over the noise (the limit of the reference's batch average): with the
    norm of the very noise that enters the step, the noise term ``||z|| z`` has variance ``(D + 2) / D``
    times that of the drift's ``||z||^2``, which heats the chain by that factor (it flattens mixture
    weights towards uniform by about 0.015 at D = 16).
    """
    s = score(x, sch.time(k, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    noise_norm = _mean_chi(x[0].numel())
    step = bcast(2 * sch.corrector_alpha[k] * (snr * noise_norm / _norms(s)).square(), x)
    return x + step * s + (2 * step).sqrt() * z


def annealed_langevin_corrector(
    x: Tensor, score: ScoreFn, sch: PCSchedule, k: int, snr: float, generator: Generator
) -> Tensor:
    """NCSN's step rule ``alpha_i = eps sigma_i^2 / sigma_L^2`` (Song & Ermon 2019, Alg. 1) in continuous
    time: the step is proportional to the noise variance, ``step = 2 alpha (snr std(t))^2``, and
    ``x <- x + step s + sqrt(2 step) z``. In NCSN's terms ``eps / sigma_L^2 = 4 alpha snr^2``."""
    s = score(x, sch.time(k, x))
    z = randn(x.shape, generator, x.device, x.dtype)
    step = 2 * sch.corrector_alpha[k] * snr**2 * sch.var[k]
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
CORRECTORS: dict[str, Corrector | None] = {
    "langevin": langevin_corrector,
    "annealed_langevin": annealed_langevin_corrector,
    "none": None,
}


class _Counted:
    """Counts score evaluations on the host (no sync)."""

    def __init__(self, score: ScoreFn) -> None:
        self.score = score
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score(x, t)


@torch.no_grad()
def pc_sample(
    sde: SDE,
    score: ScoreFn,
    x_T: Tensor,
    eps: float,
    generator: Generator = None,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    num_steps: int = 1000,
    denoise: bool = True,
    constraint: Callable[[Tensor, Tensor], Tensor] | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1) from ``x_T`` at T down to ``eps``.

    Args:
        sde: VESDE, VPSDE or SubVPSDE (any :class:`~diffscore.sde.SDE`).
        score: ``score(x, t) -> like x``, t shaped (B,).
        x_T: (B, *shape) starting state at T.
        eps: the last time t_N, in [0, T).
        generator: a torch.Generator, or a list of B of them (sample k then depends on generator k alone).
        predictor: a key of ``PREDICTORS``: "euler_maruyama", "reverse_diffusion", "ancestral", "none".
        corrector: a key of ``CORRECTORS``: "langevin", "annealed_langevin", "none".
        snr: the corrector's signal-to-noise ratio r > 0 (paper: 0.16 for VE on CIFAR-10).
        n_steps: M >= 0 corrector steps per time step.
        num_steps: N >= 1 time steps on the uniform grid.
        denoise: finish with Tweedie's formula ``x_0 = (x + std(eps)^2 s(x, eps)) / alpha(eps)``, the
            posterior mean E[x_0 | x_eps] (one more NFE; skipped when eps = 0, where it is the identity).
        constraint: optional ``constraint(x, t) -> x`` applied after every predictor and corrector update
            (used by inpainting to replace known entries), t the current (B,) time.
        stats: optional dict that receives ``nfe`` (score evaluations: N + N M + denoise for the
            score-based predictors).

    Returns:
        Samples shaped like ``x_T``.

    Raises:
        ValueError / TypeError: unknown ``predictor`` or ``corrector``, ``snr`` <= 0, ``num_steps`` < 1,
            ``n_steps`` < 0.
        FloatingPointError: the state went non-finite; raised after the loop, naming the time.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {sorted(CORRECTORS)}, got {corrector!r}")
    snr = check_positive("snr", snr)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    if not callable(score):
        raise TypeError("score must be callable: score(x, t) -> like x")
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]
    score = _Counted(score)
    sch = PCSchedule.build(sde, eps, num_steps, x_T)
    monitor = FiniteMonitor("PC sampler state")
    x = x_T
    for i in range(num_steps):
        if predict is not None:
            x = predict(x, score, sch, i, generator)
            if constraint is not None:
                x = constraint(x, sch.time(i + 1, x))
        for _ in range(n_steps if correct is not None else 0):
            x = correct(x, score, sch, i + 1, snr, generator)
            if constraint is not None:
                x = constraint(x, sch.time(i + 1, x))
        monitor.update(x, i)
    if denoise and eps > 0:
        x = (x + sch.var[-1] * score(x, sch.time(num_steps, x))) / sch.alpha[-1]
        monitor.update(x, num_steps - 1)
    monitor.check(sch.times[1:])
    if stats is not None:
        stats["nfe"] = score.nfe
    return x
