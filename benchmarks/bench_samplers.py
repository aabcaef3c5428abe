"""Sample quality against NFE for every sampler, on Gaussian mixtures with their exact score.

    python benchmarks/bench_samplers.py [--quick] [--out DIR] [--threads N]

Tables (printed, and written as CSV to ``--out``):

* ``fast_ode_error``: the fast probability-flow samplers (heun, dpm_solver) against the probability
  flow solved tightly (dopri5, rtol = atol = 1e-7, float64) from the same x_T, D = 64: RMS distance
  against NFE, for VE / VP / sub-VP and mixtures whose components have std 0.05, 0.1, 0.3 and 0.5
  (the error grows with the component std: the rho = 7 grid is coarse in relative terms at large
  sigma). ``fast_ode_nfe_at_1e-2`` lists the smallest NFE of each curve with RMS <= 1e-2.
* ``sampler_quality``: every sampler (pc, the reverse SDE with each torchsde method, torchsde's
  adaptive stepping, sde_adaptive, the probability flow with adaptive and fixed-step torchdiffeq
  solvers, heun, dpm_solver) on D = 64 and D = 3072 (3 x 32 x 32): NFE, wall time, the gap between the
  mean true log-density per dimension ``log p_eps(x) / D`` of the samples and of exact draws from p_eps
  (nats; with its standard error), and the largest error of the mixture weights recovered by
  classifying each sample with ``oracle.posterior`` (with the binomial standard error at w = 0.5).

Mixture: weights (0.2, 0.3, 0.5), means uniform in [-1, 1]^D (seed 0), isotropic component std 0.05
unless stated. Samples are compared at eps (no denoising step) for every sampler.
Timings are wall-clock on a shared machine: treat them as rough.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import METHODS, default_eps
from diffscore.sde import SDE, VESDE, VPSDE, SubVPSDE

WEIGHTS = (0.2, 0.3, 0.5)
F64 = torch.float64


# ---- shared helpers (also used by bench_overhead.py) -----------------------------------------------------


def mixture(shape: Sequence[int], std: float = 0.05, dtype: torch.dtype = F64) -> GaussianMixture:
    """The benchmark mixture: weights (0.2, 0.3, 0.5), means uniform in [-1, 1] (seed 0), std ``std``."""
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.rand((len(WEIGHTS), *shape), generator=g, dtype=F64) - 1
    return GaussianMixture(torch.tensor(WEIGHTS, dtype=F64), means, std).to(dtype=dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def print_table(name: str, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` (dicts with the same keys) as an aligned text table."""
    if not rows:
        return
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if (v == 0 or 1e-3 <= abs(v) < 1e4) else f"{v:.2e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n== {name} ==")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_csv(out: Path | None, name: str, rows: list[dict[str, Any]]) -> None:
    if out is None or not rows:
        return
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


SDES: dict[str, Callable[[], SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


# ---- fast ODE samplers against the tight probability flow --------------------------------------------


def fast_ode_error(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n, d = (64, 64) if quick else (256, 64)
    stds = (0.05, 0.3) if quick else (0.05, 0.1, 0.3, 0.5)
    heun_levels = (6, 10, 14, 18, 24, 34) if quick else (4, 6, 8, 10, 12, 14, 16, 18, 22, 26, 34)
    budgets = (12, 18, 24, 33) if quick else (6, 9, 12, 15, 18, 21, 24, 30, 36, 48)
    rows: list[dict[str, Any]] = []
    for std in stds:
        oracle = mixture((d,), std)
        for sde_name, make in SDES.items():
            sde = make()
            score, eps = oracle.score_fn(sde), default_eps(sde)
            x_T = sde.prior_sample((n, d), gen(1), dtype=F64)
            stats: dict[str, Any] = {}
            tight = dict(x_T=x_T, eps=eps, rtol=1e-7, atol=1e-7, stats=stats)
            ref, wall = timed(ds.sample, sde, score, x_T.shape, "ode", **tight)
            base = dict(sde=sde_name, comp_std=std)
            rows.append(
                dict(base, method="ode dopri5 1e-7 (ref)", setting="", nfe=stats["nfe"], rms=0.0, wall_s=wall)
            )
            runs: list[tuple[str, str, dict[str, Any]]] = [
                ("heun", f"N={k}", dict(num_steps=k, denoise=False)) for k in heun_levels
            ]
            for order in (2, 3):
                runs += [(f"dpm_solver-{order}", f"nfe={b}", dict(nfe=b, order=order)) for b in budgets]
            for method, setting, opts in runs:
                st: dict[str, Any] = {}
                name = method.split("-")[0]
                x, wall = timed(ds.sample, sde, score, x_T.shape, name, x_T=x_T, eps=eps, stats=st, **opts)
                rms = float((x - ref).square().mean().sqrt())
                rows.append(dict(base, method=method, setting=setting, nfe=st["nfe"], rms=rms, wall_s=wall))
    best: list[dict[str, Any]] = []
    keys = dict.fromkeys((r["sde"], r["comp_std"], r["method"]) for r in rows if "ref" not in r["method"])
    for sde_name, std, method in keys:
        ok = [
            r["nfe"]
            for r in rows
            if (r["sde"], r["comp_std"], r["method"]) == (sde_name, std, method) and r["rms"] <= 1e-2
        ]
        best.append(
            dict(sde=sde_name, comp_std=std, method=method, min_nfe_rms_le_1e_2=min(ok) if ok else "> max")
        )
    return rows, best


# ---- every sampler: quality against NFE --------------------------------------------------------------------


def sampler_settings(d: int, quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, label, options) for ``ds.sample``; fewer settings in D = 3072 and with ``quick``."""
    big = d > 256
    s: list[tuple[str, str, dict[str, Any]]] = []
    if "pc" in METHODS:
        s += [
            ("pc", f"rd+langevin N={k}", dict(num_steps=k, denoise=False))
            for k in ((100,) if big else (100, 500))
        ]
    sde_steps = {
        "euler": (100, 500),
        "milstein": (100,),
        "srk": (20,),
        "euler_heun": (200,),
        "heun": (50, 250),
        "midpoint": (50, 250),
        "reversible_heun": (200,),
    }
    for solver, steps in sde_steps.items():
        for k in steps[:1] if (big or quick) else steps:
            s.append(("sde", f"{solver} N={k}", dict(solver=solver, num_steps=k)))
    if not big:
        s.append(
            (
                "sde",
                "euler adaptive tol=1e-2",
                dict(solver="euler", adaptive=True, rtol=1e-2, atol=1e-2, num_steps=100),
            )
        )
    s += [("sde_adaptive", f"rtol={r}", dict(rtol=r)) for r in ((0.05,) if big else (0.05, 0.01))]
    s += [
        ("ode", f"dopri5 tol={tol}", dict(rtol=tol, atol=tol)) for tol in ((1e-3,) if big else (1e-3, 1e-5))
    ]
    s += [("ode", "rk4 fixed 25 steps", dict(solver="rk4", options=dict(step_size=1 / 25)))]
    s += [("ode", "euler fixed 100 steps", dict(solver="euler", options=dict(step_size=1 / 100)))]
    s += [("heun", f"N={k}", dict(num_steps=k, denoise=False)) for k in ((10, 18) if big else (6, 10, 18))]
    s += [
        ("dpm_solver", f"order 3 nfe={b}", dict(nfe=b, order=3)) for b in ((12, 24) if big else (9, 12, 24))
    ]
    s += [("dpm_solver", "order 2 10 steps", dict(num_steps=10, order=2))]
    return s


def sampler_quality(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cases = [
        ((64,), "vp", 400 if quick else 2000),
        ((64,), "ve", 400 if quick else 1000),
        ((3, 32, 32), "vp", 64 if quick else 200),
    ]
    for shape, sde_name, n in cases:
        sde = SDES[sde_name]()
        oracle = mixture(shape)
        d, eps = oracle.dim, default_eps(sde)
        score = oracle.score_fn(sde)
        exact = oracle.sample(4000 if d <= 256 else 1000, gen(9), sde=sde, t=eps)
        lp_exact = oracle.log_prob(exact, sde, eps) / d
        settings = sampler_settings(d, quick)
        if sde_name == "ve":  # torchsde's reversible_heun diverges on the VE reverse SDE (FIELD_NOTES)
            settings = [s for s in settings if "reversible_heun" not in s[1]]
        for method, label, opts in settings:
            stats: dict[str, Any] = {}
            opts = dict(opts)
            if "options" in opts and "step_size" in opts["options"]:
                opts["options"] = dict(step_size=(sde.T - eps) * opts["options"]["step_size"])
            try:
                x, wall = timed(
                    ds.sample,
                    sde,
                    score,
                    (n, *shape),
                    method=method,
                    generator=gen(2),
                    dtype=F64,
                    stats=stats,
                    **opts,
                )
            except Exception as err:  # report and go on: one failing solver must not stop the suite
                rows.append(dict(D=d, sde=sde_name, method=method, setting=label, note=f"failed: {err}"[:60]))
                continue
            lp = oracle.log_prob(x, sde, eps) / d
            finite = torch.isfinite(lp)
            lp = lp[finite]
            gap = float(lp.mean() - lp_exact.mean()) if lp.numel() else math.nan
            gap_se = (
                float((lp.var() / lp.numel() + lp_exact.var() / lp_exact.numel()).sqrt())
                if lp.numel() > 1
                else math.nan
            )
            freq = oracle.posterior(x[finite], sde, eps).argmax(1).bincount(minlength=len(WEIGHTS)).double()
            w_err = float((freq / max(int(finite.sum()), 1) - oracle.weights).abs().max())
            rows.append(
                dict(
                    D=d,
                    sde=sde_name,
                    method=method,
                    setting=label,
                    n=n,
                    nfe=stats.get("nfe", ""),
                    wall_s=wall,
                    logp_gap=gap,
                    gap_se=gap_se,
                    weight_err=w_err,
                    weight_se=0.5 / math.sqrt(n),
                    note="" if bool(finite.all()) else "non-finite samples",
                )
            )
    return rows


def run(quick: bool = False, out: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run every table of this file; returns {table name: rows}."""
    curves, best = fast_ode_error(quick)
    tables = {
        "fast_ode_error": curves,
        "fast_ode_nfe_at_1e-2": best,
        "sampler_quality": sampler_quality(quick),
    }
    for name, rows in tables.items():
        print_table(name, rows)
        write_csv(out, name, rows)
    return tables


def cli(run_fn: Callable[[bool, Path | None], Any], description: str, quick_help: str) -> None:
    """The command line every benchmark module shares: --quick, --out, --threads, then ``run_fn``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSV files")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 1)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_fn(args.quick, args.out)


def main() -> None:
    cli(run, __doc__.split("\n\n")[0], "fewer settings and samples (a smoke run)")


if __name__ == "__main__":
    main()
