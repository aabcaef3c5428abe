"""SDEdit and latent interpolation (diffscore.editing) against exact scores and closed forms."""

import math

import pytest
import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import default_eps

D64 = torch.float64
SDES = {"ve": ds.VESDE(0.01, 50.0), "vp": ds.VPSDE(0.1, 20.0), "subvp": ds.SubVPSDE(0.1, 20.0)}


def _mixture(d: int, sep: float = 6.0) -> GaussianMixture:
    """0.2 N(-m, 0.5^2 I) + 0.8 N(m, diag(s^2)): modes 2 sep apart whatever d, unequal per-dim stds."""
    m = torch.full((d,), sep / math.sqrt(d), dtype=D64)
    s = torch.linspace(0.3, 0.8, d, dtype=D64)
    return GaussianMixture(
        [0.2, 0.8], torch.stack([-m, m]), torch.stack([torch.full((d,), 0.5, dtype=D64), s])
    )


def _variance(gm: GaussianMixture, sde, t: float) -> torch.Tensor:
    """Per-dimension variance of p_t: each component is N(alpha mu_k, alpha^2 s_k^2 + std^2)."""
    alpha, std = (float(v) for v in sde.marginal_coeffs(torch.tensor(t, dtype=D64)))
    w, mu, var = gm.weights[:, None], alpha * gm.means, alpha**2 * gm.stds**2 + std**2
    mean = (w * mu).sum(0)
    return (w * (var + mu**2)).sum(0) - mean**2


# x ~ p_0, noised to t_start and denoised with the exact score, is distributed as p_eps. n = 20000 draws:
# the relative standard error of a per-dimension variance is at most sqrt(2 / n) = 1% (a Gaussian's;
# the bimodal dimensions have lighter tails), so 3% is 3 standard errors on top of the sampler's own
# error (PC steps of T / 400); the weight 0.8 has standard error sqrt(0.16 / n) = 0.003, so 0.02 is 7 of them
# and leaves the discretisation room.
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("strength", [0.5, 0.1])
def test_edit_keeps_the_data_distribution(name, strength):
    sde, gm = SDES[name], _mixture(4)
    g = torch.Generator().manual_seed(0)
    x = gm.sample(20_000, g)
    steps = round(400 * strength)  # steps of T / 400 from t_start
    out = ds.edit(sde, gm.score_fn(sde), x, strength, method="pc", generator=g, num_steps=steps)
    assert out.t_start == pytest.approx(strength * sde.T)
    want = _variance(gm, sde, default_eps(sde))
    got = out.edited.var(0)
    assert bool(((got / want - 1).abs() < 0.03).all()), (got / want - 1).tolist()
    weight = float(gm.posterior(out.edited)[:, 1].mean())
    assert abs(weight - 0.8) < 0.02, weight
    # the noised state is the exact forward kernel's draw: its variance is p_t_start's (within 4 s.e.)
    noised = out.noised.var(0) / _variance(gm, sde, out.t_start)
    assert bool(((noised - 1).abs() < 4 * math.sqrt(2 / 20_000)).all()), noised.tolist()


@pytest.mark.parametrize(
    "method, options", [("ode", {"rtol": 1e-6, "atol": 1e-6}), ("dpmpp", {"num_steps": 30})]
)
def test_edit_with_a_deterministic_sampler_keeps_the_distribution(method, options):
    sde, gm = SDES["vp"], _mixture(16)
    g = torch.Generator().manual_seed(1)
    x = gm.sample(20_000, g)
    out = ds.edit(sde, gm.score_fn(sde), x, 0.5, method=method, generator=g, **options)
    got = out.edited.var(0) / _variance(gm, sde, default_eps(sde))
    assert bool(((got - 1).abs() < 0.03).all()), got.tolist()
    assert abs(float(gm.posterior(out.edited)[:, 1].mean()) - 0.8) < 0.02


def test_strength_trades_faithfulness_for_a_fresh_sample():
    # modes 12 apart: at strength 0.1 (VP std(0.1) = 0.32) no image changes its mode; at strength 1 the
    # mode of the edit is independent of the input's, so they agree with probability 0.2^2 + 0.8^2 = 0.68
    # (standard error sqrt(0.68 * 0.32 / 4000) = 0.007; 0.03 is 4 of them)
    sde, gm = SDES["vp"], _mixture(8)
    g = torch.Generator().manual_seed(2)
    x = gm.sample(4000, g)
    label = gm.posterior(x).argmax(1)
    agree = {}
    for strength in (0.1, 1.0):
        out = ds.edit(sde, gm.score_fn(sde), x, strength, generator=g, num_steps=500)
        agree[strength] = float((gm.posterior(out.edited).argmax(1) == label).double().mean())
    assert agree[0.1] > 0.999, agree
    assert abs(agree[1.0] - 0.68) < 0.03, agree


def test_edit_is_reproducible_per_sample():
    # one generator per image: an image's edit does not depend on its batch-mates
    sde, gm = SDES["ve"], _mixture(4)
    x = gm.sample(6, torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(6)]
    full = ds.edit(sde, gm.score_fn(sde), x, 0.4, generator=gens, num_steps=50).edited
    gens = [torch.Generator().manual_seed(10 + i) for i in range(6)]
    part = ds.edit(sde, gm.score_fn(sde), x[2:4], 0.4, generator=gens[2:4], num_steps=50).edited
    torch.testing.assert_close(part, full[2:4], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "strength, error, match",
    [
        (0.0, ValueError, r"strength must lie in \(0, 1\]"),
        (1.5, ValueError, r"strength must lie in \(0, 1\]"),
        (float("nan"), ValueError, "strength must be finite"),
        (True, TypeError, "strength must be a real number"),
        (1e-4, ValueError, "strength must exceed eps / T"),
    ],
)
def test_edit_refuses_a_bad_strength(strength, error, match):
    sde, gm = SDES["vp"], _mixture(2)
    with pytest.raises(error, match=match):
        ds.edit(sde, gm.score_fn(sde), gm.sample(4), strength)


def test_edit_refuses_bad_images():
    sde, gm = SDES["vp"], _mixture(2)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        ds.edit(sde, gm.score_fn(sde), torch.zeros(4, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="x contains NaN"):
        ds.edit(sde, gm.score_fn(sde), torch.full((4, 2), math.nan), 0.5)
    with pytest.raises(TypeError, match="sde must be a diffscore SDE"):
        ds.edit("vp", gm.score_fn(sde), gm.sample(4), 0.5)


# ---- interpolation ---------------------------------------------------------------------------------------
def test_slerp_keeps_the_norm_between_the_ends_where_the_straight_line_shrinks_it():
    # latents of two independent p_0 draws under the exact flow are (nearly) independent N(0, I) draws in
    # D = 64: the straight line's midpoint has about 1/sqrt(2) of their norm
    sde, gm = SDES["vp"], _mixture(64)
    x = gm.sample(16, torch.Generator().manual_seed(4))
    z = ds.encode(sde, gm.score_fn(sde), x, rtol=1e-7, atol=1e-7)
    z0, z1 = z[:8], z[8:]
    w = torch.linspace(0, 1, 11, dtype=D64)
    path = ds.slerp(z0, z1, w)
    norms, r0, r1 = path.norm(dim=2), z0.norm(dim=1, keepdim=True), z1.norm(dim=1, keepdim=True)
    lo, hi = torch.minimum(r0, r1), torch.maximum(r0, r1)
    assert bool(((norms >= 0.97 * lo) & (norms <= 1.03 * hi)).all())
    torch.testing.assert_close(path[:, 0], z0)
    torch.testing.assert_close(path[:, -1], z1)
    line = (1 - w[None, :, None]) * z0[:, None] + w[None, :, None] * z1[:, None]
    assert float((line[:, 5].norm(dim=1) / lo[:, 0]).max()) < 0.85  # what the test above would catch


def test_slerp_is_the_great_circle():
    # equal norms, orthogonal: the midpoint is r (u0 + u1) / sqrt(2) and the angle grows linearly
    u0, u1 = torch.eye(3, dtype=D64)[:2].chunk(2)
    path = ds.slerp(2 * u0, 2 * u1, torch.tensor([0.5, 1 / 3], dtype=D64))[0]
    torch.testing.assert_close(path[0], 2 * (u0[0] + u1[0]) / math.sqrt(2))
    torch.testing.assert_close(
        path[1], 2 * torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6), 0], dtype=D64)
    )
    # parallel ends: the straight line (no division by sin(0))
    same = ds.slerp(u0, 3 * u0, torch.tensor([0.5], dtype=D64))
    torch.testing.assert_close(same[0, 0], 2 * u0[0])


# the endpoints are decode(encode(x)): float64 at rtol = atol = 1e-7 returns the input within 1e-4
# (docs/encoding.md measures 2.5e-7 (VE) to 7.8e-8 (sub-VP) on D = 192)
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("space", ["latent", "time"])
def test_interpolation_ends_are_the_inputs(name, space):
    flat = _mixture(16)
    gm = GaussianMixture(flat.weights, flat.means.reshape(2, 1, 4, 4), flat.stds.reshape(2, 1, 4, 4))
    sde, x = SDES[name], gm.sample(4, torch.Generator().manual_seed(5))
    stats = {}
    path = ds.interpolate(
        sde, gm.score_fn(sde), x[:2], x[2:], 5, space=space, rtol=1e-7, atol=1e-7, stats=stats
    )  # fmt: skip
    assert path.shape == (2, 5, 1, 4, 4)
    torch.testing.assert_close(path[:, 0], x[:2], rtol=0, atol=1e-4)
    torch.testing.assert_close(path[:, -1], x[2:], rtol=0, atol=1e-4)
    assert stats["nfe"] > 0


def test_data_space_interpolation_is_the_straight_line():
    x0, x1 = torch.zeros(1, 3, dtype=D64), torch.ones(1, 3, dtype=D64)
    path = ds.interpolate(SDES["vp"], None, x0, x1, 5, space="data")
    torch.testing.assert_close(path[0, :, 0], torch.linspace(0, 1, 5, dtype=D64))


def test_interpolate_refuses_bad_arguments():
    sde, gm = SDES["vp"], _mixture(2)
    x = gm.sample(2)
    score = gm.score_fn(sde)
    with pytest.raises(ValueError, match="num_frames must be >= 2"):
        ds.interpolate(sde, score, x, x, 1)
    with pytest.raises(ValueError, match="space must be one of"):
        ds.interpolate(sde, score, x, x, 3, space="pixel")
    with pytest.raises(ValueError, match="same shape"):
        ds.interpolate(sde, score, x, x[:1], 3)
    with pytest.raises(ValueError, match=r"t must lie in \(eps, T\)"):
        ds.interpolate(sde, score, x, x, 3, space="time", t=1.0)
    with pytest.raises(ValueError, match="t is the time of space='time'"):
        ds.interpolate(sde, score, x, x, 3, t=0.5)
    with pytest.raises(ValueError, match="opposite directions"):
        ds.interpolate(sde, lambda y, t: torch.zeros_like(y), x[:1], -x[:1], 3)
