"""Score-matching losses against closed forms.

Data are N(0, c^2 I) (c = 1 unless said otherwise), so every marginal is Gaussian and every expectation
below is exact. For an SDE with x_t = alpha x0 + std z the marginal is N(0, v I), v = alpha^2 + std^2,
the exact score is -x / v, and

    std * score(x_t) + z = (-std alpha x0 + alpha^2 z) / v   ~  N(0, alpha^2 / v * I),

so ||std * score + z||^2 = (alpha^2 / v) * chi2_D per sample: E = D alpha^2 / v, relative standard
deviation sqrt(2 / D) per sample, sqrt(2 / (B D)) for a batch mean. On a VE SDE (alpha = 1, std = sigma)
the sigma^2-weighted loss is D / (2 (1 + sigma^2)).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffscore.losses import (
    ddpm_loss,
    dsm_loss,
    dsm_loss_at_sigma,
    exact_score_matching_loss,
    ncsn_loss,
    sliced_score_matching_loss,
)
from diffscore.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_data(shape, seed=0, dtype=F64):
    return torch.randn(shape, generator=gen(seed), dtype=dtype)


def exact_sde_score(sde):
    """Score of p_t for N(0, I) data under ``sde``: -x / (alpha^2 + std^2)."""

    def score(x, t):
        alpha, std = sde.marginal_coeffs(t)
        v = alpha.square() + std.square()
        return -x / v.reshape(-1, *([1] * (x.ndim - 1)))

    return score


def exact_sigma_score(x, sigma):
    """Score of N(0, (1 + sigma^2) I), the N(0, I) data perturbed by N(0, sigma^2 I)."""
    return -x / (1 + sigma.square()).reshape(-1, *([1] * (x.ndim - 1)))


def mean_and_se(per):
    return per.mean().item(), (per.std() / math.sqrt(per.numel())).item()


# ---- denoising score matching: closed forms ----------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.01, 1.0, 10.0])
def test_dsm_at_sigma_exact_score_closed_form(sigma):
    # B D = 2048 * 64 gives a relative standard error sqrt(2 / (B D)) = 0.39%: 2% is 5 standard errors.
    x0 = gaussian_data((2048, 4, 4, 4))
    d = 64
    expected = d / (2 * (1 + sigma**2))
    loss = dsm_loss_at_sigma(exact_sigma_score, x0, sigma, reduction="sum", generator=gen(1))
    assert loss.item() == pytest.approx(expected, rel=0.02)
    # "mean" divides the per-sample sum by D, nothing else (same draws: exact up to rounding)
    loss_mean = dsm_loss_at_sigma(exact_sigma_score, x0, sigma, reduction="mean", generator=gen(1))
    assert loss_mean.item() == pytest.approx(loss.item() / d, rel=1e-12)
    # Vincent's unweighted objective is the sigma^2-weighted one divided by sigma^2 (same draws)
    unweighted = dsm_loss_at_sigma(
        exact_sigma_score, x0, sigma, weighting="none", reduction="sum", generator=gen(1)
    )
    assert unweighted.item() == pytest.approx(loss.item() / sigma**2, rel=1e-12)
    # the continuous-time loss on a VE SDE at the t where std(t) = sigma is the same loss, same draws
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = sde.t_from_sigma(torch.tensor(sigma, dtype=F64))
    cont = dsm_loss(exact_sde_score(sde), sde, x0, t=t, reduction="sum", generator=gen(1))
    assert cont.item() == pytest.approx(loss.item(), rel=1e-9)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("t", [0.05, 0.3, 1.0])
def test_dsm_fixed_t_exact_score_closed_form(sde, t):
    # E ||std s + z||^2 / 2 = D alpha^2 / (2 v); same 2% = 5 standard errors as above.
    x0 = gaussian_data((2048, 64), seed=2)
    alpha, std = (c.item() for c in sde.marginal_coeffs(torch.tensor(t, dtype=F64)))
    expected = 64 * alpha**2 / (2 * (alpha**2 + std**2))
    loss = dsm_loss(exact_sde_score(sde), sde, x0, t=t, reduction="sum", generator=gen(3))
    assert loss.item() == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_likelihood_weighting_is_sigma2_times_g2_over_std2(sde):
    x0 = gaussian_data((64, 3, 2, 2), seed=4)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(64, generator=gen(5), dtype=F64)
    score = exact_sde_score(sde)
    kw = dict(t=t, reduction="sum", per_sample=True)
    s2 = dsm_loss(score, sde, x0, weighting="sigma2", generator=gen(6), **kw)
    lik = dsm_loss(score, sde, x0, weighting="likelihood", generator=gen(6), **kw)
    ratio = sde.diffusion(t).square() / sde.marginal_coeffs(t)[1].square()
    torch.testing.assert_close(lik, s2 * ratio, rtol=1e-12, atol=0)


def likelihood_closed_form(sde, eps, d):
    # (1/(T-eps)) int_eps^T g^2/std^2 * D/(2 (1 + sigma^2)) dt with sigma = std/alpha and
    # g^2/std^2 = d/dt log sigma^2 (linear drift): = D/(2 (T-eps)) [log(sigma^2 / (1 + sigma^2))]_eps^T
    ends = torch.tensor([eps, sde.T], dtype=F64)
    sig2 = sde.sigma(ends).square()
    h = torch.log(sig2 / (1 + sig2))
    return (d / (2 * (sde.T - eps)) * (h[1] - h[0])).item()


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_likelihood_weighting_importance_sampling_closed_form(sde):
    x0 = gaussian_data((8192, 16), seed=7)
    eps = 1e-5
    expected = likelihood_closed_form(sde, eps, 16)
    per = dsm_loss(
        exact_sde_score(sde), sde, x0, eps=eps, weighting="likelihood", importance_sampling=True,
        reduction="sum", generator=gen(8), per_sample=True,
    )  # fmt: skip
    mean, se = mean_and_se(per)
    # 4 measured standard errors (the per-sample values are bounded: no heavy tail under the IS density)
    assert abs(mean - expected) < 4 * se
    assert se < 0.02 * expected  # the check has power: the error bar is small against the value


def test_likelihood_weighting_uniform_t_matches_closed_form():
    # Without importance sampling the weight g^2/std^2 ~ 1/t makes the estimator heavy-tailed near 0;
    # with eps = 0.1 the weight is at most g^2/std^2(0.1) = 20.2 on this VP SDE, so 4 measured standard
    # errors is a fair test.
    sde, eps = VPSDE(), 0.1
    x0 = gaussian_data((8192, 16), seed=9)
    per = dsm_loss(
        exact_sde_score(sde), sde, x0, eps=eps, weighting="likelihood", reduction="sum",
        generator=gen(10), per_sample=True,
    )  # fmt: skip
    mean, se = mean_and_se(per)
    assert abs(mean - likelihood_closed_form(sde, eps, 16)) < 4 * se


def test_ncsn_loss_closed_form_per_level():
    sigmas = torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=F64)
    x0 = gaussian_data((4096, 64), seed=11)
    labels = torch.arange(4096) % 4
    per = ncsn_loss(
        exact_sigma_score, x0, sigmas, reduction="sum", labels=labels, generator=gen(12), per_sample=True
    )
    for i, sigma in enumerate(sigmas.tolist()):
        # 1024 samples per level, D = 64: relative standard error 0.55%, so 3% is 5 standard errors
        assert per[labels == i].mean().item() == pytest.approx(64 / (2 * (1 + sigma**2)), rel=0.03)
    # with the same draws it is dsm_loss_at_sigma at the per-sample sigma
    same = dsm_loss_at_sigma(
        exact_sigma_score, x0, sigmas[labels], reduction="sum", generator=gen(12), per_sample=True
    )
    torch.testing.assert_close(per, same, rtol=1e-12, atol=0)


def test_ncsn_loss_random_levels_average_closed_form():
    sigmas = [20.0, 5.0, 1.0, 0.2]
    x0 = gaussian_data((8192, 32), seed=13)
    per = ncsn_loss(exact_sigma_score, x0, sigmas, reduction="sum", generator=gen(14), per_sample=True)
    expected = sum(32 / (2 * (1 + s**2)) for s in sigmas) / len(sigmas)
    mean, se = mean_and_se(per)
    assert abs(mean - expected) < 4 * se  # the level draw is part of the measured spread
    assert se < 0.03 * expected


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_ddpm_loss_closed_form_and_relation_to_dsm(sde):
    x0 = gaussian_data((2048, 64), seed=15)

    def eps_exact(x, t):  # the optimal noise predictor: -std * exact score
        std = sde.marginal_coeffs(t)[1].reshape(-1, 1)
        return -std * exact_sde_score(sde)(x, t)

    # mean over dims of ||eps - z||^2 = alpha^2 / v; 2% = 5 standard errors (B D = 2048 * 64)
    t = 0.3
    alpha, std = (c.item() for c in sde.marginal_coeffs(torch.tensor(t, dtype=F64)))
    loss = ddpm_loss(eps_exact, sde, x0, t=t, generator=gen(16))
    assert loss.item() == pytest.approx(alpha**2 / (alpha**2 + std**2), rel=0.02)

    # any eps_model: ddpm_loss = 2 * dsm_loss(sigma2) with score = -eps / std, same draws (random t)
    def eps_model(x, t):
        return torch.tanh(x) * (1 + t).reshape(-1, 1)

    def score(x, t):
        return -eps_model(x, t) / sde.marginal_coeffs(t)[1].reshape(-1, 1)

    a = ddpm_loss(eps_model, sde, x0[:256], eps=1e-3, generator=gen(17), per_sample=True)
    b = dsm_loss(score, sde, x0[:256], eps=1e-3, generator=gen(17), per_sample=True)
    torch.testing.assert_close(a, 2 * b, rtol=1e-10, atol=0)


# ---- exact and sliced score matching -----------------------------------------------------------------
def test_exact_score_matching_closed_forms():
    x = gaussian_data((32, 2, 3), seed=18)
    xf = x.reshape(32, -1)
    for theta in (0.3, 1.0, 2.0):
        per = exact_score_matching_loss(lambda y: -theta * y, x, per_sample=True)
        torch.testing.assert_close(
            per, -theta * 6 + theta**2 * xf.square().sum(1) / 2, rtol=1e-12, atol=1e-12
        )
    # a full (non-symmetric) linear map: trace of the Jacobian is -tr(A), exactly
    a = torch.randn(6, 6, generator=gen(19), dtype=F64)
    per = exact_score_matching_loss(lambda y: -(y.reshape(32, 6) @ a.T).reshape(y.shape), x, per_sample=True)
    expected = -torch.trace(a) + (xf @ a.T).square().sum(1) / 2
    torch.testing.assert_close(per, expected, rtol=1e-12, atol=1e-12)
    # nonlinear elementwise: s = -y^3, tr J = -3 sum y^2
    per = exact_score_matching_loss(lambda y: -(y**3), x, per_sample=True)
    torch.testing.assert_close(
        per, -3 * xf.square().sum(1) + (xf**3).square().sum(1) / 2, rtol=1e-12, atol=1e-12
    )


def test_exact_score_matching_parameter_gradient_and_no_grad():
    x = gaussian_data((64, 5), seed=20)
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    loss = exact_score_matching_loss(lambda y: -theta * y, x)
    (grad,) = torch.autograd.grad(loss, theta)
    # d/dtheta E[-theta D + theta^2 ||x||^2 / 2] = -D + theta E||x||^2 (same x: exact)
    assert grad.item() == pytest.approx(-5 + 0.5 * x.square().sum(1).mean().item(), rel=1e-12)
    with torch.no_grad():
        value = exact_score_matching_loss(lambda y: -theta * y, x)
    assert not value.requires_grad and value.item() == pytest.approx(loss.item(), rel=1e-12)


def test_ssm_vr_rademacher_equals_exact_for_diagonal_jacobian():
    # v_i^2 = 1 and J diagonal give v^T J v = tr J for every draw: SSM-VR is then exact SM, sample by sample
    x = gaussian_data((16, 3, 4, 4), seed=21)
    score = torch.tanh
    exact = exact_score_matching_loss(score, x, per_sample=True)
    ssm = sliced_score_matching_loss(
        score,
        x,
        n_projections=3,
        variance_reduction=True,
        dist="rademacher",
        generator=gen(22),
        per_sample=True,
    )
    torch.testing.assert_close(ssm, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_ssm_at_exact_score_mean_variance_and_shape_invariance(dist):
    # s(x) = -x, J = -I: v^T J v = -||v||^2, E = -D; (v^T x)^2 / 2 has E = D / 2, so both means are -D/2.
    b, d = 2048, 192
    x = gaussian_data((b, 3, 8, 8), seed=23)

    def score(y):
        return -y

    per_ssm = sliced_score_matching_loss(score, x, dist=dist, generator=gen(24), per_sample=True)
    per_vr = sliced_score_matching_loss(
        score, x, variance_reduction=True, dist=dist, generator=gen(24), per_sample=True
    )
    for per in (per_ssm, per_vr):
        mean, se = mean_and_se(per)
        assert abs(mean + d / 2) < 3 * se
    # Per-sample variances: gaussian v: SSM D^2/2 + 1.5 D, SSM-VR 2.5 D; rademacher v: D^2/2 and D/2.
    # Tolerances: about 3.5 standard errors of a sample variance from 2048 draws (SSM is chi2_1-like,
    # kurtosis 15, relative error sqrt(14/2048) = 8%; SSM-VR near-Gaussian, sqrt(2/2048) = 3%).
    var_ssm, var_vr = (d**2 / 2 + 1.5 * d, 2.5 * d) if dist == "gaussian" else (d**2 / 2, d / 2)
    assert per_ssm.var().item() == pytest.approx(var_ssm, rel=0.3)
    assert per_vr.var().item() == pytest.approx(var_vr, rel=0.12)
    assert per_vr.var() < per_ssm.var() / 10
    # same numbers whether the event dims are image-shaped or flattened
    flat = sliced_score_matching_loss(score, x.reshape(b, d), dist=dist, generator=gen(24), per_sample=True)
    torch.testing.assert_close(flat, per_ssm, rtol=1e-12, atol=1e-9)


# ---- all objectives push s(x) = -theta x toward the true score (theta = 1) -----------------------------
def _objectives(sigma_dsm):
    return {
        "exact": (lambda s, x: exact_score_matching_loss(s, x), 1024),
        "ssm": (
            lambda s, x: sliced_score_matching_loss(
                s, x, n_projections=8, dist="rademacher", generator=gen(30)
            ),
            4096,
        ),
        "ssm_vr": (
            lambda s, x: sliced_score_matching_loss(s, x, variance_reduction=True, generator=gen(30)),
            1024,
        ),
        "dsm": (lambda s, x: dsm_loss_at_sigma(lambda y, sig: s(y), x, sigma_dsm, generator=gen(30)), 16384),
    }


@pytest.mark.parametrize("name", ["exact", "ssm", "ssm_vr", "dsm"])
def test_objectives_push_theta_toward_one(name):
    sigma = 0.1
    fn, b = _objectives(sigma)[name]
    x = gaussian_data((b, 64), seed=31)
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(lambda y: -theta * y, x), theta)
    assert grad.item() < 0
    grid = torch.linspace(0.75, 1.25, 51, dtype=F64)  # a minimiser at an end fails the test
    with torch.no_grad():
        values = torch.stack([fn(lambda y, th=th: -th * y, x) for th in grid])
    theta_min = grid[values.argmin()].item()
    # Every loss is quadratic in theta; its sample minimiser has standard error
    #   exact, ssm_vr: theta = sum||v||^2 / sum||x||^2 -> about sqrt(2 / (B D)) (+ v's spread): <= 0.008
    #   ssm (M = 8 Rademacher directions): sqrt(2 / (M B)) = 0.008
    #   dsm at sigma: minimiser 1 / (1 + sigma^2) = 0.990, standard error 1 / (sigma sqrt(B D)) = 0.0098.
    # Tolerance: 4 standard errors + half a grid step + the DSM bias sigma^2 / (1 + sigma^2).
    target = 1 / (1 + sigma**2) if name == "dsm" else 1.0
    assert abs(theta_min - target) < 4 * 0.0098 + 0.005
    assert abs(theta_min - 1.0) < 4 * 0.0098 + 0.005 + sigma**2


# ---- generators, dtypes ---------------------------------------------------------------------------------
def test_per_sample_generators_make_samples_independent_of_batch_mates():
    sde = VPSDE()
    x0 = gaussian_data((4, 8), seed=40)
    score = exact_sde_score(sde)
    full = dsm_loss(score, sde, x0, generator=[gen(k) for k in range(4)], per_sample=True)
    part = dsm_loss(score, sde, x0[:2], generator=[gen(k) for k in range(2)], per_sample=True)
    torch.testing.assert_close(full[:2], part, rtol=0, atol=0)
    ssm_full = sliced_score_matching_loss(
        torch.tanh, x0, 2, generator=[gen(k) for k in range(4)], per_sample=True
    )
    ssm_part = sliced_score_matching_loss(
        torch.tanh, x0[:2], 2, generator=[gen(k) for k in range(2)], per_sample=True
    )
    torch.testing.assert_close(ssm_full[:2], ssm_part, rtol=0, atol=0)


def test_float32_stays_float32():
    sde = VPSDE()
    x0 = gaussian_data((8, 3, 2, 2), dtype=torch.float32)
    seen = []

    def score(x, t):
        seen.append((x.dtype, t.dtype))
        return -x

    losses = [
        dsm_loss(score, sde, x0, generator=gen(0)),
        dsm_loss(score, sde, x0, weighting="likelihood", importance_sampling=True, generator=gen(0)),
        ddpm_loss(score, sde, x0, generator=gen(0)),
        ncsn_loss(score, x0, [1.0, 0.1], generator=gen(0)),
        dsm_loss_at_sigma(score, x0, 0.5, generator=gen(0)),
        exact_score_matching_loss(torch.tanh, x0),
        sliced_score_matching_loss(torch.tanh, x0, generator=gen(0)),
    ]
    assert all(loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
    assert set(seen) == {(torch.float32, torch.float32)}


# ---- bad input ------------------------------------------------------------------------------------------
def _score(x, t):
    return -x


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda x, s: dsm_loss(_score, s, x, eps=-0.1), "eps"),
        (lambda x, s: dsm_loss(_score, s, x, eps=1.0), "eps"),
        (lambda x, s: dsm_loss(_score, s, x, eps=0.0, weighting="likelihood"), "eps"),
        (lambda x, s: dsm_loss(_score, s, x, weighting="sigma"), "weighting"),
        (lambda x, s: dsm_loss(_score, s, x, reduction="avg"), "reduction"),
        (lambda x, s: dsm_loss(_score, s, x, importance_sampling=True), "importance_sampling"),
        (lambda x, s: dsm_loss(_score, s, x, t=1.5), "t"),
        (lambda x, s: dsm_loss(lambda y, t: y[:, :1], s, x), "score"),
        (lambda x, s: ddpm_loss(_score, s, x, reduction="none"), "reduction"),
        (lambda x, s: ncsn_loss(_score, x, [0.1, 1.0]), "sigmas"),
        (lambda x, s: ncsn_loss(_score, x, [1.0, -0.1]), "sigmas"),
        (lambda x, s: ncsn_loss(_score, x, [1.0, 0.1], labels=torch.full((4,), 2)), "labels"),
        (lambda x, s: dsm_loss_at_sigma(_score, x, 0.0), "sigma"),
        (lambda x, s: dsm_loss_at_sigma(_score, x, 1.0, weighting="likelihood"), "weighting"),
        (lambda x, s: sliced_score_matching_loss(torch.tanh, x, n_projections=0), "n_projections"),
        (lambda x, s: sliced_score_matching_loss(torch.tanh, x, dist="uniform"), "dist"),
        (lambda x, s: exact_score_matching_loss(lambda y: y.sum(1), x), "score"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, name):
    x = gaussian_data((4, 3))
    with pytest.raises(ValueError, match=name):
        call(x, VPSDE())


def test_bad_types_raise_type_error():
    x = gaussian_data((4, 3))
    with pytest.raises(TypeError, match="sde"):
        dsm_loss(_score, "vp", x)
    with pytest.raises(TypeError, match="x0"):
        dsm_loss(_score, VPSDE(), torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="n_projections"):
        sliced_score_matching_loss(torch.tanh, x, n_projections=1.5)
