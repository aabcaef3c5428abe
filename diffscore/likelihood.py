"""Exact likelihood, bits/dim, and encoding to / decoding from latents with the probability-flow ODE.

Source: Song et al. 2021, Sec. 4.3 and App. D.2 (likelihood through the probability flow); Grathwohl
et al. 2019 (Hutchinson trace estimator, a probe fixed per solve); Theis et al. 2016 and Ho et al. 2019
(uniform dequantization and the bits/dim offset).

Adaptive solvers share one step size across the batch. So that a sample's accuracy does not depend on
its batch-mates, the error norm here is the *largest per-sample* norm (an RMS over a sample's
dimensions), not torchdiffeq's RMS over the whole batch: every sample meets rtol/atol on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS as ODE_SOLVERS  # torchdiffeq's method table
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

from ._checks import (
    Generator,
    StepSizeUnderflowError,
    check_choice,
    check_data,
    check_discrete_batch,
    check_instance,
    check_int,
    check_latent,
    check_positive,
    check_solve_eps,
    check_stats,
    rand,
    randn,
)
from .dynamics import LikelihoodODE, ProbabilityFlowODE
from .score import ScoreFn
from .sde import SDE

__all__ = [
    "LikelihoodResult",
    "BitsPerDimResult",
    "log_likelihood",
    "bits_per_dim",
    "encode",
    "decode",
    "per_sample_norm",
    "DIVERGENCES",
    "PROBES",
    "fixed_grid_methods",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def per_sample_norm(batch: int, split: int | None = None):
    """Error norm for torchdiffeq: the max over samples of each sample's RMS.

    For a flat ``(B, D + 1)`` likelihood state (``split = D``), a sample's norm is the larger of the RMS
    over its D state entries and the absolute error of its log-density entry.
    """

    def norm(err: Tensor) -> Tensor:
        e = err.reshape(batch, -1)
        if split is None:
            return e.square().mean(1).sqrt().max()
        return torch.maximum(e[:, :split].square().mean(1).sqrt(), e[:, split:].abs().amax(1)).max()

    return norm


def fixed_grid_methods() -> tuple[str, ...]:
    """torchdiffeq's fixed-grid methods (subclasses of its ``FixedGridODESolver``: "euler", "midpoint",
    "rk4", "explicit_adams", ...), read from the installed torchdiffeq's method table."""
    return tuple(sorted(k for k, v in ODE_SOLVERS.items() if issubclass(v, FixedGridODESolver)))


def _ode_kwargs(
    rtol: float,
    atol: float,
    method: str,
    options: dict[str, Any] | None,
    norm,
    t_end: Tensor | None = None,
    name: str = "method",
) -> dict[str, Any]:
    """Check the torchdiffeq arguments of a front door and return ``torchdiffeq.odeint``'s keyword
    arguments: adaptive methods get the per-sample ``norm`` and a step boundary at ``t_end``, so no
    Runge-Kutta stage is evaluated past the end of the interval (there the dynamics clamp t, a kink in
    the vector field that costs adaptive solvers 10-1000x their tolerance).

    A fixed-grid method needs ``options["step_size"]`` (> 0) or ``options["grid_constructor"]``: without
    either, torchdiffeq steps on the output times alone, i.e. ONE step from eps to T, silently. ``name``
    is the argument that holds the method (``method``, or ``solver`` for ``sample_ode``).
    """
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if not isinstance(method, str):
        raise TypeError(f"{name} must be a torchdiffeq method name")
    check_choice(name, method, sorted(ODE_SOLVERS))
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    opts = dict(options or {})
    if issubclass(ODE_SOLVERS[method], FixedGridODESolver):
        if opts.get("step_size") is None and opts.get("grid_constructor") is None:
            raise ValueError(
                f"{name}={method!r} is a fixed-step solver and no step was given: torchdiffeq would take "
                f'a single step over the whole interval. Pass options={{"step_size": ...}} (e.g. 1e-3) '
                f"or choose an adaptive {name} such as 'dopri5'"
            )
        if opts.get("step_size") is not None:
            check_positive('options["step_size"]', opts["step_size"])
    if issubclass(ODE_SOLVERS[method], AdaptiveStepsizeODESolver):
        opts.setdefault("norm", norm)
        if t_end is not None:
            opts.setdefault("step_t", t_end.reshape(1))
    return dict(rtol=rtol, atol=atol, method=method, options=opts)


def _odeint(func, y0: Tensor, ts: Tensor, flow: ProbabilityFlowODE, **kw: Any) -> Tensor:
    """``torchdiffeq.odeint`` whose bare assertions become the library's errors naming t.

    torchdiffeq's adaptive solvers assert ``t0 + dt > t0`` ("underflow in dt ...") and a finite state;
    here the first raises :class:`~diffscore._checks.StepSizeUnderflowError` and the second
    FloatingPointError, both naming the time of the latest evaluation (``flow.last_t``) and the step.
    """
    try:
        return torchdiffeq.odeint(func, y0, ts, **kw)
    except AssertionError as err:
        msg = str(err)
        t = flow.last_t
        where = f"t = {float(t.reshape(-1)[0]):.6g}" if t is not None else f"t near {float(ts[0]):.6g}"
        if msg.startswith("underflow in dt"):
            dt = msg.split("underflow in dt", 1)[1].strip()
            raise StepSizeUnderflowError(
                f"the adaptive ODE solver's step size underflowed at {where} (dt = {dt}): the score is "
                "erratic there, or rtol/atol are below what the dtype resolves"
            ) from None
        if msg.startswith("non-finite values in state"):
            raise FloatingPointError(f"non-finite ODE state at {where}") from None
        raise


def _check_output(name: str, x: Tensor, t: float, limit: float) -> None:
    """The solver's final state must be finite and within the plausible range (fixed-step solvers never
    evaluate the dynamics there)."""
    big = float(x.detach().abs().amax()) if x.numel() else 0.0
    if not (big <= limit and math.isfinite(big)):  # NaN fails too
        kind = "non-finite" if not bool(torch.isfinite(x).all()) else "implausibly large"
        raise FloatingPointError(f"{kind} {name} at t = {t:.6g} (plausible: |x| <= {limit:.3g})")


def _check_latent_time(sde: SDE, eps: float, t: float | None) -> float:
    """The time of the latents: T by default, else a real number in (eps, T]."""
    if t is None:
        return float(sde.T)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a real number in (eps, T], got {type(t).__name__}")
    if not eps < t <= sde.T:
        raise ValueError(f"t must lie in (eps, T] = ({eps:g}, {sde.T:g}], got {t}")
    return float(t)


def encode(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    options: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    t: float | None = None,
) -> Tensor:
    """Encode data x (B, *shape) at time eps to latents z = x(T), shaped like x, by solving the
    probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` from eps to T (Song et al. 2021,
    eq. 13 and Sec. 4.3). The map is deterministic and :func:`decode` inverts it. With ``t`` the solve
    stops there: ``z`` is the flow's state at time ``t``.

    ``stats``, if given, receives ``nfe`` (score evaluations). No autograd graph is recorded (memory
    stays flat in the number of steps); to differentiate through the flow, pass
    :class:`~diffscore.dynamics.ProbabilityFlowODE` to ``torchdiffeq.odeint`` or ``odeint_adjoint``.

    Args:
        eps: the data time, in (0, T) where the SDE's std vanishes at 0 (VP, sub-VP, VE "exact").
        rtol, atol, method, options: passed to ``torchdiffeq.odeint``; adaptive methods use a per-sample
            error norm (:func:`per_sample_norm`). A fixed-grid ``method`` ("euler", "midpoint", "rk4",
            ..., :func:`fixed_grid_methods`) needs its step: ``options={"step_size": h}`` (or
            ``"grid_constructor"``).
        t: the latents' time, in (eps, T] (default T).

    Raises:
        ValueError / TypeError: bad ``x`` (non-float, NaN/inf, empty); ``eps`` outside [0, T) or with
            ``std(eps) = 0`` (the score is singular there); ``t`` outside (eps, T]; a ``score`` that is
            not callable (TypeError); bad tolerances; an unknown ``method``, or a fixed-grid one without
            ``options["step_size"]``; ``stats`` not a dict or None (TypeError); a ``score`` returning a
            non-tensor (TypeError) or a tensor not shaped like the state (ValueError).
        FloatingPointError: the score or the state turns non-finite or implausibly large during the
            solve (the message names the time); :class:`~diffscore._checks.StepSizeUnderflowError` when
            an adaptive step size underflows.
    """
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_stats(stats)
    check_data("x", x)
    eps = check_solve_eps(sde, eps)
    t = _check_latent_time(sde, eps, t)
    flow = ProbabilityFlowODE(sde, score, t_min=eps)  # checks sde and score
    ts = torch.tensor([eps, t], dtype=x.dtype, device=x.device)
    kw = _ode_kwargs(rtol, atol, method, options, per_sample_norm(x.shape[0]), ts[-1])
    with torch.no_grad():
        z = _odeint(flow, x, ts, flow, **kw)[-1]
    _check_output("latent", z, t, flow.limit)
    if stats is not None:
        stats["nfe"] = flow.nfe
    return z


def decode(
    sde: SDE,
    score: ScoreFn,
    z: Tensor,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    options: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    t: float | None = None,
) -> Tensor:
    """Decode latents z (B, *shape) at time T (or ``t``) to data at time eps, shaped like z: the
    probability-flow ODE solved from there down to eps, the inverse of :func:`encode`.

    Arguments as in :func:`encode`. ``z`` must be a plausible state at T: every entry strictly inside
    the samplers' bound ``1e4 x sde.prior_std`` (:func:`~diffscore._checks.state_limit`).

    Raises:
        ValueError / TypeError: bad ``z`` (non-float, NaN/inf, empty, or an entry at or beyond the
            plausible bound; the message names ``z`` and the bound), and the errors of :func:`encode`.
    """
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_stats(stats)
    check_latent("z", z, sde.prior_std)
    eps = check_solve_eps(sde, eps)
    t = _check_latent_time(sde, eps, t)
    flow = ProbabilityFlowODE(sde, score, t_min=eps)  # checks sde and score
    ts = torch.tensor([t, eps], dtype=z.dtype, device=z.device)
    kw = _ode_kwargs(rtol, atol, method, options, per_sample_norm(z.shape[0]), ts[-1])
    with torch.no_grad():
        x = _odeint(flow, z, ts, flow, **kw)[-1]
    _check_output("sample", x, eps, flow.limit)
    if stats is not None:
        stats["nfe"] = flow.nfe
    return x


@dataclass
class LikelihoodResult:
    """Output of :func:`log_likelihood`.

    Attributes:
        logp: (B,) log p_eps(x) in nats.
        prior_logp: (B,) log-density of the prior at z, in nats.
        delta_logp: (B,) the ODE part ``logp - prior_logp`` (the integral of the divergence), nats.
        z: (B, *shape) the latent x(T).
        nfe: evaluations of the score.
    """

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int


def log_likelihood(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    divergence: str = "exact",
    probe: str = "rademacher",
    n_probes: int = 1,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: Generator = None,
    chunk_size: int | None = None,
    options: dict[str, Any] | None = None,
) -> LikelihoodResult:
    """Log-likelihood of x (B, *shape) under the probability-flow ODE (Song et al. 2021, eq. 39).

    Solves the flow augmented with its divergence, ``d[x, l]/dt = [v(x, t), div v(x, t)]``, from
    ``[x, 0]`` at eps to ``[z, l(T)]`` at T and returns ``log p_eps(x) = log p_T(z) + l(T)`` in nats
    (instantaneous change of variables, Chen et al. 2018).

    Args:
        divergence: "exact" (D batched vector-Jacobian products per evaluation, in chunks of
            ``chunk_size``; for small D) or "hutchinson" (``n_probes`` probes ``eps_p``,
            ``div v ~ mean_p eps_p^T J eps_p``, drawn once and fixed for the solve; Grathwohl et al. 2019).
        probe: "rademacher" or "gaussian" (Hutchinson only).
        n_probes: probes per sample, >= 1 (Hutchinson only).
        eps: the data time, in (0, T) where the SDE's std vanishes at 0 (VP, sub-VP, VE "exact").
        rtol, atol, method, options: as in :func:`encode`.
        generator: torch.Generator or a list of B of them, for the probes.
        chunk_size: one-hot cotangents per batched VJP of the exact divergence; None picks the most
            that fit in 512 MiB of saved activations (measured on the first evaluation,
            :class:`~diffscore.dynamics.LikelihoodODE`).

    Returns:
        :class:`LikelihoodResult`: ``logp``, ``prior_logp``, ``delta_logp`` (B,) in nats, the latent
        ``z`` (B, *shape) and ``nfe``.

    Raises:
        ValueError / TypeError: bad ``x``, ``eps``, ``score``, tolerances, ``method`` or ``options`` as in
            :func:`encode`; an unknown ``divergence`` or ``probe``; ``n_probes`` not an int >= 1;
            ``chunk_size`` not a positive int or None; a bad ``generator`` (Hutchinson only).
        FloatingPointError: a non-finite or implausibly large score, state or divergence during the solve
            (names the time); :class:`~diffscore._checks.StepSizeUnderflowError` as in :func:`encode`.
    """
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_data("x", x)
    eps = check_solve_eps(sde, eps)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    check_int("n_probes", n_probes, 1, value_error=True)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    flow = ProbabilityFlowODE(sde, score, t_min=eps)  # checks sde and score
    b, shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(shape)
    ts = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
    kw = _ode_kwargs(rtol, atol, method, options, per_sample_norm(b, split=d), ts[-1])

    probes = _hutchinson_probes(probe, n_probes, x, generator) if divergence == "hutchinson" else None
    func = LikelihoodODE(flow, shape, divergence, probes, chunk_size)
    # [x, l] from [x, 0] at eps to [z, l(T)] at T: log p_eps(x) = log p_T(z) + l(T)
    state0 = torch.cat([x.reshape(b, d), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], dim=1)
    state = _odeint(func, state0, ts, flow, **kw)[-1]
    z = state[:, :d].reshape(x.shape)
    delta = state[:, d]
    _check_output("latent", z, sde.T, flow.limit)
    _check_output("log-density change", delta[:, None], sde.T, math.inf)
    prior = sde.prior_logp(z)
    return LikelihoodResult(logp=prior + delta, prior_logp=prior, delta_logp=delta, z=z, nfe=flow.nfe)


def _hutchinson_probes(probe: str, n_probes: int, x: Tensor, generator: Generator) -> Tensor:
    """(n_probes, B, *shape) Rademacher (+-1) or standard Gaussian probes, sample b's from its own
    generator when ``generator`` is a list."""
    draw = (x.shape[0], n_probes) + tuple(x.shape[1:])
    if probe == "gaussian":
        probes = randn(draw, generator, x.device, x.dtype)
    else:
        probes = rand(draw, generator, x.device, x.dtype).lt(0.5).to(x.dtype) * 2 - 1
    return probes.transpose(0, 1).contiguous()


@dataclass
class BitsPerDimResult:
    """Output of :func:`bits_per_dim`.

    Attributes:
        bpd: (B,) bits per dimension of the discrete data (an upper bound on -log2 P(x) / D).
        logp: (B,) continuous log-density in nats of the dequantized data in ``data_range`` space.
        nfe: evaluations of the score.
    """

    bpd: Tensor
    logp: Tensor
    nfe: int


def bits_per_dim(
    sde: SDE,
    score: ScoreFn,
    x_int: Tensor,
    num_bins: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dequantize: str = "uniform",
    generator: Generator = None,
    dtype: torch.dtype | None = None,
    **likelihood_kwargs: Any,
) -> BitsPerDimResult:
    """Bits/dim of integer data under the model, with uniform dequantization.

    ``x_int`` (B, *shape) holds integers in ``{0, ..., num_bins - 1}``. It is dequantized once,
    ``y = (x_int + u) / num_bins`` with ``u ~ U[0, 1)^D``, mapped linearly onto ``data_range = (lo, hi)``
    as ``x = lo + (hi - lo) y``, and

        bpd = -log p(x) / (D ln 2) + log2(num_bins) - log2(hi - lo),

    which is ``-E_u log2 p_disc`` per dimension, an upper bound on the discrete code length (Theis et al.
    2016). The offset is derived from ``num_bins`` and ``data_range``; nothing is hard-coded.

    Args:
        dtype: floating dtype of the solve (default: torch's default dtype).
        generator: for the dequantization noise (and Hutchinson probes); a list gives per-sample draws.
        likelihood_kwargs: passed to :func:`log_likelihood` (divergence, eps, rtol, atol, method, ...).

    Returns:
        :class:`BitsPerDimResult`: ``bpd`` (B,) in bits/dim, ``logp`` (B,) in nats, ``nfe``.

    Raises:
        ValueError / TypeError: ``x_int`` not a (B, *shape) tensor (TypeError), non-integer values,
            values outside [0, num_bins), num_bins not an int >= 2, an unknown ``dequantize``;
            ``data_range`` not a pair of numbers (TypeError) or not finite with lo < hi (ValueError);
            ``dtype`` not float32 / float64 (TypeError); ``num_bins`` or ``data_range`` other than the
            ones the model's card records (``ScoreModel.card``); and the errors of :func:`log_likelihood`.
    """
    xf, lo, hi = check_discrete_batch(x_int, num_bins, data_range, dtype, score)
    if dequantize != "uniform":
        raise ValueError(
            f"dequantize must be 'uniform', got {dequantize!r} (a likelihood without dequantization is a "
            "continuous NLL, not bits/dim: use log_likelihood)"
        )
    # uniform dequantization, y = (x_int + u) / num_bins, mapped onto [lo, hi]
    u = rand(xf.shape, generator, xf.device, xf.dtype)
    x = lo + (hi - lo) * (xf + u) / num_bins
    res = log_likelihood(sde, score, x, generator=generator, **likelihood_kwargs)
    d = x[0].numel()
    bpd = -res.logp / (d * math.log(2)) + math.log2(num_bins) - math.log2(hi - lo)
    return BitsPerDimResult(bpd=bpd, logp=res.logp, nfe=res.nfe)
