"""Several processes, one job: torch.distributed set-up, sharded evaluation, per-sample seeds.

A job launched by ``torchrun`` (``python -m torch.distributed.run``) finds its place in the
environment variables the launcher sets: ``RANK`` (global index of this process), ``WORLD_SIZE``
(number of processes) and ``LOCAL_RANK`` (index on this node, which picks the GPU); the rendezvous
address comes in ``MASTER_ADDR`` / ``MASTER_PORT``. :func:`init_distributed` reads them and, when
there is more than one process, starts a process group: NCCL for CUDA devices, gloo otherwise. A
single process needs no variables and gets no process group; every helper here then does the whole
job locally, so the same code runs both ways.

Sharded evaluation splits a list of N items (images to score, samples to draw) into the batches a
single process would use, gives each rank a contiguous run of whole batches (:func:`shard_batches`),
and gathers the per-item results back in the original order (:func:`all_gather_rows`,
:func:`map_sharded`). Each item draws its randomness from its own generator seeded by its global
index (:func:`sample_seed`, :func:`sample_generators`), so an item's result does not depend on which
rank computed it. Every rank receives the full result, so all ranks can take the same decisions
(model selection) without further communication.

Adaptive ODE solves run a data-dependent number of steps; collectives happen only between solves,
never inside one, and the model evaluated is the plain module, not a ``DistributedDataParallel``
wrapper (whose forward may communicate), so ranks with different NFE cannot deadlock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import check_int

__all__ = [
    "DistInfo",
    "env_info",
    "current",
    "is_enabled",
    "backend_for",
    "check_device",
    "resolve_device",
    "init_distributed",
    "shutdown",
    "barrier",
    "shard_batches",
    "all_gather_rows",
    "map_sharded",
    "sum_over_ranks",
    "mean_over_ranks",
    "all_gather_objects",
    "broadcast_object",
    "sample_seed",
    "sample_generators",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a job.

    Attributes:
        rank: global index of this process, in ``[0, world_size)``.
        world_size: number of processes in the job (1: a single process).
        local_rank: index of this process on its node (selects ``cuda:<local_rank>``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when the job has more than one process."""
        return self.world_size > 1


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def env_info(environ: Mapping[str, str] | None = None) -> DistInfo:
    """This process's place in the job from torchrun's variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.

    No ``RANK`` and no ``WORLD_SIZE``: a single process, ``DistInfo(0, 1, 0)``. ``LOCAL_RANK`` defaults
    to ``RANK`` (one node).

    Args:
        environ: the variables to read (default ``os.environ``).

    Raises:
        ValueError: only one of ``RANK`` / ``WORLD_SIZE`` is set, a value is not an integer,
            ``WORLD_SIZE < 1``, or ``RANK`` / ``LOCAL_RANK`` lies outside ``[0, WORLD_SIZE)``; the
            message names the variable.
    """
    env = os.environ if environ is None else environ
    has_rank, has_world = "RANK" in env, "WORLD_SIZE" in env
    if not has_rank and not has_world:
        return DistInfo()
    if has_rank != has_world:
        missing = "WORLD_SIZE" if has_rank else "RANK"
        raise ValueError(f"environment variable {missing} is missing (torchrun sets RANK and WORLD_SIZE)")
    world = _env_int(env, "WORLD_SIZE")
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {world}")
    rank = _env_int(env, "RANK")
    local = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    for name, value in (("RANK", rank), ("LOCAL_RANK", local)):
        if not 0 <= value < world:
            raise ValueError(f"environment variable {name} must lie in [0, {world}), got {value}")
    return DistInfo(rank, world, local)


def is_enabled() -> bool:
    """True when a torch.distributed process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> DistInfo:
    """:class:`DistInfo` of the running process group (rank and size from torch.distributed, local rank
    from ``LOCAL_RANK``), or of a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return DistInfo(rank, dist.get_world_size(), local)


def backend_for(device: torch.device | str) -> str:
    """The collective backend for ``device``: ``"nccl"`` for CUDA, ``"gloo"`` for anything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def check_device(device: torch.device | str | None) -> torch.device:
    """A device this process can use: ``None`` -> CPU; checked before any work is done.

    Raises:
        ValueError: a string torch does not parse as a device (e.g. "gpu"), a device type other than
            cpu, cuda and mps, a CUDA device on a torch build or machine without one, a CUDA index
            beyond the visible GPUs, or mps where it is not available; the message names the device.
    """
    if isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(device or "cpu")
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device {device!r} is not a torch device; use cpu, cuda, cuda:<index> or mps"
            ) from None
    if parsed.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(f"device {str(parsed)!r}: this torch build has no CUDA support (a CPU build)")
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device {str(parsed)!r}: no CUDA GPU is visible to this process")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {str(parsed)!r}: only {count} CUDA GPU(s) are visible")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(parsed)!r}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise ValueError(f"device {str(parsed)!r}: diffscore runs on cpu, cuda and mps devices")
    return parsed


def resolve_device(device: torch.device | str | None, info: DistInfo) -> torch.device:
    """The device of this process: ``None`` -> CPU; a bare ``"cuda"`` -> ``cuda:<local_rank>`` (one
    GPU per process); a device with an explicit index is kept as given (:func:`init_distributed` then
    checks it with :func:`check_device`)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def init_distributed(
    device: torch.device | str | None = None,
    backend: str | None = None,
    timeout_s: float = 3600.0,
    environ: Mapping[str, str] | None = None,
) -> tuple[DistInfo, torch.device]:
    """Join the job described by the environment (see :func:`env_info`) and pick this process's device.

    With ``WORLD_SIZE > 1`` a process group is started (``init_method="env://"``: ``MASTER_ADDR`` and
    ``MASTER_PORT``, which torchrun sets), with ``backend`` or :func:`backend_for` the device, and a
    CUDA device becomes this process's current device. A single process starts nothing. Calling it
    again once a group is running returns that group's info.

    Args:
        device: the requested device (``"cuda"`` maps to ``cuda:<LOCAL_RANK>``; default CPU).
        backend: ``"nccl"``, ``"gloo"`` or None (chosen from the device).
        timeout_s: seconds a collective may wait for the slowest rank before the job fails (evaluation
            ranks can differ by one batch of adaptive solves).
        environ: variables to read (default ``os.environ``).

    Returns:
        ``(info, device)``.

    Raises:
        ValueError: malformed environment (see :func:`env_info`), an unusable device
            (:func:`check_device`), a non-positive ``timeout_s``, or ``backend="nccl"`` with a non-CUDA
            device.
        RuntimeError: a multi-process job on a torch build without torch.distributed.
    """
    info = env_info(environ)
    try:
        device = check_device(resolve_device(device, info))
    except RuntimeError as err:  # a string torch does not parse
        raise ValueError(f"device {device!r} is not a torch device ({err})") from None
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not info.enabled:
        return info, device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return current(), device
    backend = backend or backend_for(device)
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"backend 'nccl' needs a CUDA device, got device {str(device)!r}")
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        timeout=timedelta(seconds=timeout_s),
        **kwargs,
    )
    return info, device


def shutdown() -> None:
    """Leave the process group, if one is running (call once at the end of a job, on every rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if is_enabled():
        dist.barrier()


# ---- sharding -----------------------------------------------------------------------------------------
def shard_batches(
    n: int, batch_size: int, rank: int | None = None, world_size: int | None = None
) -> list[range]:
    """The batches of items ``0 .. n-1`` that rank ``rank`` of ``world_size`` processes.

    A single process takes the batches ``[0, b), [b, 2b), ...`` (``b = batch_size``). With at least as
    many batches as ranks, rank r takes a contiguous run of these very batches (the runs differ in
    length by at most one batch), so every item is solved in the same batch as in a single process and
    results agree exactly. With fewer batches than ranks the items are split into ``world_size``
    contiguous blocks of nearly equal size instead (some may be empty when ``n < world_size``), and
    results agree with a single process within the tolerance of any adaptive solver (which shares a
    step size across a batch). Either way the ranks' items, concatenated in rank order, are
    ``0 .. n-1`` in order.

    Args:
        n: number of items (>= 0). batch_size: items per batch (>= 1).
        rank, world_size: default: this process's (:func:`current`).

    Returns:
        A list of ``range`` objects (possibly empty), in increasing order.

    Raises:
        TypeError: a non-int argument. ValueError: ``n < 0``, ``batch_size < 1``, ``world_size < 1``
            or ``rank`` outside ``[0, world_size)``.
    """
    here = current()
    rank = here.rank if rank is None else rank
    world_size = here.world_size if world_size is None else world_size
    check_int("n", n, 0)
    check_int("batch_size", batch_size, 1)
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must lie in [0, world_size) = [0, {world_size}), got {rank}")
    num_batches = -(-n // batch_size)
    if num_batches >= world_size:
        first, last = rank * num_batches // world_size, (rank + 1) * num_batches // world_size
        return [range(i * batch_size, min((i + 1) * batch_size, n)) for i in range(first, last)]
    start, stop = rank * n // world_size, (rank + 1) * n // world_size
    return [range(start, stop)] if stop > start else []


def _collective_device() -> torch.device:
    """Where tensors must live for the group's backend: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_objects(obj: object) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process); the
    objects are pickled, so keep them small."""
    if not is_enabled():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(local: Tensor | None) -> Tensor:
    """Concatenate every rank's rows in rank order, on every rank; the result is on the CPU.

    Each rank passes a tensor shaped ``(n_r, *shape)`` (``n_r`` may differ and may be 0) or None when it
    has nothing; ``shape`` and dtype must agree across the ranks that pass tensors. The tensors are
    padded to the largest ``n_r``, exchanged with one ``all_gather`` (on the GPU under NCCL) and
    trimmed. With :func:`shard_batches` shards this restores the single-process order.

    Raises:
        ValueError: ranks pass different trailing shapes or dtypes, or no rank passes a tensor.
        TypeError: ``local`` is neither a tensor nor None.
    """
    if local is not None and not isinstance(local, Tensor):
        raise TypeError(f"local must be a torch.Tensor or None, got {type(local).__name__}")
    if not is_enabled():
        if local is None:
            raise ValueError("all_gather_rows: no rank passed a tensor")
        return local.detach().cpu()
    meta = None if local is None else (local.shape[0], tuple(local.shape[1:]), str(local.dtype))
    metas = all_gather_objects(meta)
    kinds = {(m[1], m[2]) for m in metas if m is not None}
    if not kinds:
        raise ValueError("all_gather_rows: no rank passed a tensor")
    if len(kinds) > 1:
        raise ValueError(f"all_gather_rows: ranks passed different trailing shapes / dtypes: {sorted(kinds)}")
    shape, dtype_name = kinds.pop()
    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    counts = [0 if m is None else m[0] for m in metas]
    rows = max(counts)
    device = _collective_device()
    padded = torch.zeros((rows, *shape), dtype=dtype, device=device)
    if local is not None and local.shape[0] > 0:
        padded[: local.shape[0]] = local.detach().to(device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu()


def map_sharded(fn: Callable[[range], Tensor], n: int, batch_size: int) -> Tensor:
    """``fn`` over the batches of items ``0 .. n-1``, spread over the ranks, gathered in order.

    Each rank calls ``fn(indices)`` for its batches of :func:`shard_batches` (``indices`` a ``range`` of
    global item indices; ``fn`` returns a tensor with one row per index) and every rank receives the
    ``(n, *shape)`` concatenation on the CPU. In a single process it is ``cat([fn(b) for b in batches])``.
    ``fn`` must not use collectives (ranks call it different numbers of times).

    Raises:
        ValueError: ``fn`` returns a number of rows other than ``len(indices)``; ``n < 1``; and the
            errors of :func:`shard_batches` and :func:`all_gather_rows`.
    """
    check_int("n", n, 1)
    outs = []
    for indices in shard_batches(n, batch_size):
        out = fn(indices)
        if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != len(indices):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"fn must return one row per index ({len(indices)} rows), got {got}")
        outs.append(out.detach().cpu())
    return all_gather_rows(torch.cat(outs) if outs else None)


def sum_over_ranks(value: int | float) -> int | float:
    """The sum of ``value`` over all ranks (``value`` in a single process); an int stays an int."""
    if not is_enabled():
        return value
    is_int = isinstance(value, int)
    t = torch.tensor([value], dtype=torch.int64 if is_int else torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return int(t.item()) if is_int else float(t.item())


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of a floating tensor over all ranks, on ``value``'s device (``value`` in a single
    process)."""
    if not is_enabled():
        return value
    out = value.detach().to(_collective_device(), copy=True)
    dist.all_reduce(out)
    return (out / dist.get_world_size()).to(value.device)


# ---- per-sample seeds ---------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """One step of the SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijection of 64-bit integers
    whose outputs for consecutive inputs are statistically independent."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for item ``index`` of random stream ``stream`` of a run seeded ``seed``.

    The three integers are hashed together with SplitMix64, so nearby seeds give unrelated items
    (unlike ``seed + index``, where run ``seed + 1`` would repeat run ``seed`` shifted by one item).

    Raises:
        TypeError: an argument is not an int.
    """
    for name, value in (("seed", seed), ("index", index), ("stream", stream)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    z = _splitmix64(seed & _MASK64)
    z = _splitmix64(z ^ (stream & _MASK64))
    return _splitmix64(z ^ (index & _MASK64)) >> 1


def sample_generators(
    seed: int, indices: Sequence[int], device: torch.device | str | None = None, stream: int = 0
) -> list[torch.Generator]:
    """One ``torch.Generator`` per item, seeded with :func:`sample_seed` of its global index.

    Pass the list as ``generator=`` to :func:`diffscore.sample`, :func:`diffscore.bits_per_dim`,
    :func:`diffscore.losses.dsm_loss` and the other functions that take per-sample generators: row k of
    every draw then comes from item ``indices[k]``'s generator alone.

    Args:
        seed: the run's seed. indices: global item indices. device: the generators' device (default
            CPU; the draws of a CPU generator are the same whatever device they are moved to).
        stream: separates independent uses of the same items (e.g. training noise and sampling).
    """
    device = torch.device(device or "cpu")
    return [torch.Generator(device).manual_seed(sample_seed(seed, int(i), stream)) for i in indices]
