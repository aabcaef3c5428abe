"""Training a noise-conditional score network (NCSN, Song & Ermon 2019) with ``diffscore train``.

The ``objective="ncsn"`` path of :func:`diffscore.training.train` (preset ``ncsn_digits``): the network is
an :class:`~diffscore.nets.NCSNRefineNet` ``net(x, sigma)``; its ``sigmas`` buffer holds the noise levels
``sigma_1 > ... > sigma_L`` (geometric, :func:`diffscore.sampling.geometric_sigmas`). The loss is the
multi-scale denoising score matching of eq. (7) with ``lambda(sigma) = sigma^2``
(:func:`diffscore.losses.ncsn_loss`), and samples come from annealed Langevin dynamics (Algorithm 1,
:func:`diffscore.annealed_langevin`) started from uniform noise on ``data_range``.

NCSN defines no exact likelihood, so no bits/dim is computed: the test split is scored with the NCSN
loss instead (fixed noise draws, EMA weights). The run writes under ``out_dir``: ``train_config.json``,
``metrics.jsonl``, ``model/`` (:func:`save_ncsn`: ``config.json`` + ``model.safetensors``),
``samples.png``, ``samples.safetensors`` and ``results.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed as dd
from .._checks import Generator, rand
from ..data import quantize, save_image_grid, uniform_dequantize
from ..io import claim, read_json, read_tensors, verify_directory, write_directory, write_json, write_tensors
from ..losses import ncsn_loss
from ..nets import from_config
from ..sampling.langevin import annealed_langevin
from .config import TrainConfig, build_net, load_splits

__all__ = ["ncsn_batch_loss", "ncsn_samples", "save_ncsn", "load_ncsn", "train_ncsn"]


def _sigmas(net: nn.Module) -> Tensor:
    sigmas = getattr(net, "sigmas", None)
    if not isinstance(sigmas, Tensor):
        raise TypeError(
            f"net must be a noise-conditional network with a sigmas buffer, got {type(net).__name__}"
        )
    return sigmas


def ncsn_batch_loss(net: nn.Module, x0: Tensor, generator: Generator = None) -> Tensor:
    """NCSN loss (Song & Ermon 2019, eq. 7, ``lambda(sigma) = sigma^2``) of a batch, mean over the batch.

    Args:
        net: ``net(x, sigma) -> like x`` with a ``sigmas`` buffer (L,) of decreasing noise levels.
        x0: (B, *shape) data. generator: a torch.Generator or a list of B (level index and noise).

    Returns:
        0-d tensor: mean over samples of ``||sigma_i net(x0 + sigma_i z, sigma_i) + z||^2 / 2`` (nats-free
        squared-error units, summed over the D dims).

    Raises:
        TypeError: ``net`` has no ``sigmas`` buffer; otherwise as :func:`diffscore.losses.ncsn_loss`.
    """
    return ncsn_loss(net, x0, _sigmas(net).to(x0.dtype), reduction="mean", generator=generator)


def ncsn_samples(
    net: nn.Module,
    num: int,
    image_shape: tuple[int, ...],
    data_range: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    *,
    step_size: float = 2e-5,
    n_steps_each: int = 100,
    denoise: bool = True,
) -> Tensor:
    """``num`` samples (num, *image_shape) by annealed Langevin dynamics (Song & Ermon 2019, Alg. 1).

    Each sample starts uniform on ``data_range`` and draws from its own generator
    (:func:`diffscore.distributed.sample_generators` of ``(seed, i)``), on the network's device and dtype.
    ``step_size`` is eps (the step at sigma_L), ``n_steps_each`` is T; ``denoise`` adds Tweedie's step.

    Raises:
        ValueError: ``num`` < 1; otherwise as :func:`diffscore.annealed_langevin`.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an int >= 1, got {num!r}")
    p = next(iter(net.parameters()))
    gens = dd.sample_generators(seed, range(num), p.device)
    lo, hi = (float(v) for v in data_range)
    x = lo + (hi - lo) * rand((num, *image_shape), gens, p.device, p.dtype)
    with torch.no_grad():
        return annealed_langevin(
            net,
            _sigmas(net).to(p.dtype),
            x,
            step_size=step_size,
            n_steps_each=n_steps_each,
            generator=gens,
            denoise=denoise,
        )


def save_ncsn(net: nn.Module, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``directory/config.json`` (``{"net": net.config, "metadata": ...}``) and
    ``directory/model.safetensors`` (the state dict) atomically; returns the directory."""
    with write_directory(directory, ("config.json", "model.safetensors"), kind="ncsn_model") as tmp:
        write_json(tmp / "config.json", {"kind": "ncsn", "net": net.config, "metadata": metadata or {}})
        write_tensors(tmp / "model.safetensors", net.state_dict())
    return Path(directory)


def load_ncsn(
    directory: str | os.PathLike, device: torch.device | str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The network saved by :func:`save_ncsn` (eval mode) and its metadata.

    Raises:
        FileNotFoundError: missing files. ValueError: not an NCSN model directory, or corrupt files.
    """
    verify_directory(directory, ("config.json", "model.safetensors"))
    cfg = read_json(Path(directory) / "config.json")
    if cfg.get("kind") != "ncsn" or "net" not in cfg:
        raise ValueError(f"{str(directory)!r} does not hold an NCSN model saved by save_ncsn")
    net = from_config(cfg["net"])
    net.load_state_dict(read_tensors(Path(directory) / "model.safetensors"))
    return net.to(device or "cpu").eval(), cfg.get("metadata", {})


def train_ncsn(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train an NCSN as ``config`` says (single process), score the test split, draw samples.

    Call it through :func:`diffscore.training.train`, which holds the run folder's lock and refuses
    to start over a previous run; the names written are claimed in the folder's manifest.

    Adam (``lr``, linear ``warmup``, ``grad_clip``), EMA of the weights (``ema_rate``), batches of
    ``batch_size`` dequantized images drawn with replacement (``seed``). ``sample_options`` go to
    :func:`ncsn_samples` (``step_size``, ``n_steps_each``, ``denoise``). No checkpoints or resume.

    Returns:
        The results dict (also written to ``results.json``): ``test_ncsn_loss`` (mean over the test
        split, EMA weights, seeded draws), ``initial_test_ncsn_loss`` (the same at initialisation),
        ``bits_per_dim`` None (NCSN has no exact likelihood).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    dev = dd.check_device(device)
    splits = load_splits(config)
    train_data, test_data = splits["train"], splits["test"]
    num_bins, image_shape = train_data.num_bins, tuple(train_data.image_shape)
    data_range = tuple(config.data_range)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_net(config, image_shape).to(dev, dtype)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    test_images = test_data.images[: config.test_limit].to(dev)
    write_json(claim(out / "train_config.json"), config.to_dict())
    metrics = claim(out / "metrics.jsonl")
    initial = _test_loss(ema, test_images, config, num_bins, dtype)
    sigmas = _sigmas(net)
    echo(
        f"training {config.net} NCSN ({sum(p.numel() for p in net.parameters())} parameters, "
        f"{len(sigmas)} noise levels {float(sigmas[0]):g} ... {float(sigmas[-1]):g}) on "
        f"{config.dataset} ({len(train_data)} train images), {config.steps} steps of {config.batch_size}"
    )
    images = train_data.images.to(dev)
    _fit(config, net, ema, images, num_bins, dtype, metrics, progress)
    train_seconds = time.perf_counter() - start

    final = _test_loss(ema, test_images, config, num_bins, dtype)
    metadata = {
        "dataset": config.dataset,
        "num_bins": num_bins,
        "data_range": list(data_range),
        "image_shape": list(image_shape),
        "step": config.steps,
        "train_config": config.to_dict(),
    }
    model_dir = save_ncsn(ema, claim(out / "model"), metadata)
    grid = _write_samples(config, ema, image_shape, num_bins, out)
    results = {
        "dataset": config.dataset,
        "objective": "ncsn",
        "steps": config.steps,
        "initial_test_ncsn_loss": initial,
        "test_ncsn_loss": final,
        "bits_per_dim": None,
        "num_bins": num_bins,
        "data_range": list(data_range),
        "seconds": {"train": train_seconds, "total": time.perf_counter() - start},
        "model": str(model_dir),
        "samples": str(grid),
    }
    write_json(claim(out / "results.json"), results)
    echo(f"trained {config.steps} steps in {train_seconds:.0f} s")
    echo(
        "NCSN has no exact likelihood: bits/dim evaluation skipped. "
        f"Test NCSN loss (EMA weights, {len(test_images)} images): {final:.4f} "
        f"(at initialisation {initial:.4f})"
    )
    echo(f"wrote {model_dir}, {metrics}, {grid}")
    return results


def _test_loss(
    model: nn.Module, images: Tensor, config: TrainConfig, num_bins: int, dtype: torch.dtype
) -> float:
    """The NCSN loss of ``model`` on ``images`` with the same seeded draws at every call."""
    gens = dd.sample_generators(config.seed + 12345, range(len(images)))
    x0 = uniform_dequantize(images, num_bins, tuple(config.data_range), generator=gens, dtype=dtype)
    with torch.no_grad():
        return float(ncsn_batch_loss(model, x0, gens))


def _fit(
    config: TrainConfig,
    net: nn.Module,
    ema: nn.Module,
    images: Tensor,
    num_bins: int,
    dtype: torch.dtype,
    metrics: Path,
    progress: bool,
) -> None:
    """``config.steps`` Adam steps on the NCSN loss with warmup, clipping and an EMA; logs to ``metrics``."""
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    data_range = tuple(config.data_range)
    noise = torch.Generator().manual_seed(config.seed + 1)
    bar = tqdm(total=config.steps, desc="train ncsn", disable=not progress)
    loss_sum, count = 0.0, 0
    for step in range(1, config.steps + 1):
        idx = torch.randint(len(images), (config.batch_size,), generator=noise)
        gens = dd.sample_generators(int(torch.randint(2**62, (), generator=noise)), range(config.batch_size))
        x0 = uniform_dequantize(
            images[idx.to(images.device)], num_bins, data_range, generator=gens, dtype=dtype
        )
        net.train()
        loss = ncsn_batch_loss(net, x0, gens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, step / max(1, config.warmup))
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters(), strict=True):
                e.lerp_(p, 1.0 - config.ema_rate)
        loss_sum, count = loss_sum + float(loss.detach()), count + 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            record = {"event": "train", "step": step, "loss": loss_sum / count}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"training loss became {record['loss']} at step {step}")
            with metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3g}")
            loss_sum, count = 0.0, 0
    bar.close()


def _write_samples(
    config: TrainConfig, ema: nn.Module, image_shape: tuple[int, ...], num_bins: int, out: Path
) -> Path:
    """``samples.png`` and ``samples.safetensors`` of ``num_samples`` annealed Langevin samples."""
    data_range = tuple(config.data_range)
    samples = ncsn_samples(
        ema, config.num_samples, image_shape, data_range, config.seed, **config.sample_options
    )
    samples = samples.detach().cpu()
    samples_int = quantize(samples, num_bins, data_range)
    grid = save_image_grid(
        samples_int,
        claim(out / "samples.png"),
        nrow=math.ceil(math.sqrt(config.num_samples)),
        num_bins=num_bins,
    )
    write_tensors(claim(out / "samples.safetensors"), {"samples": samples, "samples_int": samples_int})
    return grid
