"""Every sampler started below T, at ``t_start``, from exact draws of p_{t_start} reproduces the data.

With the exact score of a Gaussian mixture, the reverse process from ``x ~ p_{t_start}`` at ``t_start``
ends in p_eps (eps = the sampling end time, where p_eps is p_0 up to noise of std(eps)): we compare the
samples with p_eps itself (``oracle.sample(..., t=eps)``), so the test measures the samplers alone.
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
    "dpmpp": dict(),
    "unipc": dict(),
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


@pytest.mark.parametrize("method", sorted(OPTIONS))
@pytest.mark.parametrize("d", [1, pytest.param(64, marks=pytest.mark.slow)])  # D = 64: most of the time
@pytest.mark.parametrize("fraction", [0.5, 0.1])
@pytest.mark.parametrize("make", [VESDE, VPSDE, SubVPSDE], ids=["ve", "vp", "subvp"])
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
    # the reference: 50 x more exact draws of p_eps (their own noise is 7x below the samples')
    exact = oracle.sample(50 * n, torch.Generator().manual_seed(6), sde=sde, t=eps)
    ratio = float(x.var(0).mean() / exact.var(0).mean())
    assert abs(ratio - 1) < 0.03, ratio
    # the weight of the heavier component, from each sample's most likely component (the components
    # overlap in D = 1, so exact draws are classified the same way): binomial s.e. 0.0032 (D = 1),
    # 0.0072 (D = 64)
    share = oracle.posterior(x, sde, eps).argmax(1).double().mean()
    want = oracle.posterior(exact, sde, eps).argmax(1).double().mean()
    assert abs(float(share - want)) < 0.02, (float(share), float(want))


def test_t_start_below_T_needs_x_T():
    sde = VPSDE()
    with pytest.raises(ValueError, match="x_T"):
        ds.sample(sde, lambda x, t: -x, (2, 3), "pc", t_start=0.5)
    with pytest.raises(ValueError, match="t_start must lie in"):
        ds.sample(sde, lambda x, t: -x, (2, 3), "pc", x_T=torch.zeros(2, 3), t_start=1e-4)
