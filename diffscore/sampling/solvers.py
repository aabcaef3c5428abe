"""Black-box sampling: the reverse SDE through torchsde, the probability flow through torchdiffeq."""

from __future__ import annotations

import math
from typing import Any

import torch
import torchdiffeq
import torchsde
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS as ODE_SOLVERS  # torchdiffeq's method table
from torchsde import BrownianInterval
from torchsde.types import Scalar

from .._checks import Generator, check_positive, generators, seed_from
from ..dynamics import ProbabilityFlowODE, ReverseSDE
from ..likelihood import _ode_kwargs, per_sample_norm
from ..score import ScoreFn
from ..sde import SDE

__all__ = ["sample_ode", "sample_sde", "brownian_motion", "SDE_METHODS"]

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


@torch.no_grad()
def sample_sde(
    sde: SDE,
    score: ScoreFn,
    x_T: Tensor,
    eps: float,
    generator: Generator = None,
    solver: str = "euler",
    num_steps: int = 1000,
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    options: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Integrate the reverse-time SDE (Song et al. 2021, eq. 6) from x_T at T down to eps with torchsde.

    Args:
        solver: a torchsde method (``SDE_METHODS``); Stratonovich-only methods get the Stratonovich form.
        num_steps: fixed steps of size (T - eps) / num_steps (the initial step when ``adaptive``).
        adaptive: torchsde's error-controlled stepping (step doubling) with ``rtol`` / ``atol``.

    Returns the state at eps, shaped like ``x_T``. ``stats["nfe"]`` gets the score evaluations.
    """
    if solver not in SDE_METHODS:
        raise ValueError(f"solver must be one of {sorted(SDE_METHODS)} for method='sde', got {solver!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    shape = tuple(x_T.shape[1:])
    rsde = ReverseSDE(sde, score, shape, sde_type=SDE_METHODS[solver])
    y0 = x_T.reshape(x_T.shape[0], -1)
    ts = ReverseSDE.solver_times([sde.T, eps]).to(y0)
    levy = "space-time" if solver == "srk" else "none"
    dt = (sde.T - eps) / num_steps
    stepwise = solver in STEPWISE_METHODS and not adaptive
    bm = brownian_motion(float(ts[0]), float(ts[1]), y0, generator, levy, dt=dt, stepwise=stepwise)
    ys = torchsde.sdeint(
        rsde, y0, ts, bm=bm, method=solver, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol, options=options
    )
    if stats is not None:
        stats["nfe"] = rsde.nfe
    return ys[-1].reshape(x_T.shape)


@torch.no_grad()
def sample_ode(
    sde: SDE,
    score: ScoreFn,
    x_T: Tensor,
    eps: float,
    generator: Generator = None,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Integrate the probability-flow ODE (Song et al. 2021, eq. 13) from x_T at T to eps with torchdiffeq.

    ``solver`` is a torchdiffeq method. Deterministic given x_T (``generator`` only draws x_T in
    :func:`~diffscore.sample`). Adaptive methods use a per-sample error norm, so each sample meets the
    tolerance on its own.
    """
    del generator
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {sorted(ODE_SOLVERS)} for method='ode', got {solver!r}")
    flow = ProbabilityFlowODE(sde, score, t_min=eps)
    ts = torch.tensor([sde.T, eps], dtype=x_T.dtype, device=x_T.device)
    kw = _ode_kwargs(rtol, atol, solver, options, per_sample_norm(x_T.shape[0]), ts[-1])
    x = torchdiffeq.odeint(flow, x_T, ts, **kw)[-1]
    if stats is not None:
        stats["nfe"] = flow.nfe
    return x
