"""What both converters share: safe readers, the tensor mapping with its checks, the output directory.

Nothing here executes code from a file: ``.pth`` / ``.bin`` files are read with
``torch.load(weights_only=True)`` (tensors, numbers, strings and plain containers only; any other pickled
object is refused before it is built), ``.safetensors`` with safetensors and configs with ``json``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import read_json, read_tensors
from ..score import ScoreModel

__all__ = ["ConversionError", "read_pickle_checkpoint", "read_safetensors", "read_config", "map_tensors"]


class ConversionError(ValueError):
    """A file that does not convert exactly; the one-line message names the file and the tensor or field."""


def _first_line(err: BaseException) -> str:
    """The first line of an error message, cut after its first sentence when long."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return line.split(". ", 1)[0] if len(line) > 160 else line


def read_pickle_checkpoint(path: str | os.PathLike) -> Any:
    """Read a PyTorch ``.pth`` / ``.bin`` file with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        ConversionError: the file holds a pickled object other than tensors and plain containers (named;
            it is refused before it is constructed, so nothing from the file runs), or it is not a
            readable checkpoint (truncated, corrupted, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise ConversionError(
                f"{str(path)!r}: refused: the file holds a pickled Python object ({found.group(1)}), not "
                "only tensors and plain containers; nothing from it was run"
            ) from err
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
        raise ConversionError(
            f"{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupted?): "
            f"{_first_line(ValueError(detail))}"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors, ... for damaged files
        raise ConversionError(
            f"{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupted?): "
            f"{_first_line(err)}"
        ) from err


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file onto the CPU.

    Raises:
        FileNotFoundError: no such file. ConversionError: not a valid safetensors file (truncated, corrupt).
    """
    try:
        return read_tensors(path)
    except FileNotFoundError:
        raise
    except ValueError as err:
        raise ConversionError(_first_line(err)) from err


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object (a config file).

    Raises:
        FileNotFoundError: no such file. ConversionError: not valid JSON, or not a JSON object.
    """
    try:
        return read_json(path)
    except FileNotFoundError:
        raise
    except ValueError as err:
        raise ConversionError(_first_line(err)) from err


# ---- tensor mapping --------------------------------------------------------------------------------
#: A mapping target: (diffscore state-dict key, transform name).
Target = tuple[str, str]


def _nin(w: Tensor) -> Tensor:
    # score_sde's NIN stores an (in, out) matrix and computes einsum("bchw,co->bohw"): a 1x1 conv (out, in)
    return w.t()[:, :, None, None]


def _linear(w: Tensor) -> Tensor:
    # an nn.Linear (out, in) acting on channels is a 1x1 conv (out, in, 1, 1)
    return w[:, :, None, None]


#: transform name -> (function, number of dims the source must have, source shape from the target shape)
_TRANSFORMS: dict[str, tuple[Callable[[Tensor], Tensor] | None, int | None, Callable[[tuple], tuple]]] = {
    "copy": (None, None, lambda shape: shape),
    "nin": (_nin, 2, lambda shape: (shape[1], shape[0])),
    "linear": (_linear, 2, lambda shape: shape[:2]),
}


def map_tensors(
    source: Mapping[str, Any], mapping: Mapping[str, Target], net: nn.Module, origin: str
) -> None:
    """Load ``source`` into ``net`` through ``mapping`` (source key -> (target key, transform)), exactly.

    Every source tensor must be mapped and every mapped key present; every tensor must be floating point,
    finite and of the shape the architecture needs (after the transform). Values are cast to the
    network's dtype. Raises ConversionError naming ``origin`` and the first offending tensor.
    """
    missing = [k for k in mapping if k not in source]
    if missing:
        raise ConversionError(
            f"{origin}: tensor {missing[0]!r} is missing ({len(missing)} missing in all: wrong config for "
            "this checkpoint?)"
        )
    unexpected = [k for k in source if k not in mapping]
    if unexpected:
        raise ConversionError(
            f"{origin}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} without a place in the "
            "configured architecture: wrong config for this checkpoint?)"
        )
    own = net.state_dict()
    covered = {dst for dst, _ in mapping.values()}
    if covered != set(own):  # a bug in the mapping tables, not in the file
        raise RuntimeError(f"internal mapping error: {sorted(set(own) ^ covered)[:3]}")
    state = {}
    for src, (dst, how) in mapping.items():
        value = source[src]
        fn, ndim, source_shape = _TRANSFORMS[how]
        want = tuple(own[dst].shape)
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ConversionError(
                f"{origin}: tensor {src!r} must be a floating-point tensor, got "
                f"{value.dtype if isinstance(value, Tensor) else type(value).__name__}"
            )
        if (ndim is not None and value.ndim != ndim) or (fn(value) if fn else value).shape != want:
            raise ConversionError(
                f"{origin}: tensor {src!r} has shape {tuple(value.shape)}, the configured architecture "
                f"needs {source_shape(want)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ConversionError(f"{origin}: tensor {src!r} holds NaN or infinite values")
        state[dst] = (fn(value) if fn else value).to(own[dst].dtype)
    net.load_state_dict(state, strict=True)


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """The output directory: refused when it already holds a model unless ``overwrite`` (which replaces
    only the model diffscore wrote there; files of anybody else's stay, and one named like a model file
    is refused by :meth:`~diffscore.ScoreModel.save_pretrained`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"out_dir {str(out)!r} exists and is not a directory")
    taken = [n for n in ("config.json", "model.safetensors") if (out / n).exists()]
    if taken and not overwrite:
        raise ConversionError(
            f"out_dir {str(out)!r} already holds {taken[0]} (overwrite=True replaces a model diffscore wrote)"
        )
    return out


def save(model: ScoreModel, metadata: Mapping[str, Any], out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Write ``model`` and ``metadata`` as a diffscore model directory (``ScoreModel.save_pretrained``)."""
    out = check_out_dir(out_dir, overwrite)
    return model.save_pretrained(out, metadata=metadata)
