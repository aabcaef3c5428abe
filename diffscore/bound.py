"""The continuous-time variational bound (ELBO) of a score model, on continuous or discrete data.

The generative model is the one a score model defines: z_T from the prior, the reverse-time SDE with the
model's score down to the smallest time eps, and a decoder p(x | z_eps). For any score, and for data x,

    -log p(x) <= KL(q(z_T | x) || prior)                                     (prior term)
                 + 1/2 int_{lambda(T)}^{lambda(eps)} E_e ||e - e_hat(z_lambda)||^2 d lambda   (diffusion)
                 + E_{q(z_eps | x)} [-log p(x | z_eps)]                       (decoder term)

with ``z_lambda = alpha x + std e``, ``lambda = log(alpha^2 / std^2)`` the log signal-to-noise ratio and
``e_hat = -std * score(z, t)`` the model's noise prediction (Kingma et al. 2021, VDM, eq. 17 written in
lambda; Song et al. 2021b, Theorem 1, is the same bound in t with the likelihood weighting g^2). The
bound is tight when the score is exact, the prior is p_T and the decoder is the exact posterior.

The integral is estimated with lambda drawn uniformly on [lambda(T), lambda(eps)] (stratified over the
draws of an image): in t this is the importance sampling with density proportional to g(t)^2 / std(t)^2
that Song et al. 2021b use, and the integrand is smooth in lambda (VDM, Sec. 5).

Decoders:

* discrete data (integers in ``{0, ..., num_bins - 1}`` placed at bin centres ``c_k`` of ``data_range``):
  VDM's per-dimension categorical decoder ``p(x_i = k | z) proportional to N(z_i; alpha c_k, std^2)``
  at eps, so the bound is on the discrete -log P(x) itself, with no dequantization;
* continuous data: the Gaussian ``N(x; z / alpha, std^2 / alpha^2)`` at eps, whose expected
  negative log-density is ``D/2 log(2 pi e std^2 / alpha^2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import (
    CheckedScore,
    Generator,
    check_data,
    check_discrete_batch,
    check_instance,
    check_solve_eps,
    rand,
    randn,
)
from .score import ScoreFn
from .sde import SDE

__all__ = [
    "BoundResult",
    "LogSNRProposal",
    "IMPORTANCE",
    "variational_bound",
    "likelihood_bound",
    "elbo_terms",
    "categorical_decoder",
    "gaussian_decoder",
    "log_snr",
    "log_snr_range",
    "bin_centres",
]


@dataclass
class BoundResult:
    """Output of :func:`variational_bound` and :func:`likelihood_bound`.

    Attributes:
        nll: (B,) the bound on -log p(x) (continuous data) or -log P(x) (discrete data), in nats: the mean
            over the draws.
        stderr: (B,) its Monte-Carlo standard error, nats (the draws' std / sqrt(n); conservative, since
            the draws of lambda are stratified).
        prior, diffusion, decoder: (B,) the three terms (means over the draws), nats.
        nfe: evaluations of the score (per image: one per draw).
        bpd: (B,) ``nll / (D ln 2)``, bits/dim of the discrete data (an upper bound on -log2 P(x) / D);
            None for continuous data (a continuous NLL is not bits/dim).
        bpd_stderr: (B,) the standard error of ``bpd``; None for continuous data.
    """

    nll: Tensor
    stderr: Tensor
    prior: Tensor
    diffusion: Tensor
    decoder: Tensor
    nfe: int
    bpd: Tensor | None = None
    bpd_stderr: Tensor | None = None


def log_snr(sde: SDE, t: Tensor) -> Tensor:
    """``lambda(t) = log(alpha(t)^2 / std(t)^2)``, shaped like t (unchecked; std(t) > 0 needed)."""
    return 2 * sde.log_alpha(t) - sde.var(t).log()


def bin_centres(num_bins: int, data_range: tuple[float, float], like: Tensor) -> Tensor:
    """(num_bins,) the centres ``lo + (hi - lo) (k + 1/2) / num_bins`` of the bins, in ``like``'s dtype
    and device."""
    lo, hi = data_range
    k = torch.arange(num_bins, dtype=like.dtype, device=like.device)
    return lo + (hi - lo) * (k + 0.5) / num_bins


def categorical_decoder(x_int: Tensor, centres: Tensor) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """-log p(x | z) (B,) of VDM's per-dimension categorical decoder at (alpha, std) (each (B,))."""
    idx = x_int.reshape(x_int.shape[0], -1, 1).long()

    def nll(z: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        zf = z.reshape(z.shape[0], -1, 1)
        logits = -(zf - alpha[:, None, None] * centres).square() / (2 * std[:, None, None].square())
        logp = logits.gather(2, idx).squeeze(2) - logits.logsumexp(2)
        return -logp.sum(1)

    return nll


def gaussian_decoder(d: int) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """E_z[-log N(x; z / alpha, std^2 / alpha^2 I)] = D/2 log(2 pi e std^2 / alpha^2), (B,)."""

    def nll(z: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        return 0.5 * d * (math.log(2 * math.pi * math.e) + 2 * (std / alpha).log())

    return nll


class LogSNRProposal:
    """A piecewise-constant density over the log-SNR for importance sampling the bound's integral.

    ``[lambda_min, lambda_max]`` is cut into ``n_bins`` equal slices; slice j has probability ``p_j``. The
    optimal density is proportional to the root mean square of the integrand (VDM, Sec. 5, reaches it by
    learning the noise schedule); :meth:`update` keeps a running mean of the squared integrand per slice
    and :meth:`fit` sets ``p_j`` proportional to its square root, mixed with ``uniform`` of the uniform
    density so no slice is starved. Untrained, it is the uniform density.
    """

    def __init__(
        self, lam_min: float, lam_max: float, n_bins: int = 32, uniform: float = 0.1, decay: float = 0.99
    ) -> None:
        self.lam_min, self.lam_max, self.n_bins = float(lam_min), float(lam_max), int(n_bins)
        self.uniform, self.decay = float(uniform), float(decay)
        self.probs: Tensor | None = None  # None: uniform; the statistics live on the draws' device
        self.second_moment: Tensor | None = None
        self.counts: Tensor | None = None

    def sample(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``u`` (B,) uniforms in [0, 1) -> (lambda (B,), the density q(lambda) (B,)) by inverse CDF."""
        width = (self.lam_max - self.lam_min) / self.n_bins
        if self.probs is None:
            lam = self.lam_min + (self.lam_max - self.lam_min) * u
            return lam, torch.full_like(u, 1.0 / (self.lam_max - self.lam_min))
        probs = self.probs.to(u)
        cdf = torch.cat([probs.new_zeros(1), probs.cumsum(0)])
        cdf[-1] = 1.0
        j = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, self.n_bins) - 1
        within = ((u - cdf[j]) / probs[j]).clamp(0.0, 1.0)
        lam = self.lam_min + width * (j.to(u.dtype) + within)
        return lam, probs[j] / width

    @torch.no_grad()
    def update(self, lam: Tensor, integrand: Tensor) -> None:
        """Add draws: ``integrand`` (B,) is the unweighted integrand ``||e - e_hat||^2 / 2`` at ``lam``."""
        if self.second_moment is None:
            self.second_moment = lam.new_zeros(self.n_bins)
            self.counts = lam.new_zeros(self.n_bins)
        width = (self.lam_max - self.lam_min) / self.n_bins
        j = ((lam.detach() - self.lam_min) / width).floor().long().clamp(0, self.n_bins - 1)
        sq = integrand.detach().to(lam.dtype).square()
        sums = torch.zeros_like(self.second_moment).index_add_(0, j, sq)
        n = torch.zeros_like(self.counts).index_add_(0, j, torch.ones_like(sq))
        mean = sums / n.clamp_min(1)
        rate = torch.where(self.counts == 0, 1.0, 1 - self.decay) * (n > 0)
        self.second_moment = self.second_moment + rate * (mean - self.second_moment)
        self.counts = self.counts + n

    def fit(self) -> None:
        """Set the slice probabilities from the draws seen so far (unseen slices get the mean share)."""
        if self.second_moment is None:
            return
        rms = self.second_moment.sqrt()
        seen = self.counts > 0
        fill = (rms * seen).sum() / seen.sum().clamp_min(1)
        rms = torch.where(seen, rms, fill)
        total = rms.sum()
        shape = torch.where(total > 0, rms / total.clamp_min(torch.finfo(rms.dtype).tiny), 1.0 / self.n_bins)
        self.probs = (1 - self.uniform) * shape + self.uniform / self.n_bins


def log_snr_range(sde: SDE, eps: float) -> tuple[float, float]:
    """``(lambda(T), lambda(eps))`` in float64."""
    t = torch.tensor([sde.T, eps], dtype=torch.float64)
    lam = log_snr(sde, t)
    return float(lam[0]), float(lam[1])


def elbo_terms(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    decoder_nll: Callable[[Tensor, Tensor, Tensor], Tensor],
    eps: float,
    u: Tensor,
    generator: Generator = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    proposal: LogSNRProposal | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One draw of the three terms of the bound for each x (B, *shape): (prior, diffusion, decoder), each
    (B,) nats. Unchecked; differentiable in the score (a training loss is their sum's mean).

    Args:
        decoder_nll: ``(z_eps, alpha, std) -> (B,)`` -log p(x | z_eps) of the decoder.
        u: (B,) uniforms in [0, 1) that place each draw's log-SNR (by the inverse CDF of ``proposal``).
        prior_logp: log-density of the prior (default ``sde.prior_logp``).
        proposal: the density of the log-SNR draws (default: uniform on [lambda(T), lambda(eps)]); it is
            updated with the draws' integrand (it learns; call its ``fit`` to use what it learned).
    """
    b, dt, dev = x.shape[0], x.dtype, x.device
    d = x[0].numel()
    shape = (-1, *[1] * (x.ndim - 1))
    t_eps = torch.full((b,), eps, dtype=dt, device=dev)
    t_T = torch.full((b,), sde.T, dtype=dt, device=dev)
    # prior: E_q[log q(z_T | x) - log prior(z_T)], one draw of z_T
    e = randn(x.shape, generator, dev, dt)
    alpha, std = sde.alpha_std(t_T)
    z = alpha.view(shape) * x + std.view(shape) * e
    log_q = -0.5 * d * torch.log(2 * math.pi * std.square()) - 0.5 * e.reshape(b, -1).square().sum(1)
    prior = log_q - (prior_logp or sde.prior_logp)(z)
    # diffusion: 1/2 ||e - e_hat||^2 / q(lambda) at lambda ~ q
    if proposal is None:
        proposal = LogSNRProposal(*log_snr_range(sde, eps))
    lam, density = proposal.sample(u)
    t = sde.inverse_sigma(torch.exp(-0.5 * lam)).clamp(eps, sde.T)
    alpha, std = sde.alpha_std(t)
    e = randn(x.shape, generator, dev, dt)
    z = alpha.view(shape) * x + std.view(shape) * e
    e_hat = -std.view(shape) * score(z, t)
    integrand = 0.5 * (e - e_hat).reshape(b, -1).square().sum(1)
    proposal.update(lam, integrand)
    diffusion = integrand / density
    # decoder at eps
    alpha, std = sde.alpha_std(t_eps)
    z = alpha.view(shape) * x + std.view(shape) * randn(x.shape, generator, dev, dt)
    decoder = decoder_nll(z, alpha, std)
    return prior, diffusion, decoder


@torch.no_grad()
def _estimate(sde, score, x, decoder_nll, eps, n_samples, generator, prior_logp, importance) -> BoundResult:
    b = x.shape[0]
    proposal = LogSNRProposal(*log_snr_range(sde, eps))
    nfe = 0
    if importance == "adaptive":  # a pilot pass, pooled over the batch, fits the proposal
        n_pilot = max(n_samples // 4, 2)
        offsets = rand((b, n_pilot), generator, x.device, x.dtype)
        for j in range(n_pilot):
            u = (j + offsets[:, j]) / n_pilot
            elbo_terms(sde, score, x, decoder_nll, eps, u, generator, prior_logp, proposal)
        proposal.fit()
        nfe += n_pilot
    # stratified: draw j of an image has its u in the j-th of n equal slices of [0, 1)
    offsets = rand((b, n_samples), generator, x.device, x.dtype)
    draws = []
    for j in range(n_samples):
        u = (j + offsets[:, j]) / n_samples
        terms = elbo_terms(sde, score, x, decoder_nll, eps, u, generator, prior_logp, proposal)
        draws.append(torch.stack(terms))
    terms = torch.stack(draws)  # (n, 3, B)
    total = terms.sum(1)
    stderr = total.std(0) / math.sqrt(n_samples) if n_samples > 1 else torch.full_like(total[0], math.inf)
    prior, diffusion, decoder = terms.mean(0)
    if not bool(torch.isfinite(total).all()):
        raise FloatingPointError("non-finite variational bound: the score returned NaN or inf")
    return BoundResult(total.mean(0), stderr, prior, diffusion, decoder, nfe + n_samples)


IMPORTANCE = ("adaptive", "uniform")


def _check_bound_args(
    sde: SDE, score: ScoreFn, eps: float, n_samples: int, importance: str
) -> tuple[float, CheckedScore]:
    """The checked ``eps`` and ``score`` (its output's shape and dtype checked on every call)."""
    check_instance("sde", sde, SDE, "a diffscore SDE")
    checked = CheckedScore(score)
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    return check_solve_eps(sde, eps), checked


def variational_bound(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    n_samples: int = 64,
    eps: float = 1e-5,
    generator: Generator = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    importance: str = "adaptive",
) -> BoundResult:
    """The variational bound on -log p(x) of continuous data x (B, *shape), in nats, with the Gaussian
    decoder at eps (see the module docstring; Kingma et al. 2021, eq. 17; Song et al. 2021b, Thm. 1).

    Args:
        n_samples: Monte-Carlo draws per image (stratified in log-SNR); the result is their mean, with
            its standard error.
        eps: the smallest time (the decoder's), in (0, T) where std(eps) > 0.
        generator: torch.Generator or a list of B of them (per-image draws).
        prior_logp: ``z (B, *shape) -> (B,)`` log-density of the prior; default ``sde.prior_logp``.

    Raises:
        ValueError / TypeError: bad ``x`` (non-float, NaN/inf, empty), ``sde`` not an SDE or ``score``
            not callable (TypeError), a score output not a floating tensor shaped like its input (at the
            first such call), ``eps`` outside (0, T) or with std(eps) = 0, ``n_samples`` not an int >= 1.
        FloatingPointError: the score returned NaN or inf.
    """
    check_data("x", x)
    eps, score = _check_bound_args(sde, score, eps, n_samples, importance)
    return _estimate(
        sde, score, x, gaussian_decoder(x[0].numel()), eps, n_samples, generator, prior_logp, importance
    )


def likelihood_bound(
    sde: SDE,
    score: ScoreFn,
    x_int: Tensor,
    num_bins: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    n_samples: int = 64,
    eps: float = 1e-5,
    generator: Generator = None,
    dtype: torch.dtype | None = None,
    importance: str = "adaptive",
) -> BoundResult:
    """Bits/dim of integer data from the variational bound with VDM's categorical decoder (the "ELBO"
    estimator: the number DDPM and VDM report).

    ``x_int`` (B, *shape) holds integers in ``{0, ..., num_bins - 1}``, placed at the bin centres of
    ``data_range`` (no dequantization). ``result.bpd = nll / (D ln 2)`` bounds -log2 P(x) / D from above,
    where P is the model's distribution over the bins: z_T from the prior, the reverse SDE with the
    model's score to eps, and the categorical decoder there.

    Args:
        n_samples: Monte-Carlo draws per image (stratified in log-SNR); ``result.bpd_stderr`` is the
            standard error of their mean.
        eps: the decoder's time, in (0, T) where std(eps) > 0 (the decoder costs ~0 bits/dim when
            std(eps) is far below the bin width).
        generator: torch.Generator or a list of B of them. dtype: floating dtype (default torch's).

    Raises:
        ValueError / TypeError: non-integer values or values outside [0, num_bins), num_bins < 2, a bad
            ``data_range`` or a ``dtype`` other than float32 / float64, ``num_bins`` or ``data_range``
            other than the model card's (``ScoreModel.card``), and the errors of
            :func:`variational_bound` for ``sde``, ``score``, ``eps`` and ``n_samples``.
        FloatingPointError: the score returned NaN or inf.
    """
    xf, lo, hi = check_discrete_batch(x_int, num_bins, data_range, dtype, score)
    eps, score = _check_bound_args(sde, score, eps, n_samples, importance)
    centres = bin_centres(num_bins, (lo, hi), xf)
    x = lo + (hi - lo) * (xf + 0.5) / num_bins
    res = _estimate(
        sde, score, x, categorical_decoder(xf, centres), eps, n_samples, generator, None, importance
    )
    scale = x[0].numel() * math.log(2)
    res.bpd, res.bpd_stderr = res.nll / scale, res.stderr / scale
    return res
