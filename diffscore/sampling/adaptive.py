"""Adaptive reverse-SDE sampler of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast When Generating Data
with Score-Based Models", Algorithm 1).

Each step proposes an Euler-Maruyama step and an improved-Euler (stochastic Heun) step that share the
same Gaussian draw, estimates the local error as their difference, scales it per entry by
``max(atol, rtol * max(|x'|, |x'_prev|))`` and takes a scaled q-norm per sample. A sample whose error
is at most 1 accepts the improved-Euler state (extrapolation); every sample then adapts its own step,
``h <- min(t - eps, safety * h * E^(-exponent))``. Step sizes and times are per sample, so a sample's
path depends on its own draws only (with a list of generators, on its own generator only) and never on
its batch-mates. Two score evaluations per iteration, on the whole batch; one host synchronisation per
iteration (the loop's stopping test, which also checks the state for NaN/inf).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import CheckedScore, Generator, StepSizeUnderflowError, bcast, randn, state_limit
from ..score import ScoreFn
from ..sde import SDE

__all__ = ["sde_adaptive"]


def _scaled_norm(e: Tensor, q: float) -> Tensor:
    """Per-sample scaled q-norm ``(mean_i |e_i|^q)^(1/q)`` (max |e_i| for q = inf), shaped (B,)."""
    e = e.reshape(e.shape[0], -1).abs()
    if math.isinf(q):
        return e.amax(1)
    if q == 2:
        return e.square().mean(1).sqrt()
    return e.pow(q).mean(1).pow(1.0 / q)


@torch.no_grad()
def sde_adaptive(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    rtol: float,
    atol: float,
    h_init: float,
    safety: float,
    exponent: float,
    norm: float,
    brownian_memory: int,
    max_iters: int,
    denoise: bool,
) -> Tensor:
    """Reverse-time SDE (Song et al. 2021, eq. 6) from ``ts[0]`` to ``ts[1]`` with error-controlled step sizes
    (Jolicoeur-Martineau et al. 2021, Algorithm 1).

    With ``F(x, t) = f(t) x - g(t)^2 score(x, t)`` and one draw ``z ~ N(0, I)`` per attempt:

        x'  = x - h F(x, t) + sqrt(h) g(t) z                                     (Euler-Maruyama)
        x'' = x + (1/2) [(-h F(x, t) + sqrt(h) g(t) z) + (-h F(x', t-h) + sqrt(h) g(t-h) z)]
        E   = || (x'' - x') / max(atol, rtol max(|x'|, |x'_prev|)) ||_q   (per sample, scaled q-norm)

    accepted when ``E <= 1`` (then ``x = x''``, ``t = t - h``, ``x'_prev = x'``); in either case
    ``h = min(t - eps, safety h E^(-exponent))``.

    Args:
        sde, score: the forward SDE and ``score(x, t)`` (t a (B,) tensor; times differ per sample).
        x: (B, *shape) state at ``ts[0]``.
        ts: ``[t_start, eps]`` (float64), std(eps) > 0.
        generator: a torch.Generator or a list of B of them (one per sample) for the draws.
        rtol, atol: relative and absolute tolerances (the paper: atol = 0.0078 for data in [-1, 1],
            rtol 0.01 to 0.05). Units of x.
        h_init: first step size (time units; the paper: 0.01 for T = 1).
        safety, exponent: the step-size controller's theta and r (the paper: 0.9 and 0.9).
        norm: q of the scaled q-norm, >= 1 or ``math.inf`` (the paper: 2).
        brownian_memory: capacity of each sample's stack of known Brownian increments kept across
            rejected attempts (rejection sampling with memory, Rackauckas & Nie 2017). With memory a
            rejection never discards noise, so accepting or rejecting cannot bias the path. 0 redraws the
            noise at every attempt, as in the paper's Algorithm 1: the accept test then selects noise
            (steps that move away from 0 get looser relative tolerances), which in low dimension inflates
            the sample variance (measured +15% to +130% at D = 4 on Gaussian data, more at tighter
            tolerances). Costs ``brownian_memory`` copies of the state.
        max_iters: the step budget: RuntimeError after this many iterations (each attempts one
            step for every unfinished sample) if some sample has not reached eps.
        denoise: add the Tweedie step ``(x + std^2 score) / alpha`` at eps (one more NFE; output at t = 0).
        stats: optional dict that receives ``nfe`` (batched score evaluations), ``iterations`` and
            ``rejected`` (rejected attempts summed over samples).

    Returns:
        Samples shaped like ``x``, at t = eps (or t = 0 with ``denoise``).
    """
    score = CheckedScore(score)  # counts evaluations; raises naming the score for a wrong shape
    t_start, eps = ts.tolist()
    b, kw = x.shape[0], dict(dtype=x.dtype, device=x.device)
    t = torch.full((b,), t_start, **kw)  # each sample's own time and step size
    h = torch.full((b,), min(h_init, t_start - eps), **kw)
    t_end = torch.full((b,), float(eps), **kw)
    control = _Controller(rtol, atol, safety, exponent, norm)
    memory = _BrownianMemory(brownian_memory, x)
    guard = _Guard(state_limit(sde.prior_std), max_iters, eps, b, x.device)
    x_prev = x
    while guard.running(x, t, h, t_end):  # the one host sync per iteration
        h, dw = memory.draw(h, randn(x.shape, generator, x.device, x.dtype))
        t_next = torch.where(h >= t - t_end, t_end, t - h)  # land exactly on eps
        x_em, x_heun = _paired_step(sde, score, x, t, t_next, h, dw)
        err = control.error(x_em, x_heun, x_prev)  # E, per sample
        accept = guard.record(err, t > t_end)
        memory.update(h, dw, accept, t > t_end)
        mask = bcast(accept, x)
        x, x_prev = torch.where(mask, x_heun, x), torch.where(mask, x_em, x_prev)  # accept: x = x''
        t = torch.where(accept, t_next, t)
        h = control.next_step(h, err, t - t_end)
    if denoise:  # Tweedie at eps: (x + std^2 score) / alpha
        alpha, std = sde.alpha_std(t_end)
        x = (x + bcast(std.square(), x) * score(x, t_end)) / bcast(alpha, x)
        if not float(x.abs().amax()) <= guard.limit:
            raise FloatingPointError(
                f"non-finite or implausibly large state at t = {eps:.6g} (denoising step)"
            )
    if stats is not None:
        stats.update(nfe=score.nfe, iterations=guard.iters, rejected=int(guard.rejected))
    return x


def _paired_step(
    sde: SDE, score: ScoreFn, x: Tensor, t: Tensor, t_next: Tensor, h: Tensor, dw: Tensor
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama ``x'`` and improved Euler ``x''`` of the reverse SDE from t to ``t_next``, with the
    same Brownian increment ``dw`` (Jolicoeur-Martineau et al. 2021, Algorithm 1)."""

    def reverse_drift(x: Tensor, t: Tensor) -> Tensor:  # F(x, t) = f(t) x - g(t)^2 score(x, t)
        return bcast(sde.f(t), x) * x - bcast(sde.g2(t), x) * score(x, t)

    k1 = -bcast(h, x) * reverse_drift(x, t) + bcast(sde.g2(t).sqrt(), x) * dw
    x_em = x + k1  # x' = x - h F(x, t) + g(t) dw
    k2 = -bcast(h, x) * reverse_drift(x_em, t_next) + bcast(sde.g2(t_next).sqrt(), x) * dw
    return x_em, x + 0.5 * (k1 + k2)  # x'' = x + (k1 + k2) / 2


class _Controller:
    """The error estimate and step-size rule of Algorithm 1: ``E = ||(x'' - x') / tol||_q`` with
    ``tol = max(atol, rtol max(|x'|, |x'_prev|))``; ``h <- min(t - eps, safety h E^(-exponent))``."""

    def __init__(self, rtol: float, atol: float, safety: float, exponent: float, norm: float) -> None:
        self.rtol, self.atol, self.safety, self.exponent, self.norm = rtol, atol, safety, exponent, norm

    def error(self, x_em: Tensor, x_heun: Tensor, x_prev: Tensor) -> Tensor:
        tol = torch.maximum(x_em.abs(), x_prev.abs()).mul(self.rtol).clamp_min(self.atol)
        return _scaled_norm((x_heun - x_em) / tol, self.norm)

    def next_step(self, h: Tensor, err: Tensor, room: Tensor) -> Tensor:
        # err = 0 would give an infinite factor: the min with the room left to eps keeps h finite
        grow = self.safety * err.clamp_min(torch.finfo(err.dtype).tiny).pow(-self.exponent)
        return torch.minimum(room, h * grow)


class _Guard:
    """The loop's bookkeeping and its one host sync per iteration: done? a non-finite error estimate
    or state, a state past the plausible bound, a step size below what t resolves, the step budget?"""

    def __init__(self, limit: float, max_iters: int, eps: float, batch: int, device: torch.device) -> None:
        self.limit, self.max_iters, self.eps, self.iters = limit, max_iters, eps, 0
        self.rejected = torch.zeros((), dtype=torch.long, device=device)
        self.bad = torch.zeros((batch,), dtype=torch.bool, device=device)  # a NaN/inf error estimate

    def record(self, err: Tensor, active: Tensor) -> Tensor:
        """The accepted attempts (``E <= 1``); counts the rejected ones and flags bad estimates."""
        self.bad = active & ~torch.isfinite(err)
        accept = (err <= 1) & active
        self.rejected += (active & ~accept).sum()
        return accept

    def running(self, x: Tensor, t: Tensor, h: Tensor, t_end: Tensor) -> bool:
        active = t > t_end
        big = ~(x.reshape(x.shape[0], -1).abs().amax(1) <= self.limit)  # NaN counts as too big
        stuck = active & (t - h >= t)
        status = torch.stack([active.any(), self.bad.any(), big.any(), stuck.any()]).tolist()
        if status[1] or status[2]:
            raise FloatingPointError(
                f"non-finite or implausibly large state or score at t = {float(t[self.bad | big].max()):.6g} "
                f"(plausible: |x| <= {self.limit:.3g}, 1e4 x the prior std)"
            )
        if status[3]:
            raise StepSizeUnderflowError(
                f"sde_adaptive: step size underflow at t = {float(t[stuck].max()):.6g} "
                f"(h = {float(h[stuck].min()):.3g}): loosen rtol/atol or check the score"
            )
        if status[0] and self.iters == self.max_iters:
            raise RuntimeError(
                f"sde_adaptive: max_iters = {self.max_iters} iterations without reaching eps = {self.eps:g}: "
                f"{int(active.sum())} sample(s) still at t in [{float(t[active].min()):.6g}, "
                f"{float(t[active].max()):.6g}] with step sizes down to {float(h[active].min()):.3g}; "
                "loosen rtol/atol or raise max_iters"
            )
        self.iters += status[0]
        return status[0]


class _BrownianMemory:
    """Rejection sampling with memory (Rackauckas & Nie 2017, RSwM1) with per-sample steps.

    Each sample keeps a stack (top first, at most ``capacity`` entries) of the future Brownian increments
    it already knows: durations ``dur`` (B, C) and increments ``inc`` (B, C, *shape). A rejected attempt
    splits what it used into known segments instead of discarding it, so later attempts draw from the
    Brownian bridge and the path stays a Brownian path whatever the accept/reject decisions. A sample
    with two or more known segments steps at most to the end of the first; with one it may step past it
    (adding fresh independent noise). With capacity 0 every attempt draws fresh noise (the paper's rule).
    """

    def __init__(self, capacity: int, x: Tensor) -> None:
        b = x.shape[0]
        self.capacity = capacity
        self.dur = x.new_zeros((b, capacity))
        self.inc = x.new_zeros((b, capacity) + tuple(x.shape[1:]))
        self.depth = torch.zeros(b, dtype=torch.long, device=x.device)

    def draw(self, h: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        """Step sizes to attempt (capped as described) and their increments, from standard normals ``xi``."""
        if self.capacity == 0:
            return h, bcast(h.sqrt(), xi) * xi
        top_h, top_w = self.dur[:, 0], self.inc[:, 0]
        h = torch.where(self.depth >= 2, torch.minimum(h, top_h), h)
        inside = h < top_h
        frac = h / torch.where(inside, top_h, torch.ones_like(top_h))
        bridge = bcast(frac, xi) * top_w + bcast((h * (1 - frac)).clamp_min(0).sqrt(), xi) * xi
        extend = top_w + bcast((h - top_h).clamp_min(0).sqrt(), xi) * xi
        return h, torch.where(bcast(inside, xi), bridge, extend)

    def update(self, h: Tensor, dw: Tensor, accept: Tensor, active: Tensor) -> None:
        """Record the outcome of attempts (h, dw) made by :meth:`draw`."""
        if self.capacity == 0:
            return
        top_h, top_w = self.dur[:, 0], self.inc[:, 0]
        inside = (h < top_h) & active
        # the part of the top segment after h stays known, whatever the outcome
        dur = self.dur.clone()
        inc = self.inc.clone()
        dur[:, 0] = torch.where(inside, top_h - h, top_h)
        inc[:, 0] = torch.where(bcast(inside, dw), top_w - dw, top_w)
        pop = active & accept & ~inside & (self.depth > 0)  # consumed the whole top segment
        push = active & ~accept & inside  # the rejected piece (h, dw) goes on top
        fresh = active & ~accept & ~inside & (h > top_h)  # the fresh part past the known path
        slots = torch.arange(self.capacity, device=h.device)
        at_depth = (slots == self.depth[:, None]) & fresh[:, None]  # depth is 0 or 1 there
        dur = torch.where(at_depth, (h - top_h)[:, None], dur)
        inc = torch.where(bcast(at_depth, inc), (dw - top_w)[:, None], inc)
        left_h = torch.cat([dur[:, 1:], dur.new_zeros((dur.shape[0], 1))], 1)
        left_w = torch.cat([inc[:, 1:], torch.zeros_like(inc[:, :1])], 1)
        right_h = torch.cat([h[:, None], dur[:, :-1]], 1)
        right_w = torch.cat([dw[:, None], inc[:, :-1]], 1)
        self.dur = torch.where(pop[:, None], left_h, torch.where(push[:, None], right_h, dur))
        self.inc = torch.where(bcast(pop, inc), left_w, torch.where(bcast(push, inc), right_w, inc))
        self.depth = (self.depth - pop.long() + push.long() + fresh.long()).clamp_max(self.capacity)
