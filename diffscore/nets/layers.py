"""Shared building blocks of the score networks: input checks, init, time embeddings, the MLP residual
block, FIR resampling.

Sources: Song et al. 2021 ("Score-Based Generative Modeling through SDEs", Appendix H) for the Gaussian
Fourier embedding and the FIR resampling of NCSN++; Ho et al. 2020 / Vaswani et al. 2017 for the sinusoidal
embedding; Zhang 2019 ("Making convolutional networks shift-invariant again") and Karras et al. 2020
(StyleGAN2) for FIR up/down-sampling with the binomial kernel [1, 3, 3, 1].

The FIR operations here are plain ``conv2d`` / ``conv_transpose2d`` calls (no compiled extension) and use
zero padding at the image border, like the reference ``upfirdn2d``. Consequently a constant image is kept
exactly in the interior, while border rows/columns see the zero padding: after :func:`upsample_2d` the
first and last row/column carry 3/4 of the constant, after :func:`downsample_2d` 7/8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "check_image_input",
    "check_time",
    "variance_scaling_",
    "conv2d",
    "dense",
    "group_norm",
    "GaussianFourierProjection",
    "SinusoidalEmbedding",
    "ResidualMLPBlock",
    "silu_grad",
    "fir_kernel_2d",
    "upfirdn2d",
    "upsample_2d",
    "downsample_2d",
    "FIRConv2d",
]


# ---- input checks --------------------------------------------------------------------------------
def check_time(t: Tensor, batch: int, name: str = "t") -> None:
    """Raise TypeError/ValueError naming ``name`` unless ``t`` is a floating tensor of shape (batch,).

    Only the shape and dtype are checked (no host sync); the values are the caller's business.
    """
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {tuple(t.shape)}")


def check_image_input(x: Tensor, t: Tensor, channels: int, divisor: int = 1, t_name: str = "t") -> None:
    """Validate the inputs of an image score network: ``x`` (B, channels, H, W) and ``t`` (B,).

    Raises:
        TypeError: ``x`` or ``t`` is not a floating-point tensor.
        ValueError: ``x`` is not 4-D, has the wrong channel count or an H/W not divisible by ``divisor``;
            ``t`` is not shaped (B,).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (B, C, H, W) with B >= 1, got {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"x has {x.shape[1]} channels but the network expects {channels}")
    if x.shape[2] % divisor or x.shape[3] % divisor:
        raise ValueError(f"x must have H and W divisible by {divisor}, got {tuple(x.shape[2:])}")
    check_time(t, x.shape[0], t_name)


# ---- initialisation ------------------------------------------------------------------------------
def variance_scaling_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """In-place uniform init with variance ``scale / fan_avg`` (the NCSN++ / DDPM++ reference init).

    ``fan_avg = (fan_in + fan_out) / 2`` with the receptive field counted in both fans; this is Glorot
    uniform scaled by ``scale``. ``scale = 0`` stands for the reference's "zero" init and uses 1e-10,
    so the weights are tiny (about 1e-6) but every earlier layer still receives a gradient.
    """
    receptive = weight[0][0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3.0 * (scale if scale > 0 else 1e-10) / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | None = None,
    init_scale: float = 1.0,
) -> nn.Conv2d:
    """A biased ``nn.Conv2d`` ("same" padding by default), :func:`variance_scaling_` weights, zero bias."""
    conv = nn.Conv2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2 if padding is None else padding
    )
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    """An ``nn.Linear`` with :func:`variance_scaling_` weights and zero bias."""
    layer = nn.Linear(in_features, out_features)
    variance_scaling_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6 and min(channels // 4, 32) groups (NCSN++ / DDPM++), or, when that does not
    divide ``channels``, the largest smaller group count that does (e.g. 24 for 144 channels)."""
    groups = max(min(channels // 4, 32), 1)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


# ---- time embeddings -----------------------------------------------------------------------------
class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[sin(2 pi W s), cos(2 pi W s)]`` with fixed ``W ~ N(0, scale^2)``.

    Tancik et al. 2020; Song et al. 2021, App. H (scale 16 for NCSN++). Input ``s`` (B,), output
    (B, 2 * embedding_size). ``W`` is a buffer (saved in the state dict, never trained).
    """

    def __init__(self, embedding_size: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(embedding_size) * scale)

    def forward(self, s: Tensor) -> Tensor:
        proj = (2 * math.pi) * s.unsqueeze(-1) * self.W.to(s.dtype)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Transformer positional embedding of a (B,) input: ``[sin(s w_i), cos(s w_i)]``, output (B, dim).

    ``w_i = max_positions^(-i / (dim/2 - 1))`` (Vaswani et al. 2017; Ho et al. 2020, with s the integer
    step 0..999; here ``s`` may be any real number). An odd ``dim`` gets one zero column.
    """

    def __init__(self, dim: int, max_positions: float = 10000.0) -> None:
        super().__init__()
        if dim < 4:
            raise ValueError(f"dim must be >= 4 for a sinusoidal embedding, got {dim}")
        self.dim = dim
        self.max_positions = max_positions

    def forward(self, s: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, dtype=s.dtype, device=s.device) * (-math.log(self.max_positions) / (half - 1))
        )
        proj = s.unsqueeze(-1) * freqs
        emb = torch.cat([proj.sin(), proj.cos()], dim=-1)
        return F.pad(emb, (0, self.dim % 2))


# ---- MLP residual block --------------------------------------------------------------------------
class ResidualMLPBlock(nn.Module):
    """``h + W2 dropout(SiLU(W1 SiLU(h) + U SiLU(temb)))``: a pre-activation residual block of width
    ``hidden`` with a time embedding ``temb`` (B, hidden) added inside (the MLP networks' block)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc0 = nn.Linear(hidden, hidden)
        self.temb_proj = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        z = self.fc0(F.silu(h)) + self.temb_proj(F.silu(temb))
        return h + self.fc1(self.dropout(F.silu(z)))

    def with_tangents(self, h: Tensor, temb: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
        """The eval-mode block (dropout off) and its forward-mode derivative: ``(block(h), J dh)`` for h
        (B, hidden) and tangents dh (B, N, hidden), N directions per sample."""
        z = self.fc0(F.silu(h)) + self.temb_proj(F.silu(temb))
        dz = (silu_grad(h)[:, None] * dh) @ self.fc0.weight.T
        return h + self.fc1(F.silu(z)), dh + (silu_grad(z)[:, None] * dz) @ self.fc1.weight.T


def silu_grad(x: Tensor) -> Tensor:
    """d SiLU(x) / dx = sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


# ---- FIR resampling ------------------------------------------------------------------------------
def fir_kernel_2d(k: Sequence[float]) -> Tensor:
    """The separable 2-D FIR kernel ``outer(k, k) / sum(k)^2`` (sums to 1), as a float tensor (K, K)."""
    taps = [float(v) for v in k]
    if not taps or sum(taps) == 0:
        raise ValueError(f"fir_kernel must be a non-empty sequence with a non-zero sum, got {taps}")
    k1 = torch.tensor(taps, dtype=torch.get_default_dtype())
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad with zeros, convolve with ``kernel``, keep every ``down``-th pixel.

    The StyleGAN2 ``upfirdn2d`` operation written with ``F.pad`` and a depthwise ``F.conv2d``.
    ``x`` (N, C, H, W); ``kernel`` (K, K); ``pad`` = (before, after), the same on both axes.
    Output spatial size ``(H * up + pad[0] + pad[1] - K) // down + 1``.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1)).reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR upsampling (N, C, H, W) -> (N, C, factor H, factor W); ``kernel`` sums to 1; gain factor^2."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR downsampling (N, C, H, W) -> (N, C, H / factor, W / factor) with a kernel that sums to 1."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class FIRConv2d(nn.Module):
    """A KxK convolution fused with FIR up- or down-sampling by 2 (StyleGAN2; NCSN++ ``fir=True``).

    ``up``: stride-2 transposed convolution, then the FIR filter (gain 4); ``down``: the FIR filter, then
    a stride-2 convolution. The padding makes (H, W) -> (2H, 2W) or (H/2, W/2) for even H, W.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        up: bool = False,
        down: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        if up == down:
            raise ValueError("exactly one of up and down must be True")
        self.up = up
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, kernel_size, kernel_size)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        kw = self.weight.shape[-1]
        taps = self.kernel.shape[0]
        if self.up:
            p = (taps - 2) - (kw - 1)
            x = F.conv_transpose2d(x, self.weight.flip(2, 3).transpose(0, 1), stride=2)
            x = upfirdn2d(x, self.kernel * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
        else:
            p = (taps - 2) + (kw - 1)
            x = F.conv2d(upfirdn2d(x, self.kernel, pad=((p + 1) // 2, p // 2)), self.weight, stride=2)
        return x + self.bias.reshape(-1, 1, 1)
