"""Score networks (a small MLP, NCSN's RefineNet, the NCSN++ / DDPM++ U-Nets) and time-dependent
classifiers for conditional sampling.

Every network is an ``nn.Module`` mapping ``(x, t) -> like x`` (the RefineNet takes a noise level
``sigma`` instead of ``t``) and carries ``net.config``, a JSON-serialisable dict of its constructor
arguments plus ``"name"``, so that ``from_config(net.config)`` rebuilds the same architecture.
``build(preset, **overrides)`` builds a named configuration (see ``PRESETS`` and docs/networks.md).

Also here, not a score network (so not in ``NETS``): ``FeatureClassifier``, the small image classifier
whose features give the digits FID (:mod:`diffscore.evaluation.digits`, docs/quality.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from .classifier import TimeDependentClassifier, fit_classifier, load_classifier, save_classifier
from .feature_classifier import FeatureClassifier
from .gaussian import GaussianResidualNet
from .mlp import MLPScoreNet
from .ncsnpp import NCSNpp
from .refinenet import NCSNRefineNet

__all__ = [
    "FeatureClassifier",
    "GaussianResidualNet",
    "MLPScoreNet",
    "NCSNpp",
    "NCSNRefineNet",
    "TimeDependentClassifier",
    "fit_classifier",
    "load_classifier",
    "save_classifier",
    "NETS",
    "PRESETS",
    "from_config",
    "build",
    "num_parameters",
]

NETS: dict[str, type[nn.Module]] = {
    "mlp": MLPScoreNet,
    "ncsnpp": NCSNpp,
    "ncsn": NCSNRefineNet,
    "gaussian_residual": GaussianResidualNet,
}


def _geometric(sigma_max: float, sigma_min: float, num: int) -> list[float]:
    """``num`` noise levels from ``sigma_max`` down to ``sigma_min``, equally spaced in log space."""
    ratio = math.log(sigma_min / sigma_max) / (num - 1)
    return [sigma_max * math.exp(i * ratio) for i in range(num)]


# DDPM++ (Song et al. 2021, App. H): NCSN++ with the sinusoidal embedding of 999 t, no FIR, no input pyramid.
_DDPMPP: dict[str, Any] = dict(
    embedding_type="positional", time_scale=999.0, time_shift=0.0, fir=False, progressive_input="none"
)

# name -> (network name in NETS, constructor arguments that differ from the class defaults)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # Song et al. 2021, CIFAR-10 configurations (reference parameter counts 62.76M, 107.59M, 61.80M, 106.63M)
    "ncsnpp_cifar10": ("ncsnpp", {}),
    "ncsnpp_cifar10_deep": ("ncsnpp", dict(num_res_blocks=8)),
    "ddpmpp_cifar10": ("ncsnpp", dict(_DDPMPP)),
    "ddpmpp_cifar10_deep": ("ncsnpp", dict(_DDPMPP, num_res_blocks=8)),
    # small U-Nets: 1-channel 8x8 (scikit-learn digits), and 32x32 RGB for benchmarks
    "ddpmpp_digits": (
        "ncsnpp",
        dict(
            _DDPMPP, channels=1, image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,)
        ),
    ),
    "ncsnpp_small": ("ncsnpp", dict(nf=48, ch_mult=(1, 2, 2), num_res_blocks=2)),
    # NCSN (Song & Ermon 2019): CIFAR-10 config (10 levels, 1 -> 0.01) and a small 8x8 one-channel version
    "ncsn_cifar10": ("ncsn", dict(channels=3, nf=128, sigmas=_geometric(1.0, 0.01, 10))),
    "ncsn_digits": ("ncsn", dict(channels=1, nf=32, sigmas=_geometric(1.0, 0.01, 10), dilations=(1, 2))),
    # toy 2-D data
    "mlp_2d": ("mlp", dict(dim=2, hidden=128, depth=3)),
}


def from_config(config: Mapping[str, Any]) -> nn.Module:
    """Build the network described by ``config`` (``net.config``: ``{"name": ..., **constructor kwargs}``).

    Raises:
        TypeError: ``config`` is not a mapping, or holds an argument the network does not take.
        ValueError: ``config["name"]`` is missing or unknown (the message lists the valid names), or an
            argument is out of range.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in NETS:
        raise ValueError(f"config['name'] must be one of {sorted(NETS)}, got {name!r}")
    cls = NETS[name]
    for key in getattr(cls, "nested_nets", ()):  # arguments that are networks come as their configs
        if key in kwargs:
            kwargs[key] = from_config(kwargs[key])
    return cls(**kwargs)


def build(preset: str, **overrides: Any) -> nn.Module:
    """Build the preset network ``preset`` (a key of ``PRESETS``), with constructor arguments overridden.

    Example: ``build("ddpmpp_digits", dropout=0.0)``.

    Raises:
        ValueError: unknown ``preset`` (the message lists the valid names), or a bad override.
        TypeError: an override the network does not take.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    name, kwargs = PRESETS[preset]
    return from_config({**kwargs, **overrides, "name": name})


def num_parameters(net: nn.Module) -> int:
    """Number of scalar parameters of ``net`` (buffers such as Fourier frequencies or sigmas excluded)."""
    return sum(p.numel() for p in net.parameters())
