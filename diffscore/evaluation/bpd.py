"""Bits/dim over a dataset: the model's exact likelihood per image, summaries, and a closed-form baseline.

:func:`evaluate_bpd` runs the exact ODE bits/dim (:func:`diffscore.bits_per_dim`, or another
dequantization) over every image of a dataset in batches, each image with its own seeded generator (its
dequantization noise and probe do not depend on its batch-mates), split over the processes of a torchrun
job when there is one; :func:`evaluate_bound` does the same for the variational bound.
:func:`gaussian_baseline_bpd` is the bits/dim of the full-covariance Gaussian fit, in closed form: the
number a score model must beat.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import distributed as dd
from .._checks import check_data_range, check_int, check_solve_eps
from ..bound import likelihood_bound
from ..data import gaussian_moments
from ..dequantization import TruncatedNormalDequantizer, UniformDequantizer, dequantized_bits_per_dim
from ..score import ScoreModel
from .progress import SolveProgress

__all__ = ["evaluate_bpd", "evaluate_bound", "gaussian_baseline_bpd", "summarize", "DEQUANTIZATIONS"]

#: Dequantizations of :func:`evaluate_bpd`.
DEQUANTIZATIONS = ("uniform", "truncated_normal")


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
    shard: bool = True,
    errors: str = "raise",
    dequantization: str = "uniform",
    n_samples: int = 1,
) -> dict[str, Tensor | float | int]:
    """Bits/dim of every image of ``x_int`` under ``model`` from the exact ODE likelihood with the
    chosen dequantization (:func:`diffscore.dequantized_bits_per_dim`; with ``n_samples = 1`` and
    uniform dequantization, :func:`diffscore.bits_per_dim`).

    Each image gets its own generator, seeded ``seed + i`` for image i, for its dequantization noise
    (and Hutchinson probe), so a result does not depend on ``batch_size`` or on the other images in
    its batch beyond the solver tolerance (the solver shares a step size across a batch and meets the
    tolerance for every image).

    Under torch.distributed (``shard=True`` and more than one process) every process must call this
    with the same arguments: each solves its share of the batches
    (:func:`diffscore.distributed.shard_batches`; with at least as many batches as processes these are
    the very batches of a single process, so the values are the same) and every process receives all
    N values in order. The model is used as given (pass the plain module, not a DDP wrapper) and no
    collective runs inside a solve, so processes that need different NFE cannot deadlock.

    Args:
        model: the score model (its device and dtype are used).
        x_int: (N, C, H, W) integers in {0, ..., num_bins - 1}.
        divergence: "exact" or "hutchinson" (one Rademacher probe per image, fixed in a solve).
        batch_size: images per ODE solve. eps, rtol, atol, method: as in :func:`diffscore.log_likelihood`.
        shard: split the work over the processes of a running process group (False: this process
            evaluates every image).
        errors: "raise" (a FloatingPointError of a solve, e.g. an implausibly large score, ends the
            evaluation) or "nan" (the images of that batch get NaN and the others go on: how a trainer
            validates a model that may have gone bad without stopping, and without leaving the other
            processes of a torchrun job waiting).
        n_samples: dequantization draws per image: the importance-weighted bound over them, and the
            standard error of their mean (with one draw there is none: ``stderr`` is inf).
        dequantization: "uniform" (:func:`diffscore.bits_per_dim`) or "truncated_normal": N(1/2, s^2)
            truncated to the bin, s = std(eps) / bin width, the width the model's density has around a
            bin centre when it puts its mass on the centres (Zheng et al. 2023;
            :func:`diffscore.dequantized_bits_per_dim`).

    Returns:
        ``{"bpd": (N,), "stderr": (N,)}`` on the CPU in bits/dim, ``"stderr_mean"`` (the standard error
        of the mean over the images) and ``"nfe"`` (score evaluations summed over the solves of all
        batches, draws and processes), the keys of :func:`evaluate_bound`.

    Raises:
        ValueError: an unknown ``errors`` or ``dequantization``; with truncated-normal dequantization,
            an ``eps`` whose std(eps) is below 1e-6 bin widths. And the errors of
            :func:`diffscore.bits_per_dim` / :func:`diffscore.dequantized_bits_per_dim`.
    """
    p = next(iter(model.parameters()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())
    n = x_int.shape[0]
    mine = dd.shard_batches(n, batch_size) if shard else dd.shard_batches(n, batch_size, 0, 1)
    bar = SolveProgress(desc, sum(len(b) for b in mine), progress)
    score = bar.wrap(model)
    nfe = 0

    if errors not in ("raise", "nan"):
        raise ValueError(f"errors must be 'raise' or 'nan', got {errors!r}")
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {dequantization!r}")
    q = UniformDequantizer()
    if dequantization == "truncated_normal":
        lo, hi = check_data_range(data_range)
        std_eps = float(
            model.sde.var(torch.tensor([check_solve_eps(model.sde, eps)], dtype=torch.float64)).sqrt()
        )
        scale = std_eps * num_bins / (hi - lo)
        if not scale >= 1e-6:
            raise ValueError(
                f"eps={eps:g} is too small for truncated-normal dequantization: std(eps) is {scale:.3g} bin "
                "widths (at least 1e-6 needed)"
            )
        q = TruncatedNormalDequantizer(scale)

    def batch_bpd(indices: range) -> Tensor:
        """(len(indices), 2): bits/dim and its standard error per image."""
        nonlocal nfe
        chunk = x_int[indices.start : indices.stop].to(device)
        gens = [torch.Generator(device).manual_seed(seed + i) for i in indices]
        try:
            res = dequantized_bits_per_dim(
                model.sde, score, chunk, num_bins, data_range, q, n_samples, gens, dtype,
                divergence=divergence, eps=eps, rtol=rtol, atol=atol, method=method,
            )  # fmt: skip
        except FloatingPointError:
            if errors == "raise":
                raise
            return torch.full((len(indices), 2), math.nan)
        finally:
            bar.advance(len(indices))
        nfe += res.nfe
        return torch.stack([res.bpd, res.stderr], 1).detach().cpu()

    if shard:
        values = dd.map_sharded(batch_bpd, n, batch_size)
        nfe = dd.sum_over_ranks(nfe)
    else:
        values = torch.cat([batch_bpd(b) for b in mine])
    bar.close()
    return _evaluation(values[:, 0], values[:, 1], nfe)


def _evaluation(bpd: Tensor, stderr: Tensor, nfe: int) -> dict[str, Tensor | float | int]:
    """The dict of :func:`evaluate_bpd` and :func:`evaluate_bound`; images' errors are independent, so
    the standard error of the mean is ``sqrt(sum stderr_i^2) / N``."""
    return {
        "bpd": bpd,
        "stderr": stderr,
        "stderr_mean": float(stderr.double().square().sum().sqrt()) / stderr.numel(),
        "nfe": nfe,
    }


def evaluate_bound(
    model: ScoreModel,
    x_int: Tensor,
    num_bins: int,
    data_range: tuple[float, float],
    *,
    n_samples: int = 256,
    eps: float = 1e-5,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Tensor | float | int]:
    """The variational bound (:func:`diffscore.likelihood_bound`) of every image of ``x_int`` under
    ``model``, each image with its own generator seeded ``seed + i``, in batches (one process).

    Returns:
        ``{"bpd": (N,), "stderr": (N,)}`` on the CPU in bits/dim, ``"stderr_mean"`` (the standard error
        of the mean over the images) and ``"nfe"`` (score evaluations per image).

    The importance density over the log-SNR is fitted on each batch (:func:`diffscore.likelihood_bound`),
    so an image's draws, not their expectation, depend on its batch-mates.

    Raises:
        ValueError: ``batch_size`` not an int >= 1, and the errors of :func:`diffscore.likelihood_bound`.
    """
    check_int("batch_size", batch_size, 1, value_error=True)
    p = next(iter(model.parameters()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())
    bpd, stderr, nfe = [], [], 0
    for start in range(0, x_int.shape[0], batch_size):
        chunk = x_int[start : start + batch_size].to(device)
        gens = [torch.Generator(device).manual_seed(seed + start + i) for i in range(chunk.shape[0])]
        res = likelihood_bound(
            model.sde, model, chunk, num_bins, data_range, n_samples=n_samples, eps=eps, generator=gens,
            dtype=dtype,
        )  # fmt: skip
        bpd.append(res.bpd.cpu())
        stderr.append(res.bpd_stderr.cpu())
        nfe = res.nfe
    return _evaluation(torch.cat(bpd), torch.cat(stderr), nfe)


def gaussian_baseline_bpd(
    train_int: Tensor,
    test_int: Tensor,
    num_bins: int,
    data_range: tuple[float, float],
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Bits/dim of ``test_int`` under the full-covariance Gaussian fit to the dequantized training data.

    The fit is the maximum-likelihood Gaussian of the dequantized training distribution
    (:func:`diffscore.data.gaussian_moments`). For a test image with cell centres m (the image mapped
    to ``data_range``) the dequantized point is ``y = m + s v`` with ``v ~ U[-1/2, 1/2)^D`` and
    ``s = (hi - lo) / num_bins``, so the expected negative log-density over the dequantization noise is,
    in closed form,

        E_v[-log N(y; mu, Sigma)] = (D log 2 pi + log det Sigma + (m - mu)^T P (m - mu) + s^2 tr(P) / 12) / 2

    with ``P = Sigma^{-1}``; the bits/dim is that divided by ``D ln 2`` plus ``log2(num_bins) -
    log2(hi - lo)``, the same offset as :func:`diffscore.bits_per_dim`.

    Computed in float64 unless ``dtype`` says otherwise: with many bins the dequantization term
    ``s^2 I / 12`` is tiny beside the data covariance (16-bit images: 1e-10), and in float32 a fit to
    fewer images than dimensions is then not numerically positive definite.

    Returns:
        (N,) bits/dim of the test images, in ``dtype`` (default float64).
    """
    dtype = dtype or torch.float64
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
