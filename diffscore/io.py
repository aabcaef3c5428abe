"""Files diffscore writes: tensors in safetensors, everything else in JSON, every write atomic, and
nothing of anybody else's ever deleted or overwritten.

Nothing here uses pickle, so every file loads without executing code (the guarantee that
``torch.load(weights_only=True)`` gives for ``.pt`` files).

Atomic writes: a file is written to a hidden temporary name in its destination folder, flushed to
disk, then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows), so a reader
sees the old file or the new one, never a part of one. Temporary names end in ``.diffscore-tmp``
(deleted ones in ``.diffscore-trash``); :func:`remove_temporaries` touches no other name.

Ownership: a directory that diffscore manages (a model, a checkpoint, a training run) holds a manifest,
``.diffscore.json``, naming what diffscore wrote there, with the size and SHA-256 of every file of a
model or checkpoint. diffscore replaces or deletes only what a manifest names; anything else in the
directory (a user's notes, hidden files) is left alone, and a write that would replace a file that
diffscore did not write raises FileExistsError instead. Files written at a path the user names (a PNG
grid, a tensor file) carry a mark instead (PNG text ``Software: diffscore``, safetensors metadata
``writer: diffscore``); :func:`check_output` refuses to replace an unmarked file.

Directories of files (:func:`write_directory`) are assembled in a hidden staging directory with their
manifest, written last. A new directory is then renamed into place whole. An existing one gets its
files replaced one by one and its manifest last; if the process dies in between, the staging
directory (manifest included) is still there and :func:`recover_directory` finishes the job, so a
directory never ends up without a complete model in it. :func:`verify_directory` checks every file
against the manifest before a model or checkpoint is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = [
    "MANIFEST",
    "atomic_write",
    "write_directory",
    "verify_directory",
    "recover_directory",
    "read_manifest",
    "claim",
    "owns",
    "remove_owned",
    "check_removable",
    "check_directory",
    "manifest_kind",
    "check_output",
    "written_by_diffscore",
    "write_json",
    "read_json",
    "write_tensors",
    "read_tensors",
    "tensor_shapes",
    "read_tensor",
    "write_tensor",
    "remove_temporaries",
    "lock_directory",
    "LOCK",
]

#: The manifest of a directory that diffscore manages: what diffscore wrote there.
MANIFEST = ".diffscore.json"
_TMP = ".diffscore-tmp"
_TRASH = ".diffscore-trash"
#: The advisory lock file of a directory that one process at a time may write (a training run).
LOCK = ".diffscore.lock"
#: Limits on what the readers accept: bytes of a JSON file and its nesting depth.
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64


def _tmp_name(path: Path, suffix: str = _TMP) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex}{suffix}"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file, which then replaces ``path``.

    The temporary file lies in the destination folder (created if missing), is fsync'ed, and is
    removed if ``write`` raises; the exception propagates and ``path`` keeps its old content. This is
    the mechanism only: callers decide whether ``path`` may be replaced (:func:`claim`, :func:`check_output`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---- manifests ----------------------------------------------------------------------------------------
def _read_manifest_file(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {}
    obj = read_json(path)
    if obj.get("format") != "diffscore.files" or not isinstance(obj.get("files"), dict):
        raise ValueError(f"{str(path)!r} is not a diffscore manifest")
    return obj


def read_manifest(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{name: entry}`` of what diffscore wrote in ``directory`` ({} when it has no manifest).

    An entry holds ``size`` and ``sha256`` for a file whose content is fixed (models, checkpoints) and is
    empty for a name diffscore owns without fixing its content (a log, a sub-directory).

    Raises:
        ValueError: the manifest is not readable (the message names it).
    """
    files = _read_manifest_file(directory).get("files", {})
    return {str(k): dict(v) if isinstance(v, dict) else {} for k, v in files.items()}


def manifest_kind(directory: str | os.PathLike) -> str | None:
    """What a directory written by :func:`write_directory` holds (its ``kind``: "score_model",
    "checkpoint", ...); None for a folder of claimed names (a training run) or without a manifest."""
    kind = _read_manifest_file(directory).get("kind")
    return kind if isinstance(kind, str) else None


def _write_manifest(directory: Path, files: Mapping[str, Mapping[str, Any]], kind: str | None = None) -> None:
    """Write the manifest of ``directory``; ``kind`` None keeps the kind it had."""
    kind = kind if kind is not None else manifest_kind(directory)
    obj: dict[str, Any] = {"format": "diffscore.files", "version": 1}
    if kind is not None:
        obj["kind"] = kind
    obj["files"] = {k: dict(v) for k, v in sorted(files.items())}
    write_json(directory / MANIFEST, obj)


def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def owns(path: str | os.PathLike) -> bool:
    """Whether the manifest of ``path``'s folder names ``path`` (diffscore wrote it)."""
    path = Path(path)
    return path.name in read_manifest(path.parent)


def claim(path: str | os.PathLike) -> Path:
    """Record in its folder's manifest that diffscore writes ``path`` (a file or folder name there).

    Call it before writing a name of a managed folder (a training run's ``train_config.json``,
    ``metrics.jsonl``, ``model``...). Claiming a name diffscore already owns is a no-op.

    Raises:
        FileExistsError: ``path`` exists and diffscore did not write it (the message names it).
    """
    path = Path(path)
    files = read_manifest(path.parent)
    if path.name in files:
        return path
    if path.exists() or path.is_symlink():
        raise FileExistsError(
            f"{str(path)!r} exists and was not written by diffscore; move it away or choose another folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_manifest(path.parent, {**files, path.name: {}})
    return path


def remove_owned(path: str | os.PathLike) -> None:
    """Delete ``path`` if diffscore owns it (its folder's manifest names it), and unlist it.

    The name is first renamed to a hidden ``.diffscore-trash`` name (atomic), then deleted, so an
    interruption never leaves half of a directory under its real name. Anything not owned is left alone.

    Raises:
        FileExistsError: ``path`` is a directory holding something diffscore did not write
            (:func:`check_removable`); nothing is changed.
    """
    path = Path(path)
    files = read_manifest(path.parent)
    if path.name not in files:
        return
    check_removable(path)
    trash = None
    if path.exists() or path.is_symlink():
        trash = _tmp_name(path, _TRASH)
        os.replace(path, trash)
    del files[path.name]
    _write_manifest(path.parent, files)
    if trash is not None:
        _delete(trash)


def check_removable(path: str | os.PathLike) -> None:
    """Raise FileExistsError naming the first file under directory ``path`` that diffscore did not
    write (not named by the manifest of its folder, at any depth); a file, or a directory holding only
    diffscore's files and temporaries, passes."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return
    owned = read_manifest(path)
    for child in sorted(path.iterdir()):
        if child.name == MANIFEST or child.name.endswith((_TMP, _TRASH)):
            continue
        if child.name not in owned:
            raise FileExistsError(
                f"{str(child)!r} was not written by diffscore; move it out of {str(path)!r} first"
            )
        check_removable(child)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---- directories written as a whole -----------------------------------------------------------------
def _foreign(path: Path, names: Sequence[str]) -> list[str]:
    """The names among ``names`` present in ``path`` that its manifest does not list."""
    owned = read_manifest(path)
    return [n for n in names if n not in owned and (path / n).exists()]


@contextmanager
def write_directory(path: str | os.PathLike, names: Sequence[str] = (), *, kind: str) -> Iterator[Path]:
    """Write a directory of files (a model, a checkpoint) without touching anything else in it.

    Yields a hidden staging directory to fill. On normal exit its files get a manifest (size and SHA-256
    of each) and are committed: a new ``path`` is the staging directory renamed (atomic); into an
    existing ``path`` each file is moved over its namesake (atomic per file) and the manifest last,
    files that the old manifest listed and the new one does not are deleted, and every other file in
    ``path`` is left as it was. On an exception the staging directory is deleted and ``path`` is untouched.

    Args:
        path: the directory.
        names: the file names that will be written, checked against ``path`` before any work is done
            (the files found in the staging directory are checked again at commit).
        kind: what the directory holds ("score_model", "checkpoint", ...), kept in the manifest: an
            existing directory of diffscore's files is replaced only by one of the same kind, so a
            model is never written over a training run, a checkpoint or a model of another kind.

    Raises:
        FileExistsError: ``path`` holds a file of the same name that diffscore did not write, holds
            diffscore's files of another kind, or is not a directory (checked before anything is written).
    """
    path = check_directory(path, names, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _tmp_name(path)
    staging.mkdir(mode=0o755)
    try:
        yield staging
        files = sorted(p.name for p in staging.iterdir() if p.name != MANIFEST)
        if path.is_dir() and (clash := _foreign(path, files)):
            raise FileExistsError(f"{str(path / clash[0])!r} exists and was not written by diffscore")
        _write_manifest(staging, {name: _file_entry(staging / name) for name in files}, kind)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _commit(staging, path)


def check_directory(path: str | os.PathLike, names: Sequence[str] = (), *, kind: str) -> Path:
    """The checks :func:`write_directory` makes before it writes, for callers that want them before
    long work (training): ``path`` is absent, or a directory with no file of ``names`` that diffscore
    did not write and no diffscore files of another ``kind``. Returns ``path`` as a Path.

    Raises:
        FileExistsError: as :func:`write_directory`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a directory")
    if not path.is_dir():
        return path
    held = manifest_kind(path)
    if read_manifest(path) and held != kind:
        what = held.replace("_", " ") if held else "a training run or an older diffscore folder"
        raise FileExistsError(
            f"{str(path)!r} holds diffscore's files of another kind ({what}), not a "
            f"{kind.replace('_', ' ')}; choose another folder"
        )
    if clash := _foreign(path, names):
        raise FileExistsError(f"{str(path / clash[0])!r} exists and was not written by diffscore")
    return path


def _commit(staging: Path, path: Path) -> None:
    """Move a complete staging directory (manifest included) into ``path``; safe to repeat after a crash."""
    if not path.exists():
        os.replace(staging, path)
        return
    old = read_manifest(path)
    new = read_manifest(staging)
    for name in new:
        if (staging / name).exists():
            os.replace(staging / name, path / name)
    os.replace(staging / MANIFEST, path / MANIFEST)
    for name in old:
        if name not in new:
            _delete(path / name)
    shutil.rmtree(staging, ignore_errors=True)


def recover_directory(path: str | os.PathLike) -> bool:
    """Finish a :func:`write_directory` commit into ``path`` that a killed process left half done.

    A staging directory of ``path`` that holds its manifest was complete when the commit began, so
    moving its remaining files and then its manifest into ``path`` finishes the write. Staging
    directories without a manifest are left for :func:`remove_temporaries`.

    Returns:
        Whether a commit was finished.
    """
    path = Path(path)
    done = False
    if not path.parent.is_dir():
        return done
    for staging in sorted(path.parent.glob(f".{path.name}.*{_TMP}")):
        if staging.is_dir() and (staging / MANIFEST).is_file():
            _commit(staging, path)
            done = True
    return done


def verify_directory(path: str | os.PathLike, required: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Check the files of a directory written by :func:`write_directory` against its manifest.

    Every file the manifest lists must exist with its recorded size (checked first, so an oversized or
    truncated file is refused before it is read) and SHA-256. A directory without a manifest (written
    by hand or by another program) is accepted as it is. An interrupted commit is first finished
    (:func:`recover_directory`).

    Args:
        required: file names that must be present (and listed, when there is a manifest).

    Returns:
        The manifest ({} when there is none).

    Raises:
        FileNotFoundError: ``path`` or a required file is missing.
        ValueError: a listed file is missing, has another size or another SHA-256; the message names it.
    """
    path = Path(path)
    if not path.is_dir():
        recover_directory(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no such directory: {str(path)!r}")
    files = read_manifest(path)
    if files and _mismatch(path, files) and recover_directory(path):
        files = read_manifest(path)
    for name in required:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path / name)!r} is missing")
        if files and name not in files:
            raise ValueError(f"{str(path / name)!r} is not listed in {MANIFEST}: not written by diffscore")
    problem = _mismatch(path, files) if files else None
    if problem:
        raise ValueError(problem)
    return files


def _mismatch(path: Path, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    for name, entry in files.items():
        if "size" not in entry:
            continue
        f = path / name
        if not f.is_file():
            return f"{str(f)!r} is missing (listed in {MANIFEST}): the directory is damaged"
        if f.stat().st_size != entry["size"]:
            return (
                f"{str(f)!r} has {f.stat().st_size} bytes but {MANIFEST} records {entry['size']}: "
                "the file is damaged or was replaced"
            )
    for name, entry in files.items():
        if "sha256" in entry and _file_entry(path / name)["sha256"] != entry["sha256"]:
            return f"{str(path / name)!r} does not match its SHA-256 in {MANIFEST}: the file is damaged"
    return None


# ---- files at paths the user names ------------------------------------------------------------------
def written_by_diffscore(path: str | os.PathLike) -> bool:
    """Whether ``path`` carries diffscore's mark (PNG text ``Software: diffscore``, safetensors metadata
    ``writer: diffscore``) or is named by its folder's manifest."""
    path = Path(path)
    if owns(path):
        return True
    try:
        if path.suffix == ".safetensors":
            return _safetensors_header(path)[0].get("__metadata__", {}).get("writer") == "diffscore"
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return getattr(im, "text", {}).get("Software") == "diffscore"
    except (OSError, ValueError, SyntaxError):
        return False
    return False


def check_output(path: str | os.PathLike, suffixes: Sequence[str] = (), flag: str = "output") -> Path:
    """Check, before any work, that ``path`` may be written: its suffix is one of ``suffixes`` (when
    given) and it is absent or written by diffscore (:func:`written_by_diffscore`).

    Raises:
        ValueError: a wrong suffix. FileExistsError: ``path`` exists and diffscore did not write it, is
            a file of a model or checkpoint folder (its manifest fixes its content), or is a directory.
            Both messages name ``flag`` and the path.
    """
    p = Path(path).expanduser()
    if suffixes and p.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {str(p)!r} must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise FileExistsError(f"{flag} {str(p)!r} is a directory")
    if read_manifest(p.parent).get(p.name):  # listed with its size and hash: part of a model or checkpoint
        raise FileExistsError(
            f"{flag} {str(p)!r} is a file of the diffscore folder {str(p.parent)!r} (a model or checkpoint); "
            "choose another path"
        )
    if (p.exists() or p.is_symlink()) and not written_by_diffscore(p):
        why = (
            "a .pt file carries no mark of its writer, so diffscore never replaces one"
            if p.suffix == ".pt"
            else "it was not written by diffscore"
        )
        raise FileExistsError(f"{flag} {str(p)!r} exists and {why}; choose another path or delete it")
    return p


# ---- JSON ---------------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. Raises TypeError for a non-JSON value."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, counted level by level (no recursion) up to the limit + 1."""
    depth, level = 0, [obj]
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        children = []
        for o in level:
            if isinstance(o, dict):
                children.extend(o.values())
            elif isinstance(o, list):
                children.extend(o)
        level = children
    return depth


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """Read a JSON object of at most ``max_bytes`` bytes and ``MAX_JSON_DEPTH`` levels of nesting.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file is larger than ``max_bytes``, not valid JSON, nested too deeply, or not a
            JSON object (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{str(path)!r} has {size} bytes; a diffscore JSON file has at most {max_bytes}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{str(path)!r} is nested too deeply to be a diffscore JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid JSON file ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(obj).__name__}")
    if _depth(obj) > MAX_JSON_DEPTH:
        raise ValueError(f"{str(path)!r} is nested more than {MAX_JSON_DEPTH} levels deep")
    return obj


# ---- tensors ------------------------------------------------------------------------------------------
def write_tensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write named tensors to a safetensors file, atomically, marked ``writer: diffscore`` in its metadata.

    Tensors are copied to contiguous CPU memory first (safetensors rejects shared or strided storage).
    """
    from safetensors.torch import save

    flat = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    data = save(flat, metadata={**(metadata or {}), "writer": "diffscore"})
    return atomic_write(path, lambda f: f.write(data))


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the file size it implies, read without the data.

    Raises:
        ValueError: a header that is not one of a safetensors file (the message names the path).
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_JSON_BYTES:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a valid safetensors file (header is not an object)")
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
    ]
    return header, 8 + n + max(ends, default=0)


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the tensors of a safetensors file, read from its header alone.

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: not a safetensors header, or a file whose
            size is not the one its header implies (both messages name the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    header, expected = _safetensors_header(path)
    if path.stat().st_size != expected:
        raise ValueError(
            f"{str(path)!r} is not a valid safetensors file: {path.stat().st_size} bytes where its header "
            f"implies {expected}"
        )
    try:
        return {k: tuple(int(n) for n in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{str(path)!r} is not a valid safetensors file (malformed header)") from None


def read_tensors(path: str | os.PathLike, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file onto ``device`` (default CPU).

    The header is checked first: a file whose size is not the one its header implies (truncated, or
    padded with trailing bytes) is refused before its data are read.

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: the file is not a readable safetensors
            file (truncated, padded, corrupt); both messages name the path.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    tensor_shapes(path)  # the header and the file size agree
    try:
        tensors = load(Path(path).read_bytes())
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
    tensor).

    Raises:
        ValueError: another suffix. FileExistsError: ``path`` exists and diffscore did not write it
            (:func:`check_output`; a ``.pt`` file carries no mark, so an existing one is never replaced).
    """
    p = check_output(path, (".safetensors", ".pt"), "path")
    if p.suffix == ".safetensors":
        return write_tensors(p, {key: tensor})
    if p.suffix == ".pt":
        t = tensor.detach().cpu().contiguous()
        return atomic_write(p, lambda f: torch.save(t, f))
    raise ValueError(f"{str(p)!r}: tensor files must end in .safetensors or .pt")


# ---- clean-up -----------------------------------------------------------------------------------------
def remove_temporaries(root: str | os.PathLike) -> list[Path]:
    """Clean up after writes that a killed process never finished, directly under ``root``.

    Only names this module creates are touched: ``.<name>.<32 hex digits>.diffscore-tmp`` (temporary
    files and staging directories) and ``....diffscore-trash`` (names being deleted). A staging
    directory that holds its manifest was being committed: the commit is finished
    (:func:`recover_directory`); every other such name is deleted. Call it only while no other process
    writes under ``root`` (``diffscore train`` does, holding the run's lock). A missing ``root`` is fine.

    Returns:
        The temporary paths removed or committed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        name = p.name
        if not (name.startswith(".") and (name.endswith(_TMP) or name.endswith(_TRASH))):
            continue
        stem = name[1:].rsplit(".", 2)
        if len(stem) != 3 or len(stem[1]) != 32 or not all(c in "0123456789abcdef" for c in stem[1]):
            continue
        if name.endswith(_TMP) and p.is_dir() and (p / MANIFEST).is_file():
            _commit(p, root / stem[0])
        else:
            _delete(p)
        removed.append(p)
    return removed


# ---- one writer at a time ------------------------------------------------------------------------------
def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def lock_directory(directory: str | os.PathLike, what: str = "directory") -> Iterator[Path]:
    """Hold the advisory lock of ``directory`` (``.diffscore.lock``, claimed in its manifest) while the
    ``with`` block runs, so that two processes never write one training run at once.

    The lock is ``fcntl.flock`` on the lock file, which the operating system releases when its holder
    dies, so a lock left by a killed process is never stale. Where the file system has no flock (some
    network file systems), the lock file is created exclusively instead and holds the holder's host and
    process id; a file whose process no longer runs on this host is stale and taken over.

    Raises:
        BlockingIOError: another live process holds the lock (the message names it and ``directory``).
        FileExistsError: ``directory`` holds a ``.diffscore.lock`` that diffscore did not write.
    """
    import datetime
    import socket

    directory = Path(directory)
    lock = claim(directory / LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.datetime.now().isoformat()}
    busy = BlockingIOError(f"{what} {str(directory)!r} is in use by {{}}; wait for it or choose another")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            raise BlockingIOError(str(busy).format(_holder(lock))) from None
        except (ImportError, OSError):  # no flock here: an exclusive marker file with stale detection
            flocked = False
            marker = claim(directory / f"{LOCK}.held")
            try:
                info = json.loads(marker.read_text(encoding="utf-8"))
                stale = info.get("host") == me["host"] and not _pid_alive(int(info.get("pid", -1)))
            except (OSError, ValueError, TypeError):
                stale = False
            if stale:
                marker.unlink(missing_ok=True)
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                raise BlockingIOError(str(busy).format(_holder(marker))) from None
            marker.write_text(json.dumps(me), encoding="utf-8")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode("utf-8"))
        try:
            yield lock
        finally:
            if not flocked:
                (directory / f"{LOCK}.held").unlink(missing_ok=True)
    finally:
        os.close(fd)
