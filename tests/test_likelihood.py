"""log_likelihood, bits_per_dim, encode and decode against the Gaussian-mixture oracle.

The oracle gives ``log p_t`` in closed form at every t, so the ODE part of the likelihood,
``delta_logp = log p_eps(x) - log p_T(z)`` along the probability flow (Song et al. 2021, eq. 39), is
known exactly for every sample, whatever the solver's z. The prior N(0, prior_std^2 I) is not exactly
p_T; that mismatch is ``log p_T(z) - prior_logp(z)`` and is measured here, not hidden in a tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sde import VESDE, VPSDE

F64 = torch.float64
LN2 = math.log(2)
EPS = 1e-5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bpd(nats: torch.Tensor, d: int) -> torch.Tensor:
    return nats / (d * LN2)


# ---- exact divergence ---------------------------------------------------------------------------------


def test_exact_divergence_matches_oracle(sde, make_mixture):
    oracle = make_mixture((1, 8, 8))
    d = oracle.dim
    x = oracle.sample(8, gen(1), sde=sde, t=EPS)
    out = ds.log_likelihood(sde, oracle.score_fn(sde), x, divergence="exact", eps=EPS, rtol=1e-6, atol=1e-6)
    log_pT = oracle.log_prob(out.z, sde, sde.T)
    exact_delta = oracle.log_prob(x, sde, EPS) - log_pT
    # acceptance bound 1e-4 bits/dim per sample at rtol = atol = 1e-6 (measured: <= 1.3e-5)
    assert bpd((out.delta_logp - exact_delta).abs(), d).max() < 1e-4
    torch.testing.assert_close(out.logp, out.prior_logp + out.delta_logp, rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(out.prior_logp, sde.prior_logp(out.z), rtol=1e-14, atol=1e-12)
    # the total differs from log p_eps(x) by the prior mismatch alone (1.6e-3 bits/dim on VE here)
    mismatch = out.prior_logp - log_pT
    total_err = out.logp - oracle.log_prob(x, sde, EPS)
    assert bpd((total_err - mismatch).abs(), d).max() < 1e-4
    assert bpd(mismatch.abs(), d).max() < 5e-3
    assert out.nfe > 0 and out.z.shape == x.shape


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(sde, make_mixture, probe):
    oracle = make_mixture((1, 8, 8))
    d, n = oracle.dim, 64
    x = oracle.sample(n, gen(2), sde=sde, t=EPS)
    out = ds.log_likelihood(
        sde, oracle.score_fn(sde), x, divergence="hutchinson", probe=probe, n_probes=1,
        eps=EPS, rtol=1e-5, atol=1e-5, generator=gen(3),
    )  # fmt: skip
    exact_delta = oracle.log_prob(x, sde, EPS) - oracle.log_prob(out.z, sde, sde.T)
    err = bpd(out.delta_logp - exact_delta, d)
    # one probe per sample: unbiased, so the batch mean lies within 3 standard errors of 0. The spread
    # is real (0.03 bits/dim per sample for Rademacher, 0.3 to 1.3 for Gaussian probes, whose diagonal
    # terms add variance) and must not vanish: a deterministic estimate would not be Hutchinson's.
    se = err.std() / math.sqrt(n)
    assert abs(float(err.mean())) < 3 * float(se)
    assert float(err.std()) > 1e-3


def test_more_probes_reduce_the_spread(make_mixture):
    sde, oracle = VPSDE(), make_mixture((1, 8, 8))
    x = oracle.sample(32, gen(4), sde=sde, t=EPS)
    spread = []
    for n_probes in (1, 16):
        out = ds.log_likelihood(
            sde, oracle.score_fn(sde), x, divergence="hutchinson", probe="gaussian", n_probes=n_probes,
            eps=EPS, generator=gen(5),
        )  # fmt: skip
        exact = oracle.log_prob(x, sde, EPS) - oracle.log_prob(out.z, sde, sde.T)
        spread.append(float(bpd(out.delta_logp - exact, oracle.dim).std()))
    # the estimator's std falls as 1 / sqrt(n_probes): 4x from 1 to 16 probes; allow 2.5x for the
    # 32-sample estimate of each std
    assert spread[1] < spread[0] / 2.5, spread


def test_sample_alone_equals_sample_in_batch_with_outliers(make_mixture):
    sde, oracle = VPSDE(), make_mixture((1, 8, 8))
    d = oracle.dim
    x = oracle.sample(64, gen(6), sde=sde, t=EPS)
    # every 8th sample is a far outlier, ~15 component stds away from any mean
    x[1::8] = 6.0 * torch.randn(x[1::8].shape, generator=gen(7), dtype=F64)
    kw = dict(divergence="exact", eps=EPS, rtol=1e-5, atol=1e-5)
    batch = ds.log_likelihood(sde, oracle.score_fn(sde), x, **kw)
    alone = ds.log_likelihood(sde, oracle.score_fn(sde), x[:1], **kw)
    # the per-sample error norm makes sample 0 meet the tolerance on its own in both solves; acceptance
    # bound 1e-3 bits/dim (measured 8e-6)
    assert float(bpd((batch.logp[0] - alone.logp[0]).abs(), d)) < 1e-3
    assert batch.nfe > alone.nfe  # the outliers did make the batch solve harder


def test_float32_log_likelihood(make_mixture):
    sde = VPSDE()
    oracle = make_mixture((1, 8, 8))
    x = oracle.sample(4, gen(8), sde=sde, t=EPS)
    o32 = oracle.to(dtype=torch.float32)
    out = ds.log_likelihood(sde, o32.score_fn(sde), x.float(), eps=EPS, rtol=1e-5, atol=1e-5)
    assert out.logp.dtype == out.z.dtype == torch.float32
    exact_delta = oracle.log_prob(x, sde, EPS) - oracle.log_prob(out.z.double(), sde, sde.T)
    # float32 rounding of a ~100-nat log-density is ~1e-5 nats; the solve at 1e-5 gives ~1e-5 bits/dim
    assert bpd((out.delta_logp.double() - exact_delta).abs(), oracle.dim).max() < 1e-3


# ---- bits/dim -----------------------------------------------------------------------------------------


def quantize(x01: torch.Tensor, num_bins: int) -> torch.Tensor:
    return (x01 * num_bins).floor().clamp(0, num_bins - 1).to(torch.uint8)


def test_bits_per_dim_is_affine_invariant(make_mixture):
    # a mixture on [0, 1] and its push-forward by x -> 2x - 1 onto [-1, 1]: the same discrete model.
    # The flow model's prior is not pushed forward, though: at the default beta_max = 20, alpha(T) =
    # 6.6e-3 leaves the [0, 1] data (mean 0.5) a prior mismatch of up to 1.7e-3 bits/dim per sample
    # that the centred [-1, 1] data lack. beta_max = 40 (alpha(T) = 4e-5) makes p_T the prior to 1e-5
    # bits/dim, so what is compared is the bits/dim bookkeeping, not the prior.
    sde = VPSDE(beta_max=40.0)
    m01 = make_mixture((1, 8, 8), stds=(0.08, 0.1, 0.12), spread=0.25)
    m01 = GaussianMixture(m01.weights, 0.5 + m01.means, m01.stds)
    mpm = GaussianMixture(m01.weights, 2 * m01.means - 1, 2 * m01.stds)
    x_int = quantize(m01.sample(16, gen(9)), 256)
    kw = dict(num_bins=256, divergence="exact", eps=EPS, rtol=1e-6, atol=1e-6, dtype=F64)
    a = ds.bits_per_dim(sde, m01.score_fn(sde), x_int, data_range=(0.0, 1.0), generator=gen(10), **kw)
    b = ds.bits_per_dim(sde, mpm.score_fn(sde), x_int, data_range=(-1.0, 1.0), generator=gen(10), **kw)
    # same dequantization noise (same generator), so the points correspond exactly. They differ by the
    # eps-smoothing of p_eps relative to the data scale (~2e-4 bits/dim) and ODE error (~1e-5)
    assert float((a.bpd - b.bpd).abs().max()) < 1e-3
    # the continuous densities differ by the Jacobian: log p_[-1,1] = log p_[0,1] - D log 2
    assert float(bpd((b.logp - a.logp + m01.dim * LN2).abs(), m01.dim).max()) < 1e-3
    assert bool((a.bpd > 0).all())


def test_bits_per_dim_matches_closed_form():
    # Model N(0, s^2 I) on [-1, 1]; data uniform over the 256 bins. Under VP, p_eps is N(0, v I) with
    # v = alpha^2 s^2 + std^2 (and p_T is N(0, I) up to 3e-5 in variance, so the prior mismatch is nil).
    # For integer x with bin centre c and width w = 2 / 256, the dequantized y = c + w (u - 1/2) gives
    #   E_u[bpd] = (log(2 pi v) / 2 + mean_i((c_i^2 + w^2 / 12)) / (2 v)) / ln 2 + log2(256) - log2(2).
    sde, s, nb, n = VPSDE(), 0.5, 256, 32
    oracle = GaussianMixture([1.0], torch.zeros(1, 1, 8, 8, dtype=F64), s)
    x_int = torch.randint(0, nb, (n, 1, 8, 8), generator=gen(11), dtype=torch.int64)
    out = ds.bits_per_dim(
        sde, oracle.score_fn(sde), x_int, num_bins=nb, data_range=(-1.0, 1.0), generator=gen(12),
        divergence="exact", eps=EPS, rtol=1e-6, atol=1e-6, dtype=F64,
    )  # fmt: skip
    alpha, std = sde.marginal_coeffs(torch.tensor(EPS, dtype=F64))
    v = float(alpha**2 * s**2 + std**2)
    w = 2.0 / nb
    c = -1.0 + w * (x_int.to(F64) + 0.5)
    e_sq = (c.square() + w**2 / 12).reshape(n, -1).mean(1)
    expected = (0.5 * math.log(2 * math.pi * v) + e_sq / (2 * v)) / LN2 + math.log2(nb) - math.log2(2.0)
    diff = out.bpd - expected
    # given x, the only randomness is u: per-dim variance (c w)^2 / 12 / (2 v ln 2)^2 ~ 1e-6, so the
    # batch mean of the difference is within 3 standard errors (~1e-4) of 0, plus ODE error (~1e-5)
    se = float(diff.std()) / math.sqrt(n)
    assert abs(float(diff.mean())) < 3 * se + 1e-4
    assert float(diff.abs().max()) < 5e-3


def test_dequantized_bits_per_dim_is_never_negative():
    # A model far more peaked than a bin (std 0.1 bin widths, centred on the bins of three patterns)
    # has continuous density >> 1 per bin at the bin centres: without dequantization the same offset
    # gives about -2 "bits/dim", a continuous NLL, not a code length. With uniform dequantization the
    # value is -E_u log2 p / D >= -log2 P(bin) / D >= 0 in expectation; here per sample its mean is
    # ~4 bits/dim with a spread of 0.7, so no sample comes near 0.
    sde, nb, d = VPSDE(), 8, 64
    patterns = torch.randint(0, nb, (3, 1, 8, 8), generator=gen(13))
    w = 1.0 / nb
    oracle = GaussianMixture([0.2, 0.3, 0.5], w * (patterns.to(F64) + 0.5), 0.1 * w)
    x_int = patterns[torch.tensor([0, 1, 2, 2, 1, 2, 0, 2])]
    kw = dict(divergence="exact", eps=EPS, rtol=1e-5, atol=1e-5)
    out = ds.bits_per_dim(
        sde, oracle.score_fn(sde), x_int, num_bins=nb, data_range=(0.0, 1.0), generator=gen(14),
        dtype=F64, **kw,
    )  # fmt: skip
    assert bool((out.bpd > 0).all())
    centres = w * (x_int.to(F64) + 0.5)
    nll = ds.log_likelihood(sde, oracle.score_fn(sde), centres, **kw)
    continuous = -bpd(nll.logp, d) + math.log2(nb) - math.log2(1.0)
    assert bool((continuous < -1.0).all())


# ---- encode / decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "tol", "bound"),
    [(F64, 1e-7, 1e-4), (torch.float32, 1e-5, 1e-3)],
    ids=["float64", "float32"],
)
def test_encode_decode_round_trip(sde, make_mixture, dtype, tol, bound):
    oracle = make_mixture((3, 8, 8)).to(dtype=dtype)
    x = oracle.sample(8, gen(15), sde=sde, t=EPS)
    score = oracle.score_fn(sde)
    enc, dec = {}, {}
    z = ds.encode(sde, score, x, eps=EPS, rtol=tol, atol=tol, stats=enc)
    x_back = ds.decode(sde, score, z, eps=EPS, rtol=tol, atol=tol, stats=dec)
    assert z.dtype == x_back.dtype == dtype
    # acceptance bounds: 1e-4 max abs in float64 at 1e-7, 1e-3 in float32 at 1e-5
    assert float((x_back - x).abs().max()) < bound
    assert enc["nfe"] > 0 and dec["nfe"] > 0
    # x are exact draws of p_eps, so z = flow(x) are draws of p_T (the flow transports p_eps to p_T):
    # standardize with the moments of the p_T mixture and compare with N(0, 1) over the 1536 values
    alpha, std = (c.item() for c in sde.marginal_coeffs(torch.tensor(sde.T, dtype=F64)))
    w = oracle.weights.double()[:, None]
    mu, var = alpha * oracle._mu.double(), alpha**2 * oracle._var.double() + std**2
    mean = (w * mu).sum(0)
    sd = ((w * (var + mu.square())).sum(0) - mean.square()).sqrt()
    r = ((z.double().reshape(8, -1) - mean) / sd).flatten()
    # the 192 coordinates of one sample share its component, so allow 4 standard errors of 1536 values
    assert abs(float(r.mean())) < 4 / math.sqrt(r.numel())
    assert abs(float(r.std()) - 1) < 4 / math.sqrt(2 * r.numel())


def test_decode_of_encode_of_prior_draws():
    # the other way round: decode(z) then encode gives z back
    sde = VESDE()
    oracle = GaussianMixture([0.5, 0.5], torch.tensor([[-1.0, 0.5], [1.0, 0.0]], dtype=F64), 0.3)
    z = sde.prior_sample((16, 2), generator=gen(16), dtype=F64)
    x = ds.decode(sde, oracle.score_fn(sde), z, eps=EPS, rtol=1e-7, atol=1e-7)
    z_back = ds.encode(sde, oracle.score_fn(sde), x, eps=EPS, rtol=1e-7, atol=1e-7)
    # VE latents have scale sigma_max = 50: 1e-4 absolute is 2e-6 relative
    assert float((z_back - z).abs().max()) < 1e-4


# ---- NaN during a solve, bad input --------------------------------------------------------------------


def nan_above(score, t_bad: float, calls: list):
    def f(x, t):
        calls.append(float(t[0]))
        s = score(x, t)
        return torch.where((t > t_bad).reshape(-1, *[1] * (x.ndim - 1)), torch.nan, s)

    return f


@pytest.mark.parametrize("what", ["log_likelihood", "encode"])
def test_nan_score_during_solve_raises_with_time(make_mixture, what):
    sde, oracle = VPSDE(), make_mixture((1, 4, 4))
    calls: list = []
    score = nan_above(oracle.score_fn(sde), 0.3, calls)
    x = oracle.sample(4, gen(17))
    with pytest.raises(FloatingPointError, match=r"non-finite score at t = 0\.3") as err:
        getattr(ds, what)(sde, score, x)
    # raised by the first evaluation above 0.3, naming its time
    assert calls[-1] > 0.3 and all(t <= 0.3 for t in calls[:-1])
    assert f"t = {calls[-1]:.6g}" in str(err.value)


def test_bad_arguments_raise(make_mixture):
    sde, oracle = VPSDE(), make_mixture((1, 4, 4))
    score = oracle.score_fn(sde)
    x = oracle.sample(2, gen(18))
    ll = ds.log_likelihood
    for bad, err, name in [
        (x.clone().fill_(torch.nan), ValueError, "x"),
        (x.clone().fill_(torch.inf), ValueError, "x"),
        (x.to(torch.int64), TypeError, "x"),
        (x.reshape(-1), ValueError, "x"),
        (x[:0], ValueError, "x"),
        ([[0.0, 1.0]], TypeError, "x"),
    ]:
        with pytest.raises(err, match=name):
            ll(sde, score, bad)
    for kwargs, err, name in [
        (dict(eps=-1e-3), ValueError, "eps"),
        (dict(eps=sde.T), ValueError, "eps"),
        (dict(eps="1e-5"), TypeError, "eps"),
        (dict(divergence="trace"), ValueError, "divergence"),
        (dict(divergence="hutchinson", probe="sphere"), ValueError, "probe"),
        (dict(divergence="hutchinson", n_probes=0), ValueError, "n_probes"),
        (dict(method="rk45"), ValueError, "method"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(atol=-1.0), ValueError, "atol"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
    ]:
        with pytest.raises(err, match=name):
            ll(sde, score, x, **kwargs)
    with pytest.raises(ValueError, match="z"):
        ds.decode(sde, score, x.clone().fill_(torch.nan))
    with pytest.raises(ValueError, match="x"):
        ds.encode(sde, score, x.reshape(-1))
    with pytest.raises(ValueError, match="eps"):
        ds.encode(sde, score, x, eps=2.0)
    with pytest.raises(ValueError, match="method"):
        ds.decode(sde, score, x, method="nope")
    # a name instead of an SDE: a TypeError naming sde, not an AttributeError from inside
    for entry, data in [(ds.encode, x), (ds.decode, x), (ll, x), (ds.bits_per_dim, torch.zeros_like(x))]:
        with pytest.raises(TypeError, match="sde must be a diffscore SDE"):
            entry("vp", score, data)

    x_int = torch.randint(0, 17, (2, 1, 4, 4), generator=gen(19))
    for bad_int, kwargs, err, name in [
        (x_int + 17, {}, ValueError, "x_int"),
        (x_int - 17, {}, ValueError, "x_int"),
        (x_int.to(F64) + 0.5, {}, ValueError, "x_int"),
        (x_int.reshape(-1), {}, TypeError, "x_int"),
        (x_int, dict(num_bins=1), ValueError, "num_bins"),
        (x_int, dict(num_bins=17.0), ValueError, "num_bins"),
        (x_int, dict(data_range=(1.0, -1.0)), ValueError, "data_range"),
        (x_int, dict(data_range=(0.0, float("inf"))), ValueError, "data_range"),
        (x_int, dict(dequantize=None), ValueError, "dequantize"),
    ]:
        kw = dict(num_bins=17, **kwargs) if "num_bins" not in kwargs else kwargs
        with pytest.raises(err, match=name):
            ds.bits_per_dim(sde, score, bad_int, **kw)
