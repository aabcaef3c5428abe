"""sample(method="ode" | "sde") with the exact score of a Gaussian mixture.

What the samples must get right, in D = 16 with 4000 samples:

* the mixture weights: each sample is classified by ``oracle.posterior`` (the components are ~8
  standard deviations apart, so exact draws classify without error); every weight within 0.02
  (2.5 to 3.2 binomial standard errors at 4000 samples);
* the mean true log-density per dimension, ``E_q[log p_eps(x)] / D`` under the sampler's q, within
  0.01 nats of the same mean under exact draws of p_eps (200000 of them: standard error 4e-4). The
  component stds are equal, so the component entropies are too and the weights' sampling noise does
  not move this mean: its standard error is then sqrt(1 / (2 D)) / sqrt(4000) = 2.8e-3, and 0.01 is
  3.6 of them. Samples that are too noisy or too sharp, or a wrong drift, shift it by more.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import default_eps
from diffscore.sde import VPSDE

F32, F64 = torch.float32, torch.float64
N, D = 4000, 16
WEIGHTS = (0.2, 0.3, 0.5)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oracle16() -> GaussianMixture:
    g = gen(0)
    means = 0.8 * (2 * torch.rand((3, D), generator=g, dtype=F32) - 1)
    return GaussianMixture(torch.tensor(WEIGHTS, dtype=F32), means, 0.3)


def check_samples(oracle: GaussianMixture, sde, x: torch.Tensor) -> None:
    eps = default_eps(sde)
    labels = oracle.posterior(x, sde, eps).argmax(1)
    weights = torch.bincount(labels, minlength=3).double() / x.shape[0]
    assert (weights - torch.tensor(WEIGHTS, dtype=F64)).abs().max() < 0.02, weights.tolist()
    exact = oracle.sample(200_000, gen(99), sde=sde, t=eps)
    want = float(oracle.log_prob(exact, sde, eps).double().mean()) / D
    got = float(oracle.log_prob(x, sde, eps).double().mean()) / D
    assert abs(got - want) < 0.01, (got, want)


def test_ode_sampling_recovers_the_mixture(sde, oracle16):
    stats = {}
    x = ds.sample(sde, oracle16.score_fn(sde), (N, D), method="ode", generator=gen(1), dtype=F32, stats=stats)
    assert x.dtype == F32 and torch.isfinite(x).all()
    assert stats["nfe"] > 0
    check_samples(oracle16, sde, x)


def test_sde_sampling_recovers_the_mixture(sde, oracle16):
    # Euler-Maruyama on the reverse SDE, 1000 steps (Song et al. 2021's N); measured gaps -0.0007 (VE),
    # 0.003 (VP), 0.0025 (sub-VP) nats/dim
    stats = {}
    x = ds.sample(
        sde, oracle16.score_fn(sde), (N, D), method="sde", generator=gen(2), dtype=F32, stats=stats,
        num_steps=1000,
    )  # fmt: skip
    # one score per Euler step plus torchsde's shape check; in float32, torchsde's running time drifts
    # by ~1000 float32 roundings and can leave a sliver step before eps
    assert stats["nfe"] in (1001, 1002)
    check_samples(oracle16, sde, x)


def test_ode_sampling_matches_exact_flow_at_tolerance():
    # Gaussian data: the probability flow is x_t = m_t + sqrt(v_t / v_T) (x_T - m_T) exactly. sample()
    # ends its last adaptive step at eps, so the result is within a few times the tolerance.
    sde, s0, eps = VPSDE(), 0.5, 1e-3
    mu = torch.linspace(-1.0, 1.0, 8, dtype=F64)
    oracle = GaussianMixture([1.0], mu[None], s0)
    x_T = oracle.sample(4, gen(3), sde=sde, t=sde.T)
    x = ds.sample(sde, oracle.score_fn(sde), (4, 8), x_T=x_T, eps=eps, rtol=1e-7, atol=1e-7)

    def coeffs(t):
        alpha, std = sde.marginal_coeffs(torch.tensor(t, dtype=F64))
        return alpha, alpha**2 * s0**2 + std**2

    (a_T, v_T), (a_e, v_e) = coeffs(sde.T), coeffs(eps)
    ref = a_e * mu + (v_e / v_T).sqrt() * (x_T - a_T * mu)
    assert float((x - ref).abs().max()) < 1e-6  # measured 3e-8; 1.2e-4 without the step at eps


# ---- reproducibility -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_same_generator_same_samples(method, make_mixture):
    sde, oracle = VPSDE(), make_mixture((4,))
    kw = dict(method=method, dtype=F64, num_steps=50) if method == "sde" else dict(method=method, dtype=F64)
    a = ds.sample(sde, oracle.score_fn(sde), (6, 4), generator=gen(4), **kw)
    b = ds.sample(sde, oracle.score_fn(sde), (6, 4), generator=gen(4), **kw)
    c = ds.sample(sde, oracle.score_fn(sde), (6, 4), generator=gen(5), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("method", "options", "tol"),
    [
        ("sde", dict(num_steps=50), 0.0),  # same Brownian path, same arithmetic per row: bitwise
        ("sde", dict(num_steps=50, solver="heun"), 0.0),
        # a fixed grid: the same steps whatever the batch
        ("ode", dict(solver="rk4", options=dict(step_size=0.02)), 0.0),
        # adaptive: the batch shares one step sequence and each sample meets rtol = atol = 1e-5 on its
        # own, so alone and in a batch agree to the global error: measured up to 4e-4 against a 1e-10
        # solve, for a sample near a boundary between modes where the flow amplifies local errors
        ("ode", dict(rtol=1e-5, atol=1e-5), 1e-3),
    ],
    ids=["sde-euler", "sde-heun", "ode-rk4", "ode-dopri5"],
)
def test_per_sample_generators_make_samples_batch_independent(method, options, tol, make_mixture):
    sde, oracle = VPSDE(), make_mixture((4,))
    b = 5
    batch = ds.sample(
        sde, oracle.score_fn(sde), (b, 4), method=method, generator=[gen(10 + k) for k in range(b)],
        dtype=F64, **options,
    )  # fmt: skip
    for k in range(b):
        alone = ds.sample(
            sde, oracle.score_fn(sde), (1, 4), method=method, generator=[gen(10 + k)], dtype=F64, **options
        )
        if tol == 0.0:
            assert torch.equal(batch[k], alone[0]), k
        else:
            assert float((batch[k] - alone[0]).abs().max()) < tol, k


def test_adaptive_sde_sampling(make_mixture):
    sde, oracle = VPSDE(), make_mixture((4,))
    stats = {}
    x = ds.sample(
        sde, oracle.score_fn(sde), (8, 4), method="sde", generator=gen(6), dtype=F64, solver="srk",
        adaptive=True, num_steps=20, rtol=1e-3, atol=1e-3, stats=stats,
    )  # fmt: skip
    assert torch.isfinite(x).all() and stats["nfe"] > 0


def test_float64_sampling_stays_float64(make_mixture):
    sde, oracle = VPSDE(), make_mixture((2, 2))
    for method in ("ode", "sde"):
        opts = dict(num_steps=10) if method == "sde" else {}
        x = ds.sample(
            sde, oracle.score_fn(sde), (3, 2, 2), method=method, generator=gen(7), dtype=F64, **opts
        )
        assert x.dtype == F64 and x.shape == (3, 2, 2)


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_arguments_raise(make_mixture):
    sde, oracle = VPSDE(), make_mixture((4,))
    score = oracle.score_fn(sde)
    shape = (3, 4)
    x_T = torch.zeros(shape, dtype=F64)
    for kwargs, err, name in [
        (dict(method="ancestral-ish"), ValueError, "method"),
        (dict(method="sde", solver="rk4"), ValueError, "solver"),
        (dict(method="ode", solver="srk"), ValueError, "solver"),
        (dict(method="sde", num_steps=0), ValueError, "num_steps"),
        (dict(method="sde", rtol=0.0), ValueError, "rtol"),
        (dict(method="ode", atol=-1.0), ValueError, "atol"),
        (dict(eps=-0.1), ValueError, "eps"),
        (dict(eps=1.0), ValueError, "eps"),
        (dict(x_T=torch.zeros(3, 5, dtype=F64)), ValueError, "x_T"),
        (dict(x_T=x_T.clone().fill_(torch.nan)), ValueError, "x_T"),
        (dict(x_T=x_T.to(torch.int64)), TypeError, "x_T"),
        (dict(generator=[gen(0), gen(1)]), ValueError, "generator"),
        (dict(generator=0), TypeError, "generator"),
    ]:
        with pytest.raises(err, match=name):
            ds.sample(sde, score, shape, **kwargs)
    for bad_shape in [(4,), (3, 0), (3, 2.0)]:
        with pytest.raises(ValueError, match="shape"):
            ds.sample(sde, score, bad_shape)
    # the score's own shape check names its argument too
    with pytest.raises(ValueError, match="x must be shaped"):
        ds.sample(sde, score, (3, 5))


def test_nan_in_sde_sampling_names_the_time(make_mixture):
    sde, oracle = VPSDE(), make_mixture((4,))
    exact = oracle.score_fn(sde)

    def score(x, t):
        return torch.where((t < 0.25)[:, None], torch.nan, exact(x, t))

    with pytest.raises(FloatingPointError, match=r"non-finite score at t = 0\.2"):
        ds.sample(sde, score, (3, 4), method="sde", generator=gen(8), dtype=F64, num_steps=100)
    assert math.isfinite(float(exact(torch.zeros(1, 4, dtype=F64), torch.tensor([0.1], dtype=F64)).sum()))
