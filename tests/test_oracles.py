"""The Gaussian-mixture oracle: every other test's ground truth, so checked from first principles.

* log p_0 against torch.distributions (an independent implementation of the same density);
* log p_t under an SDE against a Monte Carlo estimate of ``E_{x0 ~ p_0} N(x; alpha x0, std^2 I)``;
* p_t solves the Fokker-Planck equation of the SDE, written for log p:
  ``d_t log p = -f D - f x . grad log p + (g^2 / 2) (lap log p + |grad log p|^2)``, by autograd;
* the score is the autograd gradient of log_prob; posterior is Bayes' rule; draws have the moments.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from diffscore.oracles import GaussianMixture

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference(oracle: GaussianMixture, alpha: float = 1.0, std: float = 0.0) -> MixtureSameFamily:
    """p_t = sum_k w_k N(alpha mu_k, alpha^2 s_k^2 + std^2) with torch.distributions, flat event."""
    mu = oracle.means.reshape(len(oracle.weights), -1)
    s = oracle.stds.reshape(len(oracle.weights), -1)
    comp = Independent(Normal(alpha * mu, (alpha**2 * s.square() + std**2).sqrt()), 1)
    return MixtureSameFamily(Categorical(probs=oracle.weights), comp)


@pytest.fixture
def oracle(make_mixture) -> GaussianMixture:
    return make_mixture((2, 3))


def test_log_prob_at_time_zero(oracle):
    x = oracle.sample(50, gen(1))
    torch.testing.assert_close(oracle.log_prob(x), reference(oracle).log_prob(x.reshape(50, -1)))


def test_per_dimension_stds(make_mixture):
    base = make_mixture((4,))
    stds = torch.rand(3, 4, generator=gen(2), dtype=F64) + 0.1
    oracle = GaussianMixture(base.weights, base.means, stds)
    x = oracle.sample(20, gen(3))
    torch.testing.assert_close(oracle.log_prob(x), reference(oracle).log_prob(x))


def test_log_prob_under_sde_matches_monte_carlo(sde):
    # D = 2, so p_t(x) = E_{x0 ~ p_0} N(x; alpha x0, std^2 I) is well estimated from 200000 draws x0;
    # the estimate's relative standard error is std(ratio) / sqrt(n), and the check allows 4 of them
    oracle = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64), [0.3, 0.5])
    t = 0.3
    alpha, std = (float(v) for v in sde.marginal_coeffs(torch.tensor(t, dtype=F64)))
    x0 = oracle.sample(200_000, gen(4))
    x = torch.tensor([[0.0, 0.0], [1.0, -0.4], [-1.2, 0.6]], dtype=F64) * max(alpha, std)
    for xi, lp in zip(x, oracle.log_prob(x, sde, t), strict=True):
        k = Normal(alpha * x0, std).log_prob(xi).sum(1).exp()
        est, rel_se = float(k.mean()), float(k.std() / k.mean()) / math.sqrt(k.numel())
        assert abs(math.log(est) - float(lp)) < 4 * rel_se
    torch.testing.assert_close(oracle.log_prob(x, sde, t), reference(oracle, alpha, std).log_prob(x))


def test_marginals_solve_fokker_planck(sde):
    oracle = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64), [0.3, 0.5])
    x = torch.tensor([[0.2, -0.3], [1.1, 0.4], [-0.7, 0.9]], dtype=F64)
    for t_val in (0.05, 0.3, 0.8):
        t = torch.full((3,), t_val, dtype=F64, requires_grad=True)
        xg = x.clone().requires_grad_(True)
        logp = oracle.log_prob(xg, sde, t)
        dt_logp, grad = torch.autograd.grad(logp.sum(), (t, xg), create_graph=True)
        lap = sum(torch.autograd.grad(grad[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2))
        tt = t.detach()
        f, g2 = sde.f(tt), sde.g2(tt)
        rhs = -2 * f - f * (x * grad).sum(1) + 0.5 * g2 * (lap + grad.square().sum(1))
        # both sides are exact derivatives in float64 (terms up to ~1e3 on VE): relative 1e-9
        torch.testing.assert_close(dt_logp.detach(), rhs.detach(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", [0.0, 0.01, 0.5, 1.0])
def test_score_is_gradient_of_log_prob(oracle, sde, t):
    x = oracle.sample(10, gen(5), sde=sde, t=t).requires_grad_(True)
    (want,) = torch.autograd.grad(oracle.log_prob(x, sde, t).sum(), x)
    got = oracle.score_fn(sde)(x.detach(), torch.full((10,), t, dtype=F64))
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if t == 0.0:  # every SDE starts at alpha = 1, std = 0: p_0 itself
        (want0,) = torch.autograd.grad(oracle.log_prob(x).sum(), x)
        torch.testing.assert_close(got, want0, rtol=1e-10, atol=1e-10)


def test_posterior_is_bayes_rule(oracle, sde):
    x = oracle.sample(30, gen(6), sde=sde, t=0.2)
    post = oracle.posterior(x, sde, 0.2)
    alpha, std = (float(v) for v in sde.marginal_coeffs(torch.tensor(0.2, dtype=F64)))
    comp = reference(oracle, alpha, std).component_distribution
    joint = comp.log_prob(x.reshape(30, 1, -1)) + oracle.weights.log()
    torch.testing.assert_close(post, torch.softmax(joint, 1))
    torch.testing.assert_close(post.sum(1), torch.ones(30, dtype=F64))


def test_sample_moments_and_labels(oracle, sde):
    n = 100_000
    x, labels = oracle.sample(n, gen(7), sde=sde, t=0.4, return_labels=True)
    assert x.shape == (n, 2, 3) and labels.shape == (n,)
    # labels: multinomial frequencies within 4 binomial standard errors
    freq = torch.bincount(labels, minlength=3).double() / n
    assert ((freq - oracle.weights).abs() <= 4 * (oracle.weights * (1 - oracle.weights) / n).sqrt()).all()
    # per component: draws of N(alpha mu_k, alpha^2 s_k^2 + std^2); standardized residuals ~ N(0, 1)
    alpha, std = (float(v) for v in sde.marginal_coeffs(torch.tensor(0.4, dtype=F64)))
    mu = alpha * oracle.means[labels]
    sd = (alpha**2 * oracle.stds[labels].square() + std**2).sqrt()
    r = ((x - mu) / sd).flatten()
    assert abs(float(r.mean())) < 4 / math.sqrt(r.numel())
    assert abs(float(r.std()) - 1) < 4 / math.sqrt(2 * r.numel())


def test_per_sample_generators(oracle):
    batch = oracle.sample(4, [gen(20 + k) for k in range(4)])
    for k in range(4):
        assert torch.equal(batch[k], oracle.sample(1, [gen(20 + k)])[0])
    assert torch.equal(oracle.sample(4, gen(8)), oracle.sample(4, gen(8)))


def test_dtype_conversion(oracle, sde):
    o32 = oracle.to(dtype=torch.float32)
    x = oracle.sample(5, gen(9))
    s32 = o32.score(x.float(), 0.3, sde)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), oracle.score(x, 0.3, sde), rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise(oracle, sde):
    mu = torch.zeros(2, 3, dtype=F64)
    for kwargs, name in [
        (dict(weights=[1.0], means=mu, stds=1.0), "weights"),
        (dict(weights=[1.0, -1.0], means=mu, stds=1.0), "weights"),
        (dict(weights=[1.0, float("nan")], means=mu, stds=1.0), "weights"),
        (dict(weights=[1.0, 1.0], means=mu[0], stds=1.0), "means"),
        (dict(weights=[1.0, 1.0], means=mu + torch.inf, stds=1.0), "means"),
        (dict(weights=[1.0, 1.0], means=mu, stds=0.0), "stds"),
        (dict(weights=[1.0, 1.0], means=mu, stds=torch.ones(2, 4)), "stds"),
    ]:
        with pytest.raises(ValueError, match=name):
            GaussianMixture(**kwargs)
    with pytest.raises(ValueError, match="x must be shaped"):
        oracle.log_prob(torch.zeros(4, 6, dtype=F64))
    with pytest.raises(ValueError, match="t"):
        oracle.log_prob(torch.zeros(4, 2, 3, dtype=F64), sde)
    with pytest.raises(ValueError, match="sde"):
        oracle.log_prob(torch.zeros(4, 2, 3, dtype=F64), None, 0.5)
    with pytest.raises(ValueError, match="n must"):
        oracle.sample(0)
    with pytest.raises(ValueError, match="t must lie in"):
        oracle.sample(3, gen(0), sde=sde, t=1.5)
