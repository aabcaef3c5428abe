"""The samplers against exact answers, and against the peers (k-diffusion, diffusers) when installed.

    python benchmarks/bench_solvers.py [--quick] [--out DIR] [--threads N] [--only TABLE,TABLE]

Tables (printed, and written as CSV to ``--out``):

* ``orders``: observed order of every multistep solver on the closed-form probability flow of Gaussian
  data (N(mu, 0.3^2 I_8), 32 samples, log-SNR grid, B(h) = e^h - 1, the Taylor 3M coefficient unless
  named), ``log2(error(128 steps) / error(256 steps))``, VE / VP / sub-VP,
  including DPM-Solver++(3M) with the reference implementations' coefficient of the second divided
  difference (1 instead of 2).
* ``pc_variance``: ``sample(method="pc")`` with its defaults (reverse diffusion + Langevin corrector,
  snr 0.16, 1000 steps, denoising) on data N(1, 0.5^2 I_D) with the exact score: the per-coordinate
  variance divided by the exact one, for D in {1, 2, 3, 8, 16, 64}, VE / VP / sub-VP, for the new
  corrector ("langevin") and the per-sample rule it replaced ("langevin_score_norm", the default before
  issue 10); then D = 2 at 250 / 1000 / 4000 steps. n D = 32000 draws (s.e. of a ratio 0.8%).
* ``controllable_variance``: inpainting (N(mu, 1 1^T + 0.01 I), first half known) and colorization (3 x
  hw x hw, correlated channels) with the exact Gaussian score: the unknown entries' variance divided by
  the exact conditional one (mean over entries), for the defaults (``known_noise="predicted"``) and the
  paper's fresh-noise replacement, with the new and the old corrector.
* ``ode_rms``: every deterministic sampler on the D = 64 mixture (3 components, weights 0.2 / 0.3 / 0.5,
  stds 0.05 / 0.1 / 0.3, means uniform in [-1, 1]) for VE (sigma 0.01 -> 50), VP and sub-VP: RMS distance
  to the probability flow solved tightly (dopri5, rtol = atol = 1e-7, float64) from the same 256 prior
  draws, at NFE 5, 8, 10, 15, 20, 25, 35, 50 (heun: NFE 2N - 2, the even NFE at or below; the actual
  NFE of every run is checked). The first rows are ``ds.sample(..., method=M, num_steps=NFE)`` with no
  other option (the defaults); then every grid / order / variant; then, when installed, every
  configuration of k-diffusion's and diffusers' deterministic samplers (benchmarks/peers.py; ``pip
  install 'diffscore[peers]'``). ``ode_best``: per NFE, the defaults next to the best configuration of
  each library.
* ``sde_gap``: every stochastic sampler at NFE 20, 50, 100: the gap ``E_exact log p_eps - E_samples
  log p_eps`` (nats, summed over D = 64; positive = samples less likely than exact draws) with its
  standard error, on the same mixture (``mixture=0.05-0.3``, 4000 samples) and on the mixture with
  equal stds 0.05 (``mixture=0.05``, 2000 samples, the setting of the issue's peer figures).
  On the first mixture the gap is stratified by component (``sum_k w_k`` of the per-component gaps, with
  the samples assigned by ``oracle.posterior``), because the components' log-densities differ by ~100
  nats and the weights' sampling noise would swamp a plain mean; the largest weight error is reported
  beside it (``w_err``; binomial s.e. 0.008). ``sde_best``: the best |gap| at each NFE.
* ``sde_peers``: VP, the equal-std mixture, 2000 samples: the stochastic samplers with their default
  options (method, num_steps, generator) against every configuration of the peers' stochastic samplers;
  ``sde_peers_best``: the defaults next to each peer's best |gap|, per NFE.

The mixture and every draw are seeded: two runs print the same numbers (timings aside). Mode flips
dominate the RMS at low NFE: one sample of the 256 in the wrong mode adds about 0.05.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peers
import torch
from bench_samplers import cli, gen, print_table, write_csv

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import default_eps
from diffscore.sampling.grids import PLAIN_GRIDS
from diffscore.sde import SDE, VESDE, VPSDE, SubVPSDE

F64 = torch.float64
SDES: dict[str, Callable[[], SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
ODE_NFES = (5, 8, 10, 15, 20, 25, 35, 50)
SDE_NFES = (20, 50, 100)


def mixture64(stds: tuple[float, ...] = (0.05, 0.1, 0.3)) -> GaussianMixture:
    g = gen(0)
    means = 2 * torch.rand(3, 64, generator=g, dtype=F64) - 1
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, torch.tensor(stds, dtype=F64))


def _gaussian_score(sde: SDE, mu: torch.Tensor, cov: torch.Tensor) -> Callable:
    """Exact score of p_t = N(alpha mu, alpha^2 cov + std^2 I) on flat states."""
    lam, u = torch.linalg.eigh(cov)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, std = sde.alpha_std(t)
        xf = x.reshape(x.shape[0], -1)
        diff = (xf - alpha[:, None] * mu) @ u
        return -((diff / (alpha[:, None] ** 2 * lam + std[:, None] ** 2)) @ u.T).reshape(x.shape)

    return score


# ---- orders on the closed-form Gaussian flow ------------------------------------------------------------


def orders(quick: bool) -> list[dict[str, Any]]:
    cases = [
        ("dpmpp order 1", "dpmpp", dict(order=1)),
        ("dpmpp order 2 (2M)", "dpmpp", dict(order=2)),
        ("dpmpp order 3 (3M)", "dpmpp", dict(order=3)),
        ("dpmpp 3M, reference D2 coefficient", "dpmpp", dict(order=3, variant="reference")),
        ("UniP-1 (no corrector)", "unipc", dict(order=1, use_corrector=False)),
        ("UniP-2", "unipc", dict(order=2, use_corrector=False)),
        ("UniP-3", "unipc", dict(order=3, use_corrector=False)),
        ("UniPC-1", "unipc", dict(order=1)),
        ("UniPC-2", "unipc", dict(order=2)),
        ("UniPC-3", "unipc", dict(order=3)),
    ]
    rows = []
    mu = torch.linspace(-1, 1, 8, dtype=F64)[None]
    for label, method, opts in cases:
        row: dict[str, Any] = dict(solver=label)
        for name, make in SDES.items():
            sde = make()
            oracle = GaussianMixture([1.0], mu, 0.3)
            eps = default_eps(sde)
            x_T = sde.prior_sample((32, 8), gen(1), dtype=F64)
            (a_T, a_e), (s_T, s_e) = sde.marginal_coeffs(torch.tensor([sde.T, eps], dtype=F64))
            exact = a_e * mu + ((a_e**2 * 0.09 + s_e**2) / (a_T**2 * 0.09 + s_T**2)).sqrt() * (x_T - a_T * mu)
            errors = []
            for steps in (128, 256):
                x = ds.sample(
                    sde,
                    oracle.score_fn(sde),
                    x_T.shape,
                    method,
                    x_T=x_T,
                    eps=eps,
                    num_steps=steps,
                    lower_order_final=False,
                    **{"grid": "logsnr", "variant": "taylor" if method == "dpmpp" else "bh2", **opts},
                )
                errors.append(float((x - exact).square().mean().sqrt()))
            row[name] = math.log2(errors[0] / errors[1])
        rows.append(row)
    return rows


# ---- PC variance -----------------------------------------------------------------------------------------


def pc_variance(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    total = 8000 if quick else 32000
    dims = (1, 2, 8, 64) if quick else (1, 2, 3, 8, 16, 64)
    cases = [(d, 1000) for d in dims] + [(2, 250), (2, 4000)]
    for name, make in SDES.items():
        sde = make()
        eps = default_eps(sde)
        a, s = sde.marginal_coeffs(torch.tensor(eps, dtype=F64))
        exact = float(0.5**4 * a**2 / (a**2 * 0.25 + s**2))  # variance of E[x_0 | x_eps]
        for d, steps in cases:
            row: dict[str, Any] = dict(sde=name, D=d, num_steps=steps)
            for corrector in ("langevin", "langevin_score_norm"):
                mu = torch.ones(1, d, dtype=torch.float32)
                score = _gaussian_score(sde, mu[0], 0.25 * torch.eye(d))
                try:
                    x = ds.sample(
                        sde, score, (total // d, d), method="pc", corrector=corrector, num_steps=steps,
                        generator=gen(d),
                    )  # fmt: skip
                    row[corrector] = float(x.var(0).mean()) / exact
                except FloatingPointError as err:  # the guard: |x| > 1e4 prior stds
                    row[corrector] = "raised at t = " + str(err).split("t = ")[1].split(" ")[0]
            row["se"] = math.sqrt(2 / total)
            rows.append(row)
    return rows


# ---- inpainting and colorization ------------------------------------------------------------------------


def controllable_variance(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    configs = [
        ("default: langevin, predicted", dict(known_noise="predicted")),
        ("langevin, fresh (paper's replacement)", dict(known_noise="fresh")),
        ("before: langevin_score_norm, fresh", dict(known_noise="fresh", corrector="langevin_score_norm")),
    ]
    steps = 500 if quick else 1000
    for name in ("vp", "ve") if quick else ("vp", "ve", "subvp"):
        sde = SDES[name]()
        for d in (4, 64) if quick else (4, 16, 64, 192):
            mu = torch.linspace(-1, 1, d, dtype=F64)
            cov = torch.ones(d, d, dtype=F64) + 0.01 * torch.eye(d, dtype=F64)
            known = torch.arange(d) < d // 2
            x0 = mu + torch.linalg.cholesky(cov) @ torch.randn(d, generator=gen(d), dtype=F64)
            u = ~known
            gain = torch.linalg.solve(cov[known][:, known], cov[known][:, u]).T
            post = cov[u][:, u] - gain @ cov[known][:, u]
            n = 8000 // d
            row: dict[str, Any] = dict(task="inpaint", sde=name, D=d, n=n)
            for label, opts in configs:
                score = _gaussian_score(sde, mu, cov)
                out = ds.inpaint(
                    sde,
                    score,
                    x0.expand(n, d),
                    known.to(F64)[None],
                    generator=gen(1),
                    num_steps=steps,
                    **opts,
                )
                row[label] = float((out[:, u].var(0) / post.diagonal()).mean())
            row["se"] = math.sqrt(2 / (n * int(u.sum())))
            rows.append(row)
        for hw in (2,) if quick else (2, 8):
            d = 3 * hw * hw
            mix = torch.tensor([[1.0, 0.6, 0.2], [0.6, 1.0, 0.5], [0.2, 0.5, 1.0]], dtype=F64)
            cov = torch.kron(mix, torch.eye(hw * hw, dtype=F64)) + 0.05 * torch.eye(d, dtype=F64)
            mu = torch.linspace(-0.5, 0.5, d, dtype=F64)
            w = torch.tensor([0.299, 0.587, 0.114], dtype=F64)
            a = torch.kron(w[None], torch.eye(hw * hw, dtype=F64))
            x0 = mu + torch.linalg.cholesky(cov) @ torch.randn(d, generator=gen(hw), dtype=F64)
            gray = (a @ x0).reshape(1, 1, hw, hw)
            post = cov - cov @ a.T @ torch.linalg.solve(a @ cov @ a.T, a @ cov)
            q = torch.kron(ds.controllable.gray_basis(w).T.contiguous(), torch.eye(hw * hw, dtype=F64))
            unseen = torch.arange(d) >= hw * hw
            n = max(200, 3200 // (2 * hw * hw))
            row = dict(task="colorize", sde=name, D=d, n=n)
            for label, opts in configs:
                score = _gaussian_score(sde, mu, cov)
                out = ds.colorize(
                    sde,
                    score,
                    gray.expand(n, 1, hw, hw),
                    weights=w,
                    generator=gen(1),
                    num_steps=steps,
                    **opts,
                )
                y = out.reshape(n, d) @ q.T
                row[label] = float((y[:, unseen].var(0) / (q @ post @ q.T).diagonal()[unseen]).mean())
            row["se"] = math.sqrt(2 / (n * int(unseen.sum())))
            rows.append(row)
    return rows


# ---- deterministic samplers: RMS to the tight probability flow ------------------------------------------


def ode_settings(quick: bool) -> list[tuple[str, str, Callable[[int], dict[str, Any]]]]:
    """(label, method, nfe -> options) of every deterministic sampler, the defaults first."""
    s: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = [
        (f"{m} defaults", m, lambda n: dict(num_steps=n)) for m in ("unipc", "dpmpp")
    ]
    s += [
        ("heun (EDM, Karras grid)", "heun", lambda n: dict(num_steps=n // 2 + 1, denoise=False)),
        ("dpm_solver-3 fast", "dpm_solver", lambda n: dict(nfe=n, order=3)),
        ("dpm_solver-2 fast", "dpm_solver", lambda n: dict(nfe=n, order=2)),
    ]
    grids = ("logsnr", "time_quadratic") if quick else PLAIN_GRIDS  # time_power: in the defaults rows
    for grid in grids:
        for order, variant in ((2, "taylor"), (3, "taylor"), (3, "reference")):
            s.append(
                (
                    f"dpmpp {order}M {variant} {grid}" if order == 3 else f"dpmpp 2M {grid}",
                    "dpmpp",
                    lambda n, o=order, v=variant, g=grid: dict(num_steps=n, order=o, variant=v, grid=g),
                )
            )
        for order in (2, 3):
            for variant in ("bh1", "bh2"):
                s.append(
                    (
                        f"unipc-{order} {variant} {grid}",
                        "unipc",
                        lambda n, o=order, v=variant, g=grid: dict(num_steps=n, order=o, variant=v, grid=g),
                    )
                )
    return s


def peer_ode_settings(sde_name: str) -> list[tuple[str, Callable[..., tuple[torch.Tensor, int]]]]:
    """(label, run(sde, score, x_T, eps, nfe) -> (x, nfe)) of the installed peers' deterministic samplers."""
    s: list[tuple[str, Callable[..., tuple[torch.Tensor, int]]]] = []
    if peers.kdiffusion_sampling() is not None:
        for name in ("dpmpp_2m", "dpmpp_2m_sde eta=0 heun", "dpmpp_3m_sde eta=0", "lms", "heun"):
            for grid in peers.K_GRIDS if sde_name == "vp" else peers.K_GRIDS[:2]:
                s.append((f"k-diffusion {name} {grid}", functools.partial(peers.k_sample, name, grid)))
    if peers.diffusers_schedulers() is not None:
        for name in ("DPM++ 2M", "DPM++ 3M", "UniPC-2 bh2", "UniPC-3 bh2", "UniPC-3 bh1"):
            for grid in peers.D_GRIDS:
                if grid == "lu_lambdas" and name.startswith("UniPC"):
                    continue
                s.append((f"diffusers {name} {grid}", functools.partial(peers.d_sample, name, grid)))
    return s


def ode_rms(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    oracle = mixture64()
    n = 64 if quick else 256
    rows: list[dict[str, Any]] = []
    for name, make in SDES.items():
        sde = make()
        score, eps = oracle.score_fn(sde), default_eps(sde)
        x_T = sde.prior_sample((n, 64), gen(1), dtype=F64)
        ref = ds.sample(sde, score, x_T.shape, "ode", x_T=x_T, eps=eps, rtol=1e-7, atol=1e-7)
        for label, method, opts in ode_settings(quick):
            row: dict[str, Any] = dict(sde=name, library="diffscore", sampler=label)
            for nfe in ODE_NFES:
                stats: dict[str, Any] = {}
                x = ds.sample(sde, score, x_T.shape, method, x_T=x_T, eps=eps, stats=stats, **opts(nfe))
                want = nfe - nfe % 2 if method == "heun" else nfe
                assert stats["nfe"] == want, (label, nfe, stats)
                row[f"nfe{nfe}"] = float((x - ref).square().mean().sqrt())
            rows.append(dict(row, note=""))
        for label, run_peer in peer_ode_settings(name):
            row = dict(sde=name, library=label.split()[0], sampler=label.split(" ", 1)[1])
            for nfe in ODE_NFES:
                try:
                    x, used = run_peer(sde, score, x_T, eps, nfe)
                except (
                    ValueError
                ) as err:  # diffusers: sub-VP's sigma(eps) ~ 1e-4 is 0 in its float32 schedule
                    row["note"] = str(err)
                    break
                assert nfe - 1 <= used <= nfe, (label, nfe, used)  # heun: 2 per step
                rms = float((x - ref).square().mean().sqrt())
                row[f"nfe{nfe}"] = rms if math.isfinite(rms) else math.inf
            rows.append(dict(row, note=row.get("note", "")))
    best: list[dict[str, Any]] = []
    for name in SDES:
        for nfe in ODE_NFES:
            row = dict(sde=name, nfe=nfe)
            for who, keep in (
                ("defaults unipc", lambda r: r["sampler"] == "unipc defaults"),
                ("defaults dpmpp", lambda r: r["sampler"] == "dpmpp defaults"),
                ("diffscore best", lambda r: r["library"] == "diffscore"),
                ("k-diffusion best", lambda r: r["library"] == "k-diffusion"),
                ("diffusers best", lambda r: r["library"] == "diffusers"),
            ):
                cands = [
                    (r[f"nfe{nfe}"], r["sampler"])
                    for r in rows
                    if r["sde"] == name and keep(r) and f"nfe{nfe}" in r
                ]
                value, label = min(cands) if cands else (math.nan, "no run (not installed, or see note)")
                row[who] = value
                if who.endswith("best"):
                    row[who.replace("best", "config")] = label
            best.append(row)
    return rows, best


# ---- stochastic samplers: log-density gap ---------------------------------------------------------------


def sde_settings(quick: bool) -> list[tuple[str, str, Callable[[int], dict[str, Any]]]]:
    plain = dict(corrector="none", denoise=False)
    s: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = [
        ("pc reverse_diffusion, no corrector", "pc", lambda n: dict(num_steps=n, **plain)),
        ("pc ancestral, no corrector", "pc", lambda n: dict(num_steps=n, predictor="ancestral", **plain)),
        ("pc rd + langevin (N = NFE/2)", "pc", lambda n: dict(num_steps=n // 2, denoise=False)),
        ("pc rd + langevin logsnr", "pc", lambda n: dict(num_steps=n // 2, grid="logsnr", denoise=False)),
        ("sde euler (torchsde)", "sde", lambda n: dict(num_steps=n - 1)),
        ("sde euler logsnr", "sde", lambda n: dict(num_steps=n - 1, grid="logsnr")),
    ]  # fmt: skip
    for grid in (
        ("logsnr", "time_quadratic") if quick else ("logsnr", "karras", "time_quadratic", "time_uniform")
    ):
        s.append((f"sde_dpmpp_2m {grid}", "sde_dpmpp_2m", lambda n, g=grid: dict(num_steps=n, grid=g)))
    s.append(
        (
            "sde_dpmpp_2m heun, last step first order",
            "sde_dpmpp_2m",
            lambda n: dict(num_steps=n, variant="heun", lower_order_final=True),
        )
    )
    s.append(("sde_dpmpp_3m taylor", "sde_dpmpp_3m", lambda n: dict(num_steps=n)))
    s.append(("sde_dpmpp_3m reference", "sde_dpmpp_3m", lambda n: dict(num_steps=n, variant="reference")))
    return s


def _gap(oracle: GaussianMixture, sde: SDE, eps: float, x: torch.Tensor, exact: dict, stratified: bool):
    """(gap, standard error, largest weight error) of samples x against exact draws at eps.

    Plain: ``E_exact log p - mean_i log p(x_i)``. Stratified (for components of different stds, whose
    log-densities differ by ~100 nats, so that the weights' sampling noise would swamp the plain gap):
    ``sum_k w_k (E_exact[log p | k] - mean_{i in k} log p(x_i))`` with samples assigned to components by
    ``oracle.posterior``; the weights' error is reported separately.
    """
    lp = oracle.log_prob(x, sde, eps)
    labels = oracle.posterior(x, sde, eps).argmax(1)
    w_hat = labels.bincount(minlength=3).double() / x.shape[0]
    w_err = float((w_hat - oracle.weights).abs().max())
    if not stratified:
        lpe = exact["logp"]
        return (
            float(lpe.mean() - lp.mean()),
            float((lp.var() / lp.numel() + lpe.var() / lpe.numel()).sqrt()),
            w_err,
        )
    gap = var = 0.0
    for k in range(3):
        mine, ref = lp[labels == k], exact["logp"][exact["labels"] == k]
        wk = float(oracle.weights[k])
        if mine.numel() < 2:  # the sampler lost a component: no stratified gap (w_err shows it)
            return math.nan, math.nan, w_err
        gap += wk * float(ref.mean() - mine.mean())
        var += wk**2 * float(mine.var() / mine.numel() + ref.var() / ref.numel())
    return gap, math.sqrt(var), w_err


def sde_gap(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    mixtures = {
        "0.05-0.3": (mixture64(), 1000 if quick else 4000, True),
        "0.05": (mixture64((0.05,) * 3), 500 if quick else 2000, False),
    }
    for mix_name, (oracle, n, stratified) in mixtures.items():
        for name, make in SDES.items():
            sde = make()
            score, eps = oracle.score_fn(sde), default_eps(sde)
            draws, labels = oracle.sample(20000, gen(9), sde=sde, t=eps, return_labels=True)
            exact = dict(logp=oracle.log_prob(draws, sde, eps), labels=labels)
            for label, method, opts in sde_settings(quick):
                row: dict[str, Any] = dict(mixture=mix_name, measure="stratified" if stratified else "plain")
                row.update(sde=name, sampler=label)
                for nfe in SDE_NFES:
                    stats: dict[str, Any] = {}
                    x = ds.sample(
                        sde,
                        score,
                        (n, 64),
                        method=method,
                        generator=gen(2),
                        dtype=F64,
                        stats=stats,
                        **opts(nfe),
                    )
                    assert abs(stats["nfe"] - nfe) <= 1, (label, nfe, stats)
                    gap, se, w_err = _gap(oracle, sde, eps, x, exact, stratified)
                    row.update({f"gap{nfe}": gap, f"se{nfe}": se, f"w_err{nfe}": w_err})
                rows.append(row)
    best: list[dict[str, Any]] = []
    for mix_name in mixtures:
        for name in SDES:
            for nfe in SDE_NFES:
                cands = [
                    (abs(r[f"gap{nfe}"]), r[f"gap{nfe}"], r[f"se{nfe}"], r["sampler"])
                    for r in rows
                    if (r["mixture"], r["sde"]) == (mix_name, name) and not math.isnan(r[f"gap{nfe}"])
                ]
                _, gap, se, label = min(cands)
                best.append(dict(mixture=mix_name, sde=name, nfe=nfe, best_gap=gap, se=se, sampler=label))
    return rows, best


def sde_peers(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The stochastic samplers with their default options against the peers at every configuration.

    VP, the mixture with equal stds 0.05, 2000 samples, plain gap (as ``sde_gap``'s ``mixture=0.05``).
    diffscore: ``ds.sample(sde, score, shape, method=M, num_steps=NFE, generator=g)`` and nothing else
    (pc: ``num_steps=NFE / 2``, a predictor and a corrector step each, and ``denoise=False``, so that
    every sampler is compared at eps).
    """
    oracle, n = mixture64((0.05,) * 3), 500 if quick else 2000
    sde = VPSDE()
    score, eps = oracle.score_fn(sde), default_eps(sde)
    draws, labels = oracle.sample(20000, gen(9), sde=sde, t=eps, return_labels=True)
    exact = dict(logp=oracle.log_prob(draws, sde, eps), labels=labels)
    x_T = sde.prior_sample((n, 64), gen(2), dtype=F64)
    runs: list[tuple[str, str, Callable[[int], torch.Tensor]]] = []
    for method in ("sde_dpmpp_2m", "sde_dpmpp_3m", "pc"):
        per_nfe, extra = (2, dict(denoise=False)) if method == "pc" else (1, {})  # pc: corrector + predictor
        runs.append(
            (
                "diffscore",
                f"{method} defaults",
                lambda nfe, m=method, k=per_nfe, e=extra: ds.sample(
                    sde, score, x_T.shape, method=m, x_T=x_T, num_steps=nfe // k, generator=gen(3), **e
                ),
            )
        )
    if peers.kdiffusion_sampling() is not None:
        for name in ("dpmpp_2m_sde midpoint", "dpmpp_2m_sde heun", "dpmpp_3m_sde"):
            for grid in peers.K_GRIDS:
                runs.append(
                    (
                        "k-diffusion",
                        f"{name} {grid}",
                        lambda nfe, k=name, g=grid: peers.k_sample(k, g, sde, score, x_T, eps, nfe, gen(3))[
                            0
                        ],
                    )
                )
    if peers.diffusers_schedulers() is not None:
        for name in ("SDE-DPM++ 2M midpoint", "SDE-DPM++ 2M heun"):
            for grid in peers.D_GRIDS:
                runs.append(
                    (
                        "diffusers",
                        f"{name} {grid}",
                        lambda nfe, d=name, g=grid: peers.d_sample(d, g, sde, score, x_T, eps, nfe, gen(3))[
                            0
                        ],
                    )
                )
    rows: list[dict[str, Any]] = []
    for library, label, fn in runs:
        row: dict[str, Any] = dict(library=library, sampler=label)
        for nfe in SDE_NFES:
            gap, se, _ = _gap(oracle, sde, eps, fn(nfe), exact, False)
            row.update({f"gap{nfe}": gap, f"se{nfe}": se})
        rows.append(row)
    best: list[dict[str, Any]] = []
    for nfe in SDE_NFES:
        row = dict(nfe=nfe)
        for r in rows:
            if r["library"] == "diffscore":
                row[r["sampler"]] = r[f"gap{nfe}"]
        for library in ("k-diffusion", "diffusers"):
            cands = [
                (abs(r[f"gap{nfe}"]), r[f"gap{nfe}"], r["sampler"]) for r in rows if r["library"] == library
            ]
            _, gap, label = min(cands) if cands else (0, math.nan, "not installed")
            row.update({f"{library} best": gap, f"{library} config": label})
        row["se"] = rows[0][f"se{nfe}"]  # of sde_dpmpp_2m (the peers' best are within 0.01 of it)
        best.append(row)
    return rows, best


TABLES = ("orders", "pc_variance", "controllable_variance", "ode_rms", "sde_gap", "sde_peers")


def run(
    quick: bool = False, out: Path | None = None, only: tuple[str, ...] = TABLES
) -> dict[str, list[dict[str, Any]]]:
    """Run the tables of this file; returns {table name: rows}."""
    tables: dict[str, list[dict[str, Any]]] = {}
    if "orders" in only:
        tables["orders"] = orders(quick)
    if "pc_variance" in only:
        tables["pc_variance"] = pc_variance(quick)
    if "controllable_variance" in only:
        tables["controllable_variance"] = controllable_variance(quick)
    if "ode_rms" in only:
        tables["ode_rms"], tables["ode_best"] = ode_rms(quick)
    if "sde_gap" in only:
        tables["sde_gap"], tables["sde_best"] = sde_gap(quick)
    if "sde_peers" in only:
        tables["sde_peers"], tables["sde_peers_best"] = sde_peers(quick)
    for name, rows in tables.items():
        print_table(name, rows)
        write_csv(out, name, rows)
    return tables


def main() -> None:
    import sys

    only = TABLES
    if "--only" in sys.argv:  # bench_samplers.cli knows --quick/--out/--threads; take --only off first
        i = sys.argv.index("--only")
        only = tuple(sys.argv[i + 1].split(","))
        del sys.argv[i : i + 2]
    cli(
        lambda quick, out: run(quick, out, only),
        __doc__.split("\n\n")[0],
        "fewer settings and samples (a smoke run)",
    )


if __name__ == "__main__":
    main()
