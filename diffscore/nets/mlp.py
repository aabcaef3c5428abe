"""A residual MLP score network with a time embedding, for toy and tabular data."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import GaussianFourierProjection, ResidualMLPBlock, SinusoidalEmbedding, check_time

__all__ = ["MLPScoreNet"]


class MLPScoreNet(nn.Module):
    """Residual MLP ``net(x, t) -> like x`` for data of shape (B, *shape) with ``prod(shape) == dim``.

    The input is flattened, lifted to ``hidden`` units, passed through ``depth`` residual blocks that
    each add a projection of the time embedding, and mapped back to ``dim`` (then reshaped like ``x``).
    The time embedding is ``Dense -> SiLU -> Dense`` of either Gaussian Fourier features of
    ``time_scale * t`` (Tancik et al. 2020; Song et al. 2021, App. H; ``fourier_scale`` is the std of the
    random frequencies) or the sinusoidal embedding (Vaswani et al. 2017; use ``time_scale`` ~ 1000 with
    it, since its frequencies are made for integer steps).

    Args:
        dim: number of features per sample. hidden: width. depth: number of residual blocks (>= 1).
        time_embed_dim: size of the time features (even). dropout: dropout probability in the blocks.
        embedding_type: "fourier" or "positional". fourier_scale: std of the Fourier frequencies.
        time_scale: factor applied to t before the embedding.

    Raises:
        ValueError: a bad constructor argument (named); at call time ``x`` with ``prod(shape) != dim``
            or ``t`` not shaped (B,).
        TypeError: ``x`` or ``t`` is not a floating-point tensor.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_embed_dim: int = 64,
        dropout: float = 0.0,
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(time_embed_dim, bool) or not isinstance(time_embed_dim, int) or time_embed_dim < 4:
            raise ValueError(f"time_embed_dim must be an integer >= 4, got {time_embed_dim!r}")
        if time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {time_embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be finite and > 0, got {time_scale}")
        self.config = dict(
            name="mlp",
            dim=dim,
            hidden=hidden,
            depth=depth,
            time_embed_dim=time_embed_dim,
            dropout=float(dropout),
            embedding_type=embedding_type,
            fourier_scale=float(fourier_scale),
            time_scale=float(time_scale),
        )
        self.dim = dim
        self.time_scale = float(time_scale)
        if embedding_type == "fourier":
            self.embed: nn.Module = GaussianFourierProjection(time_embed_dim // 2, fourier_scale)
        else:
            self.embed = SinusoidalEmbedding(time_embed_dim)
        self.temb_in = nn.Linear(time_embed_dim, hidden)
        self.temb_out = nn.Linear(hidden, hidden)
        self.fc_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, dropout) for _ in range(depth))
        self.fc_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Evaluate the network: ``x`` (B, *shape), ``t`` (B,) -> (B, *shape)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[0] == 0 or x[0].numel() != self.dim:
            raise ValueError(
                f"x must have shape (B, *shape) with prod(shape) = dim = {self.dim}, got {tuple(x.shape)}"
            )
        check_time(t, x.shape[0])
        temb = self.temb_out(F.silu(self.temb_in(self.embed(self.time_scale * t.to(x.dtype)))))
        h = self.fc_in(x.flatten(1))
        for block in self.blocks:
            h = block(h, temb)
        return self.fc_out(F.silu(h)).reshape(x.shape)
