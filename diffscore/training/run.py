"""The ``diffscore train`` pipeline: train, export the selected EMA model, evaluate it, draw samples.

:func:`train` is a short script of named steps: open the output folder (fresh, resumed or
overwritten), train, export the model, score the test split in bits/dim beside the closed-form Gaussian
baseline, draw samples, and write ``results.json``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import distributed as dd
from ..data import save_image_grid
from ..evaluation import (
    digits_evaluator,
    evaluate_bound,
    evaluate_bpd,
    format_quality_report,
    gaussian_baseline_bpd,
    generate_samples,
    quality_report,
    summarize,
)
from ..io import (
    LOCK,
    check_removable,
    claim,
    lock_directory,
    owns,
    remove_owned,
    remove_temporaries,
    write_json,
    write_tensors,
)
from ..sampling import sample
from ..sde import sde_from_config
from .bound_model import BoundTrainingConfig, train_bound_model
from .checkpoints import latest_checkpoint
from .config import TrainConfig, load_splits
from .trainer import Trainer

__all__ = ["train", "RUN_FILES"]


#: What a training run writes in its folder (each claimed in the folder's manifest before it is written).
RUN_FILES = (
    "train_config.json",
    "metrics.jsonl",
    "checkpoints",
    "model",
    "results.json",
    "samples.png",
    "samples.safetensors",
    "digits_classifier",
    "bound_model",
)


def train(
    config: TrainConfig | None,
    out_dir: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    bf16: bool = False,
) -> dict[str, Any]:
    """Train, export the selected EMA model, evaluate it on the test split and draw samples.

    Writes under ``out_dir``: ``train_config.json``, ``checkpoints/step_*``, ``metrics.jsonl``, ``model/``
    (:meth:`~diffscore.ScoreModel.save_pretrained`), ``samples.png`` (a grid of ``num_samples``),
    ``samples.safetensors`` (``samples`` float, ``samples_int`` bins) and ``results.json``.

    The test evaluation reports bits/dim (``test_divergence``, uniform dequantization, ``num_bins`` and
    ``data_range`` of the data, every test image unless ``test_limit``) as mean, median and worst,
    beside the closed-form bits/dim of a full-covariance Gaussian fit
    (:func:`diffscore.evaluation.gaussian_baseline_bpd`).

    The folder is diffscore's only where its manifest says so: every name above is claimed
    (:func:`diffscore.io.claim`) before it is written, ``overwrite`` deletes only what a run wrote, and
    other files in the folder are never touched. One process at a time trains into a folder
    (:func:`diffscore.io.lock_directory`); on start, the leftovers of writes that a killed run never
    finished are cleaned up (:func:`diffscore.io.remove_temporaries`).

    Under torch.distributed (a process group started by the caller, e.g. with
    :func:`diffscore.distributed.init_distributed`) every process calls this with the same arguments
    and an ``out_dir`` they share: training is data-parallel on the global batch ``config.batch_size``,
    the evaluations and sampling are split over the processes, and only the main process writes files
    and calls ``echo``. A run resumes on any number of processes (docs/distributed.md).

    ``config.objective == "ncsn"`` runs :func:`diffscore.training.ncsn.train_ncsn` instead (one process,
    no resume).

    Args:
        config: the run's config. With ``resume`` it may be None (the checkpoint's is used) or the
            checkpoint's with changes to :data:`diffscore.training.config.RESUMABLE` fields only (e.g. a
            larger ``steps`` to train further).
        resume: continue from the newest checkpoint in ``out_dir/checkpoints``.
        overwrite: start afresh although ``out_dir`` holds a run (what the run wrote is deleted).
        bf16: train under bf16 autocast (:func:`diffscore.training.check_bf16`).

    Raises:
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set, or holds
            a file of a run's names that diffscore did not write.
        FileNotFoundError: ``resume`` and no complete checkpoint to resume from.
        BlockingIOError: another process is training into ``out_dir``.
        ValueError: ``resume`` with a config that changes more than the resumable fields.
        TrainingInterrupted: SIGINT or SIGTERM stopped training after saving a checkpoint.

    Returns:
        The results dict (also written to ``results.json``).
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    out = Path(out_dir)
    if not dd.current().is_main:
        progress, echo = False, _silent
    with _run_folder(out):
        if config is not None and config.objective == "ncsn":  # NCSN RefineNet: own loop, no likelihood
            from .ncsn import train_ncsn

            if resume or dd.current().world_size > 1:
                raise ValueError("objective='ncsn' runs in one process and does not resume")
            _start_fresh(out, overwrite)
            return train_ncsn(config, out, device=device, dtype=dtype, progress=progress, echo=echo)
        return _train_score_model(config, out, resume, overwrite, progress, echo, device, dtype, bf16)


def _train_score_model(
    config: TrainConfig | None,
    out: Path,
    resume: bool,
    overwrite: bool,
    progress: bool,
    echo: Callable[[str], None],
    device: torch.device | str | None,
    dtype: torch.dtype,
    bf16: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    kwargs = dict(device=device, dtype=dtype, progress=progress, bf16=bf16)
    trainer = _open_run(config, out, resume, overwrite, echo, **kwargs)
    _announce(trainer, echo)
    trainer.fit()
    train_seconds = time.perf_counter() - start
    model_dir = trainer.export()
    model = trainer.best_model()
    evaluation = _evaluate_test(trainer, model, progress)
    likelihood = _likelihood_model(trainer, out, progress)
    grid, samples_int = _draw_samples(trainer, model, out)
    quality = _sample_quality(trainer, samples_int, out, echo)
    results = _results(trainer, evaluation, grid, train_seconds, time.perf_counter() - start)
    if quality is not None:
        results["sample_quality"] = quality
    if likelihood is not None:
        results["likelihood_model"] = likelihood
    if trainer.is_main:
        write_json(claim(out / "results.json"), results)
    _report(trainer, results, model_dir, echo)
    dd.barrier()  # no process returns while the main one still writes
    return results


@contextmanager
def _run_folder(out: Path) -> Iterator[None]:
    """Hold the run folder's lock (main process; all processes learn whether it was had), check that no
    run name is taken by a file diffscore did not write, and clean up after killed writes."""
    main = dd.current().is_main
    with ExitStack() as stack:
        error: Exception | None = None
        if main:
            try:
                _check_names(out)  # before the lock file is written: a refused folder stays as it was
                stack.enter_context(lock_directory(out, "training run folder"))
                _check_names(out)
                remove_temporaries(out)
                remove_temporaries(out / "checkpoints")
            except (OSError, ValueError) as err:
                error = err
        message = dd.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise OSError(f"the main process could not open {str(out)!r}: {message}")
        yield


def _check_names(out: Path) -> None:
    for name in (*RUN_FILES, LOCK):
        if ((out / name).exists() or (out / name).is_symlink()) and not owns(out / name):
            raise FileExistsError(
                f"{str(out / name)!r} exists and was not written by diffscore; move it away or choose "
                "another --out"
            )


def _start_fresh(out: Path, overwrite: bool) -> None:
    """Refuse to start over a previous run in ``out`` unless ``overwrite``, which deletes what it wrote."""
    # a run that failed before it trained (names claimed, at most its train_config.json written) is none
    previous = [name for name in RUN_FILES if owns(out / name) and (out / name).exists()]
    if previous in ([], ["train_config.json"]):
        return
    if not overwrite:
        raise FileExistsError(
            f"{str(out)!r} already holds a training run ({', '.join(previous)}); pass --resume to continue "
            "it or --overwrite to start over"
        )
    for name in previous:  # on every process, before any deletion: a file of the user's inside stops it
        check_removable(out / name)
    if dd.current().is_main:
        for name in previous:
            remove_owned(out / name)
    dd.barrier()


def _open_run(
    config: TrainConfig | None,
    out: Path,
    resume: bool,
    overwrite: bool,
    echo: Callable[[str], None],
    **kwargs: Any,
) -> Trainer:
    """A trainer for ``out``: resumed from its newest checkpoint, or fresh (after deleting the previous
    run with ``overwrite``); writes train_config.json."""
    if resume:
        ckpt = latest_checkpoint(out / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(
                f"nothing to resume: {str(out / 'checkpoints')!r} holds no complete checkpoint; "
                "run without --resume to start a new run"
            )
        trainer = Trainer.from_checkpoint(ckpt, out, config=config, **kwargs)
        _check_sampler(trainer.config)
        echo(f"resuming from {ckpt} (step {trainer.step} of {trainer.config.steps})")
    else:
        if config is None:
            raise ValueError("a new run needs a config")
        _check_sampler(config)  # before --overwrite deletes the previous run
        _start_fresh(out, overwrite)
        trainer = Trainer(config, out, **kwargs)
    if trainer.is_main:
        write_json(claim(out / "train_config.json"), trainer.config.to_dict())
    return trainer


def _check_sampler(config: TrainConfig) -> None:
    """Draw one 1-D sample with the run's ``sample_method`` and ``sample_options`` and the exact score of
    N(0, 1) data, so that a bad sampler setting stops the run before training, not after it (an ncsn
    run's annealed Langevin options are checked when it samples)."""
    if config.objective != "dsm":
        return
    sde = sde_from_config({"name": config.sde, **config.sde_options})

    def score(x: Tensor, t: Tensor) -> Tensor:
        alpha, std = sde.alpha_std(t)
        return -x / (alpha**2 + std**2)[:, None]

    try:
        with torch.random.fork_rng(devices=[]):  # the global RNG is the run's (a resumed one restored it)
            generator = torch.Generator().manual_seed(0)
            sample(
                sde, score, (1, 1), method=config.sample_method, generator=generator, **config.sample_options
            )
    except (TypeError, ValueError) as err:
        raise type(err)(f"sample_method / sample_options: {err}") from err


def _announce(trainer: Trainer, echo: Callable[[str], None]) -> None:
    cfg = trainer.config
    n_params = sum(p.numel() for p in trainer.model.parameters())
    split = (
        f" ({trainer.world_size} processes of {trainer.local_batch_size})" if trainer.world_size > 1 else ""
    )
    echo(
        f"training {cfg.net}{' + Gaussian residual' if cfg.gaussian_residual else ''} "
        f"({n_params} parameters) "
        f"on {cfg.dataset} ({len(trainer.train_data)} train / {len(trainer.val_data)} validation images), "
        f"{cfg.sde} SDE, {cfg.steps} steps of {cfg.batch_size}"
        f"{split}{', bf16 autocast' if trainer.bf16 else ''}"
    )


def _test_bpd(
    trainer: Trainer, model: torch.nn.Module, images: Tensor, progress: bool, desc: str, dequantization: str
) -> tuple[Tensor, int]:
    """Exact-ODE bits/dim of every test image under ``model`` with the run's evaluation options:
    ``(bpd (N,), nfe)``."""
    cfg = trainer.config
    res = evaluate_bpd(
        model,
        images,
        trainer.num_bins,
        trainer.data_range,
        divergence=cfg.test_divergence,
        seed=cfg.seed + 12345,
        batch_size=cfg.eval_batch_size,
        eps=cfg.likelihood_eps,
        rtol=cfg.rtol,
        atol=cfg.atol,
        progress=progress,
        desc=desc,
        dequantization=dequantization,
    )
    return res["bpd"], res["nfe"]


def _evaluate_test(trainer: Trainer, model: torch.nn.Module, progress: bool) -> dict[str, Any]:
    """Test bits/dim of ``model`` (logged to metrics.jsonl) beside the closed-form Gaussian baseline."""
    cfg = trainer.config
    test = trainer.test_data if trainer.test_data is not None else load_splits(cfg)["test"]
    test_images = test.images[: cfg.test_limit]
    start = time.perf_counter()
    bpd, nfe = _test_bpd(trainer, model, test_images, progress, "test bits/dim", "uniform")
    seconds = time.perf_counter() - start
    baseline = gaussian_baseline_bpd(
        trainer.train_data.images, test_images, trainer.num_bins, trainer.data_range
    )
    test_stats, base_stats = summarize(bpd), summarize(baseline)
    trainer.log(
        {"event": "test", "step": trainer.step, "divergence": cfg.test_divergence, **test_stats, "nfe": nfe}
    )
    trainer.log({"event": "gaussian_baseline", "step": trainer.step, **base_stats})
    return {"test": test_stats, "baseline": base_stats, "nfe": nfe, "seconds": seconds}


def _likelihood_model(trainer: Trainer, out: Path, progress: bool) -> dict[str, Any] | None:
    """With ``config.bound_model``: train the discrete-data likelihood model (main process), export it to
    ``<out>/bound_model``, and score the test split with its variational bound (ELBO) and its exact ODE
    likelihood under truncated-normal dequantization. None without ``bound_model`` or on other processes."""
    cfg = trainer.config
    if cfg.bound_model is None or not trainer.is_main:
        return None
    options = BoundTrainingConfig.from_dict(cfg.bound_model)
    device = trainer.device
    test = trainer.test_data if trainer.test_data is not None else load_splits(cfg)["test"]
    test_images = test.images[: cfg.test_limit].to(device)
    with torch.random.fork_rng(devices=[]):  # the sample model's run keeps its RNG stream
        model, info = train_bound_model(
            sde_from_config({"name": cfg.sde, **cfg.sde_options}),
            trainer.train_data.images.to(device),
            trainer.val_data.images.to(device),
            trainer.num_bins,
            trainer.data_range,
            options,
        )
    trainer.log({"event": "bound_model", **{k: v for k, v in info.items() if k != "history"}})
    metadata = {**trainer.metadata(), "decoder": "categorical", "val_bound_bpd": info["val_bpd"]}
    metadata.update(selected_step=info["best_step"], step=info["steps"])
    model.save_pretrained(claim(out / "bound_model"), metadata=metadata)
    start = time.perf_counter()
    bound = evaluate_bound(
        model, test_images, trainer.num_bins, trainer.data_range, n_samples=options.test_samples,
        eps=options.eps, seed=cfg.seed + 23456,
    )  # fmt: skip
    bound_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ode, ode_nfe = _test_bpd(
        trainer, model, test_images, progress, "test bits/dim (likelihood model)", "truncated_normal"
    )
    ode_seconds = time.perf_counter() - start
    result = {
        "train": {k: v for k, v in info.items() if k != "history"},
        "elbo": {**summarize(bound["bpd"]), "stderr_mean": bound["stderr_mean"], "nfe": bound["nfe"],
                 "samples": options.test_samples, "seconds": bound_seconds},
        "ode_truncated_normal": {**summarize(ode), "nfe": ode_nfe, "seconds": ode_seconds},
        "model": str(out / "bound_model"),
    }  # fmt: skip
    trainer.log(
        {"event": "test_likelihood_model", "elbo": result["elbo"], "ode": result["ode_truncated_normal"]}
    )
    return result


def _quality_samples(trainer: Trainer) -> int:
    """How many samples the digits FID / KID scores (0: no sample-quality report for this run)."""
    cfg = trainer.config
    return cfg.quality_samples if cfg.dataset == "digits" and trainer.is_main else 0


def _draw_samples(trainer: Trainer, model: torch.nn.Module, out: Path) -> tuple[Path, Tensor]:
    """Samples of ``model``: the first ``num_samples`` as ``samples.png`` (a grid), all of them (as many as
    the quality report needs) in ``samples.safetensors``. Each sample has its own seed, so the grid is
    the same however many are drawn. Returns the grid's path and the samples' bins."""
    cfg = trainer.config
    num = max(cfg.num_samples, dd.broadcast_object(_quality_samples(trainer)))
    samples, samples_int = generate_samples(
        model,
        num,
        trainer.image_shape,
        trainer.num_bins,
        trainer.data_range,
        cfg.sample_method,
        seed=cfg.seed,
        **cfg.sample_options,
    )
    grid = out / "samples.png"
    if trainer.is_main:
        nrow = math.ceil(math.sqrt(cfg.num_samples))
        save_image_grid(samples_int[: cfg.num_samples], claim(grid), nrow=nrow, num_bins=trainer.num_bins)
        tensors = {"samples": samples, "samples_int": samples_int}
        write_tensors(claim(out / "samples.safetensors"), tensors)
    return grid, samples_int


def _sample_quality(
    trainer: Trainer, samples_int: Tensor, out: Path, echo: Callable[[str], None]
) -> dict[str, Any] | None:
    """Digits FID / KID of the samples against the test split, beside the floor (as many train images)
    and the Gaussian fit's samples (:func:`diffscore.evaluation.quality_report`); the digits feature
    extractor is trained once and cached in ``<out>/digits_classifier``. None when not a digits run."""
    num = _quality_samples(trainer)
    if num == 0:
        return None
    cfg = trainer.config
    evaluator = digits_evaluator(
        claim(out / "digits_classifier"),
        seed=cfg.seed,
        split_seed=cfg.split_seed,
        data_range=trainer.data_range,
        echo=echo,
    )
    test = trainer.test_data if trainer.test_data is not None else load_splits(cfg)["test"]
    report = quality_report(
        evaluator, samples_int[:num], trainer.train_data.images, test.images, seed=cfg.seed
    )
    trainer.log({"event": "sample_quality", "step": trainer.step, **report})
    return report


def _results(
    trainer: Trainer, evaluation: dict[str, Any], grid: Path, train_seconds: float, total: float
) -> dict[str, Any]:
    cfg = trainer.config
    return {
        "dataset": cfg.dataset,
        "steps": trainer.step,
        "selected_step": trainer.best_step,
        "val_bpd": trainer.best_val,
        "test_bpd": evaluation["test"],
        "test_divergence": cfg.test_divergence,
        "test_nfe": evaluation["nfe"],
        "gaussian_baseline_bpd": evaluation["baseline"],
        "num_bins": trainer.num_bins,
        "data_range": list(trainer.data_range),
        "world_size": trainer.world_size,
        "bf16": trainer.bf16,
        "seconds": {"train": train_seconds, "test_eval": evaluation["seconds"], "total": total},
        "model": str(trainer.out_dir / "model"),
        "samples": str(grid),
    }


def _report(
    trainer: Trainer, results: dict[str, Any], model_dir: Path | None, echo: Callable[[str], None]
) -> None:
    cfg = trainer.config
    test, base, rng = results["test_bpd"], results["gaussian_baseline_bpd"], trainer.data_range
    echo(
        f"trained {trainer.step} steps in {results['seconds']['train']:.0f} s; selected EMA weights of step "
        f"{trainer.best_step} (validation {trainer.best_val:.3f} bits/dim, {cfg.val_divergence})"
    )
    echo(
        f"test bits/dim ({cfg.test_divergence} divergence, uniform dequantization, {trainer.num_bins} bins "
        f"on [{rng[0]:g}, {rng[1]:g}], {test['n']} images, {results['test_nfe']} NFE, "
        f"{results['seconds']['test_eval']:.0f} s): "
        f"mean {test['mean']:.3f}  median {test['median']:.3f}  "
        f"worst {test['worst']:.3f} (image {test['worst_index']})"
    )
    echo(
        f"Gaussian baseline (full-covariance fit to the dequantized train split, closed form): "
        f"mean {base['mean']:.3f}  median {base['median']:.3f}  worst {base['worst']:.3f}"
    )
    if "likelihood_model" in results:
        lm = results["likelihood_model"]
        elbo, ode, tr = lm["elbo"], lm["ode_truncated_normal"], lm["train"]
        echo(
            f"likelihood model (bin-posterior denoiser, variational-bound training, selected step "
            f"{tr['best_step']} of {tr['steps']}, {tr['seconds']:.0f} s; validation bound "
            f"{tr['val_bpd']:.3f})"
        )
        echo(
            f"test bits/dim, variational bound (ELBO with categorical decoder, as DDPM / VDM report; "
            f"{elbo['samples']} draws per image, {elbo['seconds']:.0f} s): mean {elbo['mean']:.3f} "
            f"(+- {elbo['stderr_mean']:.3f})  median {elbo['median']:.3f}  "
            f"worst {elbo['worst']:.3f} (image {elbo['worst_index']})"
        )
        echo(
            f"test bits/dim, exact ODE of the same model ({cfg.test_divergence} divergence, truncated-normal "
            f"dequantization as i-DODE, {ode['nfe']} NFE, {ode['seconds']:.0f} s): mean {ode['mean']:.3f}  "
            f"median {ode['median']:.3f}  worst {ode['worst']:.3f} (image {ode['worst_index']})"
        )
    if "sample_quality" in results:
        echo(format_quality_report(results["sample_quality"]))
    out = trainer.out_dir
    echo(
        f"wrote {model_dir}, {out / 'metrics.jsonl'}, {results['samples']}; "
        f"total time {results['seconds']['total']:.0f} s"
    )


def _silent(message: str) -> None:
    """The ``echo`` of the processes other than the main one: says nothing."""
