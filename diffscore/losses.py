"""Score-matching objectives: denoising (continuous-time, NCSN, DDPM, single sigma), exact and sliced.

Conventions shared by every loss here:

* ``x0`` / ``x`` is a (B, *shape) floating tensor; ``D = prod(shape)``.
* A score is a callable: ``score(x, t) -> like x`` for the SDE losses (t shaped (B,)),
  ``score_sigma(x, sigma) -> like x`` for the noise-level losses (sigma shaped (B,)) and
  ``score(x) -> like x`` for exact and sliced score matching. A network trained to predict the noise is
  turned into a score by :class:`diffscore.score.ScoreModel` (``score = -eps / std``); the losses only see
  scores, so they apply to every parameterization. :func:`ddpm_loss` is the one exception: it takes the
  epsilon-predictor itself.
* The denoising losses are computed in the form ``||std * score + z||^2`` (never ``z / std``), so a zero
  std is never a divisor; only the likelihood weighting divides, by ``std^2 > 0``.
* ``reduction`` says how the per-sample value is reduced over the D dimensions: ``"sum"`` keeps the
  per-sample sum (the convention of the papers and of the score-SDE reference code with
  ``reduce_mean=False``); ``"mean"`` divides that sum by D. The batch is always averaged.
  ``per_sample=True`` returns the (B,) per-sample values instead of their batch mean.
* All randomness comes from ``generator``: a ``torch.Generator`` or a list of B of them, one per
  sample (then sample k's noise depends on generator k alone; see :func:`diffscore._checks.randn`).
* Units: the likelihood-weighted DSM loss with ``reduction="sum"`` is in nats (it bounds the negative
  log-likelihood up to a constant); the other losses are squared-score quantities without a unit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import (
    Generator,
    as_time,
    bcast,
    check_callable,
    check_choice,
    check_data,
    check_eps,
    check_instance,
    check_int,
    check_positive,
    check_positive_entries,
    rand,
    randn,
)
from .sde import SDE

__all__ = [
    "dsm_loss",
    "ncsn_loss",
    "ddpm_loss",
    "dsm_loss_at_sigma",
    "exact_score_matching_loss",
    "sliced_score_matching_loss",
]

ScoreT = Callable[[Tensor, Tensor], Tensor]
ScoreX = Callable[[Tensor], Tensor]

_REDUCTIONS = ("mean", "sum")


# ---- helpers -------------------------------------------------------------------------------------
def _check_output(name: str, out: object, x: Tensor) -> Tensor:
    """``out`` if it is a tensor shaped like ``x``; ValueError naming the callable ``name`` otherwise."""
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor shaped like its input {tuple(x.shape)}, got {got}")
    return out


def _reduce_dims(sq: Tensor, reduction: str) -> Tensor:
    """(B, *shape) -> (B,): sum over the non-batch dimensions, divided by D for ``"mean"``."""
    flat = sq.reshape(sq.shape[0], -1)
    return flat.sum(1) if reduction == "sum" else flat.mean(1)


def _finish(per: Tensor, per_sample: bool) -> Tensor:
    return per if per_sample else per.mean()


def _sigma_tensor(sigma: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """A float, 0-d or (B,) sigma as a (B,) tensor like ``like`` (dtype, device); finite and > 0."""
    if not isinstance(sigma, Tensor):
        return torch.full((batch,), check_positive("sigma", sigma), dtype=like.dtype, device=like.device)
    if sigma.shape not in ((), (batch,)):
        raise ValueError(
            f"sigma must be a float, a 0-d tensor or shaped (B,) = ({batch},), got {tuple(sigma.shape)}"
        )
    return check_positive_entries("sigma", sigma.to(dtype=like.dtype, device=like.device).expand(batch))


# ---- continuous-time denoising score matching ----------------------------------------------------
def dsm_loss(
    score: ScoreT,
    sde: SDE,
    x0: Tensor,
    eps: float = 1e-5,
    weighting: str = "sigma2",
    reduction: str = "mean",
    generator: Generator = None,
    t: Tensor | float | None = None,
    importance_sampling: bool = False,
    per_sample: bool = False,
) -> Tensor:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7).

    With ``t ~ U(eps, T)`` (or the given ``t``), ``z ~ N(0, I)`` and ``x_t = alpha(t) x0 + std(t) z``
    (the SDE's Gaussian kernel), the per-sample loss is::

        lambda(t) / 2 * ||score(x_t, t) + z / std(t)||^2           (summed over the D dims)

    with ``lambda = std^2`` (``weighting="sigma2"``, the reference choice, computed as
    ``||std * score + z||^2 / 2``) or ``lambda = g(t)^2`` (``weighting="likelihood"``, Song et al. 2021b,
    "Maximum likelihood training of score-based diffusion models", eq. 9 and Thm. 1: with
    ``reduction="sum"`` and ``eps -> 0`` the loss times ``T - eps`` bounds ``-log p(x0)`` in nats up to a
    constant independent of the score).

    ``importance_sampling=True`` (likelihood weighting only) draws t with density proportional to
    ``g^2 / std^2 = d/dt log(std^2 / alpha^2)``: ``log sigma(t)^2`` is uniform between its values at eps
    and T, with ``sigma = std / alpha`` (Song et al. 2021b, Sec. 5 importance sampling; this form holds
    for every SDE with a linear drift). The per-sample value is then
    ``Z / (T - eps) * ||std * score + z||^2 / 2`` with ``Z = log(sigma(T)^2 / sigma(eps)^2)``: the same
    expectation as the uniform-t estimator, far lower variance.

    Args:
        score: ``score(x, t) -> like x`` with x (B, *shape), t (B,).
        sde: the forward SDE (VE, VP, sub-VP, ...).
        x0: (B, *shape) data.
        eps: smallest time, in [0, T). Likelihood weighting needs eps > 0 (``int g^2 / std^2 dt`` diverges
            at 0).
        weighting: ``"sigma2"`` or ``"likelihood"``.
        reduction: ``"mean"`` (per-sample sum divided by D) or ``"sum"`` (per-sample sum over dims); the
            batch is always averaged. The reference code's ``reduce_mean=True`` omits the 1/2, so its
            value is twice ``reduction="mean"`` here; ``reduce_mean=False`` equals ``reduction="sum"``.
        generator: a torch.Generator or a list of B of them (per-sample draws), or None.
        t: optional times (float, 0-d or (B,) in [0, T]) instead of the uniform draw.
        importance_sampling: see above.
        per_sample: return the (B,) per-sample losses instead of their mean.

    Returns:
        A scalar tensor (or (B,) with ``per_sample=True``), differentiable through ``score``.

    Raises:
        ValueError: for eps outside [0, T), an unknown weighting or reduction, t outside [0, T],
            likelihood weighting with eps = 0 or a given t with std(t) = 0, importance_sampling without
            likelihood weighting or together with t, or a score output of the wrong shape.
        TypeError: for a non-SDE ``sde``, a non-callable score or non-floating x0.
    """
    check_callable("score", score)
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_data("x0", x0)
    eps = check_eps(eps, sde.T)
    if weighting not in ("sigma2", "likelihood"):
        raise ValueError(f"weighting must be 'sigma2' or 'likelihood', got {weighting!r}")
    check_choice("reduction", reduction, _REDUCTIONS)
    likelihood = weighting == "likelihood"
    if likelihood and eps == 0.0 and t is None:
        raise ValueError(
            "eps must be > 0 with weighting='likelihood' (the weight g^2/std^2 is not integrable at 0)"
        )
    if importance_sampling and not likelihood:
        raise ValueError("importance_sampling requires weighting='likelihood'")
    if importance_sampling and t is not None:
        raise ValueError("t cannot be given with importance_sampling=True (the sampler draws t)")

    batch = x0.shape[0]
    if t is not None:
        t = as_time(t, batch, x0)
        alpha, std = sde.marginal_coeffs(t)
        if likelihood and not bool((std > 0).all()):
            raise ValueError("t must be > 0 with weighting='likelihood' (std(t) = 0 would be a divisor)")
    else:
        u = rand((batch,), generator, x0.device, x0.dtype)
        if importance_sampling:
            ends = torch.tensor([eps, sde.T], dtype=x0.dtype, device=x0.device)
            a_end, s_end = sde.alpha_std(ends)
            log_sig2 = 2 * (s_end.log() - a_end.log())
            z_norm = log_sig2[1] - log_sig2[0]
            sigma = torch.exp(0.5 * (log_sig2[0] + u * z_norm))
            t = sde.inverse_sigma(sigma).clamp(eps, sde.T)
        else:
            t = eps + (sde.T - eps) * u
        alpha, std = sde.alpha_std(t)
    z = randn(x0.shape, generator, x0.device, x0.dtype)
    x_t = bcast(alpha, x0) * x0 + bcast(std, x0) * z
    s = _check_output("score", score(x_t, t), x0)
    per = 0.5 * _reduce_dims((bcast(std, s) * s + z).square(), reduction)
    if importance_sampling:
        per = per * (z_norm / (sde.T - eps))
    elif likelihood:
        per = per * (sde.g2(t) / std.square())
    return _finish(per, per_sample)


def ddpm_loss(
    eps_model: ScoreT,
    sde: SDE,
    x0: Tensor,
    eps: float = 1e-5,
    reduction: str = "mean",
    generator: Generator = None,
    t: Tensor | float | None = None,
    per_sample: bool = False,
) -> Tensor:
    """DDPM noise-prediction loss "L_simple" (Ho et al. 2020, eq. 14) in continuous time.

    With ``t ~ U(eps, T)`` (or the given ``t``), ``z ~ N(0, I)`` and ``x_t = alpha(t) x0 + std(t) z``
    (VP: ``alpha = sqrt(alphabar)``, ``std = sqrt(1 - alphabar)``), the per-sample loss is::

        ||eps_model(x_t, t) - z||^2

    summed (``"sum"``) or averaged (``"mean"``, Ho et al.'s code) over the D dims, then averaged over the
    batch. No 1/2 factor, as in the paper: for ``score = -eps_model / std`` it is exactly twice
    ``dsm_loss(..., weighting="sigma2")`` with the same draws. Meant for VP / sub-VP SDEs; any SDE with a
    Gaussian kernel works.

    Args:
        eps_model: ``eps_model(x, t) -> like x``, the predicted noise z.
        sde, x0, eps, reduction, generator, t, per_sample: as in :func:`dsm_loss`.

    Returns:
        A scalar tensor (or (B,) with ``per_sample=True``).

    Raises:
        ValueError: eps outside [0, T), unknown reduction, t outside [0, T], wrong output shape.
        TypeError: non-SDE ``sde``, non-callable eps_model, non-floating x0.
    """
    check_callable("eps_model", eps_model)
    check_instance("sde", sde, SDE, "a diffscore SDE")
    check_data("x0", x0)
    eps = check_eps(eps, sde.T)
    check_choice("reduction", reduction, _REDUCTIONS)
    batch = x0.shape[0]
    if t is not None:
        t = as_time(t, batch, x0)
        alpha, std = sde.marginal_coeffs(t)
    else:
        t = eps + (sde.T - eps) * rand((batch,), generator, x0.device, x0.dtype)
        alpha, std = sde.alpha_std(t)
    z = randn(x0.shape, generator, x0.device, x0.dtype)
    x_t = bcast(alpha, x0) * x0 + bcast(std, x0) * z
    out = _check_output("eps_model", eps_model(x_t, t), x0)
    return _finish(_reduce_dims((out - z).square(), reduction), per_sample)


# ---- noise-level (NCSN) denoising score matching -------------------------------------------------
def dsm_loss_at_sigma(
    score_sigma: ScoreT,
    x0: Tensor,
    sigma: Tensor | float,
    weighting: str = "sigma2",
    reduction: str = "mean",
    generator: Generator = None,
    per_sample: bool = False,
) -> Tensor:
    """Denoising score matching at one noise level (Vincent 2011; Song & Ermon 2019, eq. 5).

    With ``z ~ N(0, I)`` and ``x~ = x0 + sigma z``, the target ``grad log q(x~ | x0) = -z / sigma`` and
    the per-sample loss::

        lambda(sigma) / 2 * ||score_sigma(x~, sigma) + z / sigma||^2     (summed over the D dims)

    with ``lambda = sigma^2`` (``"sigma2"``, computed as ``||sigma * score + z||^2 / 2``) or 1
    (``"none"``, Vincent's objective as written). Its minimiser over all functions is the score of
    ``p_sigma = p_data * N(0, sigma^2 I)``. For an unconditional score ``s(x)`` pass
    ``lambda x, sigma: s(x)``.

    Args:
        score_sigma: ``score_sigma(x, sigma) -> like x`` with sigma shaped (B,).
        x0: (B, *shape) data.
        sigma: noise std, a float > 0, a 0-d tensor or a (B,) tensor of positive values.
        weighting: ``"sigma2"`` or ``"none"``.
        reduction, generator, per_sample: as in :func:`dsm_loss`.

    Raises:
        ValueError: non-positive or badly shaped sigma, unknown weighting or reduction, wrong output shape.
        TypeError: non-callable score_sigma, non-floating x0, non-number sigma.
    """
    check_callable("score_sigma", score_sigma)
    check_data("x0", x0)
    if weighting not in ("sigma2", "none"):
        raise ValueError(f"weighting must be 'sigma2' or 'none', got {weighting!r}")
    check_choice("reduction", reduction, _REDUCTIONS)
    sigma = _sigma_tensor(sigma, x0.shape[0], x0)
    z = randn(x0.shape, generator, x0.device, x0.dtype)
    return _finish(_dsm_sigma(score_sigma, x0, sigma, z, weighting, reduction), per_sample)


def _dsm_sigma(
    score_sigma: ScoreT, x0: Tensor, sigma: Tensor, z: Tensor, weighting: str, reduction: str
) -> Tensor:
    sig = bcast(sigma, x0)
    s = _check_output("score_sigma", score_sigma(x0 + sig * z, sigma), x0)
    per = 0.5 * _reduce_dims((sig * s + z).square(), reduction)
    return per if weighting == "sigma2" else per / sigma.square()


def ncsn_loss(
    score_sigma: ScoreT,
    x0: Tensor,
    sigmas: Tensor | Sequence[float],
    reduction: str = "mean",
    generator: Generator = None,
    labels: Tensor | None = None,
    per_sample: bool = False,
) -> Tensor:
    """NCSN multi-scale denoising score matching (Song & Ermon 2019, eqs. 6-7).

    Each sample draws one noise level ``sigma_i``, i uniform in {0, ..., L-1} (or ``labels``), then
    ``x~ = x0 + sigma_i z`` and the per-sample loss is::

        sigma_i^2 / 2 * ||score_sigma(x~, sigma_i) + z / sigma_i||^2 = ||sigma_i score + z||^2 / 2

    (lambda(sigma) = sigma^2, summed over the D dims), a one-sample estimate of the average over levels
    in eq. (7). Equals :func:`dsm_loss_at_sigma` at sigma_i for the same draws.

    Args:
        score_sigma: ``score_sigma(x, sigma) -> like x`` with sigma shaped (B,).
        x0: (B, *shape) data.
        sigmas: the L noise levels, positive and strictly decreasing (NCSN order sigma_1 > ... > sigma_L).
        reduction, generator, per_sample: as in :func:`dsm_loss`.
        labels: optional (B,) integer tensor of level indices instead of the uniform draw.

    Raises:
        ValueError: sigmas empty, not 1-D, not positive or not strictly decreasing; labels of the wrong
            shape or out of range; unknown reduction; wrong output shape.
        TypeError: non-callable score_sigma, non-floating x0, non-integer labels.
    """
    check_callable("score_sigma", score_sigma)
    check_data("x0", x0)
    check_choice("reduction", reduction, _REDUCTIONS)
    sigmas = torch.as_tensor(sigmas, dtype=x0.dtype, device=x0.device)
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}")
    check_positive_entries("sigmas", sigmas)
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L)")
    batch, n_levels = x0.shape[0], sigmas.numel()
    if labels is None:
        u = rand((batch,), generator, x0.device, x0.dtype)
        labels = (u * n_levels).long().clamp_max(n_levels - 1)
    else:
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
            raise TypeError("labels must be an integer tensor of level indices")
        if labels.shape != (batch,):
            raise ValueError(f"labels must be shaped (B,) = ({batch},), got {tuple(labels.shape)}")
        if not bool(((labels >= 0) & (labels < n_levels)).all()):
            raise ValueError(f"labels must lie in [0, {n_levels})")
        labels = labels.to(x0.device)
    z = randn(x0.shape, generator, x0.device, x0.dtype)
    return _finish(_dsm_sigma(score_sigma, x0, sigmas[labels], z, "sigma2", reduction), per_sample)


# ---- exact and sliced score matching -------------------------------------------------------------
def _score_and_vjp(score: ScoreX, x: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Return ``score(x)`` (B, *shape) and ``J^T v`` for each v in ``vectors`` (M, B, *shape), in one
    batched backward pass. The graph is kept (for parameter gradients) when grad mode is on."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        s = _check_output("score", score(xr), x)
        if not s.requires_grad:
            raise ValueError("score's output does not depend on its input through autograd")
        (jtv,) = torch.autograd.grad(
            s,
            xr,
            grad_outputs=vectors,
            is_grads_batched=True,
            create_graph=create_graph,
            materialize_grads=True,
        )
    return s, jtv, create_graph


def exact_score_matching_loss(score: ScoreX, x: Tensor, per_sample: bool = False) -> Tensor:
    """Hyvarinen (2005) score matching with the exact Jacobian trace.

    Per sample (x of shape (B, *shape), D dims)::

        tr(d score(x) / dx) + ||score(x)||^2 / 2

    averaged over the batch. It equals ``E||score - grad log p||^2 / 2`` up to a constant independent
    of the score. The trace comes from D vector-Jacobian products with the unit vectors, batched into one
    backward pass (``torch.autograd.grad(..., is_grads_batched=True)``): memory grows as B * D^2, so use
    it for small D (sliced score matching for large D).

    Args:
        score: ``score(x) -> like x``, differentiable in x.
        x: (B, *shape) data.
        per_sample: return the (B,) per-sample values instead of their mean.

    Returns:
        A scalar (or (B,)); differentiable through the score's parameters when grad mode is on (the
        Jacobian is built with ``create_graph=True``), detached under ``torch.no_grad()``.

    Raises:
        ValueError: wrong output shape, or an output that does not depend on x through autograd.
        TypeError: non-callable score or non-floating x.
    """
    check_callable("score", score)
    check_data("x", x)
    batch, dim = x.shape[0], x[0].numel()
    eye = torch.eye(dim, dtype=x.dtype, device=x.device).reshape(dim, 1, *x.shape[1:])
    s, jt, keep = _score_and_vjp(score, x, eye.expand(dim, *x.shape))
    trace = jt.reshape(dim, batch, dim).diagonal(dim1=0, dim2=2).sum(-1)
    per = trace + 0.5 * s.reshape(batch, -1).square().sum(1)
    return _finish(per if keep else per.detach(), per_sample)


def sliced_score_matching_loss(
    score: ScoreX,
    x: Tensor,
    n_projections: int = 1,
    variance_reduction: bool = False,
    dist: str = "gaussian",
    generator: Generator = None,
    per_sample: bool = False,
) -> Tensor:
    """Sliced score matching (Song et al. 2019, "Sliced score matching", eqs. 8 and 9).

    With M = ``n_projections`` random directions v per sample (``"gaussian"``: N(0, I); ``"rademacher"``:
    entries +-1), the per-sample loss is the average over the M directions of::

        v^T J v + (v^T score(x))^2 / 2          (SSM, eq. 8)
        v^T J v + ||score(x)||^2 / 2            (SSM-VR, eq. 9, ``variance_reduction=True``)

    with J = d score / dx. Both are unbiased for Hyvarinen's ``tr(J) + ||score||^2 / 2`` (E[v v^T] = I);
    SSM-VR replaces the second term by its expectation over v, which lowers the variance. Cost: one score
    evaluation and one batched backward pass for all M directions (``is_grads_batched``). The value does
    not depend on how the non-batch dims are shaped: image-shaped (B, C, H, W) and flattened (B, CHW)
    inputs give the same numbers for the same generator.

    Args:
        score: ``score(x) -> like x``.
        x: (B, *shape) data.
        n_projections: M >= 1.
        variance_reduction: SSM-VR instead of SSM.
        dist: ``"gaussian"`` or ``"rademacher"``.
        generator: a torch.Generator or a list of B of them (per-sample directions), or None.
        per_sample: return the (B,) per-sample values instead of their mean.

    Returns:
        A scalar (or (B,)); differentiable through the score's parameters when grad mode is on.

    Raises:
        ValueError: n_projections < 1, unknown dist, wrong output shape.
        TypeError: non-callable score, non-floating x, non-integer n_projections.
    """
    check_callable("score", score)
    check_data("x", x)
    check_int("n_projections", n_projections, 1)
    if dist not in ("gaussian", "rademacher"):
        raise ValueError(f"dist must be 'gaussian' or 'rademacher', got {dist!r}")
    batch = x.shape[0]
    shape = (batch, n_projections, *x.shape[1:])
    if dist == "gaussian":
        v = randn(shape, generator, x.device, x.dtype)
    else:
        v = 2 * (rand(shape, generator, x.device, x.dtype) >= 0.5).to(x.dtype) - 1
    v = v.movedim(1, 0)  # (M, B, *shape): row b of every slice drawn from sample b's generator
    s, jtv, keep = _score_and_vjp(score, x, v)
    vjv = (v * jtv).reshape(n_projections, batch, -1).sum(-1).mean(0)
    if variance_reduction:
        second = 0.5 * s.reshape(batch, -1).square().sum(1)
    else:
        second = 0.5 * (v * s).reshape(n_projections, batch, -1).sum(-1).square().mean(0)
    per = vjv + second
    return _finish(per if keep else per.detach(), per_sample)
