"""Training checkpoints: directories of safetensors files and a ``state.json``, written atomically.

A checkpoint is ``<out>/checkpoints/step_<8-digit step>``: one ``<group>.safetensors`` per tensor group
(model, EMA, optimizer state, best EMA) and ``state.json`` (step, config, RNG states as lists, metrics),
assembled with :func:`diffscore.io.atomic_directory`, so it is complete or absent. Nothing is pickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import read_json, read_tensors, verify_directory, write_directory, write_json, write_tensors

__all__ = [
    "CHECKPOINT_PREFIX",
    "save_checkpoint",
    "load_checkpoint",
    "check_state",
    "list_checkpoints",
    "latest_checkpoint",
    "optimizer_state_to_tensors",
    "optimizer_state_from_tensors",
    "generator_state",
    "set_generator_state",
]

#: Training checkpoints are directories named ``step_<8-digit step>`` under a run's ``checkpoints``.
CHECKPOINT_PREFIX = "step_"


# ---- optimizer and RNG state as tensors / JSON ------------------------------------------------------
def optimizer_state_to_tensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``"state.<param>.<name>"``) and a JSON part.

    The JSON part holds ``param_groups`` and any non-tensor per-parameter entries.
    """
    tensors: dict[str, Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                extra.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "extra": extra}


def optimizer_state_from_tensors(tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in info.get("extra", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": [dict(g) for g in info["param_groups"]]}


def generator_state(generator: torch.Generator) -> list[int]:
    """A torch.Generator's state as a list of byte values (JSON-serialisable)."""
    return generator.get_state().tolist()


def set_generator_state(generator: torch.Generator, state: list[int]) -> None:
    """Restore a state saved by :func:`generator_state`."""
    generator.set_state(torch.tensor(state, dtype=torch.uint8))


# ---- checkpoint directories -------------------------------------------------------------------------
def save_checkpoint(
    directory: str | os.PathLike, tensors: Mapping[str, Mapping[str, Tensor]], state: Mapping[str, Any]
) -> Path:
    """Write a training checkpoint directory atomically.

    Args:
        directory: destination, e.g. ``runs/digits/checkpoints/step_00001000``.
        tensors: group name -> named tensors; group ``g`` becomes ``<g>.safetensors``.
        state: JSON-serialisable training state, written to ``state.json`` (last, so a directory with
            ``state.json`` is complete even without the directory rename).

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    with write_directory(directory, kind="checkpoint") as tmp:
        for group, named in tensors.items():
            write_tensors(tmp / f"{group}.safetensors", named)
        write_json(tmp / "state.json", dict(state))
    return directory


def load_checkpoint(
    directory: str | os.PathLike, device: torch.device | str | None = None
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Read a directory written by :func:`save_checkpoint`: ``(tensor groups, state)``.

    Every file is checked against the directory's manifest (size and SHA-256,
    :func:`diffscore.io.verify_directory`) before it is read, and ``state.json`` against the schema of
    a training state (:func:`check_state`).

    Raises:
        FileNotFoundError: the directory or its ``state.json`` is missing.
        ValueError: a missing, damaged or corrupt file, or a state.json field of the wrong type or
            range (the message names the file and the field).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such checkpoint directory: {str(directory)!r}")
    files = verify_directory(directory, ("state.json",))
    state = check_state(read_json(directory / "state.json"), directory)
    names = sorted(files) if files else sorted(p.name for p in directory.iterdir())
    groups = {
        name[: -len(".safetensors")]: read_tensors(directory / name, device)
        for name in names
        if name.endswith(".safetensors") and not name.startswith(".")
    }
    return groups, state


def check_state(state: dict[str, Any], directory: str | os.PathLike) -> dict[str, Any]:
    """Check the fields of a checkpoint's ``state.json`` (types and ranges) and return it.

    ``step`` must be an int >= 0 and equal the step in the directory's name (``step_<step>``).

    Raises:
        ValueError: a missing field, or one of the wrong type or out of range (the message names the
            file and the field).
    """
    where = f"{str(Path(directory) / 'state.json')!r}"

    def need(obj: Any, key: str, kinds: tuple[type, ...], label: str | None = None) -> Any:
        label = label or key
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where} has no field {label!r}: not a complete training checkpoint")
        value = obj[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"{where}: field {label!r} must be {names}, got {value!r:.80}")
        return value

    if state.get("format") != "diffscore.train":
        raise ValueError(f"{where} is not a diffscore training checkpoint (no format 'diffscore.train')")
    step = need(state, "step", (int,))
    if step < 0:
        raise ValueError(f"{where}: field 'step' must be >= 0, got {step}")
    name = Path(directory).name
    if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
        if int(name[len(CHECKPOINT_PREFIX) :]) != step:
            raise ValueError(f"{where}: field 'step' is {step} but the directory is {name!r}")
    need(state, "config", (dict,))
    rng = need(state, "rng", (dict,))
    for key in ("noise", "torch"):
        values = need(rng, key, (list,), f"rng.{key}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256 for v in values):
            raise ValueError(f"{where}: field 'rng.{key}' must be a list of bytes (ints in 0..255)")
    need(need(state, "optimizer", (dict,)), "param_groups", (list,), "optimizer.param_groups")
    best = need(state, "best", (dict,))
    need(best, "val_bpd", (int, float, type(None)), "best.val_bpd")
    need(best, "step", (int,), "best.step")
    if need(state, "world_size", (int,)) < 1:
        raise ValueError(f"{where}: field 'world_size' must be >= 1")
    if "metrics_bytes" in state and need(state, "metrics_bytes", (int,)) < 0:
        raise ValueError(f"{where}: field 'metrics_bytes' must be >= 0")
    return state


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories ``step_*`` under ``root`` (those with a state.json), by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        suffix = p.name[len(CHECKPOINT_PREFIX) :]
        if p.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (p / "state.json").is_file():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None
