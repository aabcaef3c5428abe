"""Accuracy and cost of the core solves against exact answers (Gaussian-mixture oracle, VP SDE).

    python benchmarks/bench_core.py [--csv out.csv] [--device cpu] [--dtype float32]

For a 3-component mixture shaped (1, 8, 8) (D = 64) and (3, 32, 32) (D = 3072), with the exact score:

* log_likelihood (exact divergence, Hutchinson with one probe) at a few tolerances: NFE, wall time and
  the per-sample error of the ODE part ``delta_logp`` against the exact change ``log p_eps(x) - log
  p_T(z)`` in bits/dim (mean and max of |error|, and the signed mean with its standard error, which is
  the estimator's bias), next to the prior mismatch ``prior_logp(z) - log p_T(z)`` that the ODE cannot
  remove. Exact divergence in D = 3072 costs 3072 vector-Jacobian products per evaluation (in chunks
  of 512), so it is solved for one sample.
* sample(method="ode" | "sde") at a few tolerances / step counts: NFE, wall time, the gap between the
  mean true log-density per dimension ``log p_eps(x) / D`` of the samples and of exact draws of p_eps
  (with its standard error), and the largest error of the mixture weights recovered by classifying each
  sample with ``oracle.posterior`` (with the binomial standard error of a weight near 1/2).

Timings are wall-clock on whatever machine runs this (and whatever else runs on it).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable

import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import default_eps

WEIGHTS = (0.2, 0.3, 0.5)
DEFAULT_SOLVER = {"ode": "dopri5", "sde": "euler"}
LIKELIHOOD_EPS = 1e-5
LIKELIHOOD_COLUMNS = "D divergence tol n nfe wall_s err_mean err_max bias bias_se prior_mismatch".split()
SAMPLING_COLUMNS = "D method tol/steps n nfe wall_s logp_gap gap_se weight_err weight_se".split()


def mixture(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = 0.8 * (2 * torch.rand((len(WEIGHTS),) + shape, generator=g, dtype=torch.float64) - 1)
    return GaussianMixture(torch.tensor(WEIGHTS, dtype=torch.float64), means, 0.3).to(device, dtype)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def log_prob_chunked(
    oracle: GaussianMixture, x: torch.Tensor, sde, t: float, chunk: int = 500
) -> torch.Tensor:
    return torch.cat([oracle.log_prob(x[i : i + chunk], sde, t) for i in range(0, x.shape[0], chunk)])


def likelihood_rows(oracle, sde, n: int, settings, device, chunk_size: int | None = None) -> list[dict]:
    d, rows = oracle.dim, []
    x = oracle.sample(n, torch.Generator(device).manual_seed(1), sde=sde, t=LIKELIHOOD_EPS)
    log_p_eps = oracle.log_prob(x, sde, LIKELIHOOD_EPS).double()
    for divergence, probe, tol in settings:
        kw = dict(
            divergence=divergence, probe=probe, eps=LIKELIHOOD_EPS, rtol=tol, atol=tol, chunk_size=chunk_size
        )
        out, wall = timed(
            lambda kw=kw: ds.log_likelihood(
                sde, oracle.score_fn(sde), x, generator=torch.Generator(device).manual_seed(2), **kw
            )
        )
        log_pT = oracle.log_prob(out.z, sde, sde.T).double()
        err = (out.delta_logp.double() - (log_p_eps - log_pT)) / (d * math.log(2))
        mismatch = (out.prior_logp.double() - log_pT) / (d * math.log(2))
        name = divergence if divergence == "exact" else f"hutchinson-{probe}"
        rows.append(
            dict(
                table="log_likelihood", D=d, divergence=name, tol=tol, n=n, nfe=out.nfe, wall_s=wall,
                err_mean=float(err.abs().mean()), err_max=float(err.abs().max()), bias=float(err.mean()),
                bias_se=float(err.std()) / math.sqrt(n) if n > 1 else float("nan"),
                prior_mismatch=float(mismatch.abs().mean()),
            )
        )  # fmt: skip
    return rows


def sampling_rows(oracle, sde, n: int, n_exact: int, settings, device, dtype) -> list[dict]:
    d, eps, rows = oracle.dim, default_eps(sde), []
    exact = oracle.sample(n_exact, torch.Generator(device).manual_seed(3), sde=sde, t=eps)
    ref = log_prob_chunked(oracle, exact, sde, eps).double() / d
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    for method, opts in settings:
        stats: dict = {}
        x, wall = timed(
            lambda method=method, opts=opts, stats=stats: ds.sample(
                sde, oracle.score_fn(sde), (n,) + oracle.event_shape, method=method,
                generator=torch.Generator(device).manual_seed(4), device=device, dtype=dtype, stats=stats,
                **opts,
            )
        )  # fmt: skip
        lp = log_prob_chunked(oracle, x, sde, eps).double() / d
        labels = torch.cat([oracle.posterior(x[i : i + 500], sde, eps).argmax(1) for i in range(0, n, 500)])
        w_hat = torch.bincount(labels.cpu(), minlength=len(WEIGHTS)).double() / n
        gap = float(lp.mean() - ref.mean())
        se = math.sqrt(float(lp.var()) / n + float(ref.var()) / n_exact)
        rows.append(
            dict(
                table="sample", D=d, method=f"{method}-{opts.get('solver', DEFAULT_SOLVER[method])}",
                **{"tol/steps": opts.get("rtol", opts.get("num_steps"))}, n=n, nfe=stats["nfe"], wall_s=wall,
                logp_gap=gap, gap_se=se, weight_err=float((w_hat - weights).abs().max()),
                weight_se=math.sqrt(0.25 / n),
            )
        )  # fmt: skip
    return rows


def fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else (f"{v:.2f}" if v >= 1 else f"{v:.1e}")
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sde = ds.VPSDE()
    small, large = mixture((1, 8, 8), device, dtype), mixture((3, 32, 32), device, dtype)

    rows = []
    rows += likelihood_rows(
        small, sde, 16,
        [("exact", "rademacher", 1e-3), ("exact", "rademacher", 1e-5),
         ("hutchinson", "rademacher", 1e-3), ("hutchinson", "rademacher", 1e-5),
         ("hutchinson", "gaussian", 1e-5)],
        device,
    )  # fmt: skip
    rows += likelihood_rows(
        large, sde, 8, [("hutchinson", "rademacher", 1e-3), ("hutchinson", "rademacher", 1e-5)], device
    )
    # exact divergence in D = 3072: 3072 vector-Jacobian products per evaluation, so one sample
    rows += likelihood_rows(large, sde, 1, [("exact", "rademacher", 1e-4)], device, chunk_size=512)
    lik, rows = rows, []
    rows += sampling_rows(
        small, sde, 1000, 20_000,
        [("ode", dict(rtol=1e-3, atol=1e-3)), ("ode", dict(rtol=1e-5, atol=1e-5)),
         ("sde", dict(num_steps=100)), ("sde", dict(num_steps=1000))],
        device, dtype,
    )  # fmt: skip
    rows += sampling_rows(
        large, sde, 100, 2000,
        [("ode", dict(rtol=1e-3, atol=1e-3)), ("ode", dict(rtol=1e-5, atol=1e-5)),
         ("sde", dict(num_steps=100)), ("sde", dict(num_steps=500))],
        device, dtype,
    )  # fmt: skip

    print(f"diffscore core benchmark: VP SDE, exact (oracle) score, {args.dtype} on {device}\n")
    print("log_likelihood: error of delta_logp against the exact log p_eps(x) - log p_T(z), bits/dim per")
    print(
        "sample (mean and max of |error|; bias = mean signed error, with its standard error); prior_mismatch"
    )
    print("= mean |prior_logp(z) - log p_T(z)| in bits/dim, which no solver tolerance removes.")
    table(lik, LIKELIHOOD_COLUMNS)
    print("\nsample: logp_gap = mean log p_eps(x) / D of the samples minus that of exact draws (nats/dim),")
    print("with its standard error; weight_err = largest error of the mixture weights recovered with")
    print("oracle.posterior, with the binomial standard error of a weight near 1/2.")
    table(rows, SAMPLING_COLUMNS)
    if args.csv:
        fields = ["table"] + list(dict.fromkeys(LIKELIHOOD_COLUMNS + SAMPLING_COLUMNS))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(lik + rows)


def table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(fmt(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


if __name__ == "__main__":
    main()
