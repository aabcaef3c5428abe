"""Sample generation over many samples: per-sample seeds, batches, processes, and quantization to bins."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import distributed as dd
from ..data import quantize
from ..sampling import sample
from ..score import ScoreModel
from .progress import SolveProgress

__all__ = ["generate_samples"]


def generate_samples(
    model: ScoreModel,
    num: int,
    image_shape: tuple[int, ...],
    num_bins: int,
    data_range: tuple[float, float],
    method: str = "ode",
    seed: int = 0,
    *,
    batch_size: int | None = None,
    shard: bool = True,
    progress: bool = False,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Draw ``num`` samples with :func:`diffscore.sample` and quantize them to bins.

    Sample i draws all its randomness from its own generator, seeded with
    :func:`diffscore.distributed.sample_seed` of ``(seed, i)``, so it does not depend on the other
    samples of its batch (fixed-step methods: exactly; adaptive ones share a step size within a batch
    and agree within their tolerance). Under torch.distributed (``shard=True``, several processes)
    every process must call this with the same arguments; the samples are split over the processes
    (:func:`diffscore.distributed.shard_batches`) and every process receives all of them in order.

    Args:
        batch_size: samples per :func:`diffscore.sample` call (default: all ``num`` at once).
        shard: split the work over the processes of a running process group.
        progress: show a progress bar (samples done, NFE of the current solve).
        options: passed to :func:`diffscore.sample`.

    Returns:
        ``(x, x_int)``: the float samples (num, *image_shape) in data space and their cells
        (:func:`diffscore.data.quantize`) in {0, ..., num_bins - 1}, both on the CPU.
    """
    p = next(iter(model.parameters()))
    bar = SolveProgress(f"sampling ({method})", num, progress)
    score = bar.wrap(model)

    def draw(indices: range) -> Tensor:
        with torch.no_grad():
            x = sample(
                model.sde,
                score,
                (len(indices), *image_shape),
                method,
                generator=dd.sample_generators(seed, indices, p.device),
                device=p.device,
                dtype=p.dtype,
                **options,
            )
        bar.advance(len(indices))
        return x.detach().cpu()

    batch = num if batch_size is None else batch_size
    with bar:
        if shard:
            x = dd.map_sharded(draw, num, batch)
        else:
            x = torch.cat([draw(b) for b in dd.shard_batches(num, batch, 0, 1)])
    return x, quantize(x, num_bins, data_range)
