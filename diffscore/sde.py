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
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import (
    Generator,
    as_time,
    bcast,
    check_float_dtype,
    check_positive,
    check_real,
    check_shape,
    randn,
)

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "SDES", "sde_to_config", "sde_from_config"]


class SDE(ABC):
    """A forward SDE ``dx = f(t) x dt + g(t) dw`` on ``[0, T]`` with Gaussian marginals.

    The schedule (``f``, ``g2``, ``log_alpha``, ``var``, ``alpha_std``, ``inverse_sigma``) takes (B,)
    time tensors and checks nothing: it is what samplers, losses and likelihoods call inside their
    loops, and what a user writing a sampler calls. The other public methods (``drift``,
    ``marginal_prob``, ``marginal_coeffs``, ``sigma``, ``t_from_sigma``, ``transition``) validate user
    input: ``t`` a float, a 0-d tensor or a (B,) tensor in [0, T].
    """

    def __init__(self, T: float = 1.0) -> None:
        self.T = check_positive("T", T)

    # ---- schedule (unchecked, (B,) tensors) ---------------------------------------------------------
    @abstractmethod
    def f(self, t: Tensor) -> Tensor:
        """Linear drift coefficient f(t) of ``dx = f(t) x dt + g(t) dw``."""

    @abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)^2."""

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t), the log of the marginal mean's scale: ``x_t = alpha(t) x_0 + std(t) z``."""

    @abstractmethod
    def var(self, t: Tensor) -> Tensor:
        """Marginal variance std(t)^2 of p_0t(x_t | x_0). Negative for VP at t < 0: unguarded."""

    @abstractmethod
    def inverse_sigma(self, sigma: Tensor) -> Tensor:
        """The time at which ``std / alpha`` equals ``sigma`` (unclamped inverse of :meth:`sigma`)."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, prior_std^2 I) that stands in for p_T."""

    def alpha_std(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), std(t))`` of the marginal, unchecked; :meth:`marginal_coeffs` checks ``t``."""
        return self.log_alpha(t).exp(), self.var(t).sqrt()

    # ---- validation ------------------------------------------------------------------------------------
    @staticmethod
    def _as_tensor(t: Tensor | float, name: str = "t", like: Tensor | float | None = None) -> Tensor:
        """A real number or a real tensor as a floating tensor (integers -> torch's default dtype; a
        number takes the dtype and device of ``like`` when that is a tensor); TypeError naming ``name``
        otherwise (a list, a string, a bool, a complex tensor). No sync."""
        if isinstance(t, Tensor):
            if t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
            return t if t.is_floating_point() else t.to(torch.get_default_dtype())
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}")
        if isinstance(like, Tensor) and like.is_floating_point():
            return torch.tensor(float(t), dtype=like.dtype, device=like.device)
        return torch.tensor(float(t), dtype=torch.get_default_dtype())

    def _outside(self, t: Tensor) -> Tensor:
        """Elementwise: t outside [0, T] or NaN (no sync)."""
        return (t < 0) | (t > self.T) | torch.isnan(t)

    def _range_error(self, t: Tensor, name: str) -> ValueError:
        return ValueError(
            f"{name} must lie in [0, T] = [0, {self.T}]; got values in [{float(t.min())}, {float(t.max())}]"
        )

    def _check_t(self, t: Tensor | float, name: str = "t") -> Tensor:
        """``t`` as a floating tensor, checked to lie in [0, T] (one host sync); TypeError / ValueError
        naming ``name`` otherwise."""
        t = self._as_tensor(t, name)
        if bool(self._outside(t).any()):
            raise self._range_error(t, name)
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
        return bcast(self.f(self._time(t, x.shape[0], x)), x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """Diffusion coefficient g(t), shaped like ``t`` ((B,) for a batch of times).

        Raises TypeError for a ``t`` that is not a number or a tensor, ValueError for t outside [0, T]
        or NaN (as every public method taking ``t``).
        """
        return self.g2(self._check_t(t)).sqrt()

    def marginal_prob(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean and std of the transition kernel p_0t(x_t | x_0) (Song et al. 2021, eq. 29 and App. B).

        Args:
            x0: (B, *shape) data.
            t: float, 0-d or (B,) times in [0, T].

        Returns:
            ``(mean, std)``: mean shaped like ``x0``, std shaped (B,).
        """
        x0 = self._state(x0, "x0")
        alpha, std = self.alpha_std(self._time(t, x0.shape[0], x0))
        return bcast(alpha, x0) * x0, std

    def marginal_coeffs(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(alpha(t), std(t))`` with ``x_t = alpha(t) x_0 + std(t) z``; both shaped like ``t``.

        Raises:
            TypeError: ``t`` is not a real number or a real tensor (e.g. a list).
            ValueError: ``t`` outside [0, T] or NaN.
        """
        return self.alpha_std(self._check_t(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        """Noise-to-signal ratio ``std(t) / alpha(t)`` (EDM's sigma; ``exp(-lambda)`` of DPM-Solver).
        Errors as :meth:`marginal_coeffs`."""
        alpha, std = self.marginal_coeffs(t)
        return std / alpha

    def _sigma_limit(self, dtype: torch.dtype) -> tuple[float, float]:
        """``(sigma(T), the largest sigma accepted)`` for a sigma of ``dtype``: sigma(T) in float64 and
        as :meth:`sigma` computes it in ``dtype`` (when finite there), the larger of the two times
        ``1 + 4 eps(dtype)``."""
        ts = [torch.tensor([self.T], dtype=d) for d in (torch.float64, dtype)]
        s64, s_dt = (float(std[0] / alpha[0]) for alpha, std in (self.alpha_std(t) for t in ts))
        s_dt = s_dt if math.isfinite(s_dt) else s64  # overflows in float16 (e.g. VE's expm1)
        return s64, max(s64, s_dt) * (1.0 + 4.0 * torch.finfo(dtype).eps)

    def t_from_sigma(self, sigma: Tensor | float) -> Tensor:
        """Inverse of :meth:`sigma`: the time in [0, T] at which ``std / alpha`` equals ``sigma``.

        ``sigma`` must lie in [0, sigma(T)]. A sigma above sigma(T) by rounding alone (at most
        ``4 eps`` relative, eps of sigma's dtype, beyond sigma(T) computed in float64 or in sigma's
        dtype, so ``t_from_sigma(sigma(T))`` works in every dtype) maps to T: the result is clamped to
        [0, T]. One host sync per call (the check); the solvers use the unchecked ``inverse_sigma``.
        Levels below the smallest one (``sigma_min`` for VE ``kernel="sigma"``) map to t = 0.

        Raises:
            TypeError: ``sigma`` is not a real number or a real tensor.
            ValueError: ``sigma`` negative, NaN, infinite or above sigma(T); the message names sigma
                and sigma(T).
        """
        sigma = self._as_tensor(sigma, "sigma")
        s_T, limit = self._sigma_limit(sigma.dtype)
        if not bool((torch.isfinite(sigma) & (sigma >= 0) & (sigma <= limit)).all()):  # NaN fails
            raise ValueError(
                f"sigma must lie in [0, sigma(T)] = [0, {s_T:.9g}]; got values in "
                f"[{float(sigma.min())}, {float(sigma.max())}]"
            )
        return self.inverse_sigma(sigma).clamp(0.0, self.T)

    def transition(self, t_from: Tensor | float, t_to: Tensor | float) -> tuple[Tensor, Tensor]:
        """Exact forward kernel between two times: ``x_{t_to} | x_{t_from} ~ N(a x_{t_from}, s^2 I)``.

        Args:
            t_from, t_to: floats, 0-d or (B,) tensors (broadcast together) with
                ``0 <= t_from <= t_to <= T``: the kernel runs forward in time.

        Returns:
            ``(a, s)`` shaped like the broadcast times. Used (once per solve) by the reverse-diffusion
            and ancestral predictors. The check costs one host sync per call; the unchecked schedule
            (``log_alpha``, ``var``) is the fast path inside loops.

        Raises:
            TypeError: a time that is not a real number or a real tensor.
            ValueError: a time outside [0, T] or NaN, ``t_from > t_to`` (reversed times), times that
                do not broadcast or lie on different devices; the message names ``t_from`` / ``t_to``.
        """
        # a float takes the other time's dtype and device when that is a tensor
        t_to = self._as_tensor(t_to, "t_to", like=t_from)
        t_from = self._as_tensor(t_from, "t_from", like=t_to)
        if t_from.device != t_to.device:
            raise ValueError(f"t_from is on {t_from.device} but t_to is on {t_to.device}")
        try:
            torch.broadcast_shapes(t_from.shape, t_to.shape)
        except RuntimeError:
            raise ValueError(
                f"t_from of shape {tuple(t_from.shape)} and t_to of shape {tuple(t_to.shape)} do not "
                "broadcast together"
            ) from None
        ok = torch.stack(
            [~self._outside(t_from).any(), ~self._outside(t_to).any(), (t_from <= t_to).all()]
        ).tolist()  # the one host sync
        if not ok[0]:
            raise self._range_error(t_from, "t_from")
        if not ok[1]:
            raise self._range_error(t_to, "t_to")
        if not ok[2]:
            bad = (t_from > t_to).broadcast_to(torch.broadcast_shapes(t_from.shape, t_to.shape))
            i = bad.reshape(-1).nonzero()[0, 0]
            f = float(t_from.broadcast_to(bad.shape).reshape(-1)[i])
            to = float(t_to.broadcast_to(bad.shape).reshape(-1)[i])
            raise ValueError(
                f"transition needs t_from <= t_to (the kernel runs forward in time); got t_from = {f:g} "
                f"> t_to = {to:g}"
            )
        la0, la1 = self.log_alpha(t_from), self.log_alpha(t_to)
        a = (la1 - la0).exp()
        s2 = (self.var(t_to) - a.square() * self.var(t_from)).clamp_min(0)
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

        Raises:
            TypeError: ``shape`` not a tuple or list (e.g. a bare int); ``dtype`` not a floating-point
                dtype; a bad ``generator``.
            ValueError: ``shape`` empty or with an entry that is not a positive int; a generator list
                whose length is not B.
        """
        shape = check_shape(shape, 1)
        dtype = check_float_dtype(dtype)
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
        TypeError: ``sigma_min``, ``sigma_max`` or ``T`` is not a real number (a bool is refused).
        ValueError: unless they are finite, ``0 < sigma_min < sigma_max``, ``T > 0`` and ``kernel`` is
            one of ``VE_KERNELS``.
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

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        return (self.sigma_min**2 * 2 * self._logr) * torch.exp(2 * self._logr * t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def var(self, t: Tensor) -> Tensor:
        if self.kernel == "sigma":
            return self.sigma_min**2 * torch.exp(2 * self._logr * t)
        return self.sigma_min**2 * torch.expm1(2 * self._logr * t)

    def inverse_sigma(self, sigma: Tensor) -> Tensor:
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
        TypeError: ``beta_min``, ``beta_max`` or ``T`` is not a real number (a bool is refused).
        ValueError: unless they are finite, ``0 <= beta_min <= beta_max``, ``beta_max > 0`` and
            ``T > 0``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__(T)
        beta_min, beta_max = check_real("beta_min", beta_min), check_real("beta_max", beta_max)
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

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._B(t)

    def var(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._B(t))

    def _B_inverse(self, B: Tensor) -> Tensor:
        # positive root of 0.5 slope t^2 + beta_min t - B = 0, in the cancellation-free form
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * self._slope * B))

    def inverse_sigma(self, sigma: Tensor) -> Tensor:
        # sigma^2 = std^2 / alpha^2 = e^B - 1
        return self._B_inverse(torch.log1p(sigma.square()))


class SubVPSDE(VPSDE):
    """Sub-VP SDE: ``dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``
    (Song et al. 2021, eq. 11). Its marginal std ``1 - exp(-int beta)`` is below the VP one.
    """

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t) * -torch.expm1(-2 * self._B(t))

    def var(self, t: Tensor) -> Tensor:
        return torch.expm1(-self._B(t)).square()

    def inverse_sigma(self, sigma: Tensor) -> Tensor:
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
