"""Checkpoint files: tensors in safetensors, everything else in JSON, every write atomic.

Nothing here uses pickle, so every file loads without executing code (the guarantee that
``torch.load(weights_only=True)`` gives for ``.pt`` files). Writes follow one rule: a file is written
to a temporary name in its destination folder, flushed to disk, then renamed over the destination with
``os.replace`` (atomic on POSIX and Windows), so a reader sees the old file or the new one, never a
part of one. A directory of files (a training checkpoint, a pretrained model) is assembled in a hidden
temporary directory next to its destination and renamed into place when complete: after a crash the
destination is complete or absent, and the leftovers (names starting with ".") are ignored by the
readers here and deleted by :func:`remove_temporaries`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = [
    "atomic_write",
    "atomic_directory",
    "write_json",
    "read_json",
    "write_tensors",
    "read_tensors",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "remove_temporaries",
    "optimizer_state_to_tensors",
    "optimizer_state_from_tensors",
    "generator_state",
    "set_generator_state",
    "CHECKPOINT_PREFIX",
]

#: Training checkpoints are directories named ``step_<8-digit step>`` under a run's ``checkpoints``.
CHECKPOINT_PREFIX = "step_"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file, which then replaces ``path``.

    The temporary file lies in the destination folder (created if missing), is fsync'ed, and is
    removed if ``write`` raises; the exception propagates and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Assemble a directory atomically: yields a hidden temporary directory to fill.

    On normal exit the temporary directory is renamed to ``path`` (an existing ``path`` is first moved
    aside and deleted after the rename); on an exception it is deleted and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. Raises TypeError for a non-JSON value."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file is not valid JSON or not a JSON object (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid JSON file ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(obj).__name__}")
    return obj


def write_tensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write named tensors to a safetensors file, atomically.

    Tensors are copied to contiguous CPU memory first (safetensors rejects shared or strided storage).
    """
    from safetensors.torch import save

    flat = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    data = save(flat, metadata=dict(metadata) if metadata else None)
    return atomic_write(path, lambda f: f.write(data))


def read_tensors(path: str | os.PathLike, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file onto ``device`` (default CPU).

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: the file is not a readable safetensors
            file (truncated, corrupt); both messages name the path.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file ({err})") from err
    if device is not None:
        tensors = {name: t.to(device) for name, t in tensors.items()}
    return tensors


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


# ---- training checkpoints ---------------------------------------------------------------------------
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
    with atomic_directory(directory) as tmp:
        for group, named in tensors.items():
            write_tensors(tmp / f"{group}.safetensors", named)
        write_json(tmp / "state.json", dict(state))
    return directory


def load_checkpoint(
    directory: str | os.PathLike, device: torch.device | str | None = None
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Read a directory written by :func:`save_checkpoint`: ``(tensor groups, state)``.

    Raises:
        FileNotFoundError: the directory or its ``state.json`` is missing.
        ValueError: a corrupt file (the message names it).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such checkpoint directory: {str(directory)!r}")
    state = read_json(directory / "state.json")
    groups = {
        p.name[: -len(".safetensors")]: read_tensors(p, device)
        for p in sorted(directory.glob("*.safetensors"))
        if not p.name.startswith(".")
    }
    return groups, state


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


def remove_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete the leftovers of writes that a killed process never finished, directly under ``root``.

    These are the hidden names this module creates and renames away on success: ``.<name>.*.tmp``
    (files of :func:`atomic_write`, directories of :func:`atomic_directory`) and ``.<name>.old-*``
    (a replaced directory awaiting deletion). Call it only while no other process writes under
    ``root`` (``diffscore train`` calls it on start, from the main process). Nothing else is touched;
    a missing ``root`` is fine.

    Returns:
        The paths removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        name = p.name
        if not name.startswith(".") or not (name.endswith(".tmp") or ".old-" in name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
