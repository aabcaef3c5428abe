"""Multistep exponential integrators in data prediction: DPM-Solver++(2M, 3M), UniPC and their SDE forms.

Sources: Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models" (Algorithm 2, multistep DPM-Solver++(2M); SDE-DPM-Solver++(2M) of its Sec. 5; the 3M SDE solver
as in k-diffusion's ``sample_dpmpp_3m_sde``); Lu et al.
2022, "DPM-Solver" (the exponential-integrator expansion, Sec. 3); Zhao et al. 2023, "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models" (Algorithms 2-3, the B(h) variants).

Notation (per step from ``s = t_{i-1}`` to ``t = t_i``): ``x_t = alpha_t x_0 + sigma_t z`` with
``sigma_t = std(t)``, ``lambda_t = log(alpha_t / sigma_t)``, ``h = lambda_t - lambda_s > 0``, and the data
prediction (Tweedie) ``m(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t = E[x_0 | x_t = x]``. The
probability flow in lambda has the exact solution (Lu et al. 2022b, eq. (9))

    x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^{-(h - u)} m(lambda_s + u) du.

Expanding m in u around ``lambda_s`` with divided differences of earlier model values gives the
multistep solvers; with ``phi_1 = e^{-h} - 1``, ``phi_2 = phi_1 / h + 1``, ``phi_3 = phi_2 / h - 1/2``:

    int e^{-(h-u)} du = -phi_1,   int e^{-(h-u)} u du = h phi_2,   int e^{-(h-u)} u^2 / 2 du = -h^2 phi_3.

Every coefficient depends on the grid alone: it is computed once, in float64 on the host, before the
loop, so the loop never synchronises with the device. A state that turns non-finite or implausibly
large raises FloatingPointError after the loop, naming the time of the first bad step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import CheckedScore, FiniteMonitor, Generator, randn, state_limit
from ..score import ScoreFn
from ..sde import SDE

__all__ = [
    "dpmpp",
    "unipc",
    "sde_dpmpp_2m",
    "sde_dpmpp_3m",
    "DPMPP_VARIANTS",
    "UNIPC_VARIANTS",
    "SDE_DPMPP_2M_VARIANTS",
    "dpmpp_orders",
]

#: The factor of the second divided difference in the 3M step, by ``variant``: "taylor" 2, the Taylor
#: coefficient (``int_0^h e^{-(h-u)} u^2 du = -2 h^2 phi_3``); "reference" 1, that of the reference
#: implementations (dpm-solver, diffusers, k-diffusion). ``dpmpp``'s docstring says when each wins.
DPMPP_VARIANTS = {"taylor": 2.0, "reference": 1.0}

#: B(h) of UniPC (Zhao et al. 2023, Sec. 3.3): "bh1" B(h) = h, "bh2" B(h) = e^h - 1 (in their signs).
UNIPC_VARIANTS = ("bh1", "bh2")

#: The second-order terms of SDE-DPM-Solver++(2M) (``sde_dpmpp_2m``'s docstring).
SDE_DPMPP_2M_VARIANTS = ("midpoint", "heun")


class _Grid:
    """The grid and its per-point scalars as Python floats (float64 on the host) plus the (N+1, B)
    device times for the score calls."""

    def __init__(self, sde: SDE, t64: Tensor, x: Tensor) -> None:
        alpha, std = sde.alpha_std(t64)
        self.times = t64.tolist()
        self.alpha = alpha.tolist()
        self.std = std.tolist()
        self.lam = (alpha.log() - std.log()).tolist()
        self.h = [self.lam[i] - self.lam[i - 1] for i in range(1, len(self.lam))]  # h[i-1]: step i
        self.tb = t64.to(dtype=x.dtype, device=x.device)[:, None].repeat(1, x.shape[0])  # row i: (B,) t_i


class _DataPrediction:
    """``m(x, t_i) = (x + std_i^2 score(x, t_i)) / alpha_i`` with a call counter."""

    def __init__(self, score: ScoreFn, grid: _Grid) -> None:
        self.score, self.grid = CheckedScore(score), grid  # raises naming the score for a wrong shape

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def __call__(self, x: Tensor, i: int) -> Tensor:
        g = self.grid
        return torch.add(x, self.score(x, g.tb[i]), alpha=g.std[i] ** 2).mul_(1.0 / g.alpha[i])


def dpmpp_orders(num_steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each of the ``num_steps`` steps of multistep DPM-Solver++ / UniPC.

    Warm-up: step i (1-based) has at most i - 1 earlier model values, so its order is at most i (Lu et
    al. 2022b, Alg. 2; Zhao et al. 2023, Alg. 2). With ``lower_order_final`` the last steps drop order
    too, step i using at most ``num_steps - i + 1`` (the last step is first order), as both papers'
    reference code does for few steps.
    """
    orders = []
    for i in range(1, num_steps + 1):
        o = min(order, i)
        if lower_order_final:
            o = min(o, num_steps - i + 1)
        orders.append(o)
    return orders


def _finish(
    x: Tensor, grid: _Grid, model: _DataPrediction, denoise: bool, monitor: FiniteMonitor, n: int, stats
) -> Tensor:
    if denoise:  # Tweedie at eps: E[x_0 | x_eps]
        x = model(x, n)
        monitor.update(x, n)
    monitor.check(grid.times)
    if stats is not None:
        stats["nfe"] = model.nfe
    return x


@torch.no_grad()
def dpmpp(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    order: int,
    variant: str,
    lower_order_final: bool,
    denoise: bool,
) -> Tensor:
    """Multistep DPM-Solver++ (Lu et al. 2022b, Algorithm 2) for the probability flow of ``sde``.

    One score evaluation per step; each step reuses the data predictions ``m_{i-1}, m_{i-2}, ...`` of the
    previous steps (module docstring for the notation). With ``r = h_{i-1} / h_i``:

    * order 1 (DDIM): ``x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi_1 m_{i-1}``;
    * order 2 (2M, Algorithm 2): the same with ``m_{i-1}`` replaced by
      ``D = (1 + 1/(2r)) m_{i-1} - 1/(2r) m_{i-2}``;
    * order 3 (3M): ``x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi_1 m_{i-1} + alpha_i phi_2 D1
      - c alpha_i phi_3 D2``, where ``D1 ~ h m'`` and ``D2 ~ h^2 m'' / 2`` are the divided differences of
      the last three model values (``r0 = h_{i-1} / h_i``, ``r1 = h_{i-2} / h_i``,
      ``D1_0 = (m_{i-1} - m_{i-2}) / r0``, ``D1_1 = (m_{i-2} - m_{i-3}) / r1``,
      ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1) / (r0 + r1)``). ``variant``
      "taylor": c = 2, the Taylor coefficient (``int e^{-(h-u)} u^2 du = -2 h^2 phi_3``), third order
      (4 on Gaussian data); "reference": c = 1, the reference implementations' (dpm-solver, diffusers,
      k-diffusion), which leaves a local error of order h^3 (second order) but extrapolates half the
      curvature, which is the smaller error where the steps are long in lambda (docs/samplers.md).

    Warm-up: the first steps use the orders the available history allows (1, then 2, ...). With
    ``lower_order_final`` (default: on for fewer than 15 steps, the papers' code) the final steps drop
    to orders 2 and 1, which the papers found stabilises few-step sampling.

    Args:
        sde, score: the forward SDE and ``score(x, t)`` (t a (B,) tensor of true times).
        x: (B, *shape) state at ``ts[0]``.
        ts: (N + 1,) decreasing times (float64) ending at eps with std(eps) > 0 (lambda(eps) finite):
            N steps = N NFE (+1 with ``denoise``).
        generator: unused (deterministic given ``x``).
        stats: optional dict that receives ``nfe``.
        order: 1, 2 or 3.
        variant: the 3M coefficient, "taylor" or "reference" (above).
        lower_order_final: see above (:func:`~diffscore.sample`'s default: ``num_steps < 15``).
        denoise: add the Tweedie step ``m(x, eps)`` at the end (one more NFE; output at t = 0).

    Returns:
        Samples shaped like ``x`` at t = eps (or t = 0 with ``denoise``).
    """
    g = _Grid(sde, ts, x)
    n = len(g.h)
    d2_weight = DPMPP_VARIANTS[variant]
    model = _DataPrediction(score, g)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    orders = dpmpp_orders(n, order, lower_order_final)
    ms = [model(x, 0)]  # ms[-1] = m_{i-1}, ms[-2] = m_{i-2}, ...
    for i in range(1, n + 1):
        o, h = orders[i - 1], g.h[i - 1]
        phi1 = math.expm1(-h)
        ratio, a_t = g.std[i] / g.std[i - 1], g.alpha[i]
        x = torch.mul(x, ratio).add_(ms[-1], alpha=-a_t * phi1)
        if o == 2:
            r = g.h[i - 2] / h
            x.add_(ms[-1] - ms[-2], alpha=-a_t * phi1 / (2 * r))  # -alpha phi_1 (D - m_{i-1})
        elif o == 3:
            r0, r1 = g.h[i - 2] / h, g.h[i - 3] / h
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            d1_0 = (ms[-1] - ms[-2]).div_(r0)
            d1_1 = (ms[-2] - ms[-3]).div_(r1)
            diff = d1_0 - d1_1
            x.add_(d1_0, alpha=a_t * phi2).add_(diff, alpha=a_t * phi2 * r0 / (r0 + r1))  # alpha phi_2 D1
            x.add_(diff, alpha=-d2_weight * a_t * phi3 / (r0 + r1))  # -c alpha phi_3 D2
        monitor.update(x, i)
        if i < n:  # the last model value is never needed
            ms.append(model(x, i))
            if len(ms) > 3:
                ms.pop(0)
    return _finish(x, g, model, denoise, monitor, n, stats)


def _unipc_coefficients(hs: list[float], h: float, p: int, variant: str) -> dict[str, Any]:
    """UniPC's coefficients for one step of order p (Zhao et al. 2023, Alg. 2-3 with B(h)).

    ``hs``: the earlier steps in lambda, most recent first (``hs[k-1] = lambda_{i-k} - lambda_{i-k-1}``).
    Returns ``r_k`` (k = 1..p-1), ``B``, ``phi1 = e^{-h} - 1`` and the predictor's / corrector's rho.
    In data prediction the expansion variable is ``hh = -h``; ``b_j = hh phi_{j+1}(hh) j! / B(hh)``,
    ``R_jk = r_k^(j-1)`` with ``r_p = 1`` for the corrector's new point.
    """
    hh = -h
    rks = []
    acc = 0.0
    for k in range(1, p):
        acc += hs[k - 1]
        rks.append(-acc / h)  # (lambda_{i-1-k} - lambda_{i-1}) / h < 0
    rks.append(1.0)
    h_phi_1 = math.expm1(hh)
    big_b = hh if variant == "bh1" else h_phi_1
    # hh phi_{j+1}(hh) for j = 1..p by the recursion phi_{j+1}(z) = (phi_j(z) - 1/j!) / z
    b, h_phi_k, fact = [], h_phi_1 / hh - 1.0, 1.0
    for j in range(1, p + 1):
        b.append(h_phi_k * fact / big_b)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R = [[rk ** (j - 1) for rk in rks] for j in range(1, p + 1)]
    rho_p: list[float] = []
    if p == 2:
        rho_p = [0.5]  # the paper's simplified order-2 predictor (then UniP-2 = DPM-Solver++(2M) for bh2)
    elif p > 2:
        rho_p = torch.linalg.solve(
            torch.tensor([row[: p - 1] for row in R[: p - 1]], dtype=torch.float64),
            torch.tensor(b[: p - 1], dtype=torch.float64),
        ).tolist()
    if p == 1:
        rho_c = [0.5]
    else:
        rho_c = torch.linalg.solve(
            torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        ).tolist()
    return dict(rks=rks[:-1], B=big_b, phi1=h_phi_1, rho_p=rho_p, rho_c=rho_c)


@torch.no_grad()
def unipc(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    order: int,
    variant: str,
    use_corrector: bool,
    lower_order_final: bool,
    denoise: bool,
) -> Tensor:
    """UniPC (Zhao et al. 2023): the UniP-p predictor and the UniC corrector, in data prediction.

    Step i from ``t_{i-1}`` to ``t_i`` with order p uses the model values ``m_{i-1}, ..., m_{i-p}`` at
    ``lambda_{i-1-k} = lambda_{i-1} + r_k h``:

    * predictor UniP-p: ``x~_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi_1 m_{i-1}
      - alpha_i B(h) sum_k rho_k D_k`` with ``D_k = (m_{i-1-k} - m_{i-1}) / r_k``, rho solving
      ``R rho = b`` on the first p - 1 rows (``R_jk = r_k^(j-1)``, ``b_j = hh phi_{j+1}(hh) j! / B``,
      ``hh = -h``); p = 2 uses rho = 1/2;
    * corrector UniC-p: evaluate ``m_i = m(x~_i, t_i)`` (the NFE the next step needs anyway) and redo the
      update with ``D_p = m_i - m_{i-1}`` (``r_p = 1``) and rho solving the full p x p system (p = 1:
      1/2); the state becomes the corrected value, while ``m_i`` (at the predicted point) is what later
      steps use. This raises the order by one at no extra NFE. No corrector after the last step.

    ``variant`` picks B(h): "bh1" ``B = hh`` or "bh2" ``B = e^hh - 1`` (default; the paper recommends
    bh1 below 10 NFE for unconditional models, bh2 otherwise). Warm-up orders grow 1, 2, ...; with
    ``lower_order_final`` (default, as in the paper's code) they drop again over the last steps.

    Args:
        sde, score, x, ts, generator, stats, denoise: as in :func:`dpmpp`.
        order: 1, 2 or 3 (the predictor's; the corrector adds one).
        variant: "bh1" or "bh2".
        use_corrector: apply UniC (True, default) or run the predictor alone (UniP). (Named apart from
            ``pc``'s ``corrector``, a string, since both reach :func:`~diffscore.sample` as options.)
        lower_order_final: lower the order of the final steps.

    Returns:
        Samples shaped like ``x`` at t = eps (or t = 0 with ``denoise``).
    """
    g = _Grid(sde, ts, x)
    n = len(g.h)
    model = _DataPrediction(score, g)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    orders = dpmpp_orders(n, order, lower_order_final)
    ms = [model(x, 0)]
    for i in range(1, n + 1):
        p, h = orders[i - 1], g.h[i - 1]
        c = _unipc_coefficients(g.h[: i - 1][::-1], h, p, variant)
        a_t, scale = g.alpha[i], -g.alpha[i] * c["B"]
        base = torch.mul(x, g.std[i] / g.std[i - 1]).add_(ms[-1], alpha=-a_t * c["phi1"])
        ds = [(ms[-1 - k] - ms[-1]).div_(c["rks"][k - 1]) for k in range(1, p)]
        x = base.clone() if ds and c["rho_p"] else base
        for rho, d in zip(c["rho_p"], ds, strict=False):
            x.add_(d, alpha=scale * rho)
        if use_corrector and i < n:
            m_new = model(x, i)
            x = base
            for rho, d in zip(c["rho_c"][:-1], ds, strict=True):
                x.add_(d, alpha=scale * rho)
            x.add_(m_new - ms[-1], alpha=scale * c["rho_c"][-1])
        elif i < n:
            m_new = model(x, i)
        monitor.update(x, i)
        if i < n:
            ms.append(m_new)
            if len(ms) > 3:
                ms.pop(0)
    return _finish(x, g, model, denoise, monitor, n, stats)


@torch.no_grad()
def sde_dpmpp_2m(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    variant: str,
    lower_order_final: bool,
    denoise: bool,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Sec. 5, eq. (18) and App. B): a multistep reverse-SDE solver.

    The reverse SDE in lambda, written for the data prediction m, has the exact solution

        x_t = (sigma_t / sigma_s) e^{-h} x_s + 2 alpha_t int_0^h e^{-2(h - u)} m(lambda_s + u) du
              + sigma_t sqrt(1 - e^{-2h}) z,      z ~ N(0, I)

    (the noise term is exact: a Gaussian integral of the Brownian motion). Step i, with
    ``r = h_{i-1} / h_i``, replaces m by a combination of the last two model values:

        x_i = (sigma_i / sigma_{i-1}) e^{-h} x_{i-1} + alpha_i (1 - e^{-2h}) D + sigma_i sqrt(1 - e^{-2h}) z,

    * "midpoint" (the paper's): ``D = (1 + 1/(2r)) m_{i-1} - 1/(2r) m_{i-2}``;
    * "heun": m linear in u, integrated exactly: ``D = m_{i-1} + (h - (1 - e^{-2h}) / 2) /
      ((1 - e^{-2h}) h_{i-1}) (m_{i-1} - m_{i-2})`` (k-diffusion's name for it).

    The first step is first order (SDE-DPM-Solver-1++, ``D = m_{i-1}``); with ``lower_order_final`` the
    last one too. One NFE per step.

    Args:
        sde, score, x, ts, stats, denoise: as in :func:`dpmpp`.
        generator: the noise: a torch.Generator, or a list of B of them (sample k then depends on
            generator k alone, so it equals its solo run).
        variant: "midpoint" or "heun" (above).
        lower_order_final: make the last step first order.

    Returns:
        Samples shaped like ``x`` at t = eps (or t = 0 with ``denoise``).
    """
    g = _Grid(sde, ts, x)
    n = len(g.h)
    model = _DataPrediction(score, g)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    m_prev: Tensor | None = None
    for i in range(1, n + 1):
        h = g.h[i - 1]
        m = model(x, i - 1)
        one_m = -math.expm1(-2 * h)  # 1 - e^{-2h}
        if m_prev is None or (lower_order_final and i == n):
            d = m
        elif variant == "midpoint":
            d = torch.add(m, m - m_prev, alpha=h / (2 * g.h[i - 2]))  # (1 + 1/(2r)) m_{i-1} - 1/(2r) m_{i-2}
        else:
            d = torch.add(m, m - m_prev, alpha=(h - one_m / 2) / (one_m * g.h[i - 2]))
        z = randn(x.shape, generator, x.device, x.dtype)
        x = torch.mul(x, g.std[i] / g.std[i - 1] * math.exp(-h)).add_(d, alpha=g.alpha[i] * one_m)
        x.add_(z, alpha=g.std[i] * math.sqrt(one_m))
        m_prev = m
        monitor.update(x, i)
    return _finish(x, g, model, denoise, monitor, n, stats)


@torch.no_grad()
def sde_dpmpp_3m(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    variant: str,
    lower_order_final: bool,
    denoise: bool,
) -> Tensor:
    """SDE-DPM-Solver++(3M): the third-order multistep solver of the reverse SDE.

    The exact solution of :func:`sde_dpmpp_2m` with m expanded to second order in u, through the divided
    differences ``D1 ~ h m'`` and ``D2 ~ h^2 m'' / 2`` of the last three model values (as in
    :func:`dpmpp`'s 3M step). The integrals are those of the probability flow at ``2h``:
    ``int_0^h 2 e^{-2(h-u)} (1, u, u^2/2) du = (-phi_1(2h), h phi_2(2h), -h^2 phi_3(2h))`` with the
    ``phi_k`` of the module docstring, so

        x_i = (sigma_i / sigma_{i-1}) e^{-h} x_{i-1} - alpha_i phi_1 m_{i-1} + alpha_i phi_2 D1
              - c alpha_i phi_3 D2 + sigma_i sqrt(-phi_1) z,      phi_k = phi_k(2h),

    with ``c = 2`` ("taylor") or ``c = 1`` ("reference": k-diffusion's ``sample_dpmpp_3m_sde``, which it
    matches to round-off on the same grid and noise). Warm-up: first order, then second order
    (``D1 = (m_{i-1} - m_{i-2}) / r``); with ``lower_order_final`` the last two steps drop to orders 2
    and 1. One NFE per step.

    Args:
        sde, score, x, ts, stats, denoise: as in :func:`dpmpp`; generator as in :func:`sde_dpmpp_2m`.
        variant: "taylor" or "reference" (above).
        lower_order_final: lower the orders of the final steps.

    Returns:
        Samples shaped like ``x`` at t = eps (or t = 0 with ``denoise``).
    """
    g = _Grid(sde, ts, x)
    n = len(g.h)
    model = _DataPrediction(score, g)
    monitor = FiniteMonitor("state", state_limit(sde.prior_std))
    orders = dpmpp_orders(n, 3, lower_order_final)
    c = DPMPP_VARIANTS[variant]
    ms: list[Tensor] = []  # ms[-1] = m_{i-1}, ms[-2] = m_{i-2}, ...
    for i in range(1, n + 1):
        o, h = orders[i - 1], g.h[i - 1]
        ms = [*ms[-2:], model(x, i - 1)]
        phi1 = math.expm1(-2 * h)
        phi2 = phi1 / (2 * h) + 1
        phi3 = phi2 / (2 * h) - 0.5
        x = torch.mul(x, g.std[i] / g.std[i - 1] * math.exp(-h)).add_(ms[-1], alpha=-g.alpha[i] * phi1)
        if o == 2:  # D1 = (m_{i-1} - m_{i-2}) / r
            x.add_(ms[-1] - ms[-2], alpha=g.alpha[i] * phi2 * h / g.h[i - 2])
        elif o == 3:
            r0, r1 = g.h[i - 2] / h, g.h[i - 3] / h
            d1_0, d1_1 = (ms[-1] - ms[-2]).div_(r0), (ms[-2] - ms[-3]).div_(r1)
            diff = d1_0 - d1_1  # D1 = d1_0 + r0 / (r0 + r1) diff, D2 = diff / (r0 + r1)
            x.add_(d1_0, alpha=g.alpha[i] * phi2).add_(diff, alpha=g.alpha[i] * phi2 * r0 / (r0 + r1))
            x.add_(diff, alpha=-c * g.alpha[i] * phi3 / (r0 + r1))
        x.add_(randn(x.shape, generator, x.device, x.dtype), alpha=g.std[i] * math.sqrt(-phi1))
        monitor.update(x, i)
    return _finish(x, g, model, denoise, monitor, n, stats)
