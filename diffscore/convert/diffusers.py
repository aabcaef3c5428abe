"""diffusers NCSN++ models (``ScoreSdeVePipeline``: ``UNet2DModel`` + ``ScoreSdeVeScheduler``) -> diffscore.

The hosted google/ncsnpp-* models are score_sde_pytorch's VE NCSN++ networks re-packaged
(diffusers' ``scripts/convert_ncsnpp_original_checkpoint_to_diffusers.py``): a ``UNet2DModel`` with
Fourier time embedding, ``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` (BigGAN blocks with FIR resampling
and the 1x1 input-pyramid conv ``skip_conv``) and ``SkipUpBlock2D`` / ``AttnSkipUpBlock2D`` (the output
pyramid ``skip_norm`` / ``skip_conv``). Its conventions, as ``UNet2DModel.forward`` and
``ScoreSdeVePipeline`` use them:

- the time argument IS the noise level sigma; the network embeds ``log sigma`` with Gaussian Fourier
  features ``[sin, cos](2 pi W log sigma)`` and divides its output by sigma: the output is the score at
  noise level sigma of data in [0, 1] (``center_input_sample`` maps them to [-1, 1] inside);
- the scheduler's noise levels are ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, t from 1 to
  ``sampling_eps`` in ``num_train_timesteps`` steps, with ``correct_steps`` Langevin steps at ``snr``.

So the converted model is ``VESDE(sigma_min, sigma_max, kernel="sigma")`` with the ``"scaled"``
parameterization and ``NCSNpp(time_shift=log sigma_min, time_scale=log(sigma_max / sigma_min))``, whose
embedding input at time t is ``log sigma(t)``.

Only the layouts that map exactly are accepted: every GroupNorm's group count is recomputed the way
diffusers builds it and compared with NCSN++'s min(C // 4, 32) (diffusers' attention blocks use 32 groups
and ``AttnSkipUpBlock2D`` an operator-precedence variant, which agree with it at >= 128 channels only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nets import NCSNpp, from_config
from ..nets.ncsnpp import AttnBlock
from ..score import ScoreModel
from ..sde import VESDE
from ._common import (
    ConversionError,
    Target,
    check_out_dir,
    map_tensors,
    read_config,
    read_pickle_checkpoint,
    read_safetensors,
    save,
)

__all__ = ["diffusers_spec", "diffusers_mapping", "load_diffusers", "from_diffusers"]

_DOWN = ("SkipDownBlock2D", "AttnSkipDownBlock2D")
_UP = ("SkipUpBlock2D", "AttnSkipUpBlock2D")
#: UNet2DModel config fields whose value must be exactly this for the network to be NCSN++
_REQUIRED = {
    "_class_name": "UNet2DModel",
    "time_embedding_type": "fourier",
    "act_fn": "silu",
    "norm_eps": 1e-6,
    "mid_block_type": "UNetMidBlock2D",
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "in_channels": 3,  # the skip blocks hard-code 3 channels (nn.Conv2d(3, ...) / (..., 3))
    "out_channels": 3,
}
#: older diffusers names of the attention projections and of the Fourier frequencies
_LEGACY = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _files(model_dir: Path) -> tuple[Path, Path, Path]:
    """(unet config, unet weights, scheduler config) of a pipeline folder or of its ``unet`` folder."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no such model directory: {str(model_dir)!r}")
    unet = model_dir / "unet" if (model_dir / "unet").is_dir() else model_dir
    root = model_dir if unet != model_dir else model_dir.parent
    scheduler = root / "scheduler" / "scheduler_config.json"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (unet / name).is_file():
            return unet / "config.json", unet / name, scheduler
    raise FileNotFoundError(
        f"{str(unet)!r} holds no diffusion_pytorch_model.safetensors (or .bin): not a diffusers UNet2DModel"
    )


def diffusers_spec(
    unet_config: Mapping[str, Any],
    scheduler_config: Mapping[str, Any],
    origin: str = "unet config",
    scheduler_origin: str = "scheduler config",
) -> dict[str, Any]:
    """Translate a ``UNet2DModel`` config and its ``ScoreSdeVeScheduler`` config into diffscore terms.

    Every GroupNorm's group count, as diffusers builds it from this config, is checked against the
    NCSN++ one (min(C // 4, 32)).

    Returns:
        ``{"net": NCSNpp config, "sde": VESDE(kernel="sigma"), "parameterization": "scaled", "metadata"}``.

    Raises:
        ConversionError: a field with a value that NCSN++ cannot reproduce, named with ``origin`` (or
            ``scheduler_origin`` for the scheduler's fields).
    """
    cfg = dict(unet_config)
    boc, down, up, size, attn = _unet_layout(cfg, origin)
    sched = _scheduler(dict(scheduler_config), scheduler_origin)
    sigma_min, sigma_max, nf = sched.pop("sigma_min"), sched.pop("sigma_max"), boc[0]
    net = dict(
        name="ncsnpp",
        channels=3,
        image_size=size,
        nf=nf,
        ch_mult=[c // nf for c in boc],
        num_res_blocks=int(cfg.get("layers_per_block", 2)),
        attn_resolutions=attn,
        dropout=float(cfg.get("dropout", 0.0)),
        resblock_type="biggan",
        fir=True,
        fir_kernel=[1.0, 3.0, 3.0, 1.0],
        resamp_with_conv=True,
        skip_rescale=True,
        progressive="output_skip",
        progressive_input="input_skip",
        progressive_combine="sum",
        embedding_type="fourier",
        fourier_scale=16.0,  # UNet2DModel's GaussianFourierProjection(scale=16); the frequencies are loaded
        time_scale=math.log(sigma_max / sigma_min),  # embeds log sigma(t), as diffusers embeds log sigma
        time_shift=math.log(sigma_min),
        init_scale=0.0,
        center_input=bool(cfg.get("center_input_sample", False)),
    )
    with torch.device("meta"):  # the architecture only: no memory, no init work
        layout = from_config(net)
    ours = {name: mod.num_groups for name, mod in _norms(layout, diffusers_mapping(layout)).items()}
    for name, theirs in _diffusers_groups(cfg, boc, down, up).items():
        if ours.get(name, theirs) != theirs:
            raise ConversionError(
                f"{origin}: {name} normalises in {theirs} groups, NCSN++ in {ours[name]}: this layout "
                "does not map exactly"
            )
    metadata = dict(
        image_shape=[3, size, size],
        num_bins=256,
        data_range=[0.0, 1.0],  # ScoreSdeVePipeline's output space (it clamps samples to [0, 1])
        likelihood_eps=1e-5,
        sampling=sched,
    )
    sde = VESDE(sigma_min, sigma_max, kernel="sigma")
    return dict(net=net, sde=sde, parameterization="scaled", metadata=metadata)


def _unet_layout(
    cfg: Mapping[str, Any], origin: str
) -> tuple[list[int], list[str], list[str], int, list[int]]:
    """(block_out_channels, down types, up types, sample size, attention resolutions) of an NCSN++
    UNet2DModel config; ConversionError for anything NCSN++ cannot reproduce."""
    for key, value in _REQUIRED.items():
        if key not in cfg and value is not None:
            raise ConversionError(f"{origin}: field {key} is missing")
        got = cfg.get(key)
        if got != value and not (
            isinstance(value, float) and isinstance(got, float) and math.isclose(got, value)
        ):
            raise ConversionError(f"{origin}: {key} is {got!r}; only {value!r} converts to NCSN++")
    if not math.isclose(float(cfg.get("mid_block_scale_factor", 1.0)), math.sqrt(2.0)):
        raise ConversionError(
            f"{origin}: mid_block_scale_factor is {cfg.get('mid_block_scale_factor')!r}; NCSN++ (skip blocks "
            "divide by sqrt(2)) needs sqrt(2)"
        )
    boc = [int(c) for c in cfg.get("block_out_channels", [])]
    down, up = list(cfg.get("down_block_types", [])), list(cfg.get("up_block_types", []))
    if not boc or len(down) != len(boc) or len(up) != len(boc):
        raise ConversionError(f"{origin}: block_out_channels, down_block_types and up_block_types must match")
    bad = [b for b in down if b not in _DOWN] + [b for b in up if b not in _UP]
    if bad:
        raise ConversionError(
            f"{origin}: block type {bad[0]!r} is not an NCSN++ block (expected {_DOWN + _UP})"
        )
    if any(c % boc[0] for c in boc):
        raise ConversionError(f"{origin}: block_out_channels {boc} are not multiples of the first")
    if cfg.get("time_embedding_dim") not in (None, 4 * boc[0]):
        raise ConversionError(
            f"{origin}: time_embedding_dim must be 4 * block_out_channels[0] = {4 * boc[0]}"
        )
    size, n = cfg.get("sample_size"), len(boc)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size % 2 ** (n - 1):
        raise ConversionError(
            f"{origin}: sample_size must be a square size divisible by 2^levels, got {size!r}"
        )
    attn_down = {size // 2**i for i, b in enumerate(down) if b.startswith("Attn")}
    attn_up = {size // 2 ** (n - 1 - k) for k, b in enumerate(up) if b.startswith("Attn")}
    if attn_down != attn_up:
        raise ConversionError(
            f"{origin}: attention at resolutions {sorted(attn_down)} going down but {sorted(attn_up)} going "
            "up; NCSN++ places it on both paths"
        )
    heads_dim = cfg.get("attention_head_dim")
    attn_channels = [boc[i] for i, b in enumerate(down) if b.startswith("Attn")] + [boc[-1]]
    if heads_dim is not None and any(c != heads_dim for c in attn_channels):
        raise ConversionError(
            f"{origin}: attention_head_dim {heads_dim} makes multi-head attention; NCSN++ has one"
        )
    return boc, down, up, size, sorted(attn_down, reverse=True)


def _scheduler(scheduler: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """sigma_min, sigma_max and the PC sampler options of a ScoreSdeVeScheduler config.

    ScoreSdeVePipeline draws from N(0, sigma_max^2) and walks the noise levels
    sigma_min (sigma_max / sigma_min)^t, t from 1 to ``sampling_eps`` (2000 steps by default; here
    ``num_train_timesteps``), with ``correct_steps`` Langevin steps at ``snr`` (before each
    reverse-diffusion step; diffscore's PC runs them after it, as score_sde_pytorch does) and returns the
    last mean (final denoising).
    """
    if scheduler.get("_class_name") != "ScoreSdeVeScheduler":
        raise ConversionError(
            f"{origin}: the scheduler is {scheduler.get('_class_name')!r}, not ScoreSdeVeScheduler"
        )
    try:
        out = dict(sigma_min=float(scheduler["sigma_min"]), sigma_max=float(scheduler["sigma_max"]))
        out.update(
            method="pc", predictor="reverse_diffusion", corrector="langevin", snr=float(scheduler["snr"])
        )
        out.update(
            n_steps=int(scheduler.get("correct_steps", 1)), num_steps=int(scheduler["num_train_timesteps"])
        )
        out.update(eps=float(scheduler["sampling_eps"]), denoise=True)
    except (KeyError, TypeError, ValueError) as err:
        raise ConversionError(f"{origin}: field {err} is missing or not a number") from err
    if not 0 < out["sigma_min"] < out["sigma_max"]:
        raise ConversionError(
            f"{origin}: need 0 < sigma_min < sigma_max, got {out['sigma_min']}, {out['sigma_max']}"
        )
    return out


def _diffusers_groups(
    cfg: Mapping[str, Any], boc: list[int], down: list[str], up: list[str]
) -> dict[str, int]:
    """GroupNorm prefix -> the group count diffusers gives it (unet_2d.py, unet_2d_blocks.py)."""
    g = lambda c: min(c // 4, 32)  # noqa: E731
    groups: dict[str, int] = {}
    layers, n = int(cfg.get("layers_per_block", 2)), len(boc)
    norm_groups = cfg.get("norm_num_groups")
    out = boc[0]
    for i, kind in enumerate(down):
        cin, out = out, boc[i]
        for j in range(layers):
            c = cin if j == 0 else out
            groups[f"down_blocks.{i}.resnets.{j}.norm1"], groups[f"down_blocks.{i}.resnets.{j}.norm2"] = (
                g(c),
                g(out),
            )
            if kind.startswith("Attn"):
                groups[f"down_blocks.{i}.attentions.{j}.group_norm"] = 32
        if i < n - 1:
            groups[f"down_blocks.{i}.resnet_down.norm1"] = groups[f"down_blocks.{i}.resnet_down.norm2"] = g(
                out
            )
    mid = norm_groups if norm_groups is not None else g(boc[-1])
    for name in ("resnets.0.norm1", "resnets.0.norm2", "resnets.1.norm1", "resnets.1.norm2"):
        groups[f"mid_block.{name}"] = mid
    groups["mid_block.attentions.0.group_norm"] = cfg.get("attn_norm_num_groups") or mid
    rev = boc[::-1]
    out = rev[0]
    for k, kind in enumerate(up):
        prev, out, cin = out, rev[k], rev[min(k + 1, n - 1)]
        for j in range(layers + 1):
            skip = cin if j == layers else out
            res_in = prev if j == 0 else out
            # AttnSkipUpBlock2D: min(res_in + skip // 4, 32) (sic), SkipUpBlock2D: g(res_in + skip)
            first = min(res_in + skip // 4, 32) if kind.startswith("Attn") else g(res_in + skip)
            groups[f"up_blocks.{k}.resnets.{j}.norm1"], groups[f"up_blocks.{k}.resnets.{j}.norm2"] = (
                first,
                g(out),
            )
        if kind.startswith("Attn"):
            groups[f"up_blocks.{k}.attentions.0.group_norm"] = 32
        if k < n - 1:
            groups[f"up_blocks.{k}.resnet_up.norm1"] = groups[f"up_blocks.{k}.resnet_up.norm2"] = g(out)
            groups[f"up_blocks.{k}.skip_norm"] = g(out)
    groups["conv_norm_out"] = norm_groups if norm_groups is not None else g(boc[0])
    return groups


_WB = {"weight": "weight", "bias": "bias"}
_RESNET = {
    "norm1": "norm0",
    "conv1": "conv0",
    "time_emb_proj": "temb_proj",
    "norm2": "norm1",
    "conv2": "conv1",
}


def _module(src: str, dst: str) -> dict[str, Target]:
    return {f"{src}.{p}": (f"{dst}.{p}", "copy") for p in _WB}


def _resnet(src: str, dst: str, has_shortcut: bool) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for theirs, ours in _RESNET.items():
        out.update(_module(f"{src}.{theirs}", f"{dst}.{ours}"))
    if has_shortcut:
        out.update(_module(f"{src}.conv_shortcut", f"{dst}.shortcut"))
    return out


def _attention(src: str, dst: str) -> dict[str, Target]:
    out = _module(f"{src}.group_norm", f"{dst}.norm")
    for theirs, ours in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        out[f"{src}.{theirs}.weight"] = (f"{dst}.{ours}.weight", "linear")
        out[f"{src}.{theirs}.bias"] = (f"{dst}.{ours}.bias", "copy")
    return out


def diffusers_mapping(net: NCSNpp) -> dict[str, Target]:
    """``UNet2DModel`` state-dict key -> (diffscore key, transform) for an output_skip / input_skip NCSN++."""
    m: dict[str, Target] = {"time_proj.weight": ("embed.W", "copy")}
    m.update(_module("time_embedding.linear_1", "temb_in"))
    m.update(_module("time_embedding.linear_2", "temb_out"))
    m.update(_module("conv_in", "conv_in"))
    for i, level in enumerate(net.down):
        for j, (block, attn) in enumerate(zip(level.blocks, level.attns, strict=True)):
            m.update(
                _resnet(f"down_blocks.{i}.resnets.{j}", f"down.{i}.blocks.{j}", block.shortcut is not None)
            )
            if isinstance(attn, AttnBlock):
                m.update(_attention(f"down_blocks.{i}.attentions.{j}", f"down.{i}.attns.{j}"))
        if level.resample is not None:
            m.update(_resnet(f"down_blocks.{i}.resnet_down", f"down.{i}.resample", True))
            m.update(_module(f"down_blocks.{i}.skip_conv", f"down.{i}.pyramid"))
    m.update(_resnet("mid_block.resnets.0", "mid_block0", False))
    m.update(_attention("mid_block.attentions.0", "mid_attn"))
    m.update(_resnet("mid_block.resnets.1", "mid_block1", False))
    for k, level in enumerate(net.up):
        for j, block in enumerate(level.blocks):
            m.update(_resnet(f"up_blocks.{k}.resnets.{j}", f"up.{k}.blocks.{j}", block.shortcut is not None))
        for j in range(len(level.attns)):
            m.update(_attention(f"up_blocks.{k}.attentions.{j}", f"up.{k}.attns.{j}"))
        if level.resample is not None:
            m.update(_module(f"up_blocks.{k}.skip_norm", f"up.{k}.pyramid_norm"))
            m.update(_module(f"up_blocks.{k}.skip_conv", f"up.{k}.pyramid"))
            m.update(_resnet(f"up_blocks.{k}.resnet_up", f"up.{k}.resample", True))
        else:  # the last up level's output-pyramid head is UNet2DModel's own output head
            m.update(_module("conv_norm_out", f"up.{k}.pyramid_norm"))
            m.update(_module("conv_out", f"up.{k}.pyramid"))
    return m


def _rename_legacy(state: Mapping[str, Any], origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ConversionError(f"{origin}: entry {key!r} is not a named tensor")
        new = "time_proj.weight" if key == "time_proj.W" else key
        if ".attentions." in new:
            for old, renamed in _LEGACY.items():
                new = new.replace(old, renamed)
        if new in out:
            raise ConversionError(f"{origin}: tensor {key!r} duplicates {new!r}")
        out[new] = value
    return out


def load_diffusers(model_dir: str | os.PathLike) -> tuple[ScoreModel, dict[str, Any]]:
    """Convert a diffusers NCSN++ model (``ScoreSdeVePipeline`` folder) into a :class:`~diffscore.ScoreModel`.

    Args:
        model_dir: the pipeline folder (``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``
            and ``scheduler/scheduler_config.json``, as google/ncsnpp-* are laid out), or its ``unet``
            folder with the ``scheduler`` folder beside it. A ``.bin`` weights file is read with
            ``torch.load(weights_only=True)`` when there is no ``.safetensors``.

    Returns:
        ``(model, metadata)``: the float32 model in eval mode on the CPU, and metadata for
        ``save_pretrained`` (image shape, 256 bins on [0, 1], the scheduler's PC settings, ``source``).

    Raises:
        FileNotFoundError: a missing folder or file (named). ConversionError: a config that is not an
            NCSN++ layout or a group count NCSN++ does not use (named), an unreadable or pickled-object
            weights file, or a missing, unexpected, mis-shaped or non-finite tensor (named).
    """
    unet_config_path, weights_path, scheduler_path = _files(Path(model_dir))
    if not scheduler_path.is_file():
        raise FileNotFoundError(
            f"no scheduler config {str(scheduler_path)!r} (sigma_min, sigma_max come from the "
            "ScoreSdeVeScheduler)"
        )
    unet_config = read_config(unet_config_path)
    spec = diffusers_spec(
        unet_config, read_config(scheduler_path), repr(str(unet_config_path)), repr(str(scheduler_path))
    )
    net = from_config(spec["net"])
    origin = repr(str(weights_path))
    if weights_path.suffix == ".safetensors":
        state: Mapping[str, Any] = read_safetensors(weights_path)
    else:
        state = read_pickle_checkpoint(weights_path)
        if not isinstance(state, Mapping):
            raise ConversionError(f"{origin}: expected a state dict, got {type(state).__name__}")
    map_tensors(_rename_legacy(state, origin), diffusers_mapping(net), net, origin)
    model = ScoreModel(net, spec["sde"], spec["parameterization"]).eval()
    source = dict(
        format="diffusers",
        model_dir=Path(model_dir).name,
        diffusers_version=unet_config.get("_diffusers_version"),
    )
    return model, {**spec["metadata"], "source": source}


def _norms(net: NCSNpp, mapping: Mapping[str, Target]) -> dict[str, Any]:
    """diffusers GroupNorm prefix -> the diffscore GroupNorm it maps to."""
    modules = dict(net.named_modules())
    out = {}
    for src, (dst, _) in mapping.items():
        if src.endswith(".weight"):
            mod = modules.get(dst.rsplit(".", 1)[0])
            if isinstance(mod, nn.GroupNorm):
                out[src.rsplit(".", 1)[0]] = mod
    return out


def from_diffusers(model_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert a diffusers NCSN++ model (:func:`load_diffusers`) and write it as a diffscore model directory.

    Raises:
        ConversionError: as :func:`load_diffusers`, or ``out_dir`` already holds a model (unless
            ``overwrite``); nothing is written then.
        FileExistsError: ``out_dir`` holds a file of a model's names that diffscore did not write.
    """
    check_out_dir(out_dir, overwrite)
    model, metadata = load_diffusers(model_dir)
    return save(model, metadata, out_dir, overwrite)
