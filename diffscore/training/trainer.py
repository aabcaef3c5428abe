"""The :class:`Trainer`: denoising score matching with Adam, EMA, validation selection and checkpoints.

The trainer follows Song et al. 2021 (App. H): Adam with a linear learning-rate warmup, gradient
clipping by global norm, and an exponential moving average (EMA) of the weights, which is what
sampling and evaluation use while the raw weights keep training. Training data are integers,
dequantized afresh at every step (``y = lo + (hi - lo) (x + u) / num_bins``, Theis et al. 2016), so the
model learns the density of dequantized data, the density that bits/dim is computed from. Model
selection: every ``eval_every`` steps the EMA weights are scored by bits/dim on the validation split
and the best ones are kept (early stopping on ~1500 images, which overfit within minutes).

Reproducibility: all randomness comes from seeded generators: the data order is a pure function of
``(seed, step)`` (one seeded permutation per epoch); one ``torch.Generator`` whose state is
checkpointed gives a seed per step, from which every training sample gets its own generator for its
dequantization noise, time and Gaussian noise; torch's global generator (dropout) is seeded and
checkpointed too. A run resumed from a checkpoint on the CPU takes bitwise the same steps as an
uninterrupted one.

Checkpoints (:mod:`diffscore.training.checkpoints`) are directories ``<out>/checkpoints/step_<step>`` of
safetensors files (model, EMA, optimizer state, best EMA) and a ``state.json`` (step, config, RNG
states as lists, metrics); nothing is pickled. The metrics log ``<out>/metrics.jsonl`` has one JSON
record per line.

Several processes (``torchrun``, docs/distributed.md): under a running torch.distributed process group
the trainer is data-parallel (DistributedDataParallel). ``config.batch_size`` is the global batch, each
process takes its block of ``batch_size / W`` (:attr:`Trainer.batch_block`), and since a sample's
noise depends on its position in the global batch, not on the process, W processes take the steps of
one process up to floating-point summation order. Validation, the test evaluation and sampling are
split over the processes (:mod:`diffscore.distributed`); only the main process (:attr:`Trainer.is_main`)
writes files, and checkpoints are written by it while the others wait at a barrier.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed as dd
from .._checks import Generator, rand, seed_from
from ..data import ImageData, gaussian_moments, uniform_dequantize
from ..evaluation import evaluate_bpd, summarize
from ..io import claim, remove_owned
from ..losses import dsm_loss
from ..nets import GaussianResidualNet
from ..score import ScoreModel
from ..sde import sde_from_config
from .checkpoints import (
    generator_state,
    list_checkpoints,
    load_checkpoint,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_checkpoint,
    set_generator_state,
)
from .config import TrainConfig, build_net, load_splits, resumed_config

__all__ = ["Trainer", "TrainingInterrupted", "check_bf16"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (SIGINT, SIGTERM) after saving the checkpoint of its step.

    Attributes:
        step: the step reached. checkpoint: the checkpoint directory written (None without an out_dir).
        signal_name: "SIGINT" or "SIGTERM".
    """

    def __init__(self, step: int, checkpoint: Path | None, signal_name: str) -> None:
        where = f"; saved {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"{signal_name}: training stopped at step {step}{where}")
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class _StopSignals:
    """Within ``with``: SIGINT and SIGTERM set a flag instead of stopping the process; a second SIGINT
    raises KeyboardInterrupt at once. Outside the main thread, nothing is installed."""

    def __init__(self) -> None:
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.signal_name and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def requested(self, world_size: int) -> bool:
        """Whether a signal arrived (on any process, under torch.distributed: all of them agree)."""
        if world_size == 1:
            return bool(self.signal_name)
        name = next((n for n in dd.all_gather_objects(self.signal_name) if n), "")
        self.signal_name = self.signal_name or name
        return bool(name)

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_bf16(bf16: bool, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Validate the bf16 autocast training option; returns it.

    bf16 autocast (``torch.autocast(dtype=torch.bfloat16)``) runs the matrix products and convolutions
    of the training forward pass in bfloat16, while the weights, optimizer state, loss arithmetic and
    all evaluation (likelihoods, sampling) stay in float32. It works on CUDA GPUs with bfloat16 (Ampere
    and newer) and on the CPU (correct, usually slower there than float32).

    Raises:
        TypeError: ``bf16`` is not a bool.
        ValueError: ``bf16`` with a dtype other than float32 (autocast leaves float64 untouched), on a
            GPU without bfloat16, or on a device type other than cuda and cpu.
    """
    if not isinstance(bf16, bool):
        raise TypeError(f"bf16 must be a bool, got {type(bf16).__name__}")
    if not bf16:
        return False
    device = torch.device(device)
    if dtype != torch.float32:
        raise ValueError(f"bf16 autocast needs float32 weights (dtype float32), got {dtype}")
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError(f"bf16 autocast: the GPU {device} does not support bfloat16")
    elif device.type != "cpu":
        raise ValueError(f"bf16 autocast works on cuda and cpu devices, not {device.type!r}")
    return True


class Trainer:
    """Trains a :class:`~diffscore.ScoreModel` as ``config`` says; see the module docstring.

    Args:
        config: the run's :class:`~diffscore.training.TrainConfig`.
        out_dir: where checkpoints, the metrics log and exports go (None: write nothing).
        device: torch device (default CPU). dtype: floating dtype of the model and data.
        data: optional ``{"train": ImageData, "validation": ImageData, "test": ImageData}`` (test
            optional) instead of loading ``config.dataset``.
        progress: show a tqdm progress bar.
        bf16: run the training forward pass under bf16 autocast (:func:`check_bf16`).

    Under a running torch.distributed process group (``torchrun``) the trainer is data-parallel: build
    it on every process with the same arguments; ``config.batch_size`` is the global batch and must be
    divisible by the number of processes W (else ValueError).

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
        bf16: bool = False,
    ) -> None:
        config.validate()
        self.config = config
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.device = dd.check_device(device)
        self.dtype = dtype
        self.progress = progress
        self.bf16 = check_bf16(bf16, self.device, dtype)
        self._join_processes()
        if self.out_dir is not None and self.is_main:
            for name in ("metrics.jsonl", "checkpoints", "model"):  # refuses names diffscore did not write
                claim(self.out_dir / name)
        self._load_data(data if data is not None else load_splits(config))
        self._build_model()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        # all training randomness: one CPU generator, in the same state on every process, gives a seed
        # per step (see train_step); torch's global one, seeded per process, drives dropout
        self.noise_generator = torch.Generator().manual_seed(self._seed(1))
        torch.manual_seed(self._seed(2) + self.rank)
        self.step = 0
        self.best_val: float | None = None
        self.best_step = -1
        self.best_state: dict[str, Tensor] | None = None
        self.last_metrics: dict[str, Any] = {}
        self.last_loss = math.nan
        # sums of loss and gradient norm since the last train record, and their count (part of the
        # checkpointed state: a run resumed between two records logs the same averages)
        self._window: list[Any] = [0.0, 0.0, 0]
        self._perm_cache: tuple[int, Tensor] | None = None

    # ---- set-up ---------------------------------------------------------------------------------------
    def _join_processes(self) -> None:
        """This process's place in a torchrun job (one process without one) and its share of a batch."""
        info = dd.current()
        self.rank, self.world_size, self.is_main = info.rank, info.world_size, info.is_main
        if self.config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {self.config.batch_size} (the global batch) must be divisible by the number "
                f"of processes, {self.world_size}"
            )
        self.local_batch_size = self.config.batch_size // self.world_size

    def _load_data(self, splits: dict[str, ImageData]) -> None:
        self.train_data, self.val_data = splits["train"], splits["validation"]
        self.test_data = splits.get("test")
        self.num_bins = self.train_data.num_bins
        self.image_shape = self.train_data.image_shape
        self.data_range = tuple(self.config.data_range)
        self.train_images = self.train_data.images.to(self.device)

    def _build_model(self) -> None:
        """The score model (weights seeded by the config), its EMA copy and, under torchrun, a DDP wrapper."""
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed(0))
            net = build_net(config, self.image_shape)
        sde = sde_from_config({"name": config.sde, **config.sde_options})
        self.model = ScoreModel(net, sde, config.parameterization).to(self.device, self.dtype)
        if isinstance(net, GaussianResidualNet):
            net.set_moments(*gaussian_moments(self.train_images, self.num_bins, self.data_range, self.dtype))
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # what the loss calls: under torch.distributed a DDP wrapper, whose backward averages the
        # gradients over the processes (Li et al. 2020); evaluation always uses the plain modules
        self.ddp: torch.nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    # ---- seeds and data order ---------------------------------------------------------------------
    def _seed(self, stream: int) -> int:
        """Seed of random stream ``stream``: distinct for each (seed, stream), the same on every process."""
        return (self.config.seed * 1_000_003 + stream) * 4099

    def _epoch_permutation(self, epoch: int) -> Tensor:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7 + epoch)
            self._perm_cache = (epoch, torch.randperm(len(self.train_data), generator=gen))
        return self._perm_cache[1]

    @property
    def batch_block(self) -> range:
        """Positions of this process's samples within every global batch: ``range(r b, (r + 1) b)`` for
        process r of W, with ``b = batch_size / W`` (all of ``range(batch_size)`` for one process)."""
        b = self.local_batch_size
        return range(self.rank * b, (self.rank + 1) * b)

    def batch_indices(self, step: int) -> Tensor:
        """Training-set indices of this process's batch at ``step`` (CPU int64, ``batch_size / W``).

        The data stream is the concatenation of one seeded permutation of the training set per epoch;
        global batch ``step`` is stream positions ``[step * B, (step + 1) * B)`` (B = ``batch_size``)
        and process r takes its :attr:`batch_block` of them. Depends on ``(seed, step)`` only; the
        processes' blocks together are the batch of a single process, whatever W is.
        """
        n = len(self.train_data)
        block = self.batch_block
        positions = torch.arange(block.start, block.stop) + step * self.config.batch_size
        out = torch.empty(positions.shape[0], dtype=torch.int64)
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
    def loss(self, x0: Tensor, generator: Generator = None) -> Tensor:
        """The denoising score-matching loss of a batch of dequantized data ``x0`` (mean over the batch),
        with times and noise from ``generator`` (one, or a list of one per sample); under bf16 autocast
        when the trainer was built with ``bf16=True``."""
        cfg = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return dsm_loss(
                self.ddp,
                self.model.sde,
                x0,
                eps=cfg.eps,
                weighting=cfg.weighting,
                reduction=cfg.loss_reduction,
                generator=generator,
                importance_sampling=cfg.importance_sampling,
            )

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns ``(loss of this process's samples, gradient norm before clipping)``
        as 0-d tensors.

        One seed per step is drawn from :attr:`noise_generator` (the same on every process), and sample
        j of the global batch draws its dequantization noise, flip, time and Gaussian noise from its
        own CPU generator seeded with :func:`diffscore.distributed.sample_seed` of ``(step seed, j)``. A
        step therefore computes the same per-sample losses however the global batch is split over
        processes, and on any device. Under DDP, ``backward`` averages the gradients over the
        processes, which gives the gradient of the global-batch mean loss; clipping, the optimizer and
        the EMA then act on identical values on every process.
        """
        cfg = self.config
        gens = dd.sample_generators(seed_from(self.noise_generator), self.batch_block)
        x_int = self.train_images[self.batch_indices(self.step).to(self.device)]
        x0 = uniform_dequantize(x_int, self.num_bins, self.data_range, generator=gens, dtype=self.dtype)
        if cfg.random_flip:
            flip = rand((x0.shape[0],), gens, self.device, x0.dtype) < 0.5
            x0 = torch.where(flip.reshape((-1,) + (1,) * (x0.ndim - 1)), x0.flip(-1), x0)
        self.model.train()
        loss = self.loss(x0, gens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the processes here
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
        res = evaluate_bpd(
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
            errors="nan",  # a model gone bad scores NaN (never selected) instead of ending the run
        )
        stats = summarize(res["bpd"])
        improved = math.isfinite(stats["mean"]) and (self.best_val is None or stats["mean"] < self.best_val)
        if improved:
            self.best_val, self.best_step = stats["mean"], self.step
            self.best_state = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}
        record = {
            "event": "validation",
            "step": self.step,
            "divergence": cfg.val_divergence,
            **stats,
            "nfe": res["nfe"],
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

        SIGINT (Ctrl-C) and SIGTERM end the current step, save a checkpoint and raise
        :class:`TrainingInterrupted` (a second Ctrl-C stops at once). Under torch.distributed the
        processes agree after every step, so they all stop at the same one.

        Returns:
            The last validation record (or {}).

        Raises:
            TrainingInterrupted: a signal stopped training; the checkpoint of its step is on disk.
        """
        cfg = self.config
        until = cfg.steps if until is None else until
        if self.step >= until:
            return self.last_metrics
        bar = tqdm(total=until, initial=self.step, desc="train", disable=not (self.progress and self.is_main))
        tick, ticked = time.perf_counter(), 0
        with _StopSignals() as stop:
            while self.step < until:
                loss, grad_norm = self.train_step()
                window = self._window
                window[0], window[1], window[2] = window[0] + loss, window[1] + grad_norm, window[2] + 1
                ticked += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == until:
                    rate = ticked / (time.perf_counter() - tick)
                    self._log_train(window[0] / window[2], window[1] / window[2], rate)
                    bar.set_postfix(loss=f"{self.last_loss:.3g}", val=self._best_text())
                    self._window, tick, ticked = [0.0, 0.0, 0], time.perf_counter(), 0
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    self.validate()
                    bar.set_postfix(val=self._best_text())
                stopped = stop.requested(self.world_size)
                if stopped or self.step % cfg.checkpoint_every == 0 or self.step == until:
                    path = self.save_checkpoint()
                if stopped:
                    bar.close()
                    raise TrainingInterrupted(self.step, path, stop.signal_name)
        bar.close()
        return self.last_metrics

    def _log_train(self, loss: Tensor, grad_norm: Tensor, steps_per_second: float) -> None:
        record = {
            "event": "train",
            "step": self.step,
            "loss": float(dd.mean_over_ranks(loss)),
            "grad_norm": float(grad_norm),
            "lr": self.lr_at(self.step - 1),
            "steps_per_second": steps_per_second,
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"training loss became {record['loss']} at step {self.step}")
        self.last_loss = record["loss"]
        self.log(record)

    def _best_text(self) -> str:
        return "-" if self.best_val is None else f"{self.best_val:.3f}@{self.best_step}"

    # ---- files (written by the main process only) -------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON record to ``<out>/metrics.jsonl`` (main process, when there is an out_dir).

        The line goes out in one write; if that fails (a full disk), the file is cut back to where it
        was, so the log never holds a partial line, and the error propagates.
        """
        if not self.is_main or self.out_dir is None:
            return
        path = self.out_dir / "metrics.jsonl"
        line = (json.dumps({**record, "time": time.time()}) + "\n").encode("utf-8")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            before = os.fstat(fd).st_size
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(f"short write to {str(path)!r}")
            except BaseException:
                os.ftruncate(fd, before)
                raise
        finally:
            os.close(fd)

    def _metrics_bytes(self) -> int:
        path = None if self.out_dir is None else self.out_dir / "metrics.jsonl"
        return path.stat().st_size if path is not None and path.is_file() else 0

    def _truncate_log(self, size: int) -> None:
        """Cut ``metrics.jsonl`` back to ``size`` bytes, its length when the resumed checkpoint was
        written: the records of the steps taken after it (and any line cut short) go, the others stay."""
        path = None if self.out_dir is None else self.out_dir / "metrics.jsonl"
        if not self.is_main or path is None or not path.is_file() or path.stat().st_size <= size:
            return
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def state(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """Everything needed to resume: ``(tensor groups, JSON state)`` for :func:`save_checkpoint`.

        Under torch.distributed every process must call it: the global RNG states of all processes
        are gathered (``rng["torch_ranks"]``, ``rng["cuda_ranks"]``, in rank order, beside rank 0's in
        ``rng["torch"]`` / ``rng["cuda"]``).
        """
        opt_tensors, opt_info = optimizer_state_to_tensors(self.optimizer.state_dict())
        groups = {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": opt_tensors}
        if self.best_state is not None:
            groups["best_ema"] = self.best_state
        mine = {"torch": torch.get_rng_state().tolist()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device).tolist()
        states = dd.all_gather_objects(mine)
        rng: dict[str, Any] = {"noise": generator_state(self.noise_generator), **states[0]}
        if self.world_size > 1:
            rng.update({f"{key}_ranks": [s[key] for s in states] for key in mine})
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
            "metrics_bytes": dd.broadcast_object(self._metrics_bytes()),
            "log_window": [float(self._window[0]), float(self._window[1]), int(self._window[2])],
        }
        return groups, state

    def load_state(self, groups: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        """Restore :meth:`state` output (model, EMA, optimizer, RNGs, step, best weights).

        Raises:
            ValueError: the checkpoint is not a training checkpoint, lacks a tensor file, or its tensors
                do not fit the model or the optimizer (the message names the file).
        """
        if state.get("format") != "diffscore.train":
            raise ValueError(
                "not a diffscore training checkpoint (state.json has no format 'diffscore.train')"
            )
        for name in ("model", "ema", "optimizer"):
            if name not in groups:
                raise ValueError(f"checkpoint has no {name}.safetensors")
        if state["best"]["step"] >= 0 and "best_ema" not in groups:
            raise ValueError("checkpoint has no best_ema.safetensors but records a best step")
        optimizer = optimizer_state_from_tensors(groups["optimizer"], state["optimizer"])
        self._check_optimizer_state(optimizer)
        try:
            self.model.load_state_dict(groups["model"])
            self.ema.load_state_dict(groups["ema"])
            if "best_ema" in groups:
                self.best_state = {k: v.to(self.device) for k, v in groups["best_ema"].items()}
                self.best_model()  # checks that the tensors fit
            self.optimizer.load_state_dict(optimizer)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"checkpoint does not fit the model of its config: {err}") from err
        rng = state["rng"]
        set_generator_state(self.noise_generator, rng["noise"])
        self.step = int(state["step"])
        if int(state.get("world_size", 1)) == self.world_size:
            # as many processes as before: each resumes its own global RNG stream exactly
            many = self.world_size > 1
            cpu_state = rng["torch_ranks"][self.rank] if many else rng["torch"]
            torch.set_rng_state(torch.tensor(cpu_state, dtype=torch.uint8))
            if "cuda" in rng and self.device.type == "cuda":
                cuda_state = rng["cuda_ranks"][self.rank] if many else rng["cuda"]
                torch.cuda.set_rng_state(torch.tensor(cuda_state, dtype=torch.uint8), self.device)
        else:
            # another number of processes: fresh per-process streams (they drive dropout only; the data
            # order and the training noise continue unchanged)
            torch.manual_seed(dd.sample_seed(self._seed(2), self.step, self.rank))
        self.best_val, self.best_step = state["best"]["val_bpd"], int(state["best"]["step"])
        self.last_metrics = dict(state.get("metrics", {}))
        if "metrics_bytes" in state:
            self._truncate_log(int(state["metrics_bytes"]))
        loss_sum, norm_sum, count = state.get("log_window", (0.0, 0.0, 0))
        if count:  # the sums were tensors of the model's dtype: they go on as such
            loss_sum, norm_sum = (
                torch.tensor(v, dtype=self.dtype, device=self.device) for v in (loss_sum, norm_sum)
            )
        self._window = [loss_sum, norm_sum, int(count)]

    def _check_optimizer_state(self, optimizer: dict[str, Any]) -> None:
        """Refuse an optimizer state whose tensors do not fit the parameters (torch would fail only at
        the next step)."""
        params = list(self.model.parameters())
        sizes = [len(g.get("params", ())) for g in optimizer["param_groups"]]
        if sizes != [len(g["params"]) for g in self.optimizer.param_groups]:
            raise ValueError(f"optimizer.safetensors has parameter groups of {sizes}; the model needs others")
        for pid, entries in optimizer["state"].items():
            if not 0 <= pid < len(params):
                raise ValueError(f"optimizer.safetensors has a state for parameter {pid} of {len(params)}")
            for key, value in entries.items():
                if not isinstance(value, Tensor):
                    continue
                want = tuple(params[pid].shape)
                if value.numel() != 1 if key == "step" else tuple(value.shape) != want:
                    raise ValueError(
                        f"optimizer.safetensors: state.{pid}.{key} has shape {tuple(value.shape)}, "
                        f"the parameter needs {want}"
                    )

    def save_checkpoint(self) -> Path | None:
        """Write ``<out>/checkpoints/step_<step>`` atomically and delete all but the newest
        ``keep_checkpoints``. Under torch.distributed every process calls it: the main process writes
        while the others wait at a barrier. Returns the path (None where nothing was written)."""
        if self.out_dir is None or self.config.keep_checkpoints == 0:
            return None
        groups, state = self.state()
        path = None
        if self.is_main:
            root = self.out_dir / "checkpoints"
            path = save_checkpoint(claim(root / f"step_{self.step:08d}"), groups, state)
            for old in list_checkpoints(root)[: -self.config.keep_checkpoints]:
                try:
                    remove_owned(old)  # renamed away first: never a half-deleted checkpoint under its name
                except FileExistsError as err:  # a file of the user's inside: keep the whole checkpoint
                    warnings.warn(f"kept an old checkpoint: {err}", stacklevel=2)
        dd.barrier()
        return path

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        out_dir: str | os.PathLike | None = None,
        *,
        config: TrainConfig | None = None,
        **kwargs: Any,
    ) -> Trainer:
        """A trainer restored from the checkpoint directory ``path``.

        Its config is the checkpoint's, or ``config`` where that changes only resumable fields
        (:func:`~diffscore.training.config.resumed_config`: e.g. more ``steps``).

        ``kwargs`` go to the constructor (device, dtype, data, progress, bf16). Under torch.distributed
        every process calls it with the same ``path`` (on a file system they share), with any number of
        processes that divides ``batch_size``.

        Raises:
            FileNotFoundError: missing checkpoint. ValueError: corrupt or mismatched checkpoint.
        """
        groups, state = load_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"])
        if state["step"] > saved.steps:
            where = str(Path(path) / "state.json")
            raise ValueError(f"{where!r}: step {state['step']} lies beyond the run's {saved.steps} steps")
        config = resumed_config(saved, config, state["step"])
        trainer = cls(config, out_dir, **kwargs)
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
            directory = claim(self.out_dir / "model")
        return self.best_model().save_pretrained(directory, metadata=self.metadata())
