"""A small convolutional image classifier whose penultimate layer serves as a feature extractor.

Used by :mod:`diffscore.evaluation.digits` for the "digits FID": trained on the digits train split, its
``features`` play the part of Inception-v3's pool features and its class probabilities that of
Inception's logits (for an Inception-Score analogue). Nothing here is specific to the digits except the
defaults (one channel, 8x8, ten classes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int

__all__ = ["FeatureClassifier"]


class FeatureClassifier(nn.Module):
    """``logits = head(features(x))``: three 3x3 convolutions, two 2x2 poolings, a dense feature layer.

    Layers (SiLU after each, so no feature unit is exactly dead):
    ``conv(C -> w) -> conv(w -> 2w) -> avgpool 2 -> conv(2w -> 2w) -> avgpool 2 -> flatten ->
    dense(2w (H/4)(W/4) -> feature_dim) -> SiLU`` gives :meth:`hidden`, and ``dense(feature_dim ->
    num_classes)`` of it the logits. :meth:`features` is :meth:`hidden` centred and scaled by two
    buffers that :meth:`standardize_features` sets from reference images (identity until then).
    Inputs are float images on the data range the models use (e.g. [-1, 1]).

    Args:
        in_channels: C. image_size: H = W, divisible by 4. num_classes: K.
        width: w, channels of the first convolution. feature_dim: size of the feature layer.

    Raises:
        ValueError / TypeError: a bad constructor argument (named); at call time an input that is not a
            float tensor shaped (B, C, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("num_classes", num_classes),
            ("width", width),
            ("feature_dim", feature_dim),
        ):
            check_int(name, value, 1)
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config: dict[str, Any] = dict(
            name="feature_classifier",
            in_channels=in_channels,
            image_size=image_size,
            num_classes=num_classes,
            width=width,
            feature_dim=feature_dim,
        )
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.dense = nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def _check(self, x: Tensor) -> None:
        c, s = self.config["in_channels"], self.config["image_size"]
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor (float images on the data range)")
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"x must be shaped (B, {c}, {s}, {s}), got {tuple(x.shape)}")

    def hidden(self, x: Tensor) -> Tensor:
        """The penultimate activations (B, feature_dim), the input of the classification head."""
        self._check(x)
        h = F.silu(self.conv1(x))
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        h = F.avg_pool2d(F.silu(self.conv3(h)), 2)
        return F.silu(self.dense(h.flatten(1)))

    def features(self, x: Tensor) -> Tensor:
        """Standardized penultimate features ``(hidden(x) - feature_mean) / feature_scale``: (B, F)."""
        return (self.hidden(x) - self.feature_mean) / self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.hidden(x))

    @torch.no_grad()
    def standardize_features(self, x: Tensor) -> None:
        """Set ``feature_mean`` to the mean of ``hidden(x)`` and ``feature_scale`` to the root of its mean
        per-feature variance, so that :meth:`features` of ``x`` are centred with ``tr(Cov) = feature_dim``.

        A global scale (not one per feature) keeps the features' relative weights; centring and scaling
        make FID values comparable across training seeds in units of the reference spread and keep
        KID's kernel ``(x . y / F + 1)^3`` in its working range (``x . y / F`` of order 1).
        """
        h = self.hidden(x)
        self.feature_mean.copy_(h.mean(0))
        self.feature_scale.copy_(h.var(0).mean().sqrt().clamp_min(torch.finfo(h.dtype).tiny))
