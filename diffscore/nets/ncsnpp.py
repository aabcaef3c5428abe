"""The NCSN++ / DDPM++ U-Net family of Song et al. 2021 (Appendix H), in pure PyTorch.

One class, :class:`NCSNpp`, covers both: its defaults are the NCSN++ (continuous, VE) CIFAR-10 model;
DDPM++ (continuous, VP) is the same class with a sinusoidal time embedding, no FIR and no progressive
input (see ``diffscore.nets.PRESETS``). Components:

- residual blocks: BigGAN-style (Brock et al. 2019; resampling inside the block) or DDPM-style
  (Ho et al. 2020; separate resampling layers), pre-activation GroupNorm + SiLU, time projection added
  after the first convolution, dropout before the second, optional 1/sqrt(2) skip rescaling;
- FIR up/down-sampling with the [1, 3, 3, 1] kernel (``fir=True``) or nearest / average pooling;
- single-head self-attention at chosen resolutions and in the middle of the U-Net;
- progressive growing of the input ("none", "input_skip", "residual") and output ("none",
  "output_skip", "residual") (Karras et al. 2018, as adapted by Song et al. 2021);
- weights initialised with fan-avg variance scaling; the last convolution of every residual branch and
  of the output uses ``init_scale`` (0 = the reference's near-zero init).

The network maps ``(x, t) -> like x``; turning that into a score (noise, score or score*std
parameterisation, division by sigma) is the job of ``diffscore.ScoreModel``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import bcast
from .layers import (
    FIRConv2d,
    GaussianFourierProjection,
    SinusoidalEmbedding,
    check_image_input,
    conv2d,
    dense,
    downsample_2d,
    fir_kernel_2d,
    group_norm,
    upsample_2d,
)

__all__ = ["NCSNpp"]

_SQRT2 = math.sqrt(2.0)


def _skip(x: Tensor, h: Tensor, rescale: bool) -> Tensor:
    return (x + h) / _SQRT2 if rescale else x + h


def _choice(name: str, value: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class Resample(nn.Module):
    """Up- or down-sampling by 2 of (B, C, H, W), optionally with a 3x3 convolution to ``out_ch`` channels.

    ``fir=True``: FIR filtering with ``fir_kernel`` (fused with the convolution when ``with_conv``).
    ``fir=False``: nearest-neighbour upsampling / 2x2 average pooling, or with a convolution: nearest +
    3x3 conv (up), asymmetric pad + stride-2 3x3 conv (down), as in DDPM.
    """

    def __init__(
        self,
        up: bool,
        in_ch: int = 0,
        out_ch: int = 0,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.up = up
        self.fir = fir
        self.conv: nn.Module | None = None
        if with_conv and fir:
            self.conv = FIRConv2d(in_ch, out_ch, 3, up=up, down=not up, fir_kernel=fir_kernel)
        elif with_conv:
            self.conv = conv2d(in_ch, out_ch, 3, stride=1 if up else 2, padding=1 if up else 0)
        elif fir:
            self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.conv, FIRConv2d):
            return self.conv(x)
        if self.up:
            x = (
                upsample_2d(x, self.kernel)
                if self.fir
                else F.interpolate(x, scale_factor=2.0, mode="nearest")
            )
            return x if self.conv is None else self.conv(x)
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return downsample_2d(x, self.kernel) if self.fir else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """Pre-activation residual block conditioned on a time embedding (DDPM / BigGAN style).

    ``h = conv0(resample(SiLU(GN(x)))) + W temb``; ``h = conv1(dropout(SiLU(GN(h))))``; output
    ``(shortcut(resample(x)) + h)`` divided by sqrt(2) when ``skip_rescale``. ``resample`` (BigGAN style
    only) is a parameter-free :class:`Resample`. The shortcut is a 1x1 conv when the shape changes
    (init scale 0.1 for DDPM-style blocks, 1 for BigGAN-style, as in the reference).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        resample: Resample | None = None,
        shortcut_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.norm0 = group_norm(in_ch)
        self.resample = resample
        self.conv0 = conv2d(in_ch, out_ch)
        self.temb_proj = dense(temb_dim, out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, init_scale=init_scale)
        changes_shape = in_ch != out_ch or resample is not None
        self.shortcut = conv2d(in_ch, out_ch, 1, init_scale=shortcut_init_scale) if changes_shape else None
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h)
        h = h + bcast(self.temb_proj(F.silu(temb)), h)
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return _skip(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection (Ho et al. 2020).

    q, k, v and the output projection are 1x1 convolutions (init scale 0.1 and ``init_scale``).
    """

    def __init__(self, channels: int, skip_rescale: bool, init_scale: float) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv2d(channels, channels, 1, init_scale=0.1)
        self.k = conv2d(channels, channels, 1, init_scale=0.1)
        self.v = conv2d(channels, channels, 1, init_scale=0.1)
        self.proj_out = conv2d(channels, channels, 1, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = (layer(h).flatten(2).transpose(1, 2) for layer in (self.q, self.k, self.v))  # (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        h = self.proj_out(h.transpose(1, 2).reshape(x.shape))
        return _skip(x, h, self.skip_rescale)


class _Level(nn.Module):
    """The modules of one resolution of the U-Net (one side); absent parts are None or empty."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.resample: nn.Module | None = None
        self.pyramid: nn.Module | None = None
        self.pyramid_norm: nn.Module | None = None


def _check_ncsnpp_args(
    channels: int,
    image_size: int,
    nf: int,
    num_res_blocks: int,
    ch_mult: Sequence[int],
    attn_resolutions: Sequence[int],
    dropout: float,
    resblock_type: str,
    progressive: str,
    progressive_input: str,
    progressive_combine: str,
    embedding_type: str,
    fourier_scale: float,
    time_scale: float,
    time_shift: float,
    init_scale: float,
    center_input: bool,
) -> tuple[tuple[int, ...], list[int], tuple[int, ...]]:
    """Check :class:`NCSNpp`'s arguments; returns ``(ch_mult, resolutions, attn_resolutions)``."""
    _positive_int("channels", channels)
    _positive_int("image_size", image_size)
    _positive_int("nf", nf)
    _positive_int("num_res_blocks", num_res_blocks)
    ch_mult = tuple(_positive_int("ch_mult[i]", int(m)) for m in ch_mult)
    if not ch_mult:
        raise ValueError("ch_mult must be a non-empty sequence of positive integers")
    if image_size % 2 ** (len(ch_mult) - 1):
        raise ValueError(f"image_size must be divisible by 2 ** (len(ch_mult) - 1), got {image_size}")
    resolutions = [image_size // 2**i for i in range(len(ch_mult))]
    attn_resolutions = tuple(int(r) for r in attn_resolutions)
    if not set(attn_resolutions) <= set(resolutions):
        raise ValueError(
            f"attn_resolutions must be among the U-Net resolutions {resolutions}, got {attn_resolutions}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    _choice("resblock_type", resblock_type, ("biggan", "ddpm"))
    _choice("progressive", progressive, ("none", "output_skip", "residual"))
    _choice("progressive_input", progressive_input, ("none", "input_skip", "residual"))
    _choice("progressive_combine", progressive_combine, ("sum", "cat"))
    _choice("embedding_type", embedding_type, ("fourier", "positional"))
    scalars = {"fourier_scale": fourier_scale, "time_scale": time_scale, "time_shift": time_shift}
    for name, value in scalars.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if not init_scale >= 0.0:
        raise ValueError(f"init_scale must be >= 0, got {init_scale}")
    if not isinstance(center_input, bool):
        raise TypeError(f"center_input must be a bool, got {type(center_input).__name__}")
    return ch_mult, resolutions, attn_resolutions


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net score network ``net(x, t) -> like x`` (Song et al. 2021, App. H).

    Defaults: NCSN++ (continuous) for CIFAR-10, 62.76M parameters. Input ``x`` (B, channels, H, W) with
    H and W divisible by ``2 ** (len(ch_mult) - 1)``; ``t`` (B,) the diffusion time. The time embedding
    sees ``s = time_shift + time_scale * t``: the defaults make ``s = log sigma(t)`` for the default VE
    SDE (sigma 0.01 -> 50), which is the reference's Fourier input; DDPM++ uses ``time_scale = 999``
    (the reference's step index) with the sinusoidal embedding.

    Args:
        channels: image channels. image_size: the training resolution; it only places attention
            (``attn_resolutions`` are pixel sizes at that resolution), other sizes run too.
        nf: base width; level i has ``nf * ch_mult[i]`` channels. num_res_blocks: blocks per level
            (the up path has one more). attn_resolutions: resolutions with self-attention.
        dropout: dropout probability in the residual blocks.
        resblock_type: "biggan" (resampling inside residual blocks) or "ddpm" (separate layers).
        fir, fir_kernel: FIR resampling and its 1-D kernel. resamp_with_conv: convolutions in the
            DDPM-style resampling layers. skip_rescale: divide residual sums by sqrt(2).
        progressive: "none", "output_skip" or "residual" output pyramid.
        progressive_input: "none", "input_skip" or "residual" input pyramid.
        progressive_combine: "sum" or "cat", how "input_skip" merges the pyramid into the features.
        embedding_type: "fourier" (Gaussian Fourier features, scale ``fourier_scale``) or "positional".
        time_scale, time_shift: the affine map from t to the embedding input.
        center_input: map the input x to ``2 x - 1`` first, so data in [0, 1] reach the network in
            [-1, 1] (the released VE checkpoints' ``data.centered = False``; diffusers'
            ``center_input_sample``). The input pyramid sees the mapped x too.
        init_scale: scale of the last conv of residual branches, attention and the output (0: ~zero).

    Raises:
        ValueError: an argument is out of range (named), or at call time a wrong-shaped ``x`` / ``t``.
        TypeError: ``x`` or ``t`` is not a floating-point tensor.
    """

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resblock_type: str = "biggan",
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        resamp_with_conv: bool = True,
        skip_rescale: bool = True,
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        time_scale: float = math.log(50.0 / 0.01),
        time_shift: float = math.log(0.01),
        init_scale: float = 0.0,
        center_input: bool = False,
    ) -> None:
        super().__init__()
        ch_mult, resolutions, attn_resolutions = _check_ncsnpp_args(
            channels, image_size, nf, num_res_blocks, ch_mult, attn_resolutions, dropout, resblock_type,
            progressive, progressive_input, progressive_combine, embedding_type, fourier_scale, time_scale,
            time_shift, init_scale, center_input,
        )  # fmt: skip
        self.config = dict(
            name="ncsnpp",
            channels=channels,
            image_size=image_size,
            nf=nf,
            ch_mult=list(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=list(attn_resolutions),
            dropout=float(dropout),
            resblock_type=resblock_type,
            fir=bool(fir),
            fir_kernel=[float(k) for k in fir_kernel],
            resamp_with_conv=bool(resamp_with_conv),
            skip_rescale=bool(skip_rescale),
            progressive=progressive,
            progressive_input=progressive_input,
            progressive_combine=progressive_combine,
            embedding_type=embedding_type,
            fourier_scale=float(fourier_scale),
            time_scale=float(time_scale),
            time_shift=float(time_shift),
            init_scale=float(init_scale),
            center_input=center_input,
        )
        self.channels = channels
        self.center_input = center_input
        self.num_levels = len(ch_mult)
        self.biggan = resblock_type == "biggan"
        self.progressive = progressive
        self.progressive_input = progressive_input
        self.progressive_combine = progressive_combine
        self.skip_rescale = skip_rescale
        self.time_scale = float(time_scale)
        self.time_shift = float(time_shift)
        self._fir = (fir, tuple(fir_kernel))
        self._resamp_with_conv = resamp_with_conv
        self._init_scale = init_scale
        # the modules, built in the order that fixes the weights drawn by a seeded initialisation
        temb_dim = self._build_time_embedding(embedding_type, nf, fourier_scale)
        self._blocks = dict(temb_dim=temb_dim, dropout=dropout, skip_rescale=skip_rescale)
        hs_ch = self._build_down(nf, ch_mult, num_res_blocks, resolutions, attn_resolutions)
        in_ch = hs_ch[-1]
        self.mid_block0 = self._res_block(in_ch, in_ch)
        self.mid_attn = self._attn(in_ch)
        self.mid_block1 = self._res_block(in_ch, in_ch)
        self._build_up(nf, ch_mult, num_res_blocks, resolutions, attn_resolutions, hs_ch)
        del self._blocks

    # ---- construction ---------------------------------------------------------------------------------
    def _build_time_embedding(self, embedding_type: str, nf: int, fourier_scale: float) -> int:
        """Features of s, then Dense -> SiLU -> Dense to 4 nf; returns 4 nf."""
        if embedding_type == "fourier":
            self.embed: nn.Module = GaussianFourierProjection(nf, fourier_scale)
            embed_dim = 2 * nf
        else:
            self.embed = SinusoidalEmbedding(nf)
            embed_dim = nf
        temb_dim = 4 * nf
        self.temb_in = dense(embed_dim, temb_dim)
        self.temb_out = dense(temb_dim, temb_dim)
        return temb_dim

    def _res_block(self, in_ch: int, out_ch: int, up: bool = False, down: bool = False) -> ResBlock:
        fir, fir_kernel = self._fir
        resample = Resample(up, fir=fir, fir_kernel=fir_kernel) if (up or down) else None
        b = self._blocks
        return ResBlock(
            in_ch,
            out_ch,
            b["temb_dim"],
            b["dropout"],
            b["skip_rescale"],
            self._init_scale,
            resample=resample,
            shortcut_init_scale=1.0 if self.biggan else 0.1,
        )

    def _attn(self, ch: int) -> AttnBlock:
        return AttnBlock(ch, self.skip_rescale, self._init_scale)

    def _resample_layer(self, up: bool, ch: int) -> nn.Module:
        """The resolution change between levels: a resampling residual block (BigGAN) or a layer."""
        if self.biggan:
            return self._res_block(ch, ch, up=up, down=not up)
        return Resample(up, ch, ch, self._resamp_with_conv, *self._fir)

    def _build_down(
        self,
        nf: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        resolutions: list[int],
        attn_resolutions: tuple[int, ...],
    ) -> list[int]:
        """The input conv and the downsampling levels; returns the channels of every skip connection."""
        channels, fir = self.channels, self._fir
        self.conv_in = conv2d(channels, nf)
        hs_ch = [nf]
        in_ch = nf
        pyramid_ch = channels
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            out_ch = nf * mult
            for _ in range(num_res_blocks):
                level.blocks.append(self._res_block(in_ch, out_ch))
                in_ch = out_ch
                level.attns.append(self._attn(in_ch) if resolutions[i] in attn_resolutions else nn.Identity())
                hs_ch.append(in_ch)
            if i != self.num_levels - 1:
                level.resample = self._resample_layer(False, in_ch)
                if self.progressive_input == "input_skip":
                    level.pyramid = conv2d(channels, in_ch, 1)
                    if self.progressive_combine == "cat":
                        in_ch *= 2
                elif self.progressive_input == "residual":
                    level.pyramid = Resample(False, pyramid_ch, in_ch, True, *fir)
                    pyramid_ch = in_ch
                hs_ch.append(in_ch)
            self.down.append(level)
        if self.progressive_input == "input_skip":
            self.pyramid_down = Resample(False, fir=fir[0], fir_kernel=fir[1])
        return hs_ch

    def _build_up(
        self,
        nf: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        resolutions: list[int],
        attn_resolutions: tuple[int, ...],
        hs_ch: list[int],
    ) -> None:
        """The upsampling levels (``self.up[0]`` is the lowest resolution) and the output layers."""
        channels, fir, progressive, init_scale = self.channels, self._fir, self.progressive, self._init_scale
        in_ch = hs_ch[-1]
        self.up = nn.ModuleList()
        pyramid_ch = 0
        for i in reversed(range(self.num_levels)):
            level = _Level()
            out_ch = nf * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.blocks.append(self._res_block(in_ch + hs_ch.pop(), out_ch))
                in_ch = out_ch
            if resolutions[i] in attn_resolutions:
                level.attns.append(self._attn(in_ch))
            if progressive != "none":
                if i == self.num_levels - 1 or progressive == "output_skip":
                    level.pyramid_norm = group_norm(in_ch)
                    if progressive == "output_skip":
                        level.pyramid = conv2d(in_ch, channels, init_scale=init_scale)
                    else:
                        level.pyramid = conv2d(in_ch, in_ch)
                else:
                    level.pyramid = Resample(True, pyramid_ch, in_ch, True, *fir)
                pyramid_ch = channels if progressive == "output_skip" else in_ch
            if i != 0:
                level.resample = self._resample_layer(True, in_ch)
            self.up.append(level)
        if progressive == "output_skip":
            self.pyramid_up = Resample(True, fir=fir[0], fir_kernel=fir[1])
        else:
            self.norm_out = group_norm(in_ch)
            self.conv_out = conv2d(in_ch, channels, init_scale=init_scale)

    def _resample(self, level: _Level, h: Tensor, temb: Tensor) -> Tensor:
        return level.resample(h, temb) if self.biggan else level.resample(h)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Evaluate the network: ``x`` (B, C, H, W), ``t`` (B,) -> (B, C, H, W)."""
        check_image_input(x, t, self.channels, 2 ** (self.num_levels - 1))
        temb = self.embed(self.time_shift + self.time_scale * t.to(x.dtype))
        temb = self.temb_out(F.silu(self.temb_in(temb)))
        if self.center_input:
            x = 2 * x - 1

        pyramid = x
        hs = [self.conv_in(x)]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attns, strict=True):
                hs.append(attn(block(hs[-1], temb)))
            if level.resample is None:
                continue
            h = self._resample(level, hs[-1], temb)
            if self.progressive_input == "input_skip":
                pyramid = self.pyramid_down(pyramid)
                skip = level.pyramid(pyramid)
                h = torch.cat([skip, h], dim=1) if self.progressive_combine == "cat" else skip + h
            elif self.progressive_input == "residual":
                pyramid = _skip(level.pyramid(pyramid), h, self.skip_rescale)
                h = pyramid
            hs.append(h)

        h = self.mid_block1(self.mid_attn(self.mid_block0(hs[-1], temb)), temb)

        pyramid = None
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            for attn in level.attns:
                h = attn(h)
            if level.pyramid_norm is not None:
                p = level.pyramid(F.silu(level.pyramid_norm(h)))
                pyramid = p if pyramid is None else self.pyramid_up(pyramid) + p
            elif level.pyramid is not None:  # progressive == "residual" below the lowest level
                pyramid = _skip(level.pyramid(pyramid), h, self.skip_rescale)
                h = pyramid
            if level.resample is not None:
                h = self._resample(level, h, temb)

        if self.progressive == "output_skip":
            return pyramid
        return self.conv_out(F.silu(self.norm_out(h)))
