"""The forward SDEs (VE, VP, sub-VP) against exact answers.

Three independent checks of ``marginal_prob``:

* Monte Carlo: the SDE itself (``ForwardSDE`` given to ``torchsde.sdeint``) simulated on fine steps;
  the standardized residuals ``(x_t - mean) / std`` must have mean 0 and standard deviation 1 within
  3 standard errors.
* Calculus: for the linear SDE ``dx = f(t) x dt + g(t) dw`` the coefficients of ``x_t = alpha x_0 +
  std z`` are the unique solution of ``d log alpha / dt = f`` and ``d std^2 / dt = 2 f std^2 + g^2``
  with ``alpha(0) = 1``, ``std(0) = 0`` (Sarkka & Solin 2019, eq. 6.2); autograd checks both.
* Closed forms of Song et al. 2021 (eqs. 29, 33 and App. B), evaluated with mpmath at 50 digits,
  including t = 1e-7 where a naive ``1 - exp(-x)`` loses every digit in float32.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torchsde

import diffscore as ds
from diffscore.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- Monte Carlo: marginal_prob against the simulated SDE ----------------------------------------------


def test_marginal_prob_matches_torchsde_simulation(sde):
    n, d, steps = 2000, 16, 200
    dt = sde.T / steps
    x0 = 1.0 + 0.5 * torch.randn(n, d, generator=gen(0), dtype=F64)
    fwd = ds.ForwardSDE(sde, (d,), sde_type="stratonovich")
    times = [0.02, 0.1, 0.5, 1.0]  # multiples of dt, so torchsde reports solver states, not interpolants
    ts = torch.tensor([0.0] + times, dtype=F64) * sde.T
    bm = torchsde.BrownianInterval(t0=0.0, t1=sde.T, size=(n, d), dtype=F64, entropy=1234, dt=dt)
    # Heun's bias in the variance is the trapezoid rule's on integral(g^2): relative (c dt)^2 / 12 with
    # c = 2 log(sigma_max / sigma_min) = 17 for VE, i.e. 6e-4 at dt = 1 / 200 (3e-4 in std), far below
    # the 3-standard-error band 3 / sqrt(2 n d) = 0.012 checked here.
    ys = torchsde.sdeint(fwd, x0, ts, bm=bm, method="heun", dt=dt)
    m = n * d
    for t, y in zip(ts[1:], ys[1:], strict=True):
        mean, std = sde.marginal_prob(x0, t)
        r = (y - mean) / std[:, None]
        # r has m independent N(0, 1) entries: SE of its mean 1 / sqrt(m), of its std 1 / sqrt(2 m)
        assert abs(float(r.mean())) < 3 / math.sqrt(m), f"mean at t={float(t)}"
        assert abs(float(r.std()) - 1) < 3 / math.sqrt(2 * m), f"std at t={float(t)}"


# ---- calculus: marginal_prob solves the moment equations of the SDE ----------------------------------


def test_marginal_coeffs_solve_the_moment_odes(sde):
    t = torch.tensor([1e-4, 0.01, 0.1, 0.3, 0.7, 1.0], dtype=F64, requires_grad=True)
    alpha, std = sde.marginal_coeffs(t)
    # (+ 0 * t: the VE alpha is the constant 1, so it carries no graph of its own)
    (dlog_alpha,) = torch.autograd.grad((alpha.log() + 0 * t).sum(), t)
    (dvar,) = torch.autograd.grad(std.square().sum(), t)
    t = t.detach()
    f = sde.drift(torch.ones(6, 1, dtype=F64), t)[:, 0]
    g2 = sde.diffusion(t).square()
    # both sides are exact derivatives in float64: only rounding separates them (atol: near t = 1 the
    # VP right side is -beta var + beta with var ~ 1, a cancellation down to ~1e-3 from terms ~20)
    torch.testing.assert_close(dlog_alpha, f, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(dvar, 2 * f * std.detach().square() + g2, rtol=1e-12, atol=1e-13)
    a0, s0 = sde.marginal_coeffs(torch.zeros(1, dtype=F64))
    assert float(a0) == 1.0 and float(s0) == 0.0


# ---- closed forms with mpmath ------------------------------------------------------------------------


def reference(sde, t: float) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """(alpha, std, g) of Song et al. 2021 at time t, at 50 digits."""
    mpmath.mp.dps = 50
    t = mpmath.mpf(t)
    if isinstance(sde, VESDE):
        smin, smax = mpmath.mpf(sde.sigma_min), mpmath.mpf(sde.sigma_max)
        r = smax / smin
        # exact variance of the SDE started at t = 0: sigma(t)^2 - sigma_min^2 (App. B of the paper
        # uses sigma(t)^2, which is off by sigma_min^2)
        var = smin**2 * (r ** (2 * t / sde.T) - 1)
        g = smin * r ** (t / sde.T) * mpmath.sqrt(2 * mpmath.log(r) / sde.T)
        return mpmath.mpf(1), mpmath.sqrt(var), g
    b0, b1 = mpmath.mpf(sde.beta_min), mpmath.mpf(sde.beta_max)
    integral = b0 * t + (b1 - b0) * t**2 / (2 * sde.T)
    beta = b0 + (b1 - b0) * t / sde.T
    alpha = mpmath.exp(-integral / 2)
    if isinstance(sde, SubVPSDE):
        return alpha, 1 - mpmath.exp(-integral), mpmath.sqrt(beta * (1 - mpmath.exp(-2 * integral)))
    return alpha, mpmath.sqrt(1 - mpmath.exp(-integral)), mpmath.sqrt(beta)


@pytest.mark.parametrize(
    "make",
    [
        VESDE,
        VPSDE,
        SubVPSDE,
        lambda: VESDE(sigma_min=0.002, sigma_max=80.0, T=2.0),
        lambda: VPSDE(beta_min=0.05, beta_max=12.0, T=0.5),
        lambda: SubVPSDE(beta_min=0.0, beta_max=5.0),
    ],
    ids=["ve", "vp", "subvp", "ve-custom", "vp-custom", "subvp-custom"],
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_coefficients_match_closed_form(make, dtype):
    sde = make()
    # float32 keeps a few ulp (eps = 1.2e-7) in every coefficient, t = 1e-7 included, since expm1 / log1p
    # are used near 0; float64 matches the 50-digit answer to ~1e-14 relative
    rtol = 5e-7 if dtype == torch.float32 else 1e-13
    t = torch.tensor([1e-7, 1e-4, 0.01, 0.25, 0.5, 1.0], dtype=dtype) * sde.T
    alpha, std = sde.marginal_coeffs(t)
    g = sde.diffusion(t)
    assert alpha.dtype == std.dtype == g.dtype == dtype
    ref = [reference(sde, float(ti)) for ti in t]  # at the float value t really holds
    for got, k in ((alpha, 0), (std, 1), (g, 2)):
        want = torch.tensor([float(r[k]) for r in ref], dtype=F64)
        torch.testing.assert_close(got.to(F64), want, rtol=rtol, atol=0.0)


def test_ve_variance_is_exact_sde_variance():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    _, std = sde.marginal_coeffs(t)
    paper_sigma = 0.01 * (50.0 / 0.01) ** t  # Song et al. 2021, eq. (30)
    torch.testing.assert_close(std.square(), paper_sigma.square() - 0.01**2, rtol=1e-13, atol=0.0)
    assert float(std[0]) == 0.0


def test_ve_sigma_kernel_is_the_noise_level_of_released_models():
    exact = VESDE(sigma_min=0.01, sigma_max=50.0)
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, kernel="sigma")
    t = torch.tensor([0.0, 1e-3, 0.3, 1.0], dtype=F64)
    paper_sigma = 0.01 * (50.0 / 0.01) ** t  # Song et al. 2021, eq. (30); score_sde's marginal_prob std
    _, std = sde.marginal_coeffs(t)
    torch.testing.assert_close(std, paper_sigma, rtol=1e-13, atol=0.0)
    # same SDE (drift, diffusion, kernel between two times): only the noise already in the data differs
    torch.testing.assert_close(sde.diffusion(t), exact.diffusion(t), rtol=0.0, atol=0.0)
    t1 = torch.tensor([0.2, 0.5, 1.0, 1.0], dtype=F64)
    for got, want in zip(sde.transition(t, t1), exact.transition(t, t1), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)
    # sigma(t) <-> t is a log-linear map; levels below sigma_min are reached at t = 0
    torch.testing.assert_close(sde.t_from_sigma(paper_sigma), t, rtol=1e-12, atol=1e-15)
    assert float(sde.t_from_sigma(torch.tensor(1e-3, dtype=F64))) == 0.0
    assert ds.sde.sde_from_config(ds.sde.sde_to_config(sde)).kernel == "sigma"
    with pytest.raises(ValueError, match="kernel"):
        VESDE(kernel="paper")


def test_drift_and_diffusion_match_paper(sde):
    x = torch.randn(4, 3, 2, 2, generator=gen(1), dtype=F64)
    t = torch.tensor([0.0, 0.2, 0.6, 1.0], dtype=F64)
    if isinstance(sde, VESDE):
        f = torch.zeros_like(t)
    else:
        f = -0.5 * (sde.beta_min + t * (sde.beta_max - sde.beta_min))  # eqs. (32), (11)
    torch.testing.assert_close(sde.drift(x, t), f[:, None, None, None] * x, rtol=1e-14, atol=0.0)
    want_g = torch.tensor([float(reference(sde, float(ti))[2]) for ti in t], dtype=F64)
    torch.testing.assert_close(sde.diffusion(t), want_g, rtol=1e-13, atol=0.0)
    # scalar time broadcasts over the batch
    torch.testing.assert_close(sde.drift(x, 0.6), f[2] * x, rtol=1e-14, atol=0.0)


def test_marginal_prob_shapes_and_values(sde):
    x0 = torch.randn(5, 3, 4, 4, generator=gen(2), dtype=F64)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=F64)
    mean, std = sde.marginal_prob(x0, t)
    alpha = torch.tensor([float(reference(sde, float(ti))[0]) for ti in t], dtype=F64)
    want_std = torch.tensor([float(reference(sde, float(ti))[1]) for ti in t], dtype=F64)
    torch.testing.assert_close(mean, alpha[:, None, None, None] * x0, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(std, want_std, rtol=1e-13, atol=0.0)


def test_transition_composes_and_starts_at_marginal(sde):
    t0 = torch.tensor([0.0, 0.1, 0.3], dtype=F64)
    t1 = torch.tensor([0.2, 0.5, 0.4], dtype=F64)
    t2 = torch.tensor([0.9, 0.6, 1.0], dtype=F64)
    a01, s01 = sde.transition(t0, t1)
    a12, s12 = sde.transition(t1, t2)
    a02, s02 = sde.transition(t0, t2)
    # Gaussian kernels compose: x2 = a12 (a01 x0 + s01 z) + s12 z'
    torch.testing.assert_close(a02, a01 * a12, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(s02.square(), a12.square() * s01.square() + s12.square(), rtol=1e-10, atol=0.0)
    a, s = sde.transition(torch.zeros(3, dtype=F64), t2)
    alpha, std = sde.marginal_coeffs(t2)
    torch.testing.assert_close(a, alpha, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(s, std, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_t_from_sigma_inverts_sigma(sde, dtype):
    t = torch.tensor([1e-3, 0.05, 0.4, 0.9, 1.0], dtype=dtype)
    sigma = sde.sigma(t)
    alpha, std = sde.marginal_coeffs(t)
    torch.testing.assert_close(sigma, std / alpha)
    # the inverse is well conditioned away from t = 0: float32 keeps ~1e-5 relative
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(sde.t_from_sigma(sigma), t, rtol=rtol, atol=0.0)


def test_prior_logp_and_sample(sde):
    z = sde.prior_sample((4000, 2, 4), generator=gen(3), dtype=F64)
    scale = torch.tensor(sde.prior_std, dtype=F64)
    want = torch.distributions.Normal(torch.zeros((), dtype=F64), scale).log_prob(z).sum((1, 2))
    torch.testing.assert_close(sde.prior_logp(z), want, rtol=1e-13, atol=1e-10)
    # 32000 N(0, prior_std^2) draws: the sample std has relative SE 1 / sqrt(2 * 32000) = 0.004
    assert abs(float(z.std()) / sde.prior_std - 1) < 3 * 0.004
    same = sde.prior_sample((4000, 2, 4), generator=gen(3), dtype=F64)
    assert torch.equal(z, same)


def test_float32_stays_float32(sde):
    x0 = torch.randn(3, 2, 5, generator=gen(4))
    mean, std = sde.marginal_prob(x0, torch.tensor([0.1, 0.5, 1.0]))
    assert mean.dtype == std.dtype == torch.float32
    assert sde.drift(x0, 0.5).dtype == torch.float32
    assert sde.prior_sample((2, 3), generator=gen(5)).dtype == torch.float32


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "err", "name"),
    [
        (lambda: VESDE(sigma_min=0.0), ValueError, "sigma_min"),
        (lambda: VESDE(sigma_min=-1.0), ValueError, "sigma_min"),
        (lambda: VESDE(sigma_min="0.01"), TypeError, "sigma_min"),
        (lambda: VESDE(sigma_max=float("inf")), ValueError, "sigma_max"),
        (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_max"),
        (lambda: VESDE(T=0.0), ValueError, "T"),
        (lambda: VPSDE(beta_min=-0.1), ValueError, "beta_min"),
        (lambda: VPSDE(beta_max=0.0), ValueError, "beta_max"),
        (lambda: VPSDE(beta_min=float("nan")), ValueError, "beta_min"),
        (lambda: VPSDE(beta_max=None), TypeError, "beta_max"),
        (lambda: VPSDE(T=-1.0), ValueError, "T"),
        (lambda: SubVPSDE(beta_min=2.0, beta_max=1.0), ValueError, "beta_min"),
    ],
)
def test_invalid_parameters_raise(make, err, name):
    with pytest.raises(err, match=name):
        make()


def test_bad_times_and_states_raise(sde):
    x0 = torch.zeros(3, 2, dtype=F64)
    for bad in (-0.1, 1.5 * sde.T, float("nan"), torch.tensor([0.1, 2.0, 0.3], dtype=F64)):
        with pytest.raises(ValueError, match="t must lie in"):
            sde.marginal_prob(x0, bad)
    with pytest.raises(ValueError, match="t must"):
        sde.marginal_prob(x0, torch.full((4,), 0.5, dtype=F64))  # (B+1,) times for B = 3
    with pytest.raises(ValueError, match="t must lie in"):
        sde.diffusion(torch.tensor([-1e-3]))
    with pytest.raises(ValueError, match="t must lie in"):
        sde.drift(x0, 2 * sde.T)
    with pytest.raises(TypeError, match="x0"):
        sde.marginal_prob(torch.zeros(3, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="x0"):
        sde.marginal_prob(torch.zeros(0, 2), 0.5)
    with pytest.raises(ValueError, match="sigma"):
        sde.t_from_sigma(torch.tensor([-1.0]))


def test_ve_default_kernel_and_sampling_end_are_the_papers_noise_level():
    # the default kernel stays "exact" (the SDE's own marginal; configs saved before the kernel existed
    # carry no "kernel" key and must load as what they were trained with), and the default sampling
    # end time puts both kernels at the papers' last noise level sigma_min = 0.01 (Song et al. 2021,
    # App. C: VE samplers stop at sigma_min), not at std(1e-5) = 1.3e-4 of the exact kernel.
    from diffscore.sampling import default_eps

    assert VESDE().kernel == "exact"
    assert ds.sde.sde_from_config({"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}).kernel == "exact"
    assert ds.sde.sde_to_config(VESDE())["kernel"] == "exact"  # new configs always record it
    for kernel in ("exact", "sigma"):
        sde = VESDE(kernel=kernel)
        _, std = sde.marginal_coeffs(torch.tensor(default_eps(sde), dtype=F64))
        torch.testing.assert_close(std, torch.tensor(0.01, dtype=F64), rtol=1e-4, atol=0.0)
    assert default_eps(VESDE(kernel="sigma")) == 1e-5
    assert default_eps(VPSDE()) == default_eps(SubVPSDE()) == 1e-3
