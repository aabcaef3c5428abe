"""A noise-prediction network for data on a grid of bins: the clean image predicted through the exact
per-dimension posterior over the bins."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sde import sde_from_config
from .layers import GaussianFourierProjection, ResidualMLPBlock, check_time, silu_grad

__all__ = ["BinPosteriorNet"]


class BinPosteriorNet(nn.Module):
    """``net(z, t) = e_hat``, the noise prediction of data that live on the centres ``c_k`` of ``num_bins``
    bins of ``data_range``, computed from a prediction of the clean image.

    For each dimension i the clean value is predicted through a posterior over the bins,

        p(x_i = c_k | z, t)  proportional to  N(z_i; alpha c_k, std^2) * softmax_k(b_ik + h_ik(z, t)),

    the exact posterior of a per-dimension categorical prior ``softmax(b_i)`` (the bin frequencies of the
    training data, :meth:`set_bin_frequencies`; learnable) corrected by a residual MLP ``h`` of the whole
    noisy image and the log-SNR (its output layer starts at zero, so the untrained network is the exact
    denoiser of the independent-pixel model). Then ``x_hat = sum_k p_k c_k`` and
    ``e_hat = (z - alpha x_hat) / std``: the score is ``(alpha x_hat - z) / std^2`` (Tweedie), so the
    network also gives samples and an exact ODE likelihood. This is the discrete-data x-prediction of
    Kingma et al. 2021 (VDM, App. on the discrete decoder) and of Austin et al. 2021 in a Gaussian
    diffusion; the likelihood Gaussian term makes the prediction exact when the noise is far below the
    bin width.

    Args:
        dim: features per sample (D). num_bins: K. data_range: (lo, hi) of the bins.
        sde: SDE config (:func:`diffscore.sde.sde_to_config`); its alpha(t), std(t) are used.
        hidden, depth: width and residual blocks of the MLP. dropout: in the blocks.
        input_dropout: dropout on the noisy image fed to the MLP (not on the Gaussian term).
        embed_dim: Fourier features of the log-SNR (even). fourier_scale: std of their frequencies.
        prior_mean_input: feed the MLP the posterior mean of the independent-pixel model beside z.

    ``forward(z, t)``: z (B, *shape) with prod(shape) = D, t (B,) -> (B, *shape). Use with
    ``ScoreModel(net, sde, parameterization="noise")``.
    """

    def __init__(
        self,
        dim: int,
        num_bins: int,
        data_range: tuple[float, float],
        sde: Mapping[str, Any],
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.2,
        input_dropout: float = 0.2,
        embed_dim: int = 32,
        fourier_scale: float = 1.0,
        prior_mean_input: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("num_bins", num_bins)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        for name, value in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be an even integer >= 2, got {embed_dim!r}")
        lo, hi = (float(v) for v in data_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"data_range must be (lo, hi) with finite lo < hi, got {data_range}")
        self.config = dict(
            name="bin_posterior",
            dim=dim,
            num_bins=num_bins,
            data_range=[lo, hi],
            sde=dict(sde),
            hidden=hidden,
            depth=depth,
            dropout=float(dropout),
            input_dropout=float(input_dropout),
            embed_dim=embed_dim,
            fourier_scale=float(fourier_scale),
            prior_mean_input=bool(prior_mean_input),
        )
        self.prior_mean_input = bool(prior_mean_input)
        self.sde = sde_from_config(sde)
        self.dim, self.num_bins = dim, num_bins
        k = torch.arange(num_bins, dtype=torch.get_default_dtype())
        self.register_buffer("centres", lo + (hi - lo) * (k + 0.5) / num_bins)
        self.bin_logits = nn.Parameter(torch.zeros(dim, num_bins))
        self.embed = GaussianFourierProjection(embed_dim // 2, fourier_scale)
        self.temb = nn.Linear(embed_dim, hidden)
        self.input_dropout = nn.Dropout(input_dropout)
        self.fc_in = nn.Linear(2 * dim if self.prior_mean_input else dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, dropout) for _ in range(depth))
        self.fc_out = nn.Linear(hidden, dim * num_bins)
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    @torch.no_grad()
    def set_bin_frequencies(self, x_int: Tensor, pseudo_count: float = 0.5) -> None:
        """Set the prior logits ``b`` to the log bin frequencies of ``x_int`` (N, *shape) integers in
        [0, num_bins), with ``pseudo_count`` added to every count (so no bin has probability 0)."""
        flat = x_int.reshape(x_int.shape[0], -1).long()
        if flat.shape[1] != self.dim:
            raise ValueError(f"x_int must have {self.dim} features per sample, got {flat.shape[1]}")
        counts = F.one_hot(flat, self.num_bins).sum(0).to(self.bin_logits) + pseudo_count
        self.bin_logits.copy_(counts.log() - counts.sum(1, keepdim=True).log())

    def bin_posterior_logits(
        self, z: Tensor, t: Tensor, diagonal: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``(L, dL)``: L (B, D, K) the unnormalised log p(x_i = c_k | z, t) (see the class docstring), and
        with ``diagonal`` (eval mode only) dL (B, D, K) = d h_ik / d z_i, the MLP's part of
        d L_ik / d z_i, by forward-mode differentiation: the D one-hot tangents go through the MLP as
        (B, D, hidden) tensors and only the diagonal of the last layer is formed (else None)."""
        alpha, std = self.sde.alpha_std(t.to(z.dtype))
        b, d = z.shape[0], self.dim
        zf = z.reshape(b, -1)
        var = std.square()[:, None]
        lam = 2 * alpha.log() - 2 * std.log()
        temb = self.temb(self.embed(lam / 10))
        gauss = -(zf[..., None] - alpha[:, None, None] * self.centres).square() / (2 * var[..., None])
        prior = gauss + self.bin_logits  # the exact posterior of the independent-pixel model
        scale = (alpha.square() + std.square()).rsqrt()[:, None]  # keeps the MLP's input near unit scale
        features = zf * scale
        w_in = self.fc_in.weight.T  # row j: the direction of input j
        dh = scale[..., None] * w_in[:d] if diagonal else None  # (B, D, hidden): tangent j in row j
        if self.prior_mean_input:  # and that model's posterior mean, a denoised image at every noise level
            p0 = prior.softmax(-1)
            mean0 = (p0 * self.centres).sum(-1)
            features = torch.cat([features, mean0], dim=1)
            if diagonal:  # d mean0_i / d z_i = Cov(c, d G_i / d z_i) = alpha Var_{p0_i}(c) / std^2
                var0 = (p0 * self.centres.square()).sum(-1) - mean0.square()
                dh = dh + (alpha[:, None] * var0 / var)[..., None] * w_in[d:]
        h = self.fc_in(self.input_dropout(features))
        for block in self.blocks:
            h, dh = (block(h, temb), None) if dh is None else block.with_tangents(h, temb, dh)
        logits = prior + self.fc_out(F.silu(h)).reshape(b, d, self.num_bins)
        if not diagonal:
            return logits, None
        w_out = self.fc_out.weight.reshape(d, self.num_bins, -1)
        return logits, torch.einsum("bjh,jkh->bjk", silu_grad(h)[:, None] * dh, w_out)

    def noise_and_divergence(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(net(z, t), sum_i d net_i / d z_i)``: the output (B, *shape) and its exact divergence (B,) in
        closed form, in eval mode (dropout off; :meth:`forward`'s checks are the caller's).

        With ``p_i = softmax(L_i)`` the posterior, ``d x_hat_i / d z_i = Cov_{p_i}(c, d L_i / d z_i)``,
        where the Gaussian term gives ``d G_ik / d z_i = (alpha c_k - z_i) / std^2`` (so its part is
        ``alpha Var_{p_i}(c) / std^2``) and the MLP's part comes from :meth:`bin_posterior_logits`.
        Then ``div e_hat = sum_i (1 - alpha d x_hat_i / d z_i) / std``. About a third of the time of D
        vector-Jacobian products through :meth:`forward` (no (D B, D, K) tensors).
        """
        if self.training:
            raise ValueError("noise_and_divergence is the eval-mode network's: call .eval() first")
        alpha, std = (v[:, None] for v in self.sde.alpha_std(t.to(z.dtype)))
        logits, d_logits = self.bin_posterior_logits(z, t, diagonal=True)
        p, c = logits.softmax(-1), self.centres
        x_hat = (p * c).sum(-1)
        d_x_hat = alpha * ((p * c.square()).sum(-1) - x_hat.square()) / std.square()
        d_x_hat = d_x_hat + (p * (c - x_hat[..., None]) * d_logits).sum(-1)
        e_hat = (z.reshape(z.shape[0], -1) - alpha * x_hat) / std
        return e_hat.reshape(z.shape), ((1 - alpha * d_x_hat) / std).sum(-1)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        if z.ndim < 2 or z.shape[0] == 0 or z[0].numel() != self.dim:
            raise ValueError(
                f"z must have shape (B, *shape) with prod(shape) = dim = {self.dim}, got {tuple(z.shape)}"
            )
        check_time(t, z.shape[0])
        alpha, std = self.sde.alpha_std(t.to(z.dtype))
        probs = self.bin_posterior_logits(z, t)[0].softmax(-1)
        x_hat = (probs * self.centres).sum(-1)
        e_hat = (z.reshape(z.shape[0], -1) - alpha[:, None] * x_hat) / std[:, None]
        return e_hat.reshape(z.shape)
