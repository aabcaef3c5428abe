"""Files diffscore writes: tensors in safetensors, everything else in JSON, every write atomic.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "read_tensor",
    "write_tensor",
    "remove_temporaries",
]


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


def read_tensor(path: str | os.PathLike, keys: Sequence[str] = ()) -> Tensor:
    """One tensor from a ``.safetensors`` file (its only tensor, or the first of ``keys`` present) or from
    a ``.pt`` file holding one plain tensor (read with ``torch.load(weights_only=True)``: no code runs).

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: another suffix, an unreadable file, a
            ``.pt`` that holds something other than a tensor, or no tensor under ``keys``; every
            message names the path.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if p.suffix == ".safetensors":
        tensors = read_tensors(p)
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        for key in keys:
            if key in tensors:
                return tensors[key]
        raise ValueError(f"{str(p)!r} holds {sorted(tensors)}; expected one tensor or one named {list(keys)}")
    if p.suffix == ".pt":
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{str(p)!r} is not a readable tensor file ({err})") from err
        if not isinstance(obj, Tensor):
            raise ValueError(f"{str(p)!r} must hold one plain tensor, got {type(obj).__name__}")
        return obj
    raise ValueError(f"{str(p)!r}: tensor files must end in .safetensors or .pt")


def write_tensor(path: str | os.PathLike, tensor: Tensor, key: str) -> Path:
    """Write ``tensor`` atomically to a ``.safetensors`` file (under ``key``) or a ``.pt`` file (a plain
    tensor). Raises ValueError for another suffix."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return write_tensors(p, {key: tensor})
    if p.suffix == ".pt":
        t = tensor.detach().cpu().contiguous()
        return atomic_write(p, lambda f: torch.save(t, f))
    raise ValueError(f"{str(p)!r}: tensor files must end in .safetensors or .pt")


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
