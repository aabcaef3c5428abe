"""NCSN's noise-conditional RefineNet (Song & Ermon 2019, Sec. 4 and App. A).

A four-stage encoder of pre-activation residual blocks (the last two stages use dilated convolutions
instead of further subsampling) and a cascade of RefineNet blocks (Lin et al. 2017: residual conv
units, multi-resolution fusion, chained residual pooling) that merges the stages from coarse to fine.
Every normalisation is a conditional instance normalisation++ whose parameters are looked up by the
noise-level index, and the activation is ELU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import bcast
from .layers import check_image_input

__all__ = ["CondInstanceNormPlus", "NCSNRefineNet"]


class CondInstanceNormPlus(nn.Module):
    """Conditional instance normalisation++ (Song & Ermon 2019, App. A, eq. for z_k).

    ``z_k = gamma[i, k] (x_k - mu_k) / s_k + beta[i, k] + alpha[i, k] (mu_k - m) / v``, where ``mu_k``,
    ``s_k`` are the spatial mean and std of channel k, ``m`` and ``v`` the mean and std of the ``mu_k``
    over channels, and ``i`` the noise-level index. Input (B, C, H, W) and ``idx`` (B,) long.
    gamma and alpha start near 1 (N(1, 0.02^2)), beta at 0.
    """

    def __init__(self, num_features: int, num_levels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.embed = nn.Embedding(num_levels, 3 * num_features)
        with torch.no_grad():
            self.embed.weight[:, : 2 * num_features].normal_(1.0, 0.02)
            self.embed.weight[:, 2 * num_features :].zero_()

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        mu = x.mean(dim=(-2, -1))
        var = x.var(dim=(-2, -1), unbiased=False)
        h = (x - bcast(mu, x)) * bcast(torch.rsqrt(var + self.eps), x)
        mu_tilde = (mu - mu.mean(dim=1, keepdim=True)) * torch.rsqrt(mu.var(dim=1, keepdim=True) + self.eps)
        gamma, alpha, beta = self.embed(idx).to(x.dtype).chunk(3, dim=1)
        return bcast(gamma, x) * h + bcast(beta + alpha * mu_tilde, x)


def _conv3x3(in_ch: int, out_ch: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class CondResBlock(nn.Module):
    """Pre-activation residual block ``shortcut(x) + conv2(ELU(CIN(conv1(ELU(CIN(x))))))``.

    ``down``: conv1 keeps ``in_ch``, conv2 is conv + 2x2 mean pooling, shortcut 1x1 conv + mean pooling.
    Otherwise both convs are 3x3 with ``dilation`` and the shortcut (a dilated 3x3 conv) exists when the
    channel count changes or ``shortcut`` is set (the first block of a dilated stage, as in NCSN).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        num_levels: int,
        down: bool = False,
        dilation: int = 1,
        shortcut: bool = False,
    ) -> None:
        super().__init__()
        mid = in_ch if down else out_ch
        self.norm1 = CondInstanceNormPlus(in_ch, num_levels)
        self.conv1 = _conv3x3(in_ch, mid, dilation)
        self.norm2 = CondInstanceNormPlus(mid, num_levels)
        self.shortcut: nn.Module | None
        if down:
            self.conv2: nn.Module = nn.Sequential(_conv3x3(mid, out_ch), nn.AvgPool2d(2))
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.AvgPool2d(2))
        else:
            self.conv2 = _conv3x3(mid, out_ch, dilation)
            self.shortcut = _conv3x3(in_ch, out_ch, dilation) if (shortcut or in_ch != out_ch) else None

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        h = self.conv1(F.elu(self.norm1(x, idx)))
        h = self.conv2(F.elu(self.norm2(h, idx)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class CondRCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` times ``x + (CIN -> ELU -> conv3x3) ** n_stages (x)`` (no biases)."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, num_levels: int) -> None:
        super().__init__()
        self.n_stages = n_stages
        self.norms = nn.ModuleList(
            CondInstanceNormPlus(features, num_levels) for _ in range(n_blocks * n_stages)
        )
        self.convs = nn.ModuleList(
            _conv3x3(features, features, bias=False) for _ in range(n_blocks * n_stages)
        )

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        for start in range(0, len(self.convs), self.n_stages):
            h = x
            for i in range(start, start + self.n_stages):
                h = self.convs[i](F.elu(self.norms[i](h, idx)))
            x = x + h
        return x


class CondMSFBlock(nn.Module):
    """Multi-resolution fusion: sum over inputs of bilinear-resize(conv3x3(CIN(x_i))) to a common size."""

    def __init__(self, in_planes: Sequence[int], features: int, num_levels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(CondInstanceNormPlus(c, num_levels) for c in in_planes)
        self.convs = nn.ModuleList(_conv3x3(c, features) for c in in_planes)

    def forward(self, xs: Sequence[Tensor], idx: Tensor, size: Sequence[int]) -> Tensor:
        out = 0
        for x, norm, conv in zip(xs, self.norms, self.convs, strict=True):
            h = conv(norm(x, idx))
            if tuple(h.shape[-2:]) != tuple(size):
                h = F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=True)
            out = out + h
        return out


class CondCRPBlock(nn.Module):
    """Chained residual pooling: ``x = ELU(x)``, then ``n_stages`` times ``p = conv(pool(CIN(p)))``,
    ``x = x + p``, with ``pool`` a 5x5 stride-1 average pooling (Lin et al. 2017; NCSN App. A)."""

    def __init__(self, features: int, n_stages: int, num_levels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(CondInstanceNormPlus(features, num_levels) for _ in range(n_stages))
        self.convs = nn.ModuleList(_conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.pool = nn.AvgPool2d(5, stride=1, padding=2)

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        x = F.elu(x)
        path = x
        for norm, conv in zip(self.norms, self.convs, strict=True):
            path = conv(self.pool(norm(path, idx)))
            x = x + path
        return x


class CondRefineBlock(nn.Module):
    """RefineNet block: RCU per input, fusion (when several inputs), chained residual pooling, output RCU."""

    def __init__(self, in_planes: Sequence[int], features: int, num_levels: int, end: bool = False) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(CondRCUBlock(c, 2, 2, num_levels) for c in in_planes)
        self.msf = CondMSFBlock(in_planes, features, num_levels) if len(in_planes) > 1 else None
        self.crp = CondCRPBlock(features, 2, num_levels)
        self.out = CondRCUBlock(features, 3 if end else 1, 2, num_levels)

    def forward(self, xs: Sequence[Tensor], idx: Tensor, size: Sequence[int]) -> Tensor:
        hs = [adapt(x, idx) for adapt, x in zip(self.adapt, xs, strict=True)]
        h = hs[0] if self.msf is None else self.msf(hs, idx, size)
        return self.out(self.crp(h, idx), idx)


class NCSNRefineNet(nn.Module):
    """Noise-conditional score network ``net(x, sigma) -> like x`` (NCSN, Song & Ermon 2019, App. A).

    ``x`` (B, channels, H, W) with even H and W; ``sigma`` (B,) noise levels. Each sigma is mapped to
    the index of the nearest entry of the ``sigmas`` buffer in log space (:meth:`level_index`), and the
    network is conditioned on that index through every CondInstanceNorm++. With ``scale_by_sigma``
    (default) the output is divided by ``sigmas[index]``, so an untrained network already has the
    1/sigma magnitude of the true score (Song & Ermon 2020, "Improved techniques", technique 3).

    Layout (widths for ``nf``): a 3x3 conv to nf; residual stages nf (H), 2nf (H/2, subsampled),
    2nf (H/2, dilation ``dilations[0]``), 2nf (H/2, dilation ``dilations[1]``); RefineNet blocks from
    the last stage up to the first; CIN++ -> ELU -> 3x3 conv to ``channels``. The paper uses
    dilations (2, 4) at 32x32; for 8x8 images use smaller ones, e.g. (1, 2) (a dilation of 4 on a
    4x4 map only lets the centre tap see the image).

    Args:
        channels: image channels. nf: base width (>= 2). sigmas: the noise levels (positive, distinct).
        scale_by_sigma: divide the output by the selected sigma. dilations: dilations of stages 3 and 4.

    Raises:
        ValueError: a bad constructor argument (named); at call time wrong-shaped ``x`` or ``sigma``.
        TypeError: ``x`` or ``sigma`` is not a floating-point tensor.
    """

    def __init__(
        self,
        channels: int,
        nf: int,
        sigmas: Sequence[float] | Tensor,
        scale_by_sigma: bool = True,
        dilations: Sequence[int] = (2, 4),
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if isinstance(nf, bool) or not isinstance(nf, int) or nf < 2:
            raise ValueError(f"nf must be an integer >= 2, got {nf!r}")
        levels = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, Tensor) else sigmas)]
        if (
            not levels
            or not all(math.isfinite(s) and s > 0 for s in levels)
            or len(set(levels)) != len(levels)
        ):
            raise ValueError(
                f"sigmas must be a non-empty sequence of distinct positive finite numbers, got {levels}"
            )
        dilations = tuple(int(d) for d in dilations)
        if len(dilations) != 2 or min(dilations) < 1:
            raise ValueError(f"dilations must be two positive integers, got {dilations}")
        self.config = dict(
            name="ncsn",
            channels=channels,
            nf=nf,
            sigmas=levels,
            scale_by_sigma=bool(scale_by_sigma),
            dilations=list(dilations),
        )
        self.channels = channels
        self.scale_by_sigma = bool(scale_by_sigma)
        self.register_buffer("sigmas", torch.tensor(levels, dtype=torch.get_default_dtype()))
        n = len(levels)
        d3, d4 = dilations
        self.conv_in = _conv3x3(channels, nf)
        self.res1 = nn.ModuleList([CondResBlock(nf, nf, n), CondResBlock(nf, nf, n)])
        self.res2 = nn.ModuleList([CondResBlock(nf, 2 * nf, n, down=True), CondResBlock(2 * nf, 2 * nf, n)])
        self.res3 = nn.ModuleList(
            [
                CondResBlock(2 * nf, 2 * nf, n, dilation=d3, shortcut=True),
                CondResBlock(2 * nf, 2 * nf, n, dilation=d3),
            ]
        )
        self.res4 = nn.ModuleList(
            [
                CondResBlock(2 * nf, 2 * nf, n, dilation=d4, shortcut=True),
                CondResBlock(2 * nf, 2 * nf, n, dilation=d4),
            ]
        )
        self.refine1 = CondRefineBlock([2 * nf], 2 * nf, n)
        self.refine2 = CondRefineBlock([2 * nf, 2 * nf], 2 * nf, n)
        self.refine3 = CondRefineBlock([2 * nf, 2 * nf], nf, n)
        self.refine4 = CondRefineBlock([nf, nf], nf, n, end=True)
        self.norm_out = CondInstanceNormPlus(nf, n)
        self.conv_out = _conv3x3(nf, channels)

    def level_index(self, sigma: Tensor) -> Tensor:
        """Index (B,) long of the entry of ``sigmas`` nearest to each ``sigma`` in log space (no checks)."""
        log_sigmas = self.sigmas.log()
        return (sigma.to(log_sigmas.dtype).log().unsqueeze(-1) - log_sigmas).abs().argmin(dim=-1)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Evaluate the network: ``x`` (B, C, H, W), ``sigma`` (B,) -> (B, C, H, W)."""
        check_image_input(x, sigma, self.channels, 2, t_name="sigma")
        idx = self.level_index(sigma)
        h = self.conv_in(x)
        stages = []
        for stage in (self.res1, self.res2, self.res3, self.res4):
            for block in stage:
                h = block(h, idx)
            stages.append(h)
        l1, l2, l3, l4 = stages
        h = self.refine1([l4], idx, l4.shape[-2:])
        h = self.refine2([l3, h], idx, l3.shape[-2:])
        h = self.refine3([l2, h], idx, l2.shape[-2:])
        h = self.refine4([l1, h], idx, l1.shape[-2:])
        h = self.conv_out(F.elu(self.norm_out(h, idx)))
        if self.scale_by_sigma:
            h = h / bcast(self.sigmas[idx].to(h.dtype), h)
        return h
