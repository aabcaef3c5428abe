"""Cost per score evaluation (NFE) of the samplers and the likelihood, against the bare network.

    python benchmarks/bench_overhead.py [--quick] [--out DIR] [--threads N]

Tables (printed, and written as CSV to ``--out``):

* ``sampler_overhead``: wall time per NFE of each fixed-step sampler divided by one bare score call
  (``torch.no_grad``), for the small NCSN++ (``nets.build("ncsnpp_small")``, 32 x 32 x 3, eval mode,
  batch 64) and for the exact Gaussian-mixture score in D = 3072 (cheap, so the solver's own work
  shows). The NCSN++ runs twice: with frozen parameters, and (for the samplers that do not run under
  ``torch.no_grad``) with parameters requiring gradients, as a trained network is handed over; those
  samplers then record an autograd graph through the whole solve (column ``autograd_graph_kept``),
  whose memory grows with the number of steps.
* ``likelihood_overhead``: ``log_likelihood`` (Hutchinson, one probe, a fixed-step solver) per NFE,
  divided by one bare forward plus one vector-Jacobian product, on the small NCSN++ (batch 16).
* ``divergence_cost``: one evaluation of the likelihood dynamics (``LikelihoodODE``) with the exact
  divergence (D vector-Jacobian products, one batched call) and with Hutchinson (1 and 4 probes), for
  an MLP score network in D = 16, 64, 256 (batch 64), relative to one probe.
* ``likelihood_accuracy``: ``log_likelihood`` on the D = 64 mixture, exact vs Hutchinson: NFE, wall
  time, the per-sample error of ``delta_logp`` against the exact ``log p_eps(x) - log p_T(z)`` in
  bits/dim (mean and max of |error|).
* ``batch_scaling``: time per NFE (and per sample) against batch size: heun on the mixture in D = 64
  and 3072, the bare NCSN++.
* ``training``: optimizer steps per second of ``diffscore.training.Trainer`` against a bare PyTorch loop
  (same network, loss, AdamW, clipping and EMA), on the 8 x 8 digits U-Net preset; skipped with a note
  if ``diffscore.training`` is not importable.

Timings are wall-clock medians of a few repeats on a shared machine: treat them as rough.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_samplers import cli, gen, mixture, print_table, write_csv

import diffscore as ds
from diffscore import nets
from diffscore.dynamics import LikelihoodODE
from diffscore.sampling import METHODS

EPS = 1e-3


def best_time(repeats: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Shortest wall time of ``repeats`` calls ``fn(*args, **kwargs)`` (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds that call every function once in turn,
    so that drifting load on the machine hits all of them alike."""
    best = {name: math.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], best_time(1, fn))
    return best


def small_ncsnpp() -> tuple[torch.nn.Module, str]:
    try:
        return nets.build("ncsnpp_small").eval(), "ncsnpp_small"
    except ValueError:  # preset not there: a stand-in U-Net of similar width
        return nets.build("ncsnpp", nf=32, ch_mult=(1, 2, 2), num_res_blocks=2).eval(), "ncsnpp nf=32"


# ---- samplers: time per NFE / bare score call ------------------------------------------------------------


FIXED_STEP = [
    ("heun", "N=3 (+denoise)", dict(num_steps=3)),
    ("dpm_solver", "order 2, 2 steps", dict(num_steps=2, order=2)),
    ("dpmpp", "3M, 4 steps", dict(num_steps=4, order=3)),
    ("unipc", "order 3, 4 steps", dict(num_steps=4, order=3)),
    ("sde_dpmpp_2m", "4 steps", dict(num_steps=4)),
    ("sde_dpmpp_3m", "4 steps", dict(num_steps=4)),
    ("pc", "rd+langevin, 2 steps", dict(num_steps=2, denoise=False)),
    ("sde", "torchsde euler, 3 steps", dict(solver="euler", num_steps=3)),
    ("ode", "torchdiffeq euler, 3 steps", dict(solver="euler", options=dict(step_size=(1 - EPS) / 3))),
    ("ode", "torchdiffeq rk4, 1 step", dict(solver="rk4", options=dict(step_size=1 - EPS))),
]


def _overhead_rows(case: str, score, b: int, samplers, repeats: int) -> list[dict[str, Any]]:
    """Time per NFE of each sampler in ``samplers`` over one bare no-grad score call, interleaved."""
    sde = ds.VPSDE()
    x = sde.prior_sample((b, 3, 32, 32), gen(0))
    t = torch.full((b,), 0.5)
    runs: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {}

    def bare() -> None:
        with torch.no_grad():
            score(x, t)

    runs["bare score call (no_grad)"] = (bare, {"nfe": 1})
    rows: list[dict[str, Any]] = []
    for method, label, opts in samplers:
        if method not in METHODS:
            rows.append(dict(case=case, sampler=f"{method} {label}", note="not available"))
            continue
        stats: dict[str, Any] = {}

        def call(method=method, opts=opts, stats=stats) -> None:
            out = ds.sample(
                sde, score, x.shape, method=method, x_T=x, eps=EPS, generator=gen(1), stats=stats, **opts
            )
            stats["graph_kept"] = out.requires_grad

        runs[f"{method} {label}"] = (call, stats)
    bare()  # warm-up
    best = interleaved_best({name: fn for name, (fn, _stats) in runs.items()}, repeats)
    per_bare = best["bare score call (no_grad)"]
    for name, (_fn, stats) in runs.items():
        per = best[name] / stats["nfe"]
        rows.append(
            dict(
                case=case,
                sampler=name,
                nfe=stats["nfe"],
                s_per_nfe=per,
                ratio=per / per_bare,
                autograd_graph_kept=stats.get("graph_kept", ""),
            )
        )
    return rows


def sampler_overhead(quick: bool) -> list[dict[str, Any]]:
    sde = ds.VPSDE()
    net, net_name = small_ncsnpp()
    b_net, repeats = (8, 1) if quick else (64, 3)
    rows = []
    # parameters frozen (requires_grad False): the samplers' own cost
    net.requires_grad_(False)
    rows += _overhead_rows(
        f"{net_name} B={b_net}, frozen", ds.ScoreModel(net, sde), b_net, FIXED_STEP, repeats
    )
    # parameters requiring gradients (as a trained network is handed over): samplers that do not run
    # under torch.no_grad record an autograd graph through the whole solve
    net.requires_grad_(True)
    graph = [s for s in FIXED_STEP if s[0] in ("pc", "sde", "ode")][:3]
    rows += _overhead_rows(
        f"{net_name} B={b_net}, requires_grad", ds.ScoreModel(net, sde), b_net, graph, repeats
    )
    oracle = mixture((3, 32, 32), dtype=torch.float32)
    rows += _overhead_rows("mixture D=3072 B=64", oracle.score_fn(sde), 64, FIXED_STEP, 5)
    return rows


# ---- likelihood ----------------------------------------------------------------------------------------


def likelihood_overhead(quick: bool) -> list[dict[str, Any]]:
    sde = ds.VPSDE()
    net, net_name = small_ncsnpp()
    score = ds.ScoreModel(net, sde)
    b = 4 if quick else 16
    x = sde.prior_sample((b, 3, 32, 32), gen(0)).clamp(-1, 1)
    t = torch.full((b,), 0.5)
    probe = torch.randn(x.shape, generator=gen(1))
    flow = ds.ProbabilityFlowODE(sde, score, t_min=1e-5)

    def bare() -> None:
        xx = x.detach().requires_grad_(True)
        torch.autograd.grad(flow.velocity(xx, t), xx, probe)

    bare()  # warm-up
    steps = 2
    out: dict[str, Any] = {}

    def solve() -> None:
        out["res"] = ds.log_likelihood(
            sde,
            score,
            x,
            divergence="hutchinson",
            method="euler",
            generator=gen(2),
            options=dict(step_size=(1 - 1e-5) / steps),
        )

    best = interleaved_best({"bare": bare, "solve": solve}, 1 if quick else 3)
    t_bare, wall = best["bare"], best["solve"]
    per = wall / out["res"].nfe
    return [
        dict(case=f"{net_name} B={b}", what="bare forward + VJP", nfe=1, s_per_nfe=t_bare, ratio=1.0),
        dict(
            case=f"{net_name} B={b}",
            what=f"log_likelihood hutchinson, euler {steps} steps",
            nfe=out["res"].nfe,
            s_per_nfe=per,
            ratio=per / t_bare,
        ),
    ]


def divergence_cost(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sde = ds.VPSDE()
    b = 64
    for d in (16, 64, 256):
        torch.manual_seed(0)
        net = nets.MLPScoreNet(dim=d, hidden=256, depth=3).eval()
        flow = ds.ProbabilityFlowODE(sde, ds.ScoreModel(net, sde), t_min=1e-5)
        state = torch.cat([torch.randn(b, d, generator=gen(0)), torch.zeros(b, 1)], 1)
        t = torch.tensor(0.5)
        variants = {
            "hutchinson 1 probe": LikelihoodODE(
                flow, (d,), "hutchinson", torch.randn(1, b, d, generator=gen(1))
            ),
            "hutchinson 4 probes": LikelihoodODE(
                flow, (d,), "hutchinson", torch.randn(4, b, d, generator=gen(1))
            ),
            "exact": LikelihoodODE(flow, (d,), "exact"),
        }
        for func in variants.values():
            func(t, state)  # warm-up
        calls = {name: functools.partial(func, t, state) for name, func in variants.items()}
        times = interleaved_best(calls, 2 if quick else 5)
        for name, s in times.items():
            rows.append(dict(D=d, divergence=name, s_per_nfe=s, vs_1_probe=s / times["hutchinson 1 probe"]))
    return rows


def likelihood_accuracy(quick: bool) -> list[dict[str, Any]]:
    sde = ds.VPSDE()
    oracle = mixture((64,))
    d, n, eps = 64, 32 if quick else 128, 1e-5
    x = oracle.sample(n, gen(3), sde=sde, t=eps)
    log_p = oracle.log_prob(x, sde, eps)
    rows: list[dict[str, Any]] = []
    for divergence, n_probes in (("exact", 1), ("hutchinson", 1), ("hutchinson", 4)):
        start = time.perf_counter()
        res = ds.log_likelihood(
            sde,
            oracle.score_fn(sde),
            x,
            divergence=divergence,
            n_probes=n_probes,
            eps=eps,
            rtol=1e-5,
            atol=1e-5,
            generator=gen(4),
        )
        wall = time.perf_counter() - start
        err = (res.delta_logp - (log_p - oracle.log_prob(res.z, sde, sde.T))) / (d * math.log(2))
        name = divergence if divergence == "exact" else f"hutchinson {n_probes} probe(s)"
        rows.append(
            dict(
                D=d,
                divergence=name,
                n=n,
                nfe=res.nfe,
                wall_s=wall,
                err_bpd_mean=float(err.abs().mean()),
                err_bpd_max=float(err.abs().max()),
            )
        )
    return rows


# ---- scaling with batch size and dimension --------------------------------------------------------------


def batch_scaling(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sde = ds.VPSDE()
    for shape in ((64,), (3, 32, 32)):
        oracle = mixture(shape, dtype=torch.float32)
        for b in (16, 64, 256) if quick else (16, 64, 256, 1024):
            x = sde.prior_sample((b, *shape), gen(0))
            stats: dict[str, Any] = {}
            score = oracle.score_fn(sde)
            wall = best_time(
                3, ds.sample, sde, score, x.shape, method="heun", x_T=x, num_steps=6, stats=stats
            )
            per = wall / stats["nfe"]
            rows.append(
                dict(
                    case=f"heun, mixture D={oracle.dim}", batch=b, s_per_nfe=per, us_per_sample=per / b * 1e6
                )
            )
    net, net_name = small_ncsnpp()
    for b in (1, 4) if quick else (1, 4, 16):
        x = torch.randn(b, 3, 32, 32, generator=gen(0))
        t = torch.full((b,), 0.5)
        with torch.no_grad():
            net(x, t)
            per = best_time(3, net, x, t)
        rows.append(dict(case=f"bare {net_name}", batch=b, s_per_nfe=per, us_per_sample=per / b * 1e6))
    return rows


# ---- training throughput ---------------------------------------------------------------------------------


def training(quick: bool) -> list[dict[str, Any]]:
    try:
        from diffscore.training import Trainer, get_preset
    except ImportError as err:
        return [dict(loop="diffscore.training", note=f"skipped: {err}")]
    steps = 3 if quick else 10
    config = get_preset("digits_unet")
    trainer = Trainer(config, None, progress=False)
    trainer.train_step()  # warm-up

    # the bare loop: same architecture, loss (sigma^2-weighted DSM, i.e. ||std score + z||^2), optimizer,
    # clipping and EMA, on a fixed batch of dequantized images
    torch.manual_seed(0)
    model = ds.ScoreModel(
        nets.build(config.net, **config.net_options), trainer.model.sde, config.parameterization
    )
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images = trainer.train_images[: config.batch_size].to(torch.float32)
    x0 = (images + torch.rand(images.shape)) / trainer.num_bins * 2 - 1
    sde = trainer.model.sde

    def bare_step() -> None:
        t = torch.rand(x0.shape[0]) * (sde.T - config.eps) + config.eps
        alpha, std = sde.marginal_coeffs(t)
        z = torch.randn_like(x0)
        xt = alpha.reshape(-1, 1, 1, 1) * x0 + std.reshape(-1, 1, 1, 1) * z
        loss = (std.reshape(-1, 1, 1, 1) * model(xt, t) + z).square().sum() / x0.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.lerp_(p, 1 - config.ema_rate)

    bare_step()  # warm-up
    best = interleaved_best({"bare": bare_step, "trainer": trainer.train_step}, steps)
    t_bare, t_trainer = best["bare"], best["trainer"]
    name = f"{config.net}, batch {config.batch_size}"
    return [
        dict(loop="bare PyTorch (fixed batch)", network=name, steps_per_s=1 / t_bare, ratio=1.0),
        dict(
            loop="diffscore Trainer.train_step",
            network=name,
            steps_per_s=1 / t_trainer,
            ratio=t_bare / t_trainer,
        ),
    ]


TABLES = {
    "sampler_overhead": sampler_overhead,
    "likelihood_overhead": likelihood_overhead,
    "divergence_cost": divergence_cost,
    "likelihood_accuracy": likelihood_accuracy,
    "batch_scaling": batch_scaling,
    "training": training,
}


def run(quick: bool = False, out: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run every table of this file; returns {table name: rows}."""
    tables = {}
    for name, fn in TABLES.items():
        rows = fn(quick)
        tables[name] = rows
        print_table(name, rows)
        write_csv(out, name, rows)
    return tables


def main() -> None:
    cli(run, __doc__.split("\n\n")[0], "small batches and few repeats (a smoke run)")


if __name__ == "__main__":
    main()
