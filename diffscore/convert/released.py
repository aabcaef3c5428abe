"""The released score_sde_pytorch checkpoints, described as their configs.

Each entry is the part of the reference's ``ml_collections`` config (``configs/<sde>/<name>.py`` of
yang-song/score_sde_pytorch, with its ``default_*_configs.py``) that the converter reads, in the same
nested layout (``training`` / ``data`` / ``model`` / ``sampling``), so a preset and a config exported to
JSON take the same path through :func:`diffscore.convert.score_sde_spec`. The names are the folder names
of the released checkpoints (score_sde_pytorch README, "Pretrained checkpoints").

Sources of the values: the config files above (network, SDE, ``num_scales``, ``snr``, data centering,
sampler); the sampling end times 1e-5 (VE) / 1e-3 (VP, sub-VP) are set in the reference's ``run_lib.py``.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["RELEASED", "released_config"]


def _config(training: dict, data: dict, model: dict, sampling: dict) -> dict[str, Any]:
    return {"training": training, "data": data, "model": model, "sampling": sampling}


def _cifar10(sde: str, deep: bool) -> dict[str, Any]:
    """CIFAR-10 NCSN++ cont. (VE) or DDPM++ cont. (VP, sub-VP), optionally deep (8 blocks per level)."""
    ve = sde == "vesde"
    model = dict(
        name="ncsnpp",
        sigma_min=0.01,
        sigma_max=50.0,
        num_scales=1000,
        beta_min=0.1,
        beta_max=20.0,
        dropout=0.1,
        scale_by_sigma=ve,
        ema_rate=0.999 if ve else 0.9999,
        normalization="GroupNorm",
        nonlinearity="swish",
        nf=128,
        ch_mult=[1, 2, 2, 2],
        num_res_blocks=8 if deep else 4,
        attn_resolutions=[16],
        resamp_with_conv=True,
        conditional=True,
        fir=ve,
        fir_kernel=[1, 3, 3, 1],
        skip_rescale=True,
        resblock_type="biggan",
        progressive="none",
        progressive_input="residual" if ve else "none",
        progressive_combine="sum",
        attention_type="ddpm",
        init_scale=0.0,
        embedding_type="fourier" if ve else "positional",
        fourier_scale=16.0,
        conv_size=3,
    )
    sampling = dict(
        method="pc",
        predictor="reverse_diffusion" if ve else "euler_maruyama",
        corrector="langevin" if ve else "none",
        snr=0.16,
        n_steps_each=1,
        noise_removal=True,
        probability_flow=False,
    )
    data = dict(dataset="CIFAR10", image_size=32, num_channels=3, centered=not ve)
    return _config(dict(sde=sde, continuous=True), data, model, sampling)


def _ncsnpp_hires(
    dataset: str, image_size: int, sigma_max: float, snr: float, ema_rate: float, **net: Any
) -> dict[str, Any]:
    """NCSN++ cont. (VE) at 256 or 1024 pixels: output_skip / input_skip pyramids, 2000 noise scales."""
    model = dict(
        name="ncsnpp",
        sigma_min=0.01,
        sigma_max=sigma_max,
        num_scales=2000,
        beta_min=0.1,
        beta_max=20.0,
        dropout=0.0,
        scale_by_sigma=True,
        ema_rate=ema_rate,
        normalization="GroupNorm",
        nonlinearity="swish",
        nf=128,
        ch_mult=[1, 1, 2, 2, 2, 2, 2],
        num_res_blocks=2,
        attn_resolutions=[16],
        resamp_with_conv=True,
        conditional=True,
        fir=True,
        fir_kernel=[1, 3, 3, 1],
        skip_rescale=True,
        resblock_type="biggan",
        progressive="output_skip",
        progressive_input="input_skip",
        progressive_combine="sum",
        attention_type="ddpm",
        init_scale=0.0,
        embedding_type="fourier",
        fourier_scale=16.0,
        conv_size=3,
    )
    model.update(net)
    sampling = dict(
        method="pc",
        predictor="reverse_diffusion",
        corrector="langevin",
        snr=snr,
        n_steps_each=1,
        noise_removal=True,
        probability_flow=False,
    )
    data = dict(dataset=dataset, image_size=image_size, num_channels=3, centered=False)
    return _config(dict(sde="vesde", continuous=True), data, model, sampling)


#: name (the released checkpoint's folder) -> config. snr 0.075 is default_lsun_configs.py's value,
#: which the 256-pixel configs inherit; FFHQ 1024 sets its own (0.15).
RELEASED: dict[str, dict[str, Any]] = {
    "ve/cifar10_ncsnpp_continuous": _cifar10("vesde", deep=False),
    "ve/cifar10_ncsnpp_deep_continuous": _cifar10("vesde", deep=True),
    "vp/cifar10_ddpmpp_continuous": _cifar10("vpsde", deep=False),
    "vp/cifar10_ddpmpp_deep_continuous": _cifar10("vpsde", deep=True),
    "subvp/cifar10_ddpmpp_continuous": _cifar10("subvpsde", deep=False),
    "subvp/cifar10_ddpmpp_deep_continuous": _cifar10("subvpsde", deep=True),
    "ve/celebahq_256_ncsnpp_continuous": _ncsnpp_hires("CelebAHQ", 256, 348.0, 0.075, 0.999),
    "ve/ffhq_256_ncsnpp_continuous": _ncsnpp_hires("FFHQ", 256, 348.0, 0.075, 0.999),
    "ve/church_ncsnpp_continuous": _ncsnpp_hires("LSUN/church_outdoor", 256, 380.0, 0.075, 0.999),
    "ve/bedroom_ncsnpp_continuous": _ncsnpp_hires("LSUN/bedroom", 256, 378.0, 0.075, 0.999),
    # configs/ve/ffhq_ncsnpp_continuous.py
    "ve/ffhq_1024_ncsnpp_continuous": _ncsnpp_hires(
        "FFHQ",
        1024,
        1348.0,
        0.15,
        0.9999,
        nf=16,
        ch_mult=[1, 2, 4, 8, 16, 32, 32, 32],
        num_res_blocks=1,
    ),
}


def released_config(name: str) -> dict[str, Any]:
    """A copy of the config of the released checkpoint ``name`` (a key of ``RELEASED``).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names).
    """
    if name not in RELEASED:
        raise ValueError(f"preset must be one of {sorted(RELEASED)}, got {name!r}")
    return copy.deepcopy(RELEASED[name])
