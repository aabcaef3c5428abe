"""``sample``: one front door over every sampler, and the samplers themselves.

Each method is a function ``fn(sde, score, x_T, eps, generator, **options) -> x`` listed in ``METHODS``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import Generator, check_eps, check_float_dtype, check_latent, check_shape, check_stats
from ..score import ScoreFn
from ..sde import SDE, VESDE
from .adaptive import sde_adaptive
from .fast import dpm_solver, heun
from .grids import GRIDS, time_grid
from .langevin import annealed_langevin, annealed_langevin_inpaint, geometric_sigmas, langevin_dynamics
from .multistep import dpmpp, sde_dpmpp_2m, unipc
from .pc import CORRECTORS, PREDICTORS, pc_sample
from .solvers import SDE_METHODS, brownian_motion, sample_ode, sample_sde

__all__ = [
    "sample",
    "METHODS",
    "default_eps",
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
    "sde_adaptive",
    "GRIDS",
    "time_grid",
]

#: name -> sampler. Every sampler takes (sde, score, x_T, eps, generator, **options) and returns x at eps.
METHODS: dict[str, Callable[..., Tensor]] = {
    "ode": sample_ode,
    "sde": sample_sde,
    "pc": pc_sample,
    "heun": heun,
    "dpm_solver": dpm_solver,
    "dpmpp": dpmpp,
    "unipc": unipc,
    "sde_dpmpp_2m": sde_dpmpp_2m,
    "sde_adaptive": sde_adaptive,
}


def default_eps(sde: SDE) -> float:
    """The sampling end time: where the papers' samplers stop (Song et al. 2021, App. C).

    VP and sub-VP: 1e-3. VE: the end noise level is ``sigma_min`` (0.01 for the defaults), the smallest
    noise level of SMLD / NCSN and of the papers' VE samplers: eps = 1e-5 with ``kernel="sigma"`` (where
    ``std(1e-5) = sigma_min (sigma_max / sigma_min)^1e-5``, the reference value), and with the exact
    kernel the time at which ``std(t) = sigma_min``, ``T log 2 / (2 log(sigma_max / sigma_min))``
    (0.0407 for 0.01 -> 50). Stopping the exact kernel at 1e-5 instead would end at std 1.3e-4, a noise
    level no paper samples to, which costs the fast solvers accuracy for nothing.
    """
    if isinstance(sde, VESDE):
        if sde.kernel == "sigma":
            return 1e-5
        return sde.T * math.log(2.0) / (2.0 * math.log(sde.sigma_max / sde.sigma_min))
    return 1e-3


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
    **options: Any,
) -> Tensor:
    """Draw samples by solving from the prior at T down to ``eps``.

    Args:
        sde: the forward SDE.
        score: ``score(x, t) -> like x`` (a :class:`~diffscore.ScoreModel` or any callable).
        shape: (B, *event_shape) of the output.
        method: a key of ``METHODS``: "ode" (torchdiffeq), "sde" (torchsde), "pc" (predictor-corrector),
            "heun" (EDM), "dpm_solver" (singlestep DPM-Solver), "dpmpp" (multistep DPM-Solver++),
            "unipc" (UniPC), "sde_dpmpp_2m" (SDE-DPM-Solver++(2M)), "sde_adaptive" (adaptive reverse SDE).
        generator: a torch.Generator, or a list of B of them (sample k then depends on generator k alone).
        x_T: optional starting state at T, shaped ``shape``; default: a prior draw from ``generator``.
            Its entries must lie strictly inside the samplers' plausible bound ``1e4 x sde.prior_std``.
        eps: end time in [0, T); default :func:`default_eps`. The torchdiffeq / torchsde methods ("ode",
            "sde", "sde_adaptive") evaluate the score at eps and refuse an eps where ``std(eps) = 0``
            (t = 0 for VP, sub-VP and VE "exact"); "heun" and "pc" accept it (they never use the score
            at a zero std with a nonzero weight).
        device, dtype: of the prior draw (ignored when ``x_T`` is given).
        options: passed to the method (e.g. ``num_steps``, ``order``, ``grid`` for the fixed-step
            samplers, ``rtol``, ``solver`` for the inner solver, ``stats`` a dict that receives ``nfe``).

    Returns:
        Samples shaped ``shape``.

    Raises:
        ValueError / TypeError: unknown ``method``; ``shape`` not a tuple or list (TypeError) or not
            (B, *event_shape) of positive ints (ValueError); ``dtype`` not a floating-point dtype and
            ``options["stats"]`` not a dict (TypeError); ``eps`` outside [0, T) (or with
            ``std(eps) = 0`` for "ode", "sde", "sde_adaptive"), ``x_T`` of the wrong shape, with NaN/inf
            or with an entry at or beyond the plausible bound (the message names ``x_T`` and the
            bound); a ``score`` returning a non-tensor (TypeError) or a tensor not shaped like the state
            (ValueError, "score returned shape (...) for a state of shape (...)"); and the method's own
            argument errors (e.g. "ode" with a fixed-grid ``solver`` and no ``options["step_size"]``).
        FloatingPointError: the state or the score turned non-finite or implausibly large (beyond 1e4
            prior stds); the message names the time.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    shape = check_shape(shape, 2)
    if dtype is not None:
        check_float_dtype(dtype)
    check_stats(options.get("stats"))
    eps = check_eps(default_eps(sde) if eps is None else eps, sde.T)
    if x_T is None:
        x_T = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        check_latent("x_T", x_T, sde.prior_std)
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must be shaped {shape}, got {tuple(x_T.shape)}")
    _check_options(method, options)
    return METHODS[method](sde, score, x_T, eps, generator, **options)


def _check_options(method: str, options: dict[str, Any]) -> None:
    """Raise TypeError naming an option that ``METHODS[method]`` does not take, with the ones it does."""
    params = inspect.signature(METHODS[method]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY or n not in _POSITIONAL]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"method {method!r} has no option {unknown[0]!r}; its options: {', '.join(known)}")


#: The arguments that :func:`sample` passes to every method itself.
_POSITIONAL = ("sde", "score", "x_T", "eps", "generator")
