"""score_sde_pytorch checkpoints (Song et al. 2021) -> diffscore models.

A released checkpoint is ``torch.save`` of ``{"model": state_dict, "ema": {"decay", "num_updates",
"shadow_params"}, "optimizer": ..., "step": int}`` (the reference's ``utils.save_checkpoint``). The network
is ``models/ncsnpp.py``'s NCSNpp wrapped in ``DataParallel`` (keys ``module.all_modules.<i>...``), whose
modules sit in one flat list in forward order. The reference evaluates the EMA weights: ``shadow_params``
follows ``model.parameters()`` restricted to trainable ones, i.e. the state dict minus the ``sigmas``
buffer and, with the Fourier embedding, minus the frozen frequencies ``all_modules.0.W``.

The reference's score (``models/utils.get_score_fn`` with ``continuous=True``), which the converted
:class:`~diffscore.ScoreModel` reproduces:

- VE: the network sees ``x`` in [0, 1], centres it (2x - 1) when ``data.centered`` is False, embeds
  ``log sigma(t)`` with Gaussian Fourier features, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``,
  and divides its output by ``sigma(t)`` (``scale_by_sigma``): score = output. Here:
  ``VESDE(kernel="sigma")`` (std(t) = sigma(t)), ``NCSNpp(center_input=True, time_shift=log sigma_min,
  time_scale=log(sigma_max / sigma_min))`` and the ``"scaled"`` parameterization.
- VP / sub-VP: the network sees ``999 t`` through the sinusoidal embedding; score = -output / std(t).
  Here: ``time_scale=999`` and the ``"noise"`` parameterization.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..nets import NCSNpp, from_config
from ..nets.layers import FIRConv2d, GaussianFourierProjection
from ..nets.ncsnpp import AttnBlock, Resample, ResBlock
from ..score import ScoreModel
from ..sde import SDE, VESDE, VPSDE, SubVPSDE
from ._common import ConversionError, Target, map_tensors, read_config, read_pickle_checkpoint, save
from .released import RELEASED, released_config

__all__ = ["score_sde_spec", "score_sde_mapping", "load_score_sde", "from_score_sde"]

_PREDICTORS = {"euler_maruyama": "euler_maruyama", "reverse_diffusion": "reverse_diffusion",
               "ancestral_sampling": "ancestral", "none": "none"}  # fmt: skip
_CORRECTORS = {"langevin": "langevin", "ald": "annealed_langevin", "none": "none"}
#: fields the reference reads that diffscore's NCSNpp has no choice for: the only accepted value
_FIXED = {
    "conditional": True,
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "attention_type": "ddpm",
    "conv_size": 3,
}


def _field(section: Mapping[str, Any], key: str, where: str, origin: str) -> Any:
    if key not in section:
        raise ConversionError(f"{origin}: field {where}.{key} is missing")
    return section[key]


def _resolve(config: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(config dict, its name for messages and metadata) from a preset name, a JSON file or a mapping."""
    if isinstance(config, Mapping):
        return dict(config), "config"
    if isinstance(config, str) and config in RELEASED:
        return released_config(config), config
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"config must be a preset name, a JSON file or a mapping, got {type(config).__name__}"
        )
    path = Path(config)
    if path.suffix == ".py":
        raise ConversionError(
            f"{str(path)!r}: score_sde_pytorch's Python configs are not run; export one to JSON "
            "(json.dumps(get_config().to_dict(), default=str)) or pass a preset name"
        )
    if not path.is_file():
        raise ConversionError(
            f"config {str(config)!r} is neither a released preset ({', '.join(sorted(RELEASED))}) nor a file"
        )
    return read_config(path), str(path)


def score_sde_spec(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Translate a score_sde_pytorch config into diffscore terms.

    Args:
        config: a released preset name (a key of ``diffscore.convert.RELEASED``), a JSON file holding a
            score_sde_pytorch ``ml_collections`` config exported as a dict (``config.to_dict()``; its
            ``training``, ``data``, ``model`` and ``sampling`` sections are read), or such a mapping.

    Returns:
        ``{"name", "net": NCSNpp config, "sde": SDE, "parameterization", "metadata", "sigmas"}``;
        metadata holds ``image_shape``, ``num_bins`` (256), ``data_range`` ([0, 1] for uncentred data, as
        the VE models), ``likelihood_eps`` (1e-5, the reference's), ``sampling`` (the config's sampler:
        predictor, corrector, snr, corrector steps, ``num_steps`` = ``model.num_scales``, end time 1e-5
        VE / 1e-3 VP, final denoising), ``dataset`` and ``ema_rate``; ``sigmas`` is (sigma_min, sigma_max,
        num_scales) of the network's ``sigmas`` buffer.

    Raises:
        ConversionError: a missing field (named) or a configuration diffscore cannot reproduce exactly
            (another network than NCSN++, discrete-time training, a VP model with Fourier features, ...).
        TypeError: ``config`` is of another type.
    """
    cfg, name = _resolve(config)
    for key in ("training", "data", "model"):
        if not isinstance(cfg.get(key), Mapping):
            raise ConversionError(f"{name}: config section {key!r} is missing or not an object")
    data, model = cfg["data"], cfg["model"]
    sampling = cfg["sampling"] if isinstance(cfg.get("sampling"), Mapping) else {}

    def get(section: str, key: str) -> Any:
        return _field(cfg[section], key, section, name)

    if get("model", "name") != "ncsnpp":
        raise ConversionError(
            f"{name}: model.name is {model['name']!r}; only NCSN++ / DDPM++ ('ncsnpp') checkpoints convert"
        )
    if get("training", "continuous") is not True:
        raise ConversionError(f"{name}: training.continuous is not true; only continuous-time models convert")
    for key, value in _FIXED.items():
        if key in model and model[key] != value:
            raise ConversionError(f"{name}: model.{key} is {model[key]!r}; only {value!r} converts")
    sde, parameterization, time = _sde(get, name)
    centered = bool(get("data", "centered"))
    channels, size = int(get("data", "num_channels")), int(get("data", "image_size"))
    net = dict(name="ncsnpp", channels=channels, image_size=size, **{k: get("model", k) for k in _NET_FIELDS})
    net.update(time, center_input=not centered)
    net["ch_mult"], net["attn_resolutions"] = list(net["ch_mult"]), list(net["attn_resolutions"])
    net["fir_kernel"] = [float(k) for k in net["fir_kernel"]]
    for key in ("resblock_type", "progressive", "progressive_input", "progressive_combine"):
        net[key] = str(net[key]).lower()
    try:
        with torch.device("meta"):  # validate the arguments without allocating or initialising weights
            from_config(net)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{name}: the model section does not describe a valid NCSN++: {err}") from err
    num_scales = int(get("model", "num_scales"))
    metadata = dict(
        image_shape=[channels, size, size],
        num_bins=256,
        data_range=[-1.0, 1.0] if centered else [0.0, 1.0],
        likelihood_eps=1e-5,
        sampling=_sampler(sampling, isinstance(sde, VESDE), num_scales, name),
        dataset=str(data.get("dataset", "")) + (f"/{data['category']}" if data.get("category") else ""),
        ema_rate=model.get("ema_rate"),
    )
    sigmas = (float(get("model", "sigma_min")), float(get("model", "sigma_max")), num_scales)
    return dict(
        name=name, net=net, sde=sde, parameterization=parameterization, metadata=metadata, sigmas=sigmas
    )


#: model fields copied into the NCSNpp config as they are
_NET_FIELDS = (
    "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resblock_type", "fir", "fir_kernel",
    "resamp_with_conv", "skip_rescale", "progressive", "progressive_input", "progressive_combine",
    "embedding_type", "fourier_scale", "init_scale",
)  # fmt: skip


def _sde(get, name: str) -> tuple[SDE, str, dict[str, float]]:
    """(SDE, parameterization, NCSNpp time map) of the reference's continuous-time score function."""
    sde_name, embedding = get("training", "sde"), get("model", "embedding_type")
    scale_by_sigma = bool(get("model", "scale_by_sigma"))
    if sde_name == "vesde":
        sigma_min, sigma_max = float(get("model", "sigma_min")), float(get("model", "sigma_max"))
        if embedding != "fourier":
            raise ConversionError(f"{name}: a VE model with embedding_type {embedding!r} does not convert")
        # the network embeds log sigma(t) = log sigma_min + t log(sigma_max / sigma_min)
        time = dict(time_scale=math.log(sigma_max / sigma_min), time_shift=math.log(sigma_min))
        return VESDE(sigma_min, sigma_max, kernel="sigma"), "scaled" if scale_by_sigma else "score", time
    if sde_name in ("vpsde", "subvpsde"):
        beta = (float(get("model", "beta_min")), float(get("model", "beta_max")))
        if embedding != "positional" or scale_by_sigma:
            raise ConversionError(
                f"{name}: a VP / sub-VP model must use embedding_type 'positional' and scale_by_sigma false "
                f"to convert, got {embedding!r} and {scale_by_sigma}"
            )
        sde = VPSDE(*beta) if sde_name == "vpsde" else SubVPSDE(*beta)
        return sde, "noise", dict(time_scale=999.0, time_shift=0.0)  # labels 999 t
    raise ConversionError(f"{name}: training.sde must be 'vesde', 'vpsde' or 'subvpsde', got {sde_name!r}")


def _sampler(sampling: Mapping[str, Any], ve: bool, num_scales: int, name: str) -> dict[str, Any]:
    """The config's sampler as ``diffscore.sample`` options (``probability_flow`` is not carried over)."""
    eps = 1e-5 if ve else 1e-3  # run_lib.py's sampling_eps
    if sampling.get("method") == "ode":
        return dict(method="ode", eps=eps)
    predictor = sampling.get("predictor", "reverse_diffusion" if ve else "euler_maruyama")
    corrector = sampling.get("corrector", "langevin" if ve else "none")
    if predictor not in _PREDICTORS or corrector not in _CORRECTORS:
        raise ConversionError(
            f"{name}: sampling.predictor {predictor!r} / sampling.corrector {corrector!r} unknown; expected "
            f"one of {sorted(_PREDICTORS)} / {sorted(_CORRECTORS)}"
        )
    return dict(
        method="pc",
        predictor=_PREDICTORS[predictor],
        corrector=_CORRECTORS[corrector],
        snr=float(sampling.get("snr", 0.16)),
        n_steps=int(sampling.get("n_steps_each", 1)),
        num_steps=num_scales,
        eps=eps,
        denoise=bool(sampling.get("noise_removal", True)),
    )


# ---- the reference's module list, walked on a diffscore NCSNpp --------------------------------------
def _params(prefix: str, names: dict[str, str], dst: str, how: str = "copy") -> dict[str, Target]:
    return {f"{prefix}.{src}": (f"{dst}.{name}", how) for src, name in names.items()}


_WB = {"weight": "weight", "bias": "bias"}


def _resblock(src: str, dst: str, block: ResBlock, biggan: bool) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for ref, ours in (("GroupNorm_0", "norm0"), ("Conv_0", "conv0"), ("Dense_0", "temb_proj"),
                      ("GroupNorm_1", "norm1"), ("Conv_1", "conv1")):  # fmt: skip
        out.update(_params(f"{src}.{ref}", _WB, f"{dst}.{ours}"))
    if block.shortcut is not None:
        if biggan:  # ResnetBlockBigGANpp: a 1x1 conv
            out.update(_params(f"{src}.Conv_2", _WB, f"{dst}.shortcut"))
        else:  # ResnetBlockDDPMpp: NIN (in, out) matrix
            out.update({f"{src}.NIN_0.W": (f"{dst}.shortcut.weight", "nin")})
            out.update({f"{src}.NIN_0.b": (f"{dst}.shortcut.bias", "copy")})
    return out


def _attn(src: str, dst: str) -> dict[str, Target]:
    out = _params(f"{src}.GroupNorm_0", _WB, f"{dst}.norm")
    for i, ours in enumerate(("q", "k", "v", "proj_out")):
        out[f"{src}.NIN_{i}.W"] = (f"{dst}.{ours}.weight", "nin")
        out[f"{src}.NIN_{i}.b"] = (f"{dst}.{ours}.bias", "copy")
    return out


def _resample(src: str, dst: str, layer: Resample) -> dict[str, Target]:
    if layer.conv is None:  # parameter-free, but it still takes an index in the reference's list
        return {}
    ref = "Conv2d_0" if isinstance(layer.conv, FIRConv2d) else "Conv_0"
    return _params(f"{src}.{ref}", _WB, f"{dst}.conv")


def score_sde_mapping(net: NCSNpp) -> dict[str, Target]:
    """score_sde_pytorch state-dict key (without ``module.``) -> (diffscore key, transform), for ``net``.

    The reference's ``all_modules`` list is rebuilt by walking ``net`` in the reference's construction
    order: embedding, two dense layers, the input conv; per down level its blocks (each followed by its
    attention), the down-sampling block and the input-pyramid layer; the middle; per up level its blocks,
    its attention, the output-pyramid layers and the up-sampling block; the output head.
    """
    units: list[tuple[str, Any, str]] = []  # (kind, module, diffscore path)
    biggan = net.biggan
    if isinstance(net.embed, GaussianFourierProjection):
        units.append(("fourier", None, "embed"))
    units += [("plain", None, "temb_in"), ("plain", None, "temb_out"), ("plain", None, "conv_in")]
    for i, level in enumerate(net.down):
        for j, (block, attn) in enumerate(zip(level.blocks, level.attns, strict=True)):
            units.append(("block", block, f"down.{i}.blocks.{j}"))
            if isinstance(attn, AttnBlock):
                units.append(("attn", attn, f"down.{i}.attns.{j}"))
        if level.resample is not None:
            units.append(("block" if biggan else "resample", level.resample, f"down.{i}.resample"))
            if net.progressive_input == "input_skip":
                units.append(("combine", level.pyramid, f"down.{i}.pyramid"))
            elif net.progressive_input == "residual":
                units.append(("resample", level.pyramid, f"down.{i}.pyramid"))
    units += [("block", net.mid_block0, "mid_block0"), ("attn", net.mid_attn, "mid_attn")]
    units += [("block", net.mid_block1, "mid_block1")]
    for k, level in enumerate(net.up):
        units += [("block", block, f"up.{k}.blocks.{j}") for j, block in enumerate(level.blocks)]
        units += [("attn", attn, f"up.{k}.attns.{j}") for j, attn in enumerate(level.attns)]
        if level.pyramid_norm is not None:
            units += [("plain", None, f"up.{k}.pyramid_norm"), ("plain", None, f"up.{k}.pyramid")]
        elif level.pyramid is not None:
            units.append(("resample", level.pyramid, f"up.{k}.pyramid"))
        if level.resample is not None:
            units.append(("block" if biggan else "resample", level.resample, f"up.{k}.resample"))
    if net.progressive != "output_skip":
        units += [("plain", None, "norm_out"), ("plain", None, "conv_out")]

    mapping: dict[str, Target] = {}
    for index, (kind, module, dst) in enumerate(units):
        src = f"all_modules.{index}"
        if kind == "fourier":
            mapping[f"{src}.W"] = (f"{dst}.W", "copy")
        elif kind == "plain":
            mapping.update(_params(src, _WB, dst))
        elif kind == "block":
            mapping.update(_resblock(src, dst, module, biggan))
        elif kind == "attn":
            mapping.update(_attn(src, dst))
        elif kind == "resample":
            mapping.update(_resample(src, dst, module))
        else:  # combine: layerspp.Combine's 1x1 conv
            mapping.update(_params(f"{src}.Conv_0", _WB, dst))
    return mapping


# ---- reading a checkpoint -----------------------------------------------------------------------------
def _weights(ckpt: Any, origin: str, weights: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict to convert (EMA substituted) without ``module.``, and facts for the metadata."""
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ConversionError(
            f"{origin}: not a score_sde_pytorch checkpoint (no 'model' state dict; holds {keys})"
        )
    state: dict[str, Tensor] = {}
    for key, value in ckpt["model"].items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ConversionError(f"{origin}: entry {key!r} of 'model' is not a named tensor")
        state[key.removeprefix("module.")] = value
    info: dict[str, Any] = {"step": ckpt.get("step") if isinstance(ckpt.get("step"), int) else None}
    if weights == "raw":
        info["weights"] = "raw"
        return state, info
    ema = ckpt.get("ema")
    if not isinstance(ema, Mapping) or not isinstance(ema.get("shadow_params"), (list, tuple)):
        raise ConversionError(
            f"{origin}: no EMA weights ('ema' with 'shadow_params'); weights='raw' converts the raw ones"
        )
    shadow = list(ema["shadow_params"])
    # model.parameters() order, trainable ones only: the state dict minus the sigmas buffer and the frozen
    # Fourier frequencies (models/ncsnpp.py registers `sigmas` as a buffer, W with requires_grad=False)
    trainable = [k for k in state if k not in ("sigmas", "all_modules.0.W")]
    if len(shadow) != len(trainable):
        raise ConversionError(
            f"{origin}: ema.shadow_params holds {len(shadow)} tensors but 'model' has {len(trainable)} "
            "trainable tensors"
        )
    for i, (key, value) in enumerate(zip(trainable, shadow, strict=True)):
        if not isinstance(value, Tensor) or value.shape != state[key].shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConversionError(
                f"{origin}: ema.shadow_params[{i}] has shape {got} but the parameter it stands for, "
                f"{key!r}, has {tuple(state[key].shape)}"
            )
        state[key] = value
    info.update(weights="ema", ema_decay=ema.get("decay"), ema_num_updates=ema.get("num_updates"))
    return state, info


def _check_sigmas(state: dict[str, Tensor], spec: dict[str, Any], origin: str) -> None:
    """The checkpoint's ``sigmas`` buffer against the config: it catches a config of the same architecture
    but another SDE (e.g. the church preset, sigma_max 380, for the bedroom checkpoint, 378)."""
    sigma_min, sigma_max, n = spec["sigmas"]
    sigmas = state.pop("sigmas", None)
    if sigmas is None:
        raise ConversionError(f"{origin}: tensor 'module.sigmas' is missing")
    expected = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    if sigmas.shape != expected.shape or not torch.allclose(sigmas.double(), expected, rtol=1e-5, atol=0):
        got = (
            f"{sigmas.numel()} values from {float(sigmas.flatten()[0]):g} to {float(sigmas.flatten()[-1]):g}"
        )
        raise ConversionError(
            f"{origin}: tensor 'module.sigmas' ({got}) does not match the config's sigma_max {sigma_max:g}, "
            f"sigma_min {sigma_min:g}, num_scales {n}: wrong config for this checkpoint?"
        )


def load_score_sde(
    checkpoint_path: str | os.PathLike,
    config: str | os.PathLike | Mapping[str, Any],
    weights: str = "ema",
) -> tuple[ScoreModel, dict[str, Any]]:
    """Convert a score_sde_pytorch checkpoint into a :class:`~diffscore.ScoreModel` (in memory, eval mode).

    Args:
        checkpoint_path: the ``.pth`` file (read with ``torch.load(weights_only=True)``).
        config: a released preset name, a JSON export of the checkpoint's config, or a mapping (see
            :func:`score_sde_spec`).
        weights: ``"ema"`` (the EMA weights, which the reference evaluates and samples with) or ``"raw"``.

    Returns:
        ``(model, metadata)``: the float32 model on the CPU; the metadata of :func:`score_sde_spec` plus
        ``source`` (format, file name, config, step, weights, EMA decay and update count).

    Raises:
        FileNotFoundError: no such file. ConversionError: a file that is not a readable checkpoint,
            pickles other objects than tensors, lacks / adds / mis-shapes a tensor (named), holds NaN, has
            another ``sigmas`` schedule than the config, or a config that does not convert.
        ValueError: ``weights`` is not "ema" or "raw".
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    spec = score_sde_spec(config)
    origin = repr(str(checkpoint_path))
    state, info = _weights(read_pickle_checkpoint(checkpoint_path), origin, weights)
    _check_sigmas(state, spec, origin)
    net = from_config(spec["net"])
    map_tensors(state, score_sde_mapping(net), net, origin)
    model = ScoreModel(net, spec["sde"], spec["parameterization"]).eval()
    config_name = (
        spec["name"] if spec["name"] in RELEASED or spec["name"] == "config" else Path(spec["name"]).name
    )
    source = dict(
        format="score_sde_pytorch", checkpoint=Path(checkpoint_path).name, config=config_name, **info
    )
    return model, {**spec["metadata"], "source": source}


def from_score_sde(
    checkpoint_path: str | os.PathLike,
    config: str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike,
    weights: str = "ema",
    overwrite: bool = False,
) -> Path:
    """Convert a score_sde_pytorch checkpoint and write it as a diffscore model directory.

    :func:`load_score_sde`, then :meth:`ScoreModel.save_pretrained` into ``out_dir`` (``config.json`` with
    the metadata, ``model.safetensors``); load it back with ``ScoreModel.from_pretrained(out_dir)``.

    Raises:
        ConversionError: as :func:`load_score_sde`, or ``out_dir`` already holds a model (unless
            ``overwrite``); nothing is written then.
        FileExistsError: ``out_dir`` holds a file of a model's names that diffscore did not write.
    """
    from ._common import check_out_dir

    check_out_dir(out_dir, overwrite)  # before the (possibly long) conversion
    model, metadata = load_score_sde(checkpoint_path, config, weights)
    return save(model, metadata, out_dir, overwrite)
