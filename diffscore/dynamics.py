"""The forward SDE, the reverse-time SDE and the probability-flow ODE as solver objects.

``ForwardSDE`` and ``ReverseSDE`` follow torchsde's protocol (``noise_type``, ``sde_type``, ``f(t, y)``,
``g(t, y)`` on flat ``(B, D)`` states) and go to ``torchsde.sdeint`` as they are. ``ProbabilityFlowODE``
follows torchdiffeq's (``forward(t, x)`` on ``(B, *shape)`` states) and goes to ``torchdiffeq.odeint``.

Source: Song et al. 2021, eq. (6) (reverse-time SDE, Anderson 1982) and eq. (13) (probability flow).

Time conventions:

* ``ForwardSDE``: solver time is the true time t in [0, T].
* ``ReverseSDE``: torchsde needs increasing times, so the solver time is ``tau = -t``; integrate over
  ``ts = -torch.tensor([T, eps])`` (see :meth:`ReverseSDE.solver_times`). With ``dtau = -dt`` the
  reverse SDE ``dx = [f - g^2 score] dt + g dw_bar`` becomes ``dx = [g^2 score - f] dtau + g dW_tau``.
* ``ProbabilityFlowODE``: solver time is the true time, either direction. Adaptive Runge-Kutta solvers
  evaluate slightly past the end of the interval; the time is clamped to ``[t_min, T]`` there, which
  extends the vector field continuously and never evaluates the SDE outside its domain.

Since g depends on t alone, the Ito and Stratonovich forms coincide, so ``sde_type`` may be either and
all of torchsde's methods apply. Score evaluations per step: euler, milstein, euler_heun,
reversible_heun 1; heun, midpoint 2; srk about 3 (additive) / 10 (diagonal). torchsde evaluates ``f``
and ``g`` once more before solving to check shapes; ``nfe`` counts that evaluation too.

The constructors check their arguments: TypeError for an ``sde`` that is not a diffscore SDE or a
``score`` that is not callable; ValueError for a ``shape`` that is not a tuple of positive ints, an
unknown ``sde_type`` or a ``t_min`` outside [0, T). Every score evaluation is checked as
:class:`_Dynamics` says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._checks import (
    check_callable,
    check_choice,
    check_eps,
    check_finite,
    check_instance,
    check_score_output,
    check_shape,
    check_state_and_score,
    state_limit,
)
from .score import ScoreFn
from .sde import SDE

__all__ = ["ForwardSDE", "ReverseSDE", "ProbabilityFlowODE", "LikelihoodODE", "SDE_TYPES"]

SDE_TYPES = ("ito", "stratonovich")


class _Dynamics(nn.Module):
    """Holds the SDE, the score (registered as a submodule when it is one) and the NFE counter.

    Every score evaluation is checked. Its output must be a floating tensor shaped like the state
    (TypeError / ValueError naming the score, :func:`~diffscore._checks.check_score_output`; metadata
    only). Then (one reduction per tensor, one host sync: the solvers that use these objects
    synchronise every step anyway) the state must be finite with ``|x| <= limit`` (``1e4`` prior stds)
    and the score finite with ``|s| std(t)^2 <= 2 limit``; otherwise FloatingPointError names t.
    ``last_t`` keeps the time of the latest evaluation (for error messages of the adaptive solvers).
    """

    def __init__(self, sde: SDE, score: ScoreFn | None, needs_score: bool = True) -> None:
        super().__init__()
        check_instance("sde", sde, SDE, "a diffscore SDE")
        if needs_score or score is not None:
            check_callable("score", score, "score(x, t) -> like x")
        self.sde = sde
        self.score = score
        self.nfe = 0
        self.limit = state_limit(sde.prior_std)
        self.last_t: Tensor | None = None

    def _score(self, x: Tensor, t: Tensor) -> Tensor:
        return self._score_and_divergence(x, t, False)[0]

    def _score_and_divergence(self, x: Tensor, t: Tensor, divergence: bool) -> tuple[Tensor, Tensor | None]:
        """The checked score, and with ``divergence`` its closed-form divergence (B,) from
        ``score.score_and_divergence`` (else None)."""
        self.nfe += 1
        self.last_t = t
        s, div = self.score.score_and_divergence(x, t) if divergence else (self.score(x, t), None)
        check_score_output(s, x)
        check_state_and_score(x, s, t, self.sde.var(t.detach()).sqrt(), self.limit)
        return s, div


class ForwardSDE(_Dynamics):
    """The forward SDE ``dx = f(x, t) dt + g(t) dw`` for ``torchsde.sdeint`` (diagonal noise).

    Args:
        sde: the SDE.
        shape: event shape of one sample, e.g. (3, 32, 32); states are flat (B, prod(shape)).
        sde_type: "ito" or "stratonovich" (identical here since g depends on t alone).
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, shape: Sequence[int], sde_type: str = "ito") -> None:
        super().__init__(sde, None, needs_score=False)
        self.shape = check_shape(shape, event=True)
        self.sde_type = check_choice("sde_type", sde_type, SDE_TYPES)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.sde.f(t.to(y).expand(y.shape[0]))[:, None] * y

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sde.g2(t.to(y).expand(y.shape[0])).sqrt()[:, None].expand_as(y)


class ReverseSDE(_Dynamics):
    """The reverse-time SDE with a score, in solver time ``tau = -t`` (increasing) for torchsde.

    Args:
        sde: the forward SDE.
        score: ``score(x, t) -> like x`` with x (B, *shape), t (B,) true times.
        shape: event shape; torchsde states are flat (B, prod(shape)).
        sde_type: "ito" or "stratonovich".

    ``f(tau, y) = g(t)^2 score(x, t) - f(x, t)`` and ``g(tau, y) = g(t)`` with ``t = -tau``. ``nfe``
    counts score evaluations. A non-finite score raises FloatingPointError naming t.
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score: ScoreFn, shape: Sequence[int], sde_type: str = "ito") -> None:
        super().__init__(sde, score)
        self.shape = check_shape(shape, event=True)
        self.sde_type = check_choice("sde_type", sde_type, SDE_TYPES)

    @staticmethod
    def solver_times(t: Tensor | Sequence[float]) -> Tensor:
        """Map true times (decreasing, e.g. [T, eps]) to torchsde's increasing solver times ``-t``.

        A tensor keeps its dtype; a sequence of floats becomes a float64 CPU tensor (move it with
        ``.to(state)``), so eps = 1e-3 is not first rounded to float32.
        """
        return -(t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64))

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        t = (-tau).to(y).expand(y.shape[0])
        x = y.view((y.shape[0],) + self.shape)
        s = self._score(x, t).reshape(y.shape)
        return self.sde.g2(t)[:, None] * s - self.sde.f(t)[:, None] * y

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        t = (-tau).to(y).expand(y.shape[0])
        return self.sde.g2(t).sqrt()[:, None].expand_as(y)


class ProbabilityFlowODE(_Dynamics):
    """``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` (Song et al. 2021, eq. 13) for ``torchdiffeq.odeint``.

    Args:
        sde: the forward SDE.
        score: ``score(x, t) -> like x``.
        t_min: lower clamp of the time at which the score is evaluated (the solve's eps); adaptive solvers
            that step past the end of ``[t_min, T]`` see the vector field at the nearest end.

    States are (B, *shape) tensors; solve in either time direction. ``nfe`` counts evaluations.
    """

    def __init__(self, sde: SDE, score: ScoreFn, t_min: float = 0.0) -> None:
        super().__init__(sde, score)
        self.t_min = check_eps(float(t_min), sde.T, "t_min")  # a number or a one-element tensor

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """The probability-flow vector field at (B,) times t (no clamping)."""
        s = self._score(x, t)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.sde.f(t).reshape(shape) * x - 0.5 * self.sde.g2(t).reshape(shape) * s

    def velocity_and_divergence(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The vector field and its divergence ``D f(t) - g(t)^2 div score / 2`` (B,), from the score's
        closed-form divergence (``score.score_and_divergence``, which must not be None)."""
        s, div = self._score_and_divergence(x, t, True)
        shape = (-1,) + (1,) * (x.ndim - 1)
        f, g2 = self.sde.f(t), self.sde.g2(t)
        return f.reshape(shape) * x - 0.5 * g2.reshape(shape) * s, x[0].numel() * f - 0.5 * g2 * div

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        t = t.to(x).clamp(self.t_min, self.sde.T).expand(x.shape[0])
        return self.velocity(x, t)


class LikelihoodODE(nn.Module):
    """The probability flow augmented with its divergence (Chen et al. 2018; Grathwohl et al. 2019).

    State: a flat ``(B, D + 1)`` tensor ``[x, l]`` with ``dx/dt = v(x, t)`` and ``dl/dt = div v(x, t)``.
    Integrating from eps to T with ``l(eps) = 0`` gives ``log p_eps(x) = log p_T(z) + l(T)``
    (Song et al. 2021, eq. 39).

    Each evaluation costs one forward pass of the score and one batched vector-Jacobian product:
    ``divergence="exact"`` contracts D one-hot cotangents (``is_grads_batched``, in chunks of
    ``chunk_size``), ``"hutchinson"`` contracts the fixed probes ``probes`` (P, B, *shape):
    ``div v ~ mean_p eps_p^T J eps_p`` (Hutchinson 1989), unbiased. A score that gives its divergence in
    closed form (a non-None ``score.score_and_divergence``, e.g. a :class:`~diffscore.ScoreModel` of a
    :class:`~diffscore.nets.BinPosteriorNet` in eval mode) makes ``"exact"`` use it instead: no backward
    pass.

    A batched VJP over c cotangents holds about c times the activations that the forward pass saves
    for backward. With ``chunk_size=None`` the first evaluation measures those bytes (a saved-tensors
    hook) and takes ``c = memory_budget // bytes`` (at least 1, at most D; docs/likelihood.md, "Memory").
    """

    def __init__(
        self,
        flow: ProbabilityFlowODE,
        shape: Sequence[int],
        divergence: str,
        probes: Tensor | None = None,
        chunk_size: int | None = None,
        memory_budget: int = 512 * 2**20,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.shape = check_shape(shape, event=True)
        self.dim = math.prod(self.shape)
        self.divergence = divergence
        self.probes = probes
        self.chunk_size = chunk_size
        self.memory_budget = int(memory_budget)

    @property
    def nfe(self) -> int:
        return self.flow.nfe

    def _exact_div(self, v: Tensor, x: Tensor) -> Tensor:
        b, d = x.shape[0], self.dim
        div = torch.zeros(b, dtype=x.dtype, device=x.device)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        for start in range(0, d, self.chunk_size):
            stop = min(start + self.chunk_size, d)
            cot = eye[start:stop, None, :].expand(stop - start, b, d).reshape((stop - start, b) + self.shape)
            (jac,) = torch.autograd.grad(v, x, cot, retain_graph=stop < d, is_grads_batched=True)
            rows = jac.reshape(stop - start, b, d)
            idx = torch.arange(start, stop, device=x.device)
            div = div + rows[torch.arange(stop - start, device=x.device), :, idx].sum(0)
        return div

    def _hutchinson_div(self, v: Tensor, x: Tensor) -> Tensor:
        probes = self.probes
        (vjp,) = torch.autograd.grad(v, x, probes, is_grads_batched=True)
        return (vjp * probes).reshape(probes.shape[0], x.shape[0], -1).sum(-1).mean(0)

    def forward(self, t: Tensor, state: Tensor) -> Tensor:
        b = state.shape[0]
        tt = t.to(state).clamp(self.flow.t_min, self.flow.sde.T).expand(b)
        if self.divergence == "exact" and getattr(self.flow.score, "score_and_divergence", None) is not None:
            with torch.no_grad():
                x = state[:, : self.dim].reshape((b,) + self.shape)
                v, div = self.flow.velocity_and_divergence(x, tt)
            check_finite("divergence", div, tt)
            return torch.cat([v.reshape(b, -1), div[:, None]], dim=1)
        with torch.enable_grad():
            x = state[:, : self.dim].detach().reshape((b,) + self.shape).requires_grad_(True)
            if self.divergence == "exact" and self.chunk_size is None:
                saved = [0]

                def pack(tensor: Tensor) -> Tensor:
                    saved[0] += tensor.numel() * tensor.element_size()
                    return tensor

                with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                    v = self.flow.velocity(x, tt)
                self.chunk_size = max(1, min(self.dim, self.memory_budget // max(1, saved[0])))
            else:
                v = self.flow.velocity(x, tt)
            div = self._exact_div(v, x) if self.divergence == "exact" else self._hutchinson_div(v, x)
        check_finite("divergence", div, tt)
        return torch.cat([v.detach().reshape(b, -1), div.detach()[:, None]], dim=1)
