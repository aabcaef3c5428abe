"""Editing and latent workflows: SDEdit, and interpolation between images through their latents.

- :func:`edit` (SDEdit, Meng et al. 2022, Alg. 1): noise images to ``t_start = strength x T`` with the
  exact forward kernel ``p_0t`` and run the reverse process from there. ``strength`` trades
  faithfulness (small: the input survives) for realism (1: a fresh sample, unrelated to the input).
- :func:`slerp` and :func:`interpolate` (Song et al. 2021, Sec. 4.3): the probability-flow ODE maps
  images to latents distributed as ``p_T``, close to the Gaussian prior, whose mass lies on a thin shell
  of radius ``prior_std sqrt(D)``; a path between two latents that stays on that shell decodes to
  images all along, where the straight line passes inside the shell (two independent latents: its
  midpoint has norm ``1/sqrt(2)`` of theirs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._checks import (
    Generator,
    bcast,
    check_choice,
    check_data,
    check_eps,
    check_instance,
    check_int,
    check_real,
    randn,
)
from .likelihood import decode, encode
from .sampling import default_eps, sample
from .score import ScoreFn
from .sde import SDE

__all__ = ["EditResult", "edit", "slerp", "interpolate", "SPACES"]

#: Where :func:`interpolate` draws its path: latents at T, data, or the flow's states at a time t.
SPACES = ("latent", "data", "time")


@dataclass
class EditResult:
    """Output of :func:`edit`: ``edited`` (B, *shape) at time eps, ``noised`` (B, *shape) the state at
    ``t_start`` the reverse process started from, and ``t_start`` itself."""

    edited: Tensor
    noised: Tensor
    t_start: float


def edit(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    strength: float,
    method: str = "pc",
    generator: Generator = None,
    eps: float | None = None,
    **options: Any,
) -> EditResult:
    """SDEdit (Meng et al. 2022, Alg. 1): ``x_t = alpha(t) x + std(t) z`` at ``t = strength x T``, then
    :func:`~diffscore.sample` from ``x_t`` at ``t_start = t`` down to ``eps``.

    With the exact score, ``x ~ p_0`` gives ``x_t ~ p_t`` exactly, and the reverse process returns
    ``p_eps``: editing keeps the data distribution and changes each image more the larger ``strength``.

    Args:
        sde, score: the forward SDE and ``score(x, t)``.
        x: (B, *shape) images (data at time 0, in the model's data range).
        strength: the fraction of the time axis to noise over, in (0, 1], with ``strength x T > eps``.
        method, options: the sampler (a key of ``diffscore.sampling.METHODS``) and its options; a
            fixed-step sampler spreads its ``num_steps`` over [eps, t_start].
        generator: torch.Generator, or a list of B of them; draws the noise, then the sampler's.
        eps: end time (default :func:`~diffscore.sampling.default_eps`).

    Returns:
        :class:`EditResult`.

    Raises:
        ValueError / TypeError: ``sde`` not an SDE (TypeError); ``x`` not a finite float tensor
            (B, *shape); ``strength`` not a real number in (0, 1] or with ``strength x T <= eps`` (the
            message names ``strength``); and the errors of :func:`~diffscore.sample` for ``method``,
            ``eps``, ``generator`` and the options.
    """
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_data("x", x)
    strength = check_real("strength", strength)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    end = check_eps(default_eps(sde) if eps is None else eps, sde.T)
    t_start = strength * sde.T
    if not t_start > end:
        raise ValueError(
            f"strength must exceed eps / T = {end / sde.T:g} (t_start = strength x T must lie after the end "
            f"time eps = {end:g}), got {strength}"
        )
    mean, std = sde.marginal_prob(x, t_start)
    noised = mean + bcast(std, x) * randn(x.shape, generator, x.device, x.dtype)
    edited = sample(sde, score, x.shape, method, generator, x_T=noised, eps=eps, t_start=t_start, **options)
    return EditResult(edited, noised, t_start)


def slerp(z0: Tensor, z1: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation between latents, with the norm interpolated linearly.

    The direction moves along the great circle from ``z0 / |z0|`` to ``z1 / |z1|`` (Shoemake 1985:
    ``(sin((1 - w) theta) u0 + sin(w theta) u1) / sin(theta)``) and the norm from ``|z0|`` to ``|z1|``
    linearly, so every point's norm lies between the endpoints' (Gaussian latents stay on the prior's
    shell; the straight line would cut inside it). Norms over all dimensions but the first.

    Args:
        z0, z1: (B, *shape) latents, pairwise neither zero nor pointing in opposite directions.
        weights: (K,) interpolation weights, 0 at ``z0`` and 1 at ``z1``.

    Returns:
        (B, K, *shape): row b is the path from ``z0[b]`` to ``z1[b]``.
    """
    dims = tuple(range(1, z0.ndim))
    r0, r1 = (torch.linalg.vector_norm(z, dim=dims, keepdim=True) for z in (z0, z1))
    u0, u1 = z0 / r0, z1 / r1
    theta = (u0 * u1).sum(dims, keepdim=True).clamp(-1.0, 1.0).acos()  # (B, 1, ...)
    w = weights.to(z0).reshape(1, -1, *(1,) * (z0.ndim - 1))  # (1, K, 1, ...)
    theta, r0, r1, u0, u1 = (v.unsqueeze(1) for v in (theta, r0, r1, u0, u1))
    sin = theta.sin()
    parallel = sin < 1e-6  # the great circle degenerates to the point: the straight line's limit
    c0 = torch.where(parallel, 1.0 - w, ((1.0 - w) * theta).sin() / torch.where(parallel, 1.0, sin))
    c1 = torch.where(parallel, w, (w * theta).sin() / torch.where(parallel, 1.0, sin))
    return ((1.0 - w) * r0 + w * r1) * (c0 * u0 + c1 * u1)


def interpolate(
    sde: SDE,
    score: ScoreFn,
    x0: Tensor,
    x1: Tensor,
    num_frames: int,
    space: str = "latent",
    t: float | None = None,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    options: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Images along a path from ``x0`` to ``x1``, ``num_frames`` of them, endpoints included.

    space:
        "latent": encode both with the probability-flow ODE (:func:`~diffscore.encode`, eps -> T),
            interpolate the latents with :func:`slerp`, decode each (Song et al. 2021, Sec. 4.3).
        "data": the straight line ``(1 - w) x0 + w x1`` (no model: the cross-fade to compare against).
        "time": as "latent", with the flow stopped at the intermediate time ``t``: the path is drawn
            among the flow's states at ``t`` (the same :func:`slerp`), then decoded from ``t``.
    The endpoints of "latent" and "time" are ``decode(encode(x))``: the inputs up to the ODE tolerance.

    Args:
        x0, x1: (B, *shape) images (data at time eps), paired row by row.
        num_frames: K >= 2.
        t: the time of ``space="time"``, in (eps, T) (default T / 2).
        eps, rtol, atol, method, options: of the ODE solves (:func:`~diffscore.encode`).
        stats: a dict that receives ``nfe`` (of the encode and decode together).

    Returns:
        (B, K, *shape): row b goes from ``x0[b]`` (frame 0) to ``x1[b]`` (frame K - 1).

    Raises:
        ValueError / TypeError: ``sde`` not an SDE (TypeError); ``x0`` or ``x1`` not a finite float
            tensor (B, *shape), or their shapes differ; ``num_frames`` < 2; unknown ``space``; ``t``
            given without ``space="time"`` or outside (eps, T); a pair whose latents point in opposite
            directions (no unique great circle); and the errors of :func:`~diffscore.encode`.
    """
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_data("x0", x0)
    check_data("x1", x1)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    num_frames = check_int("num_frames", num_frames, 2)
    check_choice("space", space, SPACES)
    if t is not None and space != "time":
        raise ValueError(f"t is the time of space='time'; got t = {t} with space={space!r}")
    if space == "time":
        t = sde.T / 2 if t is None else check_real("t", t)
        if not eps < t < sde.T:
            raise ValueError(f"t must lie in (eps, T) = ({eps:g}, {sde.T:g}) for space='time', got {t}")
    weights = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    if space == "data":
        w = weights.to(x0).reshape(1, -1, *(1,) * (x0.ndim - 1))
        return (1.0 - w) * x0.unsqueeze(1) + w * x1.unsqueeze(1)

    solve = dict(eps=eps, rtol=rtol, atol=atol, method=method, options=options, t=t)
    enc: dict[str, Any] = {}
    z = encode(sde, score, torch.cat([x0, x1]), stats=enc, **solve)
    z0, z1 = z.chunk(2)
    dims = tuple(range(1, z0.ndim))
    cos = (z0 * z1).sum(dims) / (
        torch.linalg.vector_norm(z0, dim=dims) * torch.linalg.vector_norm(z1, dim=dims)
    )
    if bool((cos < -1.0 + 1e-6).any()):
        raise ValueError("the latents of a pair point in opposite directions: no unique great circle")
    path = slerp(z0, z1, weights)  # (B, K, *shape)
    dec: dict[str, Any] = {}
    x = decode(sde, score, path.flatten(0, 1), stats=dec, **solve)
    if stats is not None:
        stats["nfe"] = enc["nfe"] + dec["nfe"]
    return x.reshape(path.shape)
