"""Training score models: the :class:`Trainer`, the ``diffscore train`` pipeline and evaluation helpers.

The trainer follows Song et al. 2021 (App. H): Adam with a linear learning-rate warmup, gradient
clipping by global norm, and an exponential moving average (EMA) of the weights, which is what
sampling and evaluation use while the raw weights keep training. Training data are integers,
dequantized afresh at every step (``y = lo + (hi - lo) (x + u) / num_bins``, Theis et al. 2016), so the
model learns the density of dequantized data, the density that bits/dim is computed from. Model
selection: every ``eval_every`` steps the EMA weights are scored by bits/dim on the validation split
and the best ones are kept (early stopping on ~1500 images, which overfit within minutes).

Reproducibility: all randomness comes from seeded generators: the data order is a pure function of
``(seed, step)`` (one seeded permutation per epoch), the dequantization noise, times and Gaussian
noise come from one ``torch.Generator`` whose state is checkpointed, and torch's global generator
(dropout) is seeded and checkpointed too. A run resumed from a checkpoint on the CPU takes bitwise
the same steps as an uninterrupted one.

Checkpoints (:mod:`diffscore.checkpoint`) are directories ``<out>/checkpoints/step_<step>`` of
safetensors files (model, EMA, optimizer state, best EMA) and a ``state.json`` (step, config, RNG
states as lists, metrics); nothing is pickled. The metrics log ``<out>/metrics.jsonl`` has one JSON
record per line.

Distributed training (torch.distributed DDP) plugs in at marked places: ``rank`` / ``world_size`` in
:class:`Trainer`, :meth:`Trainer.batch_indices` (each rank takes its own slice of every global batch),
the per-rank seeds of :meth:`Trainer._seed`, the gradient all-reduce between ``backward`` and clipping
in :meth:`Trainer.train_step`, and :attr:`Trainer.is_main`, which guards every file write.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import (
    atomic_write,
    generator_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_checkpoint,
    set_generator_state,
    write_json,
    write_tensors,
)
from .config import TrainConfig, build_net, gaussian_moments
from .data import ImageData, load_digits, quantize, save_image_grid, uniform_dequantize
from .likelihood import bits_per_dim
from .losses import dsm_loss
from .nets import GaussianResidualNet
from .sampling import sample
from .score import ScoreModel
from .sde import sde_from_config

__all__ = [
    "Trainer",
    "train",
    "load_splits",
    "evaluate_bpd",
    "gaussian_baseline_bpd",
    "summarize",
    "generate_samples",
]


# ---- data ---------------------------------------------------------------------------------------------
def _holdout(data: ImageData, sizes: tuple[int, ...], seed: int) -> list[ImageData]:
    """Split ``data`` by a seeded permutation into parts of ``sizes`` and the rest (first in the list)."""
    n = len(data)
    if sum(sizes) >= n:
        raise ValueError(f"hold-out sizes {sizes} leave no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], sum(sizes)
    parts.append(perm[start:])
    for size in sizes:
        parts.append(perm[start - size : start])
        start -= size

    def take(idx: Tensor) -> ImageData:
        idx = torch.sort(idx).values
        labels = None if data.labels is None else data.labels[idx]
        return ImageData(data.images[idx].contiguous(), labels, data.num_bins, data.classes)

    return [take(p) for p in parts]


def load_splits(config: TrainConfig) -> dict[str, ImageData]:
    """The ``train``, ``validation`` and ``test`` splits of ``config.dataset`` as integer images.

    digits: :func:`diffscore.data.load_digits` (1350 / 150 / 297, stratified, ``split_seed``).
    cifar10, mnist: the official test set; ``val_size`` images of the official training set held out
    by a permutation seeded with ``split_seed``. image_folder: ``test_size`` and ``val_size`` images
    held out of the folder the same way.

    Raises:
        ValueError: unknown dataset (the message lists the valid ones), or a missing ``data_root``.
    """
    from . import data

    name = config.dataset
    if name == "digits":
        return {s: load_digits(s, seed=config.split_seed) for s in ("train", "validation", "test")}
    if config.data_root is None:
        raise ValueError(f"dataset {name!r} needs data_root (--data-root or --set data_root=PATH)")
    if name in ("cifar10", "mnist"):
        load = data.load_cifar10 if name == "cifar10" else data.load_mnist
        train, val = _holdout(load(config.data_root, "train"), (config.val_size,), config.split_seed)
        return {"train": train, "validation": val, "test": load(config.data_root, "test")}
    if name == "image_folder":
        folder = data.load_image_folder(config.data_root, config.image_size, config.channels)
        train, test, val = _holdout(folder, (config.test_size, config.val_size), config.split_seed)
        return {"train": train, "validation": val, "test": test}
    raise ValueError(f"unknown dataset {name!r}; valid: digits, cifar10, mnist, image_folder")


# ---- evaluation ---------------------------------------------------------------------------------------
def evaluate_bpd(
    model: ScoreModel,
    x_int: Tensor,
    num_bins: int,
    data_range: tuple[float, float],
    *,
    divergence: str = "exact",
    seed: int = 0,
    batch_size: int = 512,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    progress: bool = False,
    desc: str = "bits/dim",
) -> tuple[Tensor, int]:
    """Bits/dim of every image of ``x_int`` under ``model`` (:func:`diffscore.bits_per_dim`).

    Each image gets its own generator, seeded ``seed + i`` for image i, for its dequantization noise
    (and Hutchinson probe), so a result does not depend on ``batch_size`` or on the other images in
    its batch beyond the solver tolerance (the solver shares a step size across a batch and meets the
    tolerance for every image).

    Args:
        model: the score model (its device and dtype are used).
        x_int: (N, C, H, W) integers in {0, ..., num_bins - 1}.
        divergence: "exact" or "hutchinson" (one Rademacher probe per image, fixed in a solve).
        batch_size: images per ODE solve. eps, rtol, atol, method: as in :func:`diffscore.log_likelihood`.

    Returns:
        ``(bpd, nfe)``: bpd (N,) on the CPU in bits/dim, and the score evaluations summed over batches.
    """
    p = next(iter(model.parameters()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())
    out, nfe = [], 0
    starts = range(0, x_int.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = x_int[start : start + batch_size].to(device)
        gens = [torch.Generator(device).manual_seed(seed + start + i) for i in range(chunk.shape[0])]
        res = bits_per_dim(
            model.sde,
            model,
            chunk,
            num_bins=num_bins,
            data_range=data_range,
            generator=gens,
            dtype=dtype,
            divergence=divergence,
            eps=eps,
            rtol=rtol,
            atol=atol,
            method=method,
        )
        out.append(res.bpd.detach().cpu())
        nfe += res.nfe
    return torch.cat(out), nfe


def gaussian_baseline_bpd(
    train_int: Tensor,
    test_int: Tensor,
    num_bins: int,
    data_range: tuple[float, float],
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Bits/dim of ``test_int`` under the full-covariance Gaussian fit to the dequantized training data.

    The fit is the maximum-likelihood Gaussian of the dequantized training distribution
    (:func:`diffscore.config.gaussian_moments`). For a test image with cell centres m (the image mapped
    to ``data_range``) the dequantized point is ``y = m + s v`` with ``v ~ U[-1/2, 1/2)^D`` and
    ``s = (hi - lo) / num_bins``, so the expected negative log-density over the dequantization noise is,
    in closed form,

        E_v[-log N(y; mu, Sigma)] = (D log 2 pi + log det Sigma + (m - mu)^T P (m - mu) + s^2 tr(P) / 12) / 2

    with ``P = Sigma^{-1}``; the bits/dim is that divided by ``D ln 2`` plus ``log2(num_bins) -
    log2(hi - lo)``, the same offset as :func:`diffscore.bits_per_dim`.

    Returns:
        (N,) bits/dim of the test images.
    """
    dtype = dtype or torch.get_default_dtype()
    lo, hi = (float(v) for v in data_range)
    s = (hi - lo) / num_bins
    mean, cov = gaussian_moments(train_int, num_bins, data_range, dtype)
    d = mean.shape[0]
    chol = torch.linalg.cholesky(cov)
    centres = lo + s * (test_int.reshape(test_int.shape[0], -1).to(dtype) + 0.5)
    white = torch.linalg.solve_triangular(chol, (centres - mean).T, upper=False)
    maha = white.square().sum(0)
    eye = torch.eye(d, dtype=dtype, device=cov.device)
    trace_p = torch.linalg.solve_triangular(chol, eye, upper=False).square().sum()
    logdet = 2 * chol.diagonal().log().sum()
    nll = 0.5 * (d * math.log(2 * math.pi) + logdet + maha + s * s * trace_p / 12)
    return nll / (d * math.log(2)) + math.log2(num_bins) - math.log2(hi - lo)


def summarize(bpd: Tensor) -> dict[str, float]:
    """``{"mean", "median", "worst", "worst_index", "n"}`` of per-image bits/dim (median: 0.5 quantile)."""
    b = bpd.double()
    return {
        "mean": float(b.mean()),
        "median": float(b.quantile(0.5)),
        "worst": float(b.max()),
        "worst_index": int(b.argmax()),
        "n": int(b.numel()),
    }


def generate_samples(
    model: ScoreModel,
    num: int,
    image_shape: tuple[int, ...],
    num_bins: int,
    data_range: tuple[float, float],
    method: str = "ode",
    seed: int = 0,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Draw ``num`` samples with :func:`diffscore.sample` and quantize them to bins.

    Returns:
        ``(x, x_int)``: the float samples (num, *image_shape) in data space and their cells
        (:func:`diffscore.data.quantize`) in {0, ..., num_bins - 1}, both on the CPU.
    """
    p = next(iter(model.parameters()))
    gen = torch.Generator(p.device).manual_seed(seed)
    with torch.no_grad():
        x = sample(
            model.sde,
            model,
            (num, *image_shape),
            method,
            generator=gen,
            device=p.device,
            dtype=p.dtype,
            **options,
        )
    x = x.detach().cpu()
    return x, quantize(x, num_bins, data_range)


# ---- the trainer --------------------------------------------------------------------------------------
class Trainer:
    """Trains a :class:`~diffscore.ScoreModel` as ``config`` says; see the module docstring.

    Args:
        config: the run's :class:`~diffscore.config.TrainConfig`.
        out_dir: where checkpoints, the metrics log and exports go (None: write nothing).
        device: torch device (default CPU). dtype: floating dtype of the model and data.
        data: optional ``{"train": ImageData, "validation": ImageData, "test": ImageData}`` (test
            optional) instead of loading ``config.dataset``.
        progress: show a tqdm progress bar.

    Attributes:
        model: the raw (trained) ScoreModel. ema: its EMA copy (eval mode, no gradients).
        step: optimizer steps taken. best_val: best validation bits/dim so far (None before the first
        evaluation) and best_step its step; best_state: the EMA weights that scored it.

    Typical use::

        trainer = Trainer(get_preset("digits"), "runs/digits")
        trainer.fit()                      # or Trainer.from_checkpoint(path, "runs/digits").fit()
        model = trainer.best_model()       # EMA weights selected by validation bits/dim
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        data: dict[str, ImageData] | None = None,
        progress: bool = True,
    ) -> None:
        config.validate()
        self.config = config
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.progress = progress
        # distributed hooks (issue 6): set from torch.distributed.get_rank() / get_world_size()
        self.rank, self.world_size = 0, 1
        self.is_main = self.rank == 0

        splits = data if data is not None else load_splits(config)
        self.train_data, self.val_data = splits["train"], splits["validation"]
        self.test_data = splits.get("test")
        self.num_bins = self.train_data.num_bins
        self.image_shape = self.train_data.image_shape
        self.data_range = tuple(config.data_range)
        self.train_images = self.train_data.images.to(self.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed(0))
            net = build_net(config, self.image_shape)
        sde = sde_from_config({"name": config.sde, **config.sde_options})
        self.model = ScoreModel(net, sde, config.parameterization).to(self.device, dtype)
        if isinstance(net, GaussianResidualNet):
            images = self.train_images
            net.set_moments(*gaussian_moments(images, self.num_bins, self.data_range, dtype))
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        # all training randomness: one generator for data noise / times, torch's global one for dropout
        self.noise_generator = torch.Generator(self.device).manual_seed(self._seed(1))
        torch.manual_seed(self._seed(2))
        self.step = 0
        self.best_val: float | None = None
        self.best_step = -1
        self.best_state: dict[str, Tensor] | None = None
        self.last_metrics: dict[str, Any] = {}
        self._perm_cache: tuple[int, Tensor] | None = None

    # ---- seeds and data order ---------------------------------------------------------------------
    def _seed(self, stream: int) -> int:
        """Seed of random stream ``stream`` on this rank: distinct for each (seed, stream, rank)."""
        return (self.config.seed * 1_000_003 + stream) * 4099 + self.rank

    def _epoch_permutation(self, epoch: int) -> Tensor:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7 + epoch)
            self._perm_cache = (epoch, torch.randperm(len(self.train_data), generator=gen))
        return self._perm_cache[1]

    def batch_indices(self, step: int) -> Tensor:
        """Training-set indices of this rank's batch at ``step`` (CPU int64, ``batch_size`` of them).

        The data stream is the concatenation of one seeded permutation of the training set per epoch;
        global batch ``step`` is stream positions ``[step * B * W, (step + 1) * B * W)`` (B the batch
        size, W the world size) and rank r takes the r-th block of B. Depends on ``(seed, step)`` only.
        """
        b, n = self.config.batch_size, len(self.train_data)
        start = (step * self.world_size + self.rank) * b
        positions = torch.arange(start, start + b)
        out = torch.empty(b, dtype=torch.int64)
        for epoch in torch.unique(positions // n).tolist():
            mask = positions // n == epoch
            out[mask] = self._epoch_permutation(epoch)[positions[mask] % n]
        return out

    def lr_at(self, step: int) -> float:
        """Learning rate of the update made at ``step`` (0-based): a linear warmup over ``warmup`` steps,
        then constant or a cosine decay reaching 0 at ``config.steps`` (Loshchilov & Hutter 2017)."""
        cfg = self.config
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        if cfg.lr_schedule == "cosine":
            progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
            return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.lr

    # ---- one step -----------------------------------------------------------------------------------
    def loss(self, x0: Tensor) -> Tensor:
        """The denoising score-matching loss of a batch of dequantized data ``x0``."""
        cfg = self.config
        return dsm_loss(
            self.model,
            self.model.sde,
            x0,
            eps=cfg.eps,
            weighting=cfg.weighting,
            reduction=cfg.loss_reduction,
            generator=self.noise_generator,
            importance_sampling=cfg.importance_sampling,
        )

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns ``(loss, gradient norm before clipping)`` as 0-d tensors."""
        cfg = self.config
        x_int = self.train_images[self.batch_indices(self.step).to(self.device)]
        x0 = uniform_dequantize(
            x_int, self.num_bins, self.data_range, generator=self.noise_generator, dtype=self.dtype
        )
        if cfg.random_flip:
            flip = torch.rand(x0.shape[0], generator=self.noise_generator, device=self.device) < 0.5
            x0 = torch.where(flip.reshape((-1,) + (1,) * (x0.ndim - 1)), x0.flip(-1), x0)
        self.model.train()
        loss = self.loss(x0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # (DDP: gradients are all-reduced here, before clipping)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        return loss.detach(), grad_norm.detach()

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema <- rate * ema + (1 - rate) * weights`` for every parameter; buffers are copied."""
        rate = self.config.ema_rate
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p, 1.0 - rate)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    # ---- validation and model selection ---------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Bits/dim of the EMA weights on the validation split; keeps the best EMA weights.

        The dequantization noise and probes are the same at every evaluation (seeded), so successive
        evaluations compare models, not noise draws.
        """
        cfg = self.config
        images = self.val_data.images[: cfg.val_limit]
        start = time.perf_counter()
        bpd, nfe = evaluate_bpd(
            self.ema,
            images,
            self.num_bins,
            self.data_range,
            divergence=cfg.val_divergence,
            seed=self._seed(3),
            batch_size=cfg.eval_batch_size,
            eps=cfg.likelihood_eps,
            rtol=cfg.rtol,
            atol=cfg.atol,
        )
        stats = summarize(bpd)
        improved = math.isfinite(stats["mean"]) and (self.best_val is None or stats["mean"] < self.best_val)
        if improved:
            self.best_val, self.best_step = stats["mean"], self.step
            self.best_state = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}
        record = {
            "event": "validation",
            "step": self.step,
            "divergence": cfg.val_divergence,
            **stats,
            "nfe": nfe,
            "seconds": time.perf_counter() - start,
            "best": improved,
        }
        self.last_metrics = record
        self.log(record)
        return record

    def best_model(self) -> ScoreModel:
        """A copy of the EMA model with the weights that scored best on validation (the current EMA
        weights if no validation has run)."""
        model = copy.deepcopy(self.ema)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()

    # ---- the loop -------------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train until ``step == until`` (default ``config.steps``), validating every ``eval_every`` steps
        and at ``config.steps``, checkpointing every ``checkpoint_every`` steps and at ``until``.

        Returns:
            The last validation record (or {}).
        """
        cfg = self.config
        until = cfg.steps if until is None else until
        if self.step >= until:
            return self.last_metrics
        bar = tqdm(total=until, initial=self.step, desc="train", disable=not (self.progress and self.is_main))
        loss_sum, norm_sum, count, tick = 0.0, 0.0, 0, time.perf_counter()
        while self.step < until:
            loss, grad_norm = self.train_step()
            loss_sum, norm_sum, count = loss_sum + loss, norm_sum + grad_norm, count + 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == until:
                record = {
                    "event": "train",
                    "step": self.step,
                    "loss": float(loss_sum / count),
                    "grad_norm": float(norm_sum / count),
                    "lr": self.lr_at(self.step - 1),
                    "steps_per_second": count / (time.perf_counter() - tick),
                }
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"training loss became {record['loss']} at step {self.step}")
                self.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3g}", val=self._best_text())
                loss_sum, norm_sum, count, tick = 0.0, 0.0, 0, time.perf_counter()
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                self.validate()
                bar.set_postfix(val=self._best_text())
            if self.step % cfg.checkpoint_every == 0 or self.step == until:
                self.save_checkpoint()
        bar.close()
        return self.last_metrics

    def _best_text(self) -> str:
        return "-" if self.best_val is None else f"{self.best_val:.3f}@{self.best_step}"

    # ---- files (written by the main process only) -------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON record to ``<out>/metrics.jsonl`` (main process, when there is an out_dir)."""
        if not self.is_main or self.out_dir is None:
            return
        import json

        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": time.time()}) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop metric records after ``step`` (left by a run that went on past the checkpoint resumed)."""
        import json

        path = None if self.out_dir is None else self.out_dir / "metrics.jsonl"
        if not self.is_main or path is None or not path.is_file():
            return
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        text = "".join(line + "\n" for line in kept).encode("utf-8")
        atomic_write(path, lambda f: f.write(text))

    def state(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """Everything needed to resume: ``(tensor groups, JSON state)`` for :func:`save_checkpoint`."""
        opt_tensors, opt_info = optimizer_state_to_tensors(self.optimizer.state_dict())
        groups = {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": opt_tensors}
        if self.best_state is not None:
            groups["best_ema"] = self.best_state
        rng = {"noise": generator_state(self.noise_generator), "torch": torch.get_rng_state().tolist()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device).tolist()
        state = {
            "format": "diffscore.train",
            "version": 1,
            "step": self.step,
            "config": self.config.to_dict(),
            "rng": rng,
            "optimizer": opt_info,
            "best": {"val_bpd": self.best_val, "step": self.best_step},
            "metrics": self.last_metrics,
            "world_size": self.world_size,
        }
        return groups, state

    def load_state(self, groups: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        """Restore :meth:`state` output (model, EMA, optimizer, RNGs, step, best weights).

        Raises:
            ValueError: the checkpoint is not a training checkpoint, or its tensors do not fit the model.
        """
        if state.get("format") != "diffscore.train":
            raise ValueError(
                "not a diffscore training checkpoint (state.json has no format 'diffscore.train')"
            )
        for name in ("model", "ema"):
            if name not in groups:
                raise ValueError(f"checkpoint has no {name}.safetensors")
        try:
            self.model.load_state_dict(groups["model"])
            self.ema.load_state_dict(groups["ema"])
            if "best_ema" in groups:
                self.best_state = {k: v.to(self.device) for k, v in groups["best_ema"].items()}
                self.best_model()  # checks that the tensors fit
            self.optimizer.load_state_dict(
                optimizer_state_from_tensors(groups.get("optimizer", {}), state["optimizer"])
            )
        except RuntimeError as err:
            raise ValueError(f"checkpoint does not fit the model of its config: {err}") from err
        set_generator_state(self.noise_generator, state["rng"]["noise"])
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.tensor(state["rng"]["cuda"], dtype=torch.uint8), self.device)
        self.step = int(state["step"])
        self.best_val, self.best_step = state["best"]["val_bpd"], int(state["best"]["step"])
        self.last_metrics = dict(state.get("metrics", {}))
        self._truncate_log(self.step)

    def save_checkpoint(self) -> Path | None:
        """Write ``<out>/checkpoints/step_<step>`` atomically and delete all but the newest
        ``keep_checkpoints`` (main process only; None when not written)."""
        if not self.is_main or self.out_dir is None or self.config.keep_checkpoints == 0:
            return None
        root = self.out_dir / "checkpoints"
        groups, state = self.state()
        path = save_checkpoint(root / f"step_{self.step:08d}", groups, state)
        import shutil

        for old in list_checkpoints(root)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, out_dir: str | os.PathLike | None = None, **kwargs: Any
    ) -> Trainer:
        """A trainer restored from the checkpoint directory ``path`` (its config comes from the checkpoint).

        ``kwargs`` go to the constructor (device, dtype, data, progress).

        Raises:
            FileNotFoundError: missing checkpoint. ValueError: corrupt or mismatched checkpoint.
        """
        groups, state = load_checkpoint(path)
        if "config" not in state:
            raise ValueError(f"{str(path)!r}: state.json has no config")
        trainer = cls(TrainConfig.from_dict(state["config"]), out_dir, **kwargs)
        trainer.load_state(
            {k: {n: t.to(trainer.device) for n, t in g.items()} for k, g in groups.items()}, state
        )
        return trainer

    def metadata(self) -> dict[str, Any]:
        """What a user of the exported model needs to know about its data (stored in its config.json)."""
        return {
            "dataset": self.config.dataset,
            "num_bins": self.num_bins,
            "data_range": list(self.data_range),
            "image_shape": list(self.image_shape),
            "step": self.step,
            "selected_step": self.best_step,
            "val_bpd": self.best_val,
            "likelihood_eps": self.config.likelihood_eps,
            "train_config": self.config.to_dict(),
        }

    def export(self, directory: str | os.PathLike | None = None) -> Path | None:
        """Save :meth:`best_model` with :meth:`~diffscore.ScoreModel.save_pretrained` (default
        ``<out>/model``); main process only."""
        if not self.is_main:
            return None
        if directory is None:
            if self.out_dir is None:
                raise ValueError("export needs a directory when the trainer has no out_dir")
            directory = self.out_dir / "model"
        return self.best_model().save_pretrained(directory, metadata=self.metadata())


# ---- the `diffscore train` pipeline ------------------------------------------------------------------
def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, export the selected EMA model, evaluate it on the test split and draw samples.

    Writes under ``out_dir``: ``train_config.json``, ``checkpoints/step_*``, ``metrics.jsonl``, ``model/``
    (:meth:`~diffscore.ScoreModel.save_pretrained`), ``samples.png`` (a grid of ``num_samples``),
    ``samples.safetensors`` (``samples`` float, ``samples_int`` bins) and ``results.json``.

    The test evaluation reports bits/dim (``test_divergence``, uniform dequantization, ``num_bins`` and
    ``data_range`` of the data, every test image unless ``test_limit``) as mean, median and worst,
    beside the closed-form bits/dim of a full-covariance Gaussian fit (:func:`gaussian_baseline_bpd`).

    Args:
        resume: continue from the newest checkpoint in ``out_dir/checkpoints`` (its config is used).
        overwrite: start afresh even though ``out_dir`` holds checkpoints (they are deleted).

    Raises:
        FileExistsError: ``out_dir`` holds checkpoints and neither ``resume`` nor ``overwrite`` is set.

    Returns:
        The results dict (also written to ``results.json``).
    """
    import shutil

    start = time.perf_counter()
    out = Path(out_dir)
    ckpt = latest_checkpoint(out / "checkpoints")
    kwargs = dict(device=device, dtype=dtype, progress=progress)
    if resume and ckpt is not None:
        trainer = Trainer.from_checkpoint(ckpt, out, **kwargs)
        echo(f"resuming from {ckpt} (step {trainer.step})")
    else:
        if ckpt is not None and not overwrite:
            raise FileExistsError(
                f"{str(out)!r} already holds checkpoints; pass --resume to continue "
                "or --overwrite to start over"
            )
        if ckpt is not None:
            shutil.rmtree(out / "checkpoints")
            (out / "metrics.jsonl").unlink(missing_ok=True)
        trainer = Trainer(config, out, **kwargs)
    cfg = trainer.config
    write_json(out / "train_config.json", cfg.to_dict())
    n_params = sum(p.numel() for p in trainer.model.parameters())
    echo(
        f"training {cfg.net}{' + Gaussian residual' if cfg.gaussian_residual else ''} "
        f"({n_params} parameters) "
        f"on {cfg.dataset} ({len(trainer.train_data)} train / {len(trainer.val_data)} validation images), "
        f"{cfg.sde} SDE, {cfg.steps} steps of {cfg.batch_size}"
    )
    trainer.fit()
    train_seconds = time.perf_counter() - start
    model_dir = trainer.export()
    model = trainer.best_model()

    test = trainer.test_data if trainer.test_data is not None else load_splits(cfg)["test"]
    test_images = test.images[: cfg.test_limit]
    eval_start = time.perf_counter()
    bpd, nfe = evaluate_bpd(
        model,
        test_images,
        trainer.num_bins,
        trainer.data_range,
        divergence=cfg.test_divergence,
        seed=cfg.seed + 12345,
        batch_size=cfg.eval_batch_size,
        eps=cfg.likelihood_eps,
        rtol=cfg.rtol,
        atol=cfg.atol,
        progress=progress,
        desc="test bits/dim",
    )
    eval_seconds = time.perf_counter() - eval_start
    baseline = gaussian_baseline_bpd(
        trainer.train_data.images, test_images, trainer.num_bins, trainer.data_range
    )
    test_stats, base_stats = summarize(bpd), summarize(baseline)
    trainer.log(
        {"event": "test", "step": trainer.step, "divergence": cfg.test_divergence, **test_stats, "nfe": nfe}
    )
    trainer.log({"event": "gaussian_baseline", "step": trainer.step, **base_stats})

    samples, samples_int = generate_samples(
        model,
        cfg.num_samples,
        trainer.image_shape,
        trainer.num_bins,
        trainer.data_range,
        cfg.sample_method,
        seed=cfg.seed,
        **cfg.sample_options,
    )
    nrow = math.ceil(math.sqrt(cfg.num_samples))
    grid = save_image_grid(samples_int, out / "samples.png", nrow=nrow, num_bins=trainer.num_bins)
    write_tensors(out / "samples.safetensors", {"samples": samples, "samples_int": samples_int})

    total = time.perf_counter() - start
    results = {
        "dataset": cfg.dataset,
        "steps": trainer.step,
        "selected_step": trainer.best_step,
        "val_bpd": trainer.best_val,
        "test_bpd": test_stats,
        "test_divergence": cfg.test_divergence,
        "test_nfe": nfe,
        "gaussian_baseline_bpd": base_stats,
        "num_bins": trainer.num_bins,
        "data_range": list(trainer.data_range),
        "seconds": {"train": train_seconds, "test_eval": eval_seconds, "total": total},
        "model": str(model_dir),
        "samples": str(grid),
    }
    write_json(out / "results.json", results)
    rng = trainer.data_range
    echo(
        f"trained {trainer.step} steps in {train_seconds:.0f} s; selected EMA weights of step "
        f"{trainer.best_step} (validation {trainer.best_val:.3f} bits/dim, {cfg.val_divergence})"
    )
    echo(
        f"test bits/dim ({cfg.test_divergence} divergence, uniform dequantization, {trainer.num_bins} bins "
        f"on [{rng[0]:g}, {rng[1]:g}], {test_stats['n']} images, {nfe} NFE, {eval_seconds:.0f} s): "
        f"mean {test_stats['mean']:.3f}  median {test_stats['median']:.3f}  "
        f"worst {test_stats['worst']:.3f} (image {test_stats['worst_index']})"
    )
    echo(
        f"Gaussian baseline (full-covariance fit to the dequantized train split, closed form): "
        f"mean {base_stats['mean']:.3f}  median {base_stats['median']:.3f}  worst {base_stats['worst']:.3f}"
    )
    echo(f"wrote {model_dir}, {out / 'metrics.jsonl'}, {grid}; total time {total:.0f} s")
    return results
