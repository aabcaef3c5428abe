"""Analytic data distributions with exact scores, densities and samples under every SDE.

A Gaussian mixture ``p_0 = sum_k w_k N(mu_k, diag(s_k^2))`` stays a Gaussian mixture under any of the
linear SDEs in :mod:`diffscore.sde`: with ``x_t = alpha(t) x_0 + std(t) z``,

    p_t = sum_k w_k N(alpha mu_k, diag(alpha^2 s_k^2 + std^2)),

so ``grad log p_t``, ``log p_t`` and draws from ``p_t`` are all closed-form. Every sampler, likelihood
and encoder in diffscore is tested against these answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import Generator, as_time, check_positive_entries, generators, randn
from .sde import SDE

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """Mixture of diagonal Gaussians with any event shape.

    Args:
        weights: (K,) positive mixture weights (normalised here).
        means: (K, *event_shape) component means.
        stds: component standard deviations: a float, a (K,) tensor (isotropic per component) or a
            (K, *event_shape) tensor; all > 0.

    The dtype and device are those of ``means`` (a float tensor or anything ``torch.as_tensor`` takes).

    Raises:
        ValueError: on non-positive weights or stds, or shapes that do not match.
    """

    def __init__(
        self, weights: Tensor | Sequence[float], means: Tensor | Sequence, stds: Tensor | float
    ) -> None:
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.ndim < 2:
            raise ValueError(f"means must be shaped (K, *event_shape), got {tuple(means.shape)}")
        k = means.shape[0]
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != (k,):
            raise ValueError(f"weights must be shaped (K,) = ({k},), got {tuple(weights.shape)}")
        check_positive_entries("weights", weights)
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        if stds.ndim == 1 and stds.shape == (k,):
            stds = stds.reshape((k,) + (1,) * (means.ndim - 1))
        try:
            stds = torch.broadcast_to(stds, means.shape).clone()
        except RuntimeError as err:
            raise ValueError(
                f"stds of shape {tuple(stds.shape)} do not broadcast to means {tuple(means.shape)}"
            ) from err
        check_positive_entries("stds", stds)
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite")
        self.event_shape = tuple(means.shape[1:])
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds
        self._mu = means.reshape(k, -1)
        self._var = stds.reshape(k, -1).square()

    @property
    def dim(self) -> int:
        """Number of dimensions D of one sample."""
        return self._mu.shape[1]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """A copy on ``device`` with ``dtype``."""
        return GaussianMixture(
            self.weights.to(device=device, dtype=dtype),
            self.means.to(device=device, dtype=dtype),
            self.stds.to(device=device, dtype=dtype),
        )

    # ---- internals ---------------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must be shaped (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1)

    def _params(self, x: Tensor, sde: SDE | None, t: Tensor | float | None) -> tuple[Tensor, Tensor]:
        """Component means (B|1, K, D) and variances (B|1, K, D) of p_t."""
        mu = self._mu.to(x)
        var = self._var.to(x)
        if sde is None:
            if t is not None:
                raise ValueError("t was given without an sde")
            return mu[None], var[None]
        if t is None:
            raise ValueError("an sde was given without t")
        tt = as_time(t, x.shape[0], x).clamp(0.0, sde.T)
        alpha, std = sde.alpha_std(tt)
        alpha, std = alpha[:, None, None], std[:, None, None]
        return alpha * mu[None], alpha.square() * var[None] + std.square()

    def _component_logp(
        self, x: Tensor, sde: SDE | None, t: Tensor | float | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        xf = self._flat(x)
        mean, var = self._params(x, sde, t)
        diff = xf[:, None, :] - mean
        logn = -0.5 * (diff.square() / var + torch.log(2 * math.pi * var)).sum(-1)
        return logn + self.weights.to(x).log(), diff, var

    # ---- public API ---------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, sde: SDE | None = None, t: Tensor | float | None = None) -> Tensor:
        """log p_t(x) in nats, shaped (B,), for x (B, *event_shape); p_0 when ``sde`` and ``t`` are None."""
        joint, _, _ = self._component_logp(x, sde, t)
        return torch.logsumexp(joint, dim=1)

    def posterior(self, x: Tensor, sde: SDE | None = None, t: Tensor | float | None = None) -> Tensor:
        """Component responsibilities p_t(k | x), shaped (B, K)."""
        joint, _, _ = self._component_logp(x, sde, t)
        return torch.softmax(joint, dim=1)

    def score(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        """Exact score grad_x log p_t(x), shaped like x (B, *event_shape)."""
        joint, diff, var = self._component_logp(x, sde, t)
        resp = torch.softmax(joint, dim=1)
        return -(resp[..., None] * diff / var).sum(1).reshape(x.shape)

    def score_fn(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact score as a callable ``score(x, t)`` under ``sde``."""

        def score(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, t, sde)

        return score

    def sample(
        self,
        n: int,
        generator: Generator = None,
        sde: SDE | None = None,
        t: float | None = None,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Exact draws from p_t (p_0 by default), shaped (n, *event_shape).

        With ``return_labels`` also the (n,) component index of each draw. ``generator`` may be a list
        of n generators, one per sample.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        gens = generators(generator, n)
        dev, dt = self._mu.device, self._mu.dtype
        if isinstance(gens, list):
            labels = torch.cat([torch.multinomial(self.weights.cpu(), 1, generator=g) for g in gens]).to(dev)
        else:
            labels = torch.multinomial(
                self.weights.to(gens.device if gens is not None else dev), n, replacement=True, generator=gens
            ).to(dev)
        z = randn((n, self.dim), gens, dev, dt)
        x = self._mu[labels] + self._var[labels].sqrt() * z
        if sde is not None:
            if t is None:
                raise ValueError("an sde was given without t")
            alpha, std = sde.marginal_coeffs(torch.full((n,), float(t), dtype=dt, device=dev))
            x = alpha[:, None] * x + std[:, None] * randn((n, self.dim), gens, dev, dt)
        x = x.reshape((n,) + self.event_shape)
        return (x, labels) if return_labels else x
