"""``sample``: one front door over every sampler, and the samplers themselves.

:func:`sample` checks its arguments once (:func:`~diffscore.sampling.gate.check_inputs`), builds the time
grid, and calls the method's sampler, listed in ``METHODS``:
``fn(sde, score, x, ts, *, generator=None, stats=None, **options) -> x at ts[-1]`` (unchecked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import Generator
from ..score import ScoreFn
from ..sde import SDE
from .adaptive import sde_adaptive
from .fast import dpm_solver, heun
from .gate import DEFAULTS, check_inputs, default_eps, default_options
from .grids import GRIDS, time_grid
from .langevin import annealed_langevin, annealed_langevin_inpaint, geometric_sigmas, langevin_dynamics
from .multistep import dpmpp, sde_dpmpp_2m, sde_dpmpp_3m, unipc
from .pc import CORRECTORS, PREDICTORS, pc_sample
from .solvers import SDE_METHODS, brownian_motion, sample_ode, sample_sde

__all__ = [
    "sample",
    "METHODS",
    "default_eps",
    "default_options",
    "DEFAULTS",
    "sample_ode",
    "sample_sde",
    "brownian_motion",
    "SDE_METHODS",
    "pc_sample",
    "PREDICTORS",
    "CORRECTORS",
    "annealed_langevin",
    "annealed_langevin_inpaint",
    "geometric_sigmas",
    "langevin_dynamics",
    "heun",
    "dpm_solver",
    "dpmpp",
    "unipc",
    "sde_dpmpp_2m",
    "sde_dpmpp_3m",
    "sde_adaptive",
    "GRIDS",
    "time_grid",
]

#: name -> sampler ``fn(sde, score, x, ts, *, generator=None, stats=None, **options) -> x at ts[-1]``.
METHODS: dict[str, Callable[..., Tensor]] = {
    "ode": sample_ode,
    "sde": sample_sde,
    "pc": pc_sample,
    "heun": heun,
    "dpm_solver": dpm_solver,
    "dpmpp": dpmpp,
    "unipc": unipc,
    "sde_dpmpp_2m": sde_dpmpp_2m,
    "sde_dpmpp_3m": sde_dpmpp_3m,
    "sde_adaptive": sde_adaptive,
}


def sample(
    sde: SDE,
    score: ScoreFn,
    shape: Sequence[int],
    method: str = "ode",
    generator: Generator = None,
    x_T: Tensor | None = None,
    eps: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    t_start: float | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples by solving from the prior at T (or from ``x_T`` at ``t_start``) down to ``eps``.

    Args:
        sde: the forward SDE.
        score: ``score(x, t) -> like x`` (a :class:`~diffscore.ScoreModel` or any callable).
        shape: (B, *event_shape) of the output.
        method: a key of ``METHODS``: "ode" (torchdiffeq), "sde" (torchsde), "pc" (predictor-corrector),
            "heun" (EDM), "dpm_solver" (singlestep DPM-Solver), "dpmpp" (multistep DPM-Solver++),
            "unipc" (UniPC; the fastest good sampler, docs/samplers.md), "sde_dpmpp_2m" and
            "sde_dpmpp_3m" (SDE-DPM-Solver++(2M) and (3M)), "sde_adaptive" (adaptive reverse SDE).
        generator: a torch.Generator, or a list of B of them (sample k then depends on generator k alone).
        x_T: the starting state at ``t_start`` (at T by default), shaped ``shape``; default (only when
            ``t_start`` is T): a prior draw from ``generator``. Its entries must lie strictly inside the
            samplers' plausible bound ``1e4 x sde.prior_std``.
        eps: end time in [0, T); default :func:`default_eps`. The torchdiffeq / torchsde methods ("ode",
            "sde", "sde_adaptive") evaluate the score at eps and refuse an eps where ``std(eps) = 0``
            (t = 0 for VP, sub-VP and VE "exact"); "heun" and "pc" accept it (they never use the score
            at a zero std with a nonzero weight).
        device, dtype: of the prior draw (ignored when ``x_T`` is given).
        t_start: the start time in (eps, T] (default T): the solve runs from ``x_T`` at ``t_start``, its
            grid starting there (SDEdit, Meng et al. 2022, starts the reverse process from a noised image).
        options: the method's options (e.g. ``num_steps``, ``order``, ``grid`` for the fixed-step
            samplers, ``rtol``, ``solver`` for the inner solver, ``stats`` a dict that receives ``nfe``);
            their defaults: :func:`default_options`.

    Returns:
        Samples shaped ``shape``.

    Raises:
        ValueError / TypeError: unknown ``method``; ``sde`` not an SDE or ``score`` not callable
            (TypeError); ``shape`` not a tuple or list (TypeError) or not (B, *event_shape) of positive
            ints (ValueError); ``dtype`` not a floating-point dtype and ``options["stats"]`` not a dict
            (TypeError); ``eps`` outside [0, T) (or with ``std(eps) = 0`` for "ode", "sde",
            "sde_adaptive", or eps = 0 for the exponential integrators "dpm_solver", "dpmpp", "unipc",
            "sde_dpmpp_2m", "sde_dpmpp_3m"); ``t_start`` outside (eps, T], or below T without ``x_T``;
            ``x_T`` of the wrong shape, with NaN/inf or with an entry at or beyond the plausible bound
            (the message names ``x_T`` and the bound); an option the method does not take (TypeError,
            naming the method's options) or a bad option value: ``num_steps`` (>= 1; >= 2 for "heun"),
            ``order`` (1, 2, 3), ``grid`` (one of ``GRIDS``; "logsnr" and "karras" need sigma(eps) >
            0), ``skip_type`` (``DPM_SKIP_TYPES``), both ``num_steps`` and ``nfe`` for "dpm_solver",
            ``variant`` (the method's: ``UNIPC_VARIANTS``, ``DPMPP_VARIANTS``, ``SDE_DPMPP_2M_VARIANTS``),
            ``use_corrector``, ``predictor``, ``corrector``, ``snr``, ``n_steps``, ``rho``, tolerances,
            ``h_init``, ``safety``, ``exponent``, ``norm``, ``max_iters``,
            ``brownian_memory`` (0 or >= 2), ``solver`` (a torchdiffeq / torchsde method; a fixed-grid
            torchdiffeq ``solver`` needs ``options["step_size"]``); a ``score`` returning a non-tensor
            (TypeError) or a tensor not shaped like the state (ValueError, "score returned shape (...)
            for a state of shape (...)").
        FloatingPointError: the state or the score turned non-finite or implausibly large (beyond 1e4
            prior stds); the message names the time.
            :class:`~diffscore._checks.StepSizeUnderflowError` (a FloatingPointError) when an adaptive
            step size underflows.
        RuntimeError: "sde_adaptive" used up ``max_iters`` before reaching eps.
    """
    x, ts, stats, own = check_inputs(
        sde, score, shape, method, generator, x_T, eps, t_start, device, dtype, options
    )
    return METHODS[method](sde, score, x, ts, generator=generator, stats=stats, **own)
