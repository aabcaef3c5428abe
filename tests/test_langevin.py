"""Langevin dynamics and NCSN annealed Langevin dynamics against exact answers (Song & Ermon 2019)."""

import math

import pytest
import torch

from diffscore import VESDE
from diffscore.oracles import GaussianMixture
from diffscore.sampling import (
    annealed_langevin,
    annealed_langevin_inpaint,
    geometric_sigmas,
    langevin_dynamics,
)

D64 = torch.float64


def _figure3_mixture() -> GaussianMixture:
    return GaussianMixture([0.2, 0.8], torch.tensor([[-5.0, -5.0], [5.0, 5.0]], dtype=D64), 1.0)


def _sigma_score(gm: GaussianMixture):
    """Exact score of the data convolved with N(0, sigma^2 I), through the VE oracle (std(t) = sigma)."""
    ve = VESDE(sigma_min=0.01, sigma_max=100.0)
    return lambda x, sigma: gm.score(x, ve.t_from_sigma(sigma), ve)


def _weight_of_first_mode(x):
    return float((x.sum(1) < 0).double().mean())


def test_geometric_sigmas_paper_defaults():
    s = geometric_sigmas(dtype=D64)
    assert s.shape == (10,)
    assert float(s[0]) == 1.0 and float(s[-1]) == 0.01
    ratios = s[1:] / s[:-1]
    # geometric: all ratios equal (0.01)^(1/9), to float64 rounding
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.01 ** (1 / 9)), rtol=1e-13, atol=0)
    assert geometric_sigmas().dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="sigma_min"):
        geometric_sigmas(1.0, 2.0)
    with pytest.raises(ValueError, match="num"):
        geometric_sigmas(num=1)


def test_langevin_stationary_variance_of_gaussian():
    # target N(0, 2 I), score -x / 2. Unadjusted Langevin with step h has stationary variance
    # 2 / (1 - h / 8) = 2.0025 at h = 1e-2 (a 0.13% bias). 4000 chains x 8 dims = 32000 draws give
    # a sampling error of 2 * sqrt(2 / 32000) = 0.016 (0.8%); 3000 steps are 7.5 relaxation times
    # (1 / (h / 4) = 400 steps) from x0 = 0, leaving a variance deficit of 2 exp(-15). So 3% is > 3 sigma.
    g = torch.Generator().manual_seed(0)
    stats = {}
    x = langevin_dynamics(lambda x: -x / 2, torch.zeros(4000, 8, dtype=D64), 1e-2, 3000, g, stats)
    var = float(x.var())
    assert abs(var - 2.0) < 0.03 * 2.0, var
    assert stats["nfe"] == 3000


def test_figure3_plain_langevin_wrong_annealed_right():
    # Song & Ermon 2019, Fig. 3: 0.2 N((-5,-5), I) + 0.8 N((5,5), I), exact scores, uniform init.
    gm = _figure3_mixture()
    g = torch.Generator().manual_seed(1)
    x0 = 16 * torch.rand(10000, 2, generator=g, dtype=D64) - 8  # uniform on [-8, 8]^2, as in the paper
    plain = langevin_dynamics(lambda x: gm.score(x, 0.0, VESDE()), x0[:2000], 0.1, 1000, g)
    # the modes barely exchange mass, so plain Langevin keeps the ~0.5 / 0.5 split of the init
    w_plain = _weight_of_first_mode(plain)
    assert abs(w_plain - 0.2) > 0.15, w_plain
    sigmas = geometric_sigmas(20.0, 1.0, 10, dtype=D64)
    stats = {}
    annealed = annealed_langevin(_sigma_score(gm), sigmas, x0, 0.1, 100, g, stats=stats)
    w = _weight_of_first_mode(annealed)
    # measured over 3 x 20000 samples, this schedule is biased by +0.017 (mixing between the modes is
    # incomplete at the middle levels; 0.003 with 1000 steps per level). The binomial error of 10000
    # samples is 0.004, so the 0.03 bound leaves 3 standard errors.
    assert abs(w - 0.2) < 0.03, w
    assert stats["nfe"] == 1000


def test_annealed_langevin_denoise_is_tweedie():
    # point mass at c: the score at level sigma is -(x - c) / sigma^2 and Tweedie's step returns c exactly
    c = torch.tensor([1.0, -2.0, 0.5], dtype=D64)
    g = torch.Generator().manual_seed(2)
    x = annealed_langevin(
        lambda x, s: -(x - c) / s[:, None] ** 2,
        geometric_sigmas(1.0, 0.1, 4, dtype=D64),
        torch.randn(64, 3, generator=g, dtype=D64),
        step_size=0.01,
        n_steps_each=5,
        generator=g,
        denoise=True,
    )
    torch.testing.assert_close(x, c.expand_as(x), rtol=0, atol=1e-12)


def test_annealed_langevin_per_sample_generators_and_callback():
    gm = _figure3_mixture()
    sigmas = geometric_sigmas(20.0, 1.0, 3, dtype=D64)
    x0 = torch.linspace(-6, 6, 8, dtype=D64).reshape(4, 2)
    gens = [torch.Generator().manual_seed(10 + k) for k in range(4)]
    calls = []
    batch = annealed_langevin(
        _sigma_score(gm), sigmas, x0, 0.1, 7, gens, callback=lambda i, t, x: calls.append((i, t))
    )
    assert calls == [(i, t) for i in range(3) for t in range(7)]
    for k in range(4):
        alone = annealed_langevin(
            _sigma_score(gm), sigmas, x0[k : k + 1], 0.1, 7, torch.Generator().manual_seed(10 + k)
        )
        # element-wise and per-row arithmetic only: the same draws give the same numbers
        torch.testing.assert_close(batch[k : k + 1], alone, rtol=1e-12, atol=1e-12)


def test_annealed_langevin_bad_input():
    x0 = torch.zeros(2, 2)
    score = lambda x, s: -x  # noqa: E731
    with pytest.raises(ValueError, match="decreasing"):
        annealed_langevin(score, [0.1, 1.0], x0)
    with pytest.raises(ValueError, match="sigmas"):
        annealed_langevin(score, [1.0, -0.1], x0)
    with pytest.raises(ValueError, match="step_size"):
        annealed_langevin(score, [1.0, 0.1], x0, step_size=0.0)
    with pytest.raises(ValueError, match="n_steps_each"):
        annealed_langevin(score, [1.0, 0.1], x0, n_steps_each=0)
    with pytest.raises(FloatingPointError, match="sigma = 0.1"):
        annealed_langevin(lambda x, s: x / (s[:, None] - 0.1), [1.0, 0.1], x0, step_size=1e-3, n_steps_each=2)


def test_annealed_langevin_inpaint_correlated_gaussian():
    # data N(mu, S), S = 1 1^T + 0.01 I in D = 8, first 4 entries known. The conditional mean of an
    # unknown entry is mu_u + sum_k (x_k - mu_k) / (4 + 0.01); its conditional std is about 0.1.
    d, known = 8, 4
    mu = torch.linspace(-1, 1, d, dtype=D64)
    cov = torch.ones(d, d, dtype=D64) + 0.01 * torch.eye(d, dtype=D64)

    def score_sigma(x, sigma):
        prec = torch.linalg.inv(cov + sigma[0] ** 2 * torch.eye(d, dtype=D64))
        return -(x - mu) @ prec

    g = torch.Generator().manual_seed(3)
    row = mu + torch.linalg.cholesky(cov) @ torch.randn(d, generator=g, dtype=D64)
    x_known = row.expand(400, d).clone()
    mask = torch.zeros(1, d, dtype=D64)
    mask[:, :known] = 1
    out = annealed_langevin_inpaint(
        score_sigma,
        geometric_sigmas(1.0, 0.01, 10, dtype=D64),
        x_known,
        mask,
        step_size=2e-5,
        n_steps_each=100,
        generator=g,
        denoise=True,
    )
    assert torch.equal(out[:, :known], x_known[:, :known])
    expected = mu[known:] + (row[:known] - mu[:known]).sum() / (known + 0.01)
    # 400 draws of conditional std ~0.1 give a standard error of 0.005; 0.05 is 10 of them
    torch.testing.assert_close(out[:, known:].mean(0), expected, rtol=0, atol=0.05)
    with pytest.raises(ValueError, match="mask"):
        annealed_langevin_inpaint(score_sigma, [1.0, 0.1], x_known, torch.ones(3))
    with pytest.raises(ValueError, match="mask"):
        annealed_langevin_inpaint(score_sigma, [1.0, 0.1], x_known, torch.full((1, d), 0.5))


def test_langevin_float32_stays_float32():
    x = langevin_dynamics(lambda x: -x, torch.zeros(3, 2), 0.1, 3, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    assert math.isfinite(float(x.abs().max()))
