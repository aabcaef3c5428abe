"""A full-covariance Gaussian score plus a learned correction: the default network for the digits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..sde import sde_from_config

__all__ = ["GaussianResidualNet"]


class GaussianResidualNet(nn.Module):
    """``net(x, t) = gaussian(x, t) + inner(x, t)``: the exact output for Gaussian data plus a correction.

    If the data were ``N(mu, Sigma)``, the marginal at time t of a linear SDE would be
    ``N(alpha mu, Sigma_t)`` with ``Sigma_t = alpha^2 Sigma + std^2 I`` and the score
    ``-Sigma_t^{-1} (x - alpha mu)`` (Song et al. 2021, App. B kernels). ``gaussian(x, t)`` is that score
    written in the output convention of ``parameterization``: the score itself ("score"), the predicted
    noise ``-std * score`` ("noise") or ``std * score`` ("scaled"); with ``Sigma = U diag(lam) U^T`` it
    costs two (D, D) products. This is the full-covariance form of EDM's skip preconditioning (Karras et
    al. 2022, App. B.6, which is the same construction for isotropic data). The inner network learns only
    the non-Gaussian part; its output layer starts at zero when ``zero_init`` so that the untrained model
    is exactly the Gaussian fit. Fit ``mu`` and ``Sigma`` with :meth:`set_moments`; they are buffers, saved
    with the weights.

    Args:
        inner: the inner network, carrying its ``config`` (:func:`diffscore.nets.from_config` builds it
            from ``config["inner"]`` when it rebuilds this network).
        sde: SDE config (:func:`diffscore.sde.sde_to_config`); its ``alpha(t)``, ``std(t)`` give ``Sigma_t``.
        parameterization: "noise", "score" or "scaled" (that of the ScoreModel that wraps this net).
        dim: number of features per sample (D).
        zero_init: zero the weight and bias of the inner network's last ``nn.Linear`` / ``nn.Conv2d``.

    ``forward(x, t)``: x (B, *shape) with prod(shape) = D, t (B,) -> (B, *shape).
    """

    #: Constructor arguments that are networks, given in ``config`` as their own configs.
    nested_nets = ("inner",)

    def __init__(
        self,
        inner: nn.Module,
        sde: Mapping[str, Any],
        parameterization: str,
        dim: int,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if parameterization not in ("noise", "score", "scaled"):
            raise ValueError(
                f"parameterization must be 'noise', 'score' or 'scaled', got {parameterization!r}"
            )
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(getattr(inner, "config", None), Mapping):
            raise TypeError("inner must be a network with a `config` dict (every diffscore.nets network)")
        self.inner = inner
        self.sde = sde_from_config(sde)
        self.parameterization = parameterization
        self.dim = dim
        self.config = dict(
            name="gaussian_residual",
            inner=dict(self.inner.config),
            sde=dict(sde),
            parameterization=parameterization,
            dim=dim,
            zero_init=bool(zero_init),
        )
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("eigvals", torch.ones(dim))
        self.register_buffer("eigvecs", torch.eye(dim))
        if zero_init:
            last = [m for m in self.inner.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            if last:
                nn.init.zeros_(last[-1].weight)
                if last[-1].bias is not None:
                    nn.init.zeros_(last[-1].bias)

    @torch.no_grad()
    def set_moments(self, mean: Tensor, cov: Tensor) -> None:
        """Set ``mu`` (D,) and ``Sigma`` (D, D), symmetric positive definite (else ValueError)."""
        if mean.shape != (self.dim,) or cov.shape != (self.dim, self.dim):
            raise ValueError(
                f"mean must be ({self.dim},) and cov ({self.dim}, {self.dim}), got "
                f"{tuple(mean.shape)} and {tuple(cov.shape)}"
            )
        lam, vecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        if not bool(lam.min() > 0):
            raise ValueError(f"cov must be positive definite, smallest eigenvalue {float(lam.min()):.3g}")
        self.mean.copy_(mean)
        self.eigvals.copy_(lam)
        self.eigvecs.copy_(vecs)

    def gaussian(self, x: Tensor, t: Tensor) -> Tensor:
        """The Gaussian part alone, shaped like x (see the class docstring)."""
        alpha, std = self.sde.alpha_std(t.to(x.dtype))
        flat = x.reshape(x.shape[0], -1)
        r = (flat - alpha[:, None] * self.mean) @ self.eigvecs
        r = r / (alpha[:, None].square() * self.eigvals + std[:, None].square())
        score = -(r @ self.eigvecs.T)
        if self.parameterization == "noise":
            out = -std[:, None] * score
        elif self.parameterization == "scaled":
            out = std[:, None] * score
        else:
            out = score
        return out.reshape(x.shape)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.gaussian(x, t) + self.inner(x, t)
