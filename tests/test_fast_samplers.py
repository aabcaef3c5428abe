"""Fast probability-flow samplers (EDM Heun, DPM-Solver) and the adaptive reverse-SDE sampler.

Exact references:

* Gaussian data N(mu, s^2 I): the probability flow keeps ``(x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 +
  std_t^2)`` constant, so the ODE solution from any x_T is known in closed form. The samplers' errors
  against it must fall at their order (Heun 2, DPM-Solver-k k).
* A 64-dimensional Gaussian mixture with its exact score: the probability flow solved tightly (dopri5,
  rtol = atol = 1e-7, float64) from the same x_T. Acceptance: 35 NFE give an RMS distance <= 1e-2.
  The mixture has component std 0.05: Heun's error at 35 NFE grows roughly like 0.1 * (component std)
  on the rho = 7 grid (docs/performance.md has the whole curve and the wider mixtures).
* Reverse-SDE samples: moments and mode weights of exact draws from p_eps.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling.fast import dpm_solver_orders
from diffscore.sampling.grids import time_grid
from diffscore.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64


def run(method, sde, score, x_T, eps, generator=None, **options):
    """``method`` through the public door :func:`ds.sample`, from ``x_T`` at T to ``eps``."""
    return ds.sample(sde, score, x_T.shape, method, generator, x_T=x_T, eps=eps, **options)


EPS = {VESDE: 1e-5, VPSDE: 1e-3, SubVPSDE: 1e-3}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


# ---- the Karras grid and DPM-Solver-fast's allocation --------------------------------------------------


def test_karras_sigmas_match_eq5(sde):
    eps, n, rho = EPS[type(sde)], 7, 7.0
    alpha, std = sde.marginal_coeffs(time_grid(sde, eps, n - 1, "karras", rho=rho))
    sig = std / alpha
    smax = float(sde.sigma(torch.tensor(sde.T, dtype=F64)))
    smin = float(sde.sigma(torch.tensor(eps, dtype=F64)))
    want = [
        (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)
    ]
    torch.testing.assert_close(sig, torch.tensor(want, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("nfe", range(1, 13))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_fast_allocation(nfe, order):
    orders = dpm_solver_orders(nfe, order)
    assert sum(orders) == nfe and max(orders) <= order
    if order == 3:  # Lu et al. 2022, Sec. 3.4: K = floor(nfe / 3) + 1 steps (all order 3 but a short tail)
        assert len(orders) == nfe // 3 + 1
        assert orders[: len(orders) - 2].count(3) == len(orders[: len(orders) - 2])


# ---- Gaussian data: closed-form flow, convergence orders -----------------------------------------------


def gaussian_case(sde, d=8, s=0.3, n=32):
    mu = torch.linspace(-1, 1, d, dtype=F64)[None]
    oracle = GaussianMixture([1.0], mu, s)
    eps = EPS[type(sde)]
    x_T = sde.prior_sample((n, d), generator=gen(1), dtype=F64)
    (a_T, a_e), (s_T, s_e) = sde.marginal_coeffs(torch.tensor([sde.T, eps], dtype=F64))
    exact = a_e * mu + ((a_e**2 * s**2 + s_e**2) / (a_T**2 * s**2 + s_T**2)).sqrt() * (x_T - a_T * mu)
    return oracle.score_fn(sde), x_T, eps, exact


def observed_order(errors):
    return math.log2(errors[-2] / errors[-1])


def test_heun_is_second_order_on_gaussian_data(sde):
    score, x_T, eps, exact = gaussian_case(sde)
    # num_steps = N levels -> N - 1 Heun steps: 8, 16, 32 steps
    errors = [rms(run("heun", sde, score, x_T, eps, num_steps=n, denoise=False), exact) for n in (9, 17, 33)]
    # measured 2.10-2.13 on VE/VP/sub-VP; a first-order bug gives ~1
    assert 1.8 < observed_order(errors) < 2.6, errors
    assert errors[-1] < 1e-2


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_order_on_gaussian_data(sde, order):
    score, x_T, eps, exact = gaussian_case(sde)
    errors = [
        rms(run("dpm_solver", sde, score, x_T, eps, num_steps=m, order=order), exact) for m in (8, 16, 32)
    ]
    # measured: order 1 -> 0.92-0.95, order 2 -> 2.07-2.10, order 3 -> 3.29-3.35 (asymptotic k)
    assert order - 0.2 < observed_order(errors) < order + 0.6, errors


def test_dpm_solver_1_is_euler_in_sigma(sde):
    """DPM-Solver-1 is DDIM: an Euler step of d(x / alpha) / dsigma = eps_hat (Lu et al. 2022, Sec. 4.1)."""
    score, x_T, eps, _ = gaussian_case(sde)
    m = 6
    x = run("dpm_solver", sde, score, x_T, eps, num_steps=m, order=1, skip_type="time_uniform")
    t = torch.linspace(sde.T, eps, m + 1, dtype=F64)
    alpha, std = sde.marginal_coeffs(t)
    y = x_T / alpha[0]
    for i in range(m):
        e_hat = -std[i] * score(alpha[i] * y, t[i].expand(x_T.shape[0]))
        y = y + (std[i + 1] / alpha[i + 1] - std[i] / alpha[i]) * e_hat
    torch.testing.assert_close(x, alpha[-1] * y, rtol=1e-10, atol=1e-10)


# ---- acceptance: 35 NFE against the tight PF-ODE on a 64-dim mixture -----------------------------------


@pytest.fixture(scope="module")
def mixture64():
    g = gen(0)
    means = 2 * torch.rand(3, 64, generator=g, dtype=F64) - 1
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, 0.05)


def tight_reference(sde, oracle, n=256):
    eps = EPS[type(sde)]
    x_T = sde.prior_sample((n, oracle.dim), generator=gen(1), dtype=F64)
    ref = run("ode", sde, oracle.score_fn(sde), x_T, eps, rtol=1e-7, atol=1e-7)
    return x_T, eps, ref


@pytest.mark.parametrize("sde_cls", [VESDE, VPSDE, SubVPSDE])
def test_35_nfe_within_1e_2_of_tight_pf_ode(mixture64, sde_cls):
    sde = sde_cls()
    score = mixture64.score_fn(sde)
    x_T, eps, ref = tight_reference(sde, mixture64)
    # Heun with EDM's final step to sigma = 0 (N = 18 -> 2N - 1 = 35 NFE) against the denoised reference
    alpha, std = sde.marginal_coeffs(torch.tensor(eps, dtype=F64))
    ref0 = (ref + std**2 * score(ref, torch.full((ref.shape[0],), eps, dtype=F64))) / alpha
    stats = {}
    x = ds.sample(sde, score, x_T.shape, method="heun", x_T=x_T, num_steps=18, stats=stats)
    assert stats["nfe"] == 35
    # measured 5.7e-3 (VE), 6.1e-3 (VP), 8.5e-3 (sub-VP)
    assert rms(x, ref0) <= 1e-2
    # the same grid stopped at eps: 34 NFE
    x = run("heun", sde, score, x_T, eps, num_steps=18, denoise=False, stats=stats)
    assert stats["nfe"] == 34 and rms(x, ref) <= 1e-2
    # DPM-Solver-3, 11 steps = 33 NFE (measured 7e-4 to 2e-3)
    x = ds.sample(sde, score, x_T.shape, method="dpm_solver", x_T=x_T, num_steps=11, order=3, stats=stats)
    assert stats["nfe"] == 33 and rms(x, ref) <= 1e-2


# ---- properties shared by the fixed-step samplers ------------------------------------------------------


@pytest.mark.parametrize("method", ["heun", "dpm_solver"])
def test_float32_matches_float64(sde, method):
    score64, x_T, eps, _ = gaussian_case(sde)
    oracle32 = GaussianMixture([1.0], torch.linspace(-1, 1, 8)[None], 0.3)
    x64 = ds.sample(sde, score64, x_T.shape, method=method, x_T=x_T, num_steps=10)
    x32 = ds.sample(sde, oracle32.score_fn(sde), x_T.shape, method=method, x_T=x_T.float(), num_steps=10)
    assert x32.dtype == torch.float32
    # float32 round-off over ~20 steps on states of size up to 50 (VE): a few 1e-5 relative
    torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["heun", "dpm_solver", "sde_adaptive"])
def test_non_finite_score_raises_with_time(method):
    sde = VPSDE()

    def bad_score(x, t):
        return torch.where(bcast_lt(t, 0.5, x), torch.full_like(x, float("nan")), -x)

    with pytest.raises(FloatingPointError, match="t = "):
        ds.sample(sde, bad_score, (4, 3), method=method, generator=gen(0), dtype=F64)


def bcast_lt(t, value, x):
    return (t < value).reshape((-1,) + (1,) * (x.ndim - 1))


def test_bad_arguments():
    sde, score = VPSDE(), (lambda x, t: -x)
    with pytest.raises(ValueError, match="num_steps"):
        ds.sample(sde, score, (2, 3), method="heun", num_steps=1)
    with pytest.raises(ValueError, match="eps"):
        ds.sample(sde, score, (2, 3), method="dpm_solver", eps=0.0)
    with pytest.raises(ValueError, match="order"):
        ds.sample(sde, score, (2, 3), method="dpm_solver", order=4)
    with pytest.raises(ValueError, match="not both"):
        ds.sample(sde, score, (2, 3), method="dpm_solver", num_steps=3, nfe=9)
    with pytest.raises(ValueError, match="skip_type"):
        ds.sample(sde, score, (2, 3), method="dpm_solver", skip_type="uniform")
    with pytest.raises(ValueError, match="rtol"):
        ds.sample(sde, score, (2, 3), method="sde_adaptive", rtol=0.0)
    with pytest.raises(ValueError, match="norm"):
        ds.sample(sde, score, (2, 3), method="sde_adaptive", norm=0.5)


def test_dpm_solver_fast_spends_its_budget_and_heun_counts_nfe():
    sde = VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 4, dtype=F64), 0.5).score_fn(sde)
    for budget in (5, 10, 12):
        stats = {}
        ds.sample(
            sde, score, (3, 4), method="dpm_solver", nfe=budget, generator=gen(0), dtype=F64, stats=stats
        )
        assert stats["nfe"] == budget
    ds.sample(sde, score, (3, 4), method="heun", num_steps=5, eps=0.0, dtype=F64, stats=stats)
    assert stats["nfe"] == 2 * 5 - 3  # eps = 0: the grid itself ends at sigma = 0 with an Euler step


def test_heun_image_shaped_and_batch_independent():
    """Shape-agnostic (B, C, H, W) states; a sample does not depend on its batch-mates."""
    sde = VESDE()
    oracle = GaussianMixture(
        [0.5, 0.5], torch.stack([torch.ones(2, 3, 3), -torch.ones(2, 3, 3)]).double(), 0.2
    )
    score = oracle.score_fn(sde)
    x_T = sde.prior_sample((5, 2, 3, 3), generator=gen(3), dtype=F64)
    full = run("heun", sde, score, x_T, 1e-5, num_steps=6)
    alone = run("heun", sde, score, x_T[2:3], 1e-5, num_steps=6)
    torch.testing.assert_close(full[2:3], alone, rtol=1e-12, atol=1e-12)


# ---- the adaptive reverse SDE ----------------------------------------------------------------------------


@pytest.mark.parametrize("sde_cls", [VESDE, VPSDE])
def test_sde_adaptive_reproduces_gaussian_marginal(sde_cls):
    """Samples of N(mu, s^2) data at eps: per-coordinate mean and variance of exact p_eps."""
    sde = sde_cls()
    d, n, s = 4, 2000, 0.5
    mu = torch.tensor([[-1.0, 0.0, 0.5, 1.0]], dtype=F64)
    score = GaussianMixture([1.0], mu, s).score_fn(sde)
    eps = EPS[sde_cls]
    stats = {}
    x = ds.sample(
        sde, score, (n, d), method="sde_adaptive", generator=gen(4), dtype=F64, rtol=0.05, stats=stats
    )
    a, sd = sde.marginal_coeffs(torch.tensor(eps, dtype=F64))
    var = a**2 * s**2 + sd**2
    # standard errors over n = 2000: mean s / sqrt(n) = 0.011, variance s^2 sqrt(2 / n) = 0.0079; 4 SE plus
    # the solver's weak error at rtol = 0.05 (measured below 0.01). Without the Brownian memory (the
    # paper's redraw after a rejection) the variance comes out 0.33-0.41 here.
    assert (x.mean(0) - a * mu[0]).abs().max() < 4 * 0.011 + 0.01
    assert (x.var(0) - var).abs().max() < 4 * 0.0079 + 0.01
    assert stats["nfe"] == 2 * stats["iterations"]


def test_sde_adaptive_mode_weights_and_tolerance_controls_nfe(mixture64):
    sde = VPSDE()
    score = mixture64.score_fn(sde)
    n = 400
    loose, tight = {}, {}
    x_T = sde.prior_sample((n, 64), gen(5), dtype=F64)
    x = run("sde_adaptive", sde, score, x_T, 1e-3, gen(6), rtol=0.05, atol=0.05, stats=loose)
    run("sde_adaptive", sde, score, x_T[:16], 1e-3, gen(6), rtol=0.01, atol=0.002, stats=tight)
    assert tight["nfe"] > loose["nfe"]
    weights = mixture64.posterior(x, sde, 1e-3).argmax(1).bincount(minlength=3).double() / n
    # binomial standard error at n = 400 is at most 0.025; 4 SE
    torch.testing.assert_close(weights, mixture64.weights, rtol=0, atol=0.1)


def test_sde_adaptive_per_sample_generators_make_samples_batch_independent():
    sde = VPSDE()
    means = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    score = GaussianMixture([0.5, 0.5], means, 0.3).score_fn(sde)
    x_T = sde.prior_sample((4, 2), gen(0), dtype=F64)
    full = run("sde_adaptive", sde, score, x_T, 1e-3, [gen(10 + k) for k in range(4)])
    alone = run("sde_adaptive", sde, score, x_T[1:2], 1e-3, [gen(11)])
    torch.testing.assert_close(full[1:2], alone, rtol=1e-10, atol=1e-10)
