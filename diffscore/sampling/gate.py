"""The gate of :func:`~diffscore.sample`: every argument check, the default options, the time grid.

As torchdiffeq's ``odeint`` calls ``_check_inputs``: :func:`check_inputs` validates the arguments once,
draws the starting state, builds the time grid ``ts`` from :mod:`~diffscore.sampling.grids`, and returns
what the sampler takes. The samplers behind it are unchecked:
``fn(sde, score, x, ts, *, generator=None, stats=None, **own_options)``, with ``x`` the state at
``ts[0]`` and ``ts`` a (N + 1,) float64 host tensor of decreasing times ending at eps (the fixed-step
samplers), or ``[t_start, eps]`` (the adaptive ones: "ode", "sde", "sde_adaptive").

:func:`default_options` is the one table of per-method defaults (grid, order, variant, num_steps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS as ODE_SOLVERS

from .._checks import (
    Generator,
    check_callable,
    check_choice,
    check_count,
    check_eps,
    check_float_dtype,
    check_instance,
    check_int,
    check_latent,
    check_positive,
    check_real,
    check_shape,
    check_solve_eps,
    check_stats,
)
from ..likelihood import _ode_kwargs
from ..sde import SDE, VESDE, VPSDE, SubVPSDE
from .fast import dpm_solver_orders
from .grids import PLAIN_GRIDS, check_grid, time_grid
from .multistep import DPMPP_VARIANTS, SDE_DPMPP_2M_VARIANTS, UNIPC_VARIANTS
from .pc import CORRECTORS, PREDICTORS
from .solvers import SDE_METHODS

__all__ = ["check_inputs", "default_options", "default_eps", "DEFAULTS", "TUNED", "DPM_SKIP_TYPES"]

#: Each method's options and their defaults, in the order the method's error message lists them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "ode": dict(solver="dopri5", rtol=1e-5, atol=1e-5, options=None),
    "sde": dict(
        solver="euler",
        num_steps=1000,
        adaptive=False,
        rtol=1e-3,
        atol=1e-3,
        grid="time_uniform",
        options=None,
    ),
    "pc": dict(
        predictor="reverse_diffusion",
        corrector="langevin",
        snr=0.16,
        n_steps=1,
        num_steps=1000,
        denoise=True,
        grid="time_uniform",
        constraint=None,
    ),
    "heun": dict(num_steps=18, rho=7.0, denoise=True),
    "dpm_solver": dict(num_steps=None, order=3, nfe=None, skip_type="logSNR", denoise=False),
    "dpmpp": dict(
        num_steps=20,
        order=2,
        grid="logsnr",
        power=1.0,
        variant="taylor",
        lower_order_final=None,
        denoise=False,
    ),
    "unipc": dict(
        num_steps=20,
        order=3,
        grid="logsnr",
        power=1.0,
        variant="bh2",
        use_corrector=True,
        lower_order_final=True,
        denoise=False,
    ),
    "sde_dpmpp_2m": dict(
        num_steps=50, grid="logsnr", power=1.0, variant="midpoint", lower_order_final=False, denoise=False
    ),
    "sde_dpmpp_3m": dict(
        num_steps=50, grid="logsnr", power=1.0, variant="taylor", lower_order_final=True, denoise=False
    ),
    "sde_adaptive": dict(
        rtol=0.01,
        atol=0.0078,
        h_init=0.01,
        safety=0.9,
        exponent=0.9,
        norm=2.0,
        brownian_memory=4,
        max_iters=100_000,
        denoise=False,
    ),
}

#: ``dpm_solver``'s names of the grids (Lu et al. 2022's ``skip_type``) -> the grid of ``grids.GRIDS``.
DPM_SKIP_TYPES = {"logSNR": "logsnr", "time_uniform": "time_uniform", "time_quadratic": "time_quadratic"}


#: The deterministic multistep samplers' options measured best per SDE and number of steps (RMS to the
#: tight probability flow on the D = 64 mixture: benchmarks/bench_solvers.py, table ``ode_rms``; the
#: bands are in docs/samplers.md): (SDE class, method) -> bands ``(largest num_steps, options)``, the
#: first band that holds ``num_steps`` overriding ``DEFAULTS``.
TUNED: dict[tuple[type[SDE], str], tuple[tuple[float, dict[str, Any]], ...]] = {
    (VPSDE, "unipc"): (
        (12, dict(grid="time_quadratic", order=3, variant="bh2")),
        (17, dict(grid="logsnr", order=2, variant="bh2")),
        (22, dict(grid="time_quadratic", order=3, variant="bh2")),
        (math.inf, dict(grid="time_quadratic", order=3, variant="bh1")),
    ),
    (VESDE, "unipc"): (
        (8, dict(grid="karras", order=3, variant="bh2")),
        (12, dict(grid="logsnr", order=3, variant="bh2", lower_order_final=False)),
        (19, dict(grid="time_power", power=1.02, order=2, variant="bh2")),
        (math.inf, dict(grid="time_power", power=0.85, order=3, variant="bh2")),
    ),
    (SubVPSDE, "unipc"): (
        (10, dict(grid="time_uniform", order=2, variant="bh2")),
        (17, dict(grid="time_quadratic", order=1, variant="bh1")),
        (22, dict(grid="logsnr", order=2, variant="bh2")),
        (math.inf, dict(grid="time_quadratic", order=3, variant="bh2")),
    ),
    (VPSDE, "dpmpp"): (
        (29, dict(grid="time_quadratic", order=3, variant="taylor", lower_order_final=True)),
        (math.inf, dict(grid="time_quadratic", order=3, variant="reference", lower_order_final=True)),
    ),
    (VESDE, "dpmpp"): (
        (math.inf, dict(grid="time_uniform", order=3, variant="taylor", lower_order_final=True)),
    ),
    (SubVPSDE, "dpmpp"): (
        (12, dict(grid="time_uniform", order=3, variant="taylor", lower_order_final=True)),
        (math.inf, dict(grid="time_quadratic", order=3, variant="reference", lower_order_final=True)),
    ),
}


def default_options(sde: SDE, method: str, num_steps: int | None = None) -> dict[str, Any]:
    """The options ``method`` runs with when the caller gives none, for this SDE and step budget.

    ``DEFAULTS[method]``, with ``num_steps`` (when given) for the default number of steps, then for
    "unipc" and "dpmpp" the grid, order, variant and final orders measured best for the SDE at that
    number of steps (``TUNED``).
    """
    options = dict(DEFAULTS[method])
    if num_steps is not None and "num_steps" in options:
        options["num_steps"] = num_steps
    n = options.get("num_steps")
    bands = next((TUNED[cls, method] for cls in type(sde).__mro__ if (cls, method) in TUNED), None)
    if bands is not None and isinstance(n, int) and not isinstance(n, bool):  # a bad n raises later
        options.update(next(band for limit, band in bands if n <= limit))
    return options


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


def check_inputs(
    sde: SDE,
    score: Callable,
    shape: Sequence[int] | None,
    method: str,
    generator: Generator,
    x_T: Tensor | None,
    eps: float | None,
    t_start: float | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    options: dict[str, Any],
) -> tuple[Tensor, Tensor, dict[str, Any] | None, dict[str, Any]]:
    """Validate :func:`~diffscore.sample`'s arguments; return ``(x, ts, stats, own_options)``.

    ``x`` is the state at ``ts[0] = t_start`` (``x_T``, or a prior draw when ``t_start = T``), ``ts``
    the method's time grid (float64, host) and ``own_options`` the method's remaining options.
    ``shape`` None takes the shape of ``x_T`` (for callers that always pass it).
    """
    check_choice("method", method, sorted(DEFAULTS))
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_callable("score", score, "score(x, t) -> like x")
    if shape is not None:
        shape = check_shape(shape, 2)
    if dtype is not None:
        check_float_dtype(dtype)
    stats = check_stats(options.pop("stats", None))
    eps = check_eps(default_eps(sde) if eps is None else eps, sde.T)
    t_start = _check_t_start(sde, eps, t_start)
    if x_T is None:
        if t_start != sde.T:
            raise ValueError(f"x_T (the state at t_start = {t_start}) is required when t_start < T = {sde.T}")
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        check_latent("x_T", x_T, sde.prior_std)
        if shape is not None and tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must be shaped {shape}, got {tuple(x_T.shape)}")
        x = x_T
    known = [*DEFAULTS[method], "stats"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"method {method!r} has no option {unknown[0]!r}; its options: {', '.join(known)}")
    defaults = default_options(sde, method, options.get("num_steps"))
    ts, own = _GRIDS[method](sde, eps, t_start, {**defaults, **options})
    return x, ts, stats, own


def _check_t_start(sde: SDE, eps: float, t_start: float | None) -> float:
    t_start = float(sde.T) if t_start is None else check_real("t_start", t_start)
    if not eps < t_start <= sde.T:
        raise ValueError(f"t_start must lie in (eps, T] = ({eps}, {sde.T}], got {t_start}")
    return t_start


def _ends(t_start: float, eps: float) -> Tensor:
    return torch.tensor([t_start, eps], dtype=torch.float64)


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    return order


# ---- per method: check its options, build its grid; (sde, eps, t_start, options) -> (ts, own) -----------
def _ode(sde: SDE, eps: float, t_start: float, o: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    check_choice("solver", o["solver"], sorted(ODE_SOLVERS), " for method='ode'")
    eps = check_solve_eps(sde, eps)
    _ode_kwargs(o["rtol"], o["atol"], o["solver"], o["options"], None, name="solver")
    return _ends(t_start, eps), o


def _sde(sde: SDE, eps: float, t_start: float, o: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    check_choice("solver", o["solver"], sorted(SDE_METHODS), " for method='sde'")
    check_count("num_steps", o["num_steps"], 1)
    check_positive("rtol", o["rtol"])
    check_positive("atol", o["atol"])
    eps = check_solve_eps(sde, eps)
    check_grid(o["grid"], sde, eps, PLAIN_GRIDS)
    return _ends(t_start, eps), o


def _pc(sde: SDE, eps: float, t_start: float, o: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    check_choice("predictor", o["predictor"], sorted(PREDICTORS))
    check_choice("corrector", o["corrector"], sorted(CORRECTORS))
    check_positive("snr", o["snr"])
    n = check_count("num_steps", o.pop("num_steps"), 1)
    check_count("n_steps", o["n_steps"], 0)
    grid = check_grid(o.pop("grid"), sde, eps, PLAIN_GRIDS)
    return time_grid(sde, eps, n, grid, t_start=t_start), o


def _heun(sde: SDE, eps: float, t_start: float, o: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    n = check_int("num_steps", o.pop("num_steps"), 2)
    rho = check_positive("rho", o.pop("rho"))
    return time_grid(sde, eps, n - 1, "karras", t_start=t_start, rho=rho), o


def _dpm_solver(sde: SDE, eps: float, t_start: float, o: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    if not 0.0 < eps:
        raise ValueError(
            f"eps must lie in (0, T) = (0, {sde.T}) for dpm_solver (lambda(0) = inf), got {eps!r}"
        )
    order = _check_order(o.pop("order"))
    skip_type = check_choice("skip_type", o.pop("skip_type"), tuple(DPM_SKIP_TYPES))
    num_steps, nfe = o.pop("num_steps"), o.pop("nfe")
    if nfe is not None:
        if num_steps is not None:
            raise ValueError("give either num_steps (fixed order) or nfe (DPM-Solver-fast), not both")
        orders = dpm_solver_orders(check_int("nfe", nfe, 1), order)
    else:
        orders = [order] * check_int("num_steps", 10 if num_steps is None else num_steps, 1)
    ts = time_grid(sde, eps, len(orders), DPM_SKIP_TYPES[skip_type], t_start=t_start)
    return ts, dict(o, orders=orders)


def _multistep(
    sde: SDE, eps: float, t_start: float, o: dict[str, Any], variants: tuple[str, ...]
) -> tuple[Tensor, dict[str, Any]]:
    n = check_int("num_steps", o.pop("num_steps"), 1)
    grid = check_grid(o.pop("grid"), sde, eps)
    power = check_positive("power", o.pop("power"))
    if not float(sde.var(torch.tensor([eps], dtype=torch.float64))[0]) > 0:
        raise ValueError(
            f"eps = {eps} is where std(t) = 0 and lambda = +inf: the exponential integrators need eps > 0"
        )
    if "order" in o:
        _check_order(o["order"])
    check_choice("variant", o["variant"], variants)
    if "use_corrector" in o and not isinstance(o["use_corrector"], bool):
        raise TypeError(f"use_corrector must be True or False, got {o['use_corrector']!r}")
    if o["lower_order_final"] is None:  # dpmpp: the papers' code lowers the final orders below 15 steps
        o["lower_order_final"] = n < 15
    o["lower_order_final"] = bool(o["lower_order_final"])
    return time_grid(sde, eps, n, grid, t_start=t_start, power=power), o


def _sde_adaptive(sde: SDE, eps: float, t_start: float, o: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    for name in ("rtol", "atol", "h_init", "safety", "exponent"):
        check_positive(name, o[name])
    norm = o["norm"]
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm >= 1:
        raise ValueError(f"norm must be a real number >= 1 (or math.inf), got {norm!r}")
    check_int("max_iters", o["max_iters"], 1)
    if check_int("brownian_memory", o["brownian_memory"], 0) == 1:
        raise ValueError("brownian_memory must be 0 (no memory) or >= 2")
    return _ends(t_start, check_solve_eps(sde, eps)), o


#: method -> its option check and grid.
_GRIDS: dict[str, Callable[[SDE, float, float, dict[str, Any]], tuple[Tensor, dict[str, Any]]]] = {
    "ode": _ode,
    "sde": _sde,
    "pc": _pc,
    "heun": _heun,
    "dpm_solver": _dpm_solver,
    "dpmpp": functools.partial(_multistep, variants=tuple(DPMPP_VARIANTS)),
    "unipc": functools.partial(_multistep, variants=UNIPC_VARIANTS),
    "sde_dpmpp_2m": functools.partial(_multistep, variants=SDE_DPMPP_2M_VARIANTS),
    "sde_dpmpp_3m": functools.partial(_multistep, variants=tuple(DPMPP_VARIANTS)),
    "sde_adaptive": _sde_adaptive,
}
