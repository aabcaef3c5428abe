"""Every sampler started below T, at ``t_start``, from exact draws of p_{t_start} reproduces the data.

With the exact score of a Gaussian mixture, the reverse process from ``x ~ p_{t_start}`` at ``t_start``
ends in p_eps (eps = the sampling end time, where p_eps is p_0 up to noise of std(eps)): we compare the
samples with p_eps itself (its variance in closed form, its weights), so the test measures the samplers
alone.
"""

from __future__ import annotations

import pytest
import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import METHODS, default_eps
from diffscore.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64
WEIGHTS = (0.3, 0.7)
#: every sampler with its output at eps (no final denoising step: Tweedie's mean is not a draw of p_0);
#: the stochastic fixed-step ones with steps of T / 200 (see STEPS)
OPTIONS = {
    "pc": dict(denoise=False),
    # heun: EDM's 18 levels leave a 3.2% variance error on sub-VP from T/2 (discretization: 40 levels
    # give 0.4%, 80 give 1.0%, dopri5 1.1%, measured on this mixture, D = 1)
    "heun": dict(denoise=False, num_steps=40),
    "sde": dict(),
    "sde_adaptive": dict(),
    "ode": dict(),
    "dpm_solver": dict(),
    # the multistep samplers at 20 steps: their 10-step default leaves a 4.6% variance error on sub-VP
    # from T/2 in D = 64 (discretization, not the start time: 20 steps give < 1%)
    "dpmpp": dict(num_steps=20),
    "unipc": dict(num_steps=20),
    "sde_dpmpp_2m": dict(),
    "sde_dpmpp_3m": dict(),
}


#: the methods whose ``num_steps`` spans [eps, t_start]: steps of T / 200 from t_start
STEPS = ("pc", "sde")


def mixture(d: int) -> GaussianMixture:
    """Two components at -0.25 and +0.25 (every coordinate), std 0.3: per-coordinate variance 0.1425,
    of which 0.0525 between the components (the weights' sampling noise then moves it by 0.5%)."""
    means = torch.stack([-0.25 * torch.ones(d, dtype=F64), 0.25 * torch.ones(d, dtype=F64)])
    return GaussianMixture(torch.tensor(WEIGHTS, dtype=F64), means, 0.3)


def test_every_method_is_covered():
    assert set(OPTIONS) == set(METHODS)


#: D = 1: every SDE at T / 2 and T / 10. D = 64 (one score call costs 40x more): every SDE at T / 10,
#: and VP at T / 2 as well.
CASES = [(make, fraction, 1) for make in (VESDE, VPSDE, SubVPSDE) for fraction in (0.5, 0.1)] + [
    pytest.param(make, fraction, 64, marks=pytest.mark.slow)
    for make, fraction in ((VESDE, 0.1), (VPSDE, 0.1), (SubVPSDE, 0.1), (VPSDE, 0.5))
]


@pytest.mark.parametrize("method", sorted(OPTIONS))
@pytest.mark.parametrize(("make", "fraction", "d"), CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_start_below_T_reproduces_the_data(make, fraction, d, method):
    sde, oracle = make(), mixture(d)
    eps, t_start = default_eps(sde), fraction * make().T
    # n: the variance ratio's standard error is <= 1% (D = 1: sqrt(2 / n); D = 64: the mean over
    # coordinates, where the weights' sampling noise, s.e. 0.007, dominates: 0.5%), so the 3% tolerance
    # is 3 standard errors or more.
    n = 20000 if d == 1 else 4000
    options = dict(OPTIONS[method])
    if method in STEPS:
        options["num_steps"] = round(200 * fraction)
    g = torch.Generator().manual_seed(5)
    x_start = oracle.sample(n, g, sde=sde, t=t_start)
    score = oracle.score_fn(sde)
    x = ds.sample(sde, score, (n, d), method, g, x_T=x_start, eps=eps, t_start=t_start, **options)
    # p_eps in closed form: per coordinate, the mean of the components' variances
    # alpha^2 0.3^2 + std^2 plus the variance of their means alpha * (-0.25, 0.25) under the weights
    alpha, std = (float(c) for c in sde.marginal_coeffs(torch.tensor(eps, dtype=F64)))
    w = torch.tensor(WEIGHTS, dtype=F64)
    mean_k = alpha * torch.tensor([-0.25, 0.25], dtype=F64)
    exact_var = (alpha * 0.3) ** 2 + std**2 + float((w * mean_k**2).sum() - (w * mean_k).sum() ** 2)
    ratio = float(x.var(0).mean()) / exact_var
    assert abs(ratio - 1) < 0.03, ratio
    # the weight of the heavier component, from each sample's most likely component: binomial s.e.
    # 0.0032 (D = 1), 0.0072 (D = 64). In D = 1 the components overlap, so exact draws of p_eps
    # (50 x more, their own noise 7x below the samples') are classified the same way for the reference;
    # in D = 64 they lie 13 component stds apart and the classification is exact: the reference is 0.7.
    share = float(oracle.posterior(x, sde, eps).argmax(1).double().mean())
    if d == 1:
        exact = oracle.sample(50 * n, torch.Generator().manual_seed(6), sde=sde, t=eps)
        want = float(oracle.posterior(exact, sde, eps).argmax(1).double().mean())
    else:
        want = WEIGHTS[1]
    assert abs(share - want) < 0.02, (share, want)


def test_t_start_below_T_needs_x_T():
    sde = VPSDE()
    with pytest.raises(ValueError, match="x_T"):
        ds.sample(sde, lambda x, t: -x, (2, 3), "pc", t_start=0.5)
    with pytest.raises(ValueError, match="t_start must lie in"):
        ds.sample(sde, lambda x, t: -x, (2, 3), "pc", x_T=torch.zeros(2, 3), t_start=1e-4)
