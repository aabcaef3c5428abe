"""Time grids of the fixed-step samplers: uniform in time, uniform in log-SNR, or EDM's Karras grid.

Every grid runs from the start time ``t_0 = t_start`` (T by default) down to ``t_N = eps`` and is
described by a decreasing map ``u -> t(u)`` from ``u in [0, 1]`` (``t(0) = t_start``, ``t(1) = eps``);
the N-step grid is ``t(k / N)``. Below, T stands for ``t_start``. With
``sigma(t) = std(t) / alpha(t)`` and ``lambda(t) = -log sigma(t)`` (the log signal-to-noise ratio of
Lu et al. 2022, halved):

* ``"time_uniform"``: ``t(u) = T + u (eps - T)`` (Song et al. 2021's PC and Euler-Maruyama samplers);
* ``"logsnr"``: ``lambda(t(u)) = lambda(T) + u (lambda(eps) - lambda(T))``, uniform in lambda (Lu et al.
  2022, Sec. 3.3, "logSNR"; k-diffusion's ``get_sigmas_exponential``);
* ``"karras"``: ``sigma(t(u)) = (sigma(T)^(1/rho) + u (sigma(eps)^(1/rho) - sigma(T)^(1/rho)))^rho``,
  rho = 7 by default (Karras et al. 2022, eq. 5; EDM's ``heun`` samples on it);
* ``"time_quadratic"``: ``sqrt(t)`` uniform (Lu et al. 2022's "time_quadratic");
* ``"time_power"``: ``t(u) = eps + (T - eps) (1 - u)^power``; ``power = 1`` is ``"time_uniform"``,
  ``power > 1`` puts more of the steps near eps, ``power < 1`` more near T.

The map's derivative ``dt/du`` is closed-form for every SDE, because ``d lambda / dt = -g(t)^2 /
(2 std(t)^2)`` (from ``d std^2 / dt = 2 f std^2 + g^2`` and ``d log alpha / dt = f``). It lets an SDE
solver with uniform steps in u (torchsde) walk any of these grids (:func:`grid_time`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice
from ..sde import SDE

__all__ = ["GRIDS", "PLAIN_GRIDS", "time_grid", "grid_time", "check_grid", "lambda_of"]

#: Names of the time grids.
GRIDS = ("time_uniform", "logsnr", "karras", "time_quadratic", "time_power")

#: The grids of the methods without a ``power`` option ("pc", "sde"): all but "time_power".
PLAIN_GRIDS = GRIDS[:-1]

#: Karras et al. 2022's exponent of the sigma grid.
RHO = 7.0


def check_grid(grid: str, sde: SDE, eps: float, choices: tuple[str, ...] = GRIDS) -> str:
    """Validate ``grid`` for a solve from T to ``eps``.

    Raises:
        ValueError: ``grid`` not in ``choices`` (default ``GRIDS``); a log-SNR or Karras grid to a time
            where sigma = 0 (eps = 0 with a kernel whose std vanishes at t = 0: lambda is infinite there).
    """
    check_choice("grid", grid, choices)
    if grid in ("logsnr", "karras"):
        alpha, std = sde.alpha_std(torch.tensor([float(eps)], dtype=torch.float64))
        if not float(std[0] / alpha[0]) > 0:
            raise ValueError(
                f"grid {grid!r} needs sigma(eps) > 0 (lambda(eps) is infinite at eps = {eps}): use eps > 0 "
                "or grid='time_uniform'"
            )
    return grid


def _ends(sde: SDE, t_start: float, eps: float, like: Tensor) -> tuple[Tensor, Tensor]:
    ends = torch.tensor([float(t_start), float(eps)], dtype=like.dtype, device=like.device)
    alpha, std = sde.alpha_std(ends)
    return ends, std / alpha


def grid_time(
    sde: SDE,
    eps: float,
    grid: str,
    u: Tensor,
    t_start: float | None = None,
    rho: float = RHO,
    power: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The grid's time map at ``u`` in [0, 1]: ``(t(u), dt/du)``, both shaped like ``u``.

    ``dt/du`` is negative (time decreases from ``t_start``, default T, to eps). See the module docstring
    for the maps; ``rho`` is the Karras grid's exponent, ``power`` the time-power grid's.
    """
    ends, sig = _ends(sde, sde.T if t_start is None else t_start, eps, u)
    T, e = ends[0], ends[1]
    if grid == "time_uniform":
        return T + u * (e - T), (e - T).expand_as(u)
    if grid == "time_quadratic":
        a, b = T.sqrt(), e.sqrt()
        r = a + u * (b - a)
        return r.square(), 2 * r * (b - a)
    if grid == "time_power":
        return e + (T - e) * (1 - u) ** power, -power * (T - e) * (1 - u) ** (power - 1)
    if grid == "logsnr":
        lam = -sig.log()
        lam_u = lam[0] + u * (lam[1] - lam[0])
        t = sde.inverse_sigma(torch.exp(-lam_u))
        dlam_dt = -sde.g2(t) / (2 * sde.var(t))
        return t, (lam[1] - lam[0]) / dlam_dt
    # karras
    a, b = sig[0] ** (1 / rho), sig[1] ** (1 / rho)
    r = a + u * (b - a)
    sigma = r**rho
    t = sde.inverse_sigma(sigma)
    dsigma_du = rho * r ** (rho - 1) * (b - a)
    dsigma_dt = sigma * sde.g2(t) / (2 * sde.var(t))  # d sigma/dt = -sigma d lambda/dt
    return t, dsigma_du / dsigma_dt


def time_grid(
    sde: SDE,
    eps: float,
    num_steps: int,
    grid: str,
    like: Tensor | None = None,
    t_start: float | None = None,
    rho: float = RHO,
    power: float = 1.0,
) -> Tensor:
    """(num_steps + 1,) decreasing times ``t(k / N)`` from ``t_start`` (default T) to eps.

    On ``like``'s device and dtype (default: float64 on the host, what the samplers take). Both ends are
    exact (``t_start`` and ``eps`` as given). ``grid`` is one of ``GRIDS`` (validate it with
    :func:`check_grid` first); ``rho`` is the Karras grid's exponent, ``power`` the time-power grid's.
    """
    t0 = sde.T if t_start is None else float(t_start)
    if grid == "time_uniform":  # on the host in float64: t_k = t0 - (t0 - eps) k / N
        times = [t0 - (t0 - eps) * k / num_steps for k in range(num_steps)] + [float(eps)]
        t = torch.tensor(times, dtype=torch.float64)
        return t if like is None else t.to(dtype=like.dtype, device=like.device)
    like = torch.zeros((), dtype=torch.float64) if like is None else like
    u = torch.arange(num_steps + 1, dtype=like.dtype, device=like.device) / num_steps
    t, _ = grid_time(sde, eps, grid, u, t0, rho, power)
    t[0], t[-1] = t0, float(eps)
    # clamp the round-off of the inverse maps into [eps, t_start] (the ends are exact above)
    return t.clamp(min=float(eps), max=t0) if num_steps > 1 else t


def lambda_of(sde: SDE, t: Tensor) -> Tensor:
    """``lambda(t) = log(alpha(t) / std(t))`` (Lu et al. 2022's half log-SNR); +inf where std = 0."""
    alpha, std = sde.alpha_std(t)
    return torch.log(alpha) - torch.log(std)
