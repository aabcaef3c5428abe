"""Forward SDEs of score-based generative modeling: VE, VP and sub-VP.

Source: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
eqs. (9), (11), (30)-(33) and Appendix B. Every SDE here has a linear drift ``f(x, t) = f(t) x`` and a
diffusion ``g(t)`` that depends on t alone, so the transition kernels are Gaussian:
``x_t | x_0 ~ N(alpha(t) x_0, std(t)^2 I)``.

The VE SDE has two perturbation kernels in use (``VESDE(kernel=...)``): ``"exact"``, the variance of the
SDE started at t = 0, ``sigma_min^2 ((sigma_max/sigma_min)^(2t) - 1)`` (Song et al. 2021, eq. 29, computed
with ``expm1``); and ``"sigma"``, ``sigma(t)^2``, the noise level of NCSN and of every released VE
checkpoint (the data count as already smoothed by ``sigma_min``). They differ by ``sigma_min^2``.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import Generator, as_time, bcast, check_positive, randn

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "SDES", "sde_to_config", "sde_from_config"]


class SDE(ABC):
    """A forward SDE ``dx = f(t) x dt + g(t) dw`` on ``[0, T]`` with Gaussian marginals.

    Subclasses define the schedule through ``_f``, ``_g2``, ``_log_alpha``, ``_var`` and
    ``_t_from_sigma`` on (B,) time tensors. The public methods validate ``t`` (a float, a 0-d tensor or
    a (B,) tensor in [0, T]); the private ones are the unchecked fast path used inside solvers.
    """

    def __init__(self, T: float = 1.0) -> None:
        self.T = check_positive("T", T)

    # ---- schedule (unchecked, (B,) tensors) ---------------------------------------------------------
    @abstractmethod
    def _f(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _g2(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _var(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _t_from_sigma(self, sigma: Tensor) -> Tensor: ...

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, prior_std^2 I) that stands in for p_T."""

    def _alpha_std(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._log_alpha(t).exp(), self._var(t).sqrt()

    # ---- validation ------------------------------------------------------------------------------------
    def _check_t(self, t: Tensor | float) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t), dtype=torch.get_default_dtype())
        elif not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        if bool(((t < 0) | (t > self.T) | torch.isnan(t)).any()):
            raise ValueError(
                f"t must lie in [0, T] = [0, {self.T}]; got values in [{float(t.min())}, {float(t.max())}]"
            )
        return t

    def _time(self, t: Tensor | float, batch: int, like: Tensor) -> Tensor:
        return self._check_t(as_time(t, batch, like))

    @staticmethod
    def _state(x: Tensor, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must have shape (B, *shape) with B >= 1, got {tuple(x.shape)}")
        return x

    # ---- public API --------------------------------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Drift f(x, t), shaped like ``x`` (B, *shape). Raises ValueError for t outside [0, T]."""
        x = self._state(x)
        return bcast(self._f(self._time(t, x.shape[0], x)), x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """Diffusion coefficient g(t), shaped like ``t`` ((B,) for a batch of times)."""
        return self._g2(self._check_t(t)).sqrt()

    def marginal_prob(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean and std of the transition kernel p_0t(x_t | x_0) (Song et al. 2021, eq. 29 and App. B).

        Args:
            x0: (B, *shape) data.
            t: float, 0-d or (B,) times in [0, T].

        Returns:
            ``(mean, std)``: mean shaped like ``x0``, std shaped (B,).
        """
        x0 = self._state(x0, "x0")
        alpha, std = self._alpha_std(self._time(t, x0.shape[0], x0))
        return bcast(alpha, x0) * x0, std

    def marginal_coeffs(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(alpha(t), std(t))`` with ``x_t = alpha(t) x_0 + std(t) z``; both shaped like ``t``."""
        return self._alpha_std(self._check_t(t))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise-to-signal ratio ``std(t) / alpha(t)`` (EDM's sigma; ``exp(-lambda)`` of DPM-Solver)."""
        alpha, std = self.marginal_coeffs(t)
        return std / alpha

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma`: the time at which ``std / alpha`` equals ``sigma`` (>= 0)."""
        sigma = torch.as_tensor(sigma)
        if bool((sigma < 0).any()):
            raise ValueError("sigma must be >= 0")
        return self._t_from_sigma(sigma)

    def transition(self, t_from: Tensor, t_to: Tensor) -> tuple[Tensor, Tensor]:
        """Exact forward kernel between two times: ``x_{t_to} | x_{t_from} ~ N(a x_{t_from}, s^2 I)``.

        Args:
            t_from, t_to: (B,) times with ``0 <= t_from <= t_to <= T``.

        Returns:
            ``(a, s)`` shaped (B,). Used by the reverse-diffusion and ancestral predictors.
        """
        la0, la1 = self._log_alpha(t_from), self._log_alpha(t_to)
        a = (la1 - la0).exp()
        s2 = (self._var(t_to) - a.square() * self._var(t_from)).clamp_min(0)
        return a, s2.sqrt()

    def prior_sample(
        self,
        shape: Sequence[int],
        generator: Generator = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``shape`` = (B, *event) from the prior N(0, prior_std^2 I).

        ``generator`` may be a list of B generators, one per sample.
        """
        return self.prior_std * randn(shape, generator, device, dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior at ``z`` (B, *shape), in nats, shaped (B,)."""
        z = self._state(z, "z")
        d = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - z.reshape(z.shape[0], -1).square().sum(1) / (2 * s2)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class VESDE(SDE):
    """Variance-exploding SDE (SMLD / NCSN): ``dx = sqrt(d[sigma^2(t)]/dt) dw``,
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (Song et al. 2021, eq. 30).

    Args:
        sigma_min, sigma_max: the noise levels at t = 0 and t = T.
        T: the end time.
        kernel: the perturbation kernel ``p_0t(x_t | x_0) = N(x_0, std(t)^2 I)``. ``"exact"``:
            ``std(t)^2 = sigma(t)^2 - sigma_min^2``, the SDE started at t = 0 (eq. 29; std(0) = 0).
            ``"sigma"``: ``std(t) = sigma(t)``, the convention of NCSN and of the released score_sde
            checkpoints (the data at t = 0 count as smoothed by sigma_min; std(0) = sigma_min).

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max``, ``T > 0`` and ``kernel`` is one of
            ``VE_KERNELS``.
    """

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, kernel: str = "exact"
    ) -> None:
        super().__init__(T)
        if kernel not in VE_KERNELS:
            raise ValueError(f"kernel must be one of {VE_KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"sigma_max must exceed sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self._logr = math.log(self.sigma_max / self.sigma_min) / self.T

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return (self.sigma_min**2 * 2 * self._logr) * torch.exp(2 * self._logr * t)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _var(self, t: Tensor) -> Tensor:
        if self.kernel == "sigma":
            return self.sigma_min**2 * torch.exp(2 * self._logr * t)
        return self.sigma_min**2 * torch.expm1(2 * self._logr * t)

    def _t_from_sigma(self, sigma: Tensor) -> Tensor:
        if self.kernel == "sigma":
            # noise levels below sigma_min are reached at no time >= 0: they map to t = 0
            return torch.log(sigma / self.sigma_min).clamp_min(0) / self._logr
        return torch.log1p((sigma / self.sigma_min).square()) / (2 * self._logr)


#: Perturbation kernels of :class:`VESDE`.
VE_KERNELS = ("exact", "sigma")


class VPSDE(SDE):
    """Variance-preserving SDE (DDPM): ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``,
    ``beta(t) = beta_min + t (beta_max - beta_min) / T`` (Song et al. 2021, eq. 32).

    Raises:
        ValueError: unless ``0 <= beta_min <= beta_max``, ``beta_max > 0`` and ``T > 0``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__(T)
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite real number, got {v!r}")
        if not (0 <= beta_min <= beta_max and beta_max > 0):
            raise ValueError(
                f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min}, "
                f"beta_max={beta_max}"
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self._slope = (self.beta_max - self.beta_min) / self.T

    @property
    def prior_std(self) -> float:
        return 1.0

    def beta(self, t: Tensor) -> Tensor:
        """beta(t), shaped like t."""
        return self.beta_min + self._slope * t

    def _B(self, t: Tensor) -> Tensor:
        # integral_0^t beta(s) ds
        return t * (self.beta_min + 0.5 * self._slope * t)

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._B(t)

    def _var(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._B(t))

    def _B_inverse(self, B: Tensor) -> Tensor:
        # positive root of 0.5 slope t^2 + beta_min t - B = 0, in the cancellation-free form
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * self._slope * B))

    def _t_from_sigma(self, sigma: Tensor) -> Tensor:
        # sigma^2 = std^2 / alpha^2 = e^B - 1
        return self._B_inverse(torch.log1p(sigma.square()))


class SubVPSDE(VPSDE):
    """Sub-VP SDE: ``dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``
    (Song et al. 2021, eq. 11). Its marginal std ``1 - exp(-int beta)`` is below the VP one.
    """

    def _g2(self, t: Tensor) -> Tensor:
        return self.beta(t) * -torch.expm1(-2 * self._B(t))

    def _var(self, t: Tensor) -> Tensor:
        return torch.expm1(-self._B(t)).square()

    def _t_from_sigma(self, sigma: Tensor) -> Tensor:
        # sigma = (1 - e^-B) e^(B/2) = 2 sinh(B / 2)
        return self._B_inverse(2 * torch.asinh(sigma / 2))


#: SDE names in configs -> classes.
SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def sde_to_config(sde: SDE) -> dict[str, Any]:
    """``{"name": "vp" | "subvp" | "ve", **constructor arguments}`` of a diffscore SDE.

    Raises:
        TypeError: ``sde`` is not one of the SDE classes in ``SDES``.
    """
    for name, cls in SDES.items():
        if type(sde) is cls:
            params = inspect.signature(cls.__init__).parameters
            return {"name": name, **{k: getattr(sde, k) for k in params if k != "self"}}
    raise TypeError(f"cannot describe SDE of type {type(sde).__name__}; known: {sorted(SDES)}")


def sde_from_config(config: Mapping[str, Any]) -> SDE:
    """Inverse of :func:`sde_to_config`. Raises ValueError for an unknown name (listing the valid ones)."""
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in SDES:
        raise ValueError(f"sde name must be one of {sorted(SDES)}, got {name!r}")
    return SDES[name](**kwargs)
