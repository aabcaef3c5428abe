"""Black-box sampling: the reverse SDE through torchsde, the probability flow through torchdiffeq."""

from __future__ import annotations

import math
from typing import Any

import torch
import torchsde
from torch import Tensor
from torchsde import BrownianInterval
from torchsde.types import Scalar

from .._checks import Generator, generators, seed_from
from ..dynamics import ProbabilityFlowODE, ReverseSDE
from ..likelihood import _ode_kwargs, _odeint, per_sample_norm
from ..score import ScoreFn
from ..sde import SDE
from .grids import grid_time

__all__ = ["sample_ode", "sample_sde", "brownian_motion", "SDE_METHODS", "GridReverseSDE"]

#: torchsde methods usable here, with the SDE form each one needs. g depends on t only, so the Ito and
#: Stratonovich forms of the reverse SDE are the same equation.
SDE_METHODS = {
    "euler": "ito",
    "milstein": "ito",
    "srk": "ito",
    "euler_heun": "stratonovich",
    "heun": "stratonovich",
    "midpoint": "stratonovich",
    "reversible_heun": "stratonovich",
}


class _PerSampleBrownian(torchsde.BaseBrownian):
    """Stacks one Brownian motion per sample, so sample k depends on generator k alone."""

    def __init__(self, parts: list[BrownianInterval]) -> None:
        self.parts = parts

    def __call__(self, ta: Scalar, tb: Scalar | None = None, return_U: bool = False, return_A: bool = False):
        outs = [p(ta, tb, return_U=return_U, return_A=return_A) for p in self.parts]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts, dim=0) for parts in zip(*outs, strict=True))
        return torch.cat(outs, dim=0)

    def __repr__(self) -> str:
        return f"_PerSampleBrownian({len(self.parts)} x {self.parts[0]!r})"

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.parts),) + tuple(self.parts[0].shape[1:]))

    @property
    def levy_area_approximation(self) -> str:
        return self.parts[0].levy_area_approximation


class _StepBrownian(torchsde.BaseBrownian):
    """One Brownian path per sample, drawn step by step: for fixed-step solvers, which ask for the
    increments of their steps in order. The increment of sample k over [ta, tb] is
    ``sqrt(tb - ta) N(0, I)`` drawn from generator k, so sample k depends on its generator alone, as with
    :class:`_PerSampleBrownian`, but a step costs one draw per sample instead of a search in one
    BrownianInterval per sample (64 samples x 1000 Euler steps of the digits model: 0.5 s instead of
    about 20 s). A query out of order (an adaptive or a Levy-area solver) raises RuntimeError.
    """

    def __init__(self, t0: float, gens: list[torch.Generator], like: Tensor) -> None:
        self._t = float(t0)
        self._gens = gens
        self._like = like[:1]
        self._last: tuple[float, float, Tensor] | None = None

    def __call__(self, ta: Scalar, tb: Scalar | None = None, return_U: bool = False, return_A: bool = False):
        if tb is None or return_U or return_A:
            raise RuntimeError("_StepBrownian gives increments over [ta, tb] only")
        ta, tb = float(ta), float(tb)
        if self._last is not None and (ta, tb) == self._last[:2]:
            return self._last[2]
        if ta != self._t or tb < ta:
            raise RuntimeError(
                f"_StepBrownian: interval [{ta}, {tb}] out of order (the path is at {self._t})"
            )
        noise = [
            torch.randn(self._like.shape, generator=g, dtype=self.dtype, device=self.device)
            for g in self._gens
        ]
        increment = torch.cat(noise) * math.sqrt(tb - ta)
        self._t, self._last = tb, (ta, tb, increment)
        return increment

    def __repr__(self) -> str:
        return f"_StepBrownian({len(self._gens)} x {tuple(self._like.shape[1:])}, at t = {self._t})"

    @property
    def dtype(self) -> torch.dtype:
        return self._like.dtype

    @property
    def device(self) -> torch.device:
        return self._like.device

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._gens),) + tuple(self._like.shape[1:]))

    @property
    def levy_area_approximation(self) -> str:
        return "none"


#: torchsde's fixed-step methods that ask for their steps' increments in order (srk also asks for Levy area).
STEPWISE_METHODS = ("euler", "milstein", "euler_heun", "heun", "midpoint", "reversible_heun")


def brownian_motion(
    t0: float,
    t1: float,
    y0: Tensor,
    generator: Generator = None,
    levy_area_approximation: str = "none",
    dt: float | None = None,
    stepwise: bool = False,
) -> BrownianInterval | _PerSampleBrownian | _StepBrownian:
    """A torchsde Brownian motion on [t0, t1] shaped like the flat state ``y0`` (B, D).

    Its entropy comes from ``generator`` (not NumPy's global RNG, torchsde's default), so the same
    generator gives the same path; a list of B generators gives one independent path per sample.
    ``dt``, the solver's (initial) step, is BrownianInterval's hint for laying out its search tree:
    without it every query of a long fixed-step solve costs several times more normal draws.
    ``stepwise`` (with a list of generators): the path is drawn increment by increment, for a solver of
    ``STEPWISE_METHODS`` with fixed steps; much faster, and only for queries in time order.
    """
    gens = generators(generator, y0.shape[0])
    if stepwise and isinstance(gens, list) and levy_area_approximation == "none":
        return _StepBrownian(t0, gens, y0)
    kw = dict(
        t0=t0, t1=t1, dtype=y0.dtype, device=y0.device, levy_area_approximation=levy_area_approximation, dt=dt
    )
    if isinstance(gens, list):
        return _PerSampleBrownian(
            [BrownianInterval(size=(1, y0.shape[1]), entropy=seed_from(g), **kw) for g in gens]
        )
    return BrownianInterval(size=tuple(y0.shape), entropy=seed_from(gens), **kw)


class GridReverseSDE(ReverseSDE):
    """The reverse-time SDE in the grid variable ``u in [0, 1]`` of :func:`~.grids.grid_time`.

    With ``t = t(u)`` decreasing and ``t'(u) = dt/du < 0``, the reverse SDE ``dx = [f x - g^2 s] dt +
    g dw_bar`` becomes ``dx = [g^2 s - f x] |t'(u)| du + g sqrt(|t'(u)|) dW_u``: fixed steps in u walk
    the chosen grid in t (log-SNR uniform, Karras, ...), and the score still sees the true time.
    """

    def __init__(
        self, sde: SDE, score: ScoreFn, shape, t_start: float, eps: float, grid: str, sde_type: str = "ito"
    ) -> None:
        super().__init__(sde, score, shape, sde_type)
        self.t_start, self.eps, self.grid = float(t_start), float(eps), grid

    def _time(self, u: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        t, dt_du = grid_time(self.sde, self.eps, self.grid, u.to(y).reshape(1), self.t_start)
        return t.expand(y.shape[0]), dt_du.abs().expand(y.shape[0])

    def f(self, u: Tensor, y: Tensor) -> Tensor:
        t, speed = self._time(u, y)
        x = y.view((y.shape[0],) + self.shape)
        s = self._score(x, t).reshape(y.shape)
        return (self.sde.g2(t)[:, None] * s - self.sde.f(t)[:, None] * y) * speed[:, None]

    def g(self, u: Tensor, y: Tensor) -> Tensor:
        t, speed = self._time(u, y)
        return (self.sde.g2(t) * speed).sqrt()[:, None].expand_as(y)


@torch.no_grad()
def sample_sde(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    solver: str,
    num_steps: int,
    adaptive: bool,
    rtol: float,
    atol: float,
    grid: str,
    options: dict[str, Any] | None,
) -> Tensor:
    """Integrate the reverse-time SDE (Song et al. 2021, eq. 6) from x at ``ts[0]`` down to ``ts[1]`` with
    torchsde.

    Args:
        solver: a torchsde method (``SDE_METHODS``); Stratonovich-only methods get the Stratonovich form.
        num_steps: fixed steps of size (ts[0] - ts[1]) / num_steps (the initial step when ``adaptive``).
        adaptive: torchsde's error-controlled stepping (step doubling) with ``rtol`` / ``atol``.
        grid: "time_uniform" or another of :data:`~diffscore.sampling.grids.GRIDS`: the solver then
            takes ``num_steps`` uniform steps in the grid variable u (:class:`GridReverseSDE`), i.e.
            steps uniform in log-SNR, on the Karras grid, ...
        options: torchsde's solver options.

    Returns the state at ``ts[1]``, shaped like ``x``. ``stats["nfe"]`` gets the score evaluations.
    """
    t_start, eps = ts.tolist()
    shape = tuple(x.shape[1:])
    y0 = x.reshape(x.shape[0], -1)
    if grid == "time_uniform":
        rsde = ReverseSDE(sde, score, shape, sde_type=SDE_METHODS[solver])
        ts = ReverseSDE.solver_times([t_start, eps]).to(y0)
        dt = (t_start - eps) / num_steps
    else:
        rsde = GridReverseSDE(sde, score, shape, t_start, eps, grid, sde_type=SDE_METHODS[solver])
        ts = torch.tensor([0.0, 1.0], dtype=torch.float64).to(y0)
        dt = 1.0 / num_steps
    levy = "space-time" if solver == "srk" else "none"
    stepwise = solver in STEPWISE_METHODS and not adaptive
    bm = brownian_motion(float(ts[0]), float(ts[1]), y0, generator, levy, dt=dt, stepwise=stepwise)
    ys = torchsde.sdeint(
        rsde, y0, ts, bm=bm, method=solver, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol, options=options
    )
    if stats is not None:
        stats["nfe"] = rsde.nfe
    return ys[-1].reshape(x.shape)


@torch.no_grad()
def sample_ode(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generator = None,
    stats: dict[str, Any] | None = None,
    solver: str,
    rtol: float,
    atol: float,
    options: dict[str, Any] | None,
) -> Tensor:
    """Integrate the probability-flow ODE (Song et al. 2021, eq. 13) from x at ``ts[0]`` to ``ts[1]`` with
    torchdiffeq.

    ``solver`` is a torchdiffeq method. Deterministic given x (``generator`` only draws x in
    :func:`~diffscore.sample`). Adaptive methods use a per-sample error norm, so each sample meets the
    tolerance on its own. A fixed-grid method ("euler", "midpoint", "rk4", ...) needs its step:
    ``options={"step_size": h}`` (or torchdiffeq's ``"grid_constructor"``).
    """
    eps = float(ts[-1])
    flow = ProbabilityFlowODE(sde, score, t_min=eps)
    ts = ts.to(dtype=x.dtype, device=x.device)
    kw = _ode_kwargs(rtol, atol, solver, options, per_sample_norm(x.shape[0]), ts[-1], name="solver")
    x = _odeint(flow, x, ts, flow, **kw)[-1]
    if stats is not None:
        stats["nfe"] = flow.nfe
    return x
