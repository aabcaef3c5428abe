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
from .layers import GaussianFourierProjection, ResidualMLPBlock, check_time

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

    def bin_posterior_logits(self, z: Tensor, t: Tensor) -> Tensor:
        """(B, D, K) unnormalised log p(x_i = c_k | z, t) (see the class docstring)."""
        alpha, std = self.sde.alpha_std(t.to(z.dtype))
        zf = z.reshape(z.shape[0], -1)
        lam = 2 * alpha.log() - 2 * std.log()
        temb = self.temb(self.embed(lam / 10))
        gauss = -(zf[..., None] - alpha[:, None, None] * self.centres).square() / (
            2 * std[:, None, None].square()
        )
        prior = gauss + self.bin_logits  # the exact posterior of the independent-pixel model
        scale = (alpha.square() + std.square()).rsqrt()[:, None]  # keeps the MLP's input near unit scale
        features = zf * scale
        if self.prior_mean_input:  # and that model's posterior mean, a denoised image at every noise level
            features = torch.cat([features, (prior.softmax(-1) * self.centres).sum(-1)], dim=1)
        h = self.fc_in(self.input_dropout(features))
        for block in self.blocks:
            h = block(h, temb)
        return prior + self.fc_out(F.silu(h)).reshape(zf.shape[0], self.dim, self.num_bins)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        if z.ndim < 2 or z.shape[0] == 0 or z[0].numel() != self.dim:
            raise ValueError(
                f"z must have shape (B, *shape) with prod(shape) = dim = {self.dim}, got {tuple(z.shape)}"
            )
        check_time(t, z.shape[0])
        alpha, std = self.sde.alpha_std(t.to(z.dtype))
        probs = self.bin_posterior_logits(z, t).softmax(-1)
        x_hat = (probs * self.centres).sum(-1)
        e_hat = (z.reshape(z.shape[0], -1) - alpha[:, None] * x_hat) / std[:, None]
        return e_hat.reshape(z.shape)
