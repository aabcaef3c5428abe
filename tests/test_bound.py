"""The variational bound (ELBO) and the dequantized exact-ODE bits/dim against exact answers.

Continuous data: with the exact score of a Gaussian mixture and the exact p_T as the prior, the bound's
only slack is the Gaussian decoder at eps (O(std(eps)^2) per dimension, ~1e-6 nats here), so its
Monte-Carlo mean must match -log p(x) within its standard error, and a wrong score must lie above it.

Discrete data: a distribution on the 17 bin centres of [-1, 1] with closed-form bin probabilities P(x)
(a discretised Gaussian). Its exact score is that of a Gaussian mixture with components at the bin centres;
every discrete-data estimator must lie above -log2 P(x) / D on average and come closer as its knob
tightens (more importance-weighted dequantization samples; a q closer to the model inside the bin).
"""

from __future__ import annotations

import math

import pytest
import torch

import diffscore as ds
from diffscore.bound import bin_centres, likelihood_bound, variational_bound
from diffscore.dequantization import TruncatedNormalDequantizer, dequantized_bits_per_dim
from diffscore.nets import BinPosteriorNet
from diffscore.oracles import GaussianMixture
from diffscore.sde import sde_to_config

F64 = torch.float64
K, LO, HI = 17, -1.0, 1.0
WIDTH = (HI - LO) / K


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def discretised_gaussian(mu: float, s: float) -> torch.Tensor:
    """(K,) P(bin k) of N(mu, s^2) restricted to [LO, HI] (closed form)."""
    edges = LO + WIDTH * torch.arange(K + 1, dtype=F64)
    cdf = torch.distributions.Normal(torch.tensor(mu, dtype=F64), s).cdf(edges)
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def grid_mixture(p: torch.Tensor, std: float) -> GaussianMixture:
    """1-D mixture with weight P(k) at bin centre k and component std ``std``."""
    centres = bin_centres(K, (LO, HI), p)
    return GaussianMixture(p, centres[:, None], std)


@pytest.mark.parametrize("sde", [ds.VPSDE(), ds.VESDE(sigma_min=0.01, sigma_max=50.0)], ids=["vp", "ve"])
def test_bound_is_exact_with_exact_score_and_prior(sde):
    oracle = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64), [0.3, 0.5])
    x = oracle.sample(6, torch.Generator().manual_seed(1))
    res = variational_bound(
        sde, oracle.score_fn(sde), x, n_samples=64, generator=gens(6),
        prior_logp=lambda z: oracle.log_prob(z, sde, sde.T),
    )  # fmt: skip
    gap = res.nll + oracle.log_prob(x)
    assert bool((gap.abs() < 3 * res.stderr).all()), (gap, res.stderr)
    # never below on average: the mean gap is not below 3 standard errors of the mean
    assert float(gap.mean()) > -3 * float(res.stderr.square().mean().sqrt()) / math.sqrt(6)
    assert res.nfe == 64 + 16  # the draws and the pilot pass that fits the importance density


def test_bound_detects_a_wrong_score():
    sde = ds.VPSDE()
    oracle = GaussianMixture([1.0], torch.zeros(1, 2, dtype=F64), 0.5)
    wrong = GaussianMixture([1.0], torch.full((1, 2), 0.5, dtype=F64), 0.3)
    x = oracle.sample(6, torch.Generator().manual_seed(2))
    prior = lambda z: oracle.log_prob(z, sde, sde.T)  # noqa: E731
    res = variational_bound(sde, wrong.score_fn(sde), x, n_samples=64, generator=gens(6), prior_logp=prior)
    gap = res.nll + oracle.log_prob(x)
    # the gap is KL(forward path | model path) > 0: about 5 nats per image here; its mean lies more than
    # 3 standard errors (of the mean over the 6 images) above 0
    assert float(gap.mean()) > 3 * float(res.stderr.square().mean().sqrt()) / math.sqrt(6)


def test_discrete_bound_is_tight_with_the_exact_discrete_score():
    sde = ds.VPSDE()
    p = discretised_gaussian(0.1, 0.35)
    oracle = grid_mixture(p, 1e-4)  # the discrete distribution (components far below std(eps) = 1e-3)
    x_int = torch.tensor([[8], [10], [3], [7], [12], [8]])
    exact = -p[x_int[:, 0]].log() / math.log(2)
    res = likelihood_bound(sde, oracle.score_fn(sde), x_int, K, (LO, HI), n_samples=64, generator=gens(6))
    gap = res.bpd - exact
    assert bool((gap.abs() < 3 * res.bpd_stderr).all()), (gap, res.bpd_stderr)
    assert float(gap.mean()) > -3 * float(res.bpd_stderr.square().mean().sqrt()) / math.sqrt(6)
    assert float(res.decoder.abs().max()) < 1e-6  # std(eps) = 1e-3 is 1/118 of the bin width


def test_discrete_bound_of_a_smooth_model_is_an_upper_bound():
    # the continuous N(0.1, 0.35^2) scored on its own bins: the bound holds, loosely
    sde = ds.VPSDE()
    p = discretised_gaussian(0.1, 0.35)
    smooth = GaussianMixture([1.0], torch.tensor([[0.1]], dtype=F64), 0.35)
    x_int = torch.tensor([[8], [10], [3], [7], [9], [6], [11], [8]])
    res = likelihood_bound(sde, smooth.score_fn(sde), x_int, K, (LO, HI), n_samples=128, generator=gens(8))
    exact = -p[x_int[:, 0]].log() / math.log(2)
    # a smooth density charged for the bins' own codes: ~10 bits above the exact code length, far
    # beyond 3 standard errors of the mean over the images
    se_mean = float(res.bpd_stderr.square().mean().sqrt()) / math.sqrt(8)
    assert float((res.bpd - exact).mean()) > 3 * se_mean


def test_dequantized_ode_bounds_tighten_with_samples_and_a_better_q():
    sde = ds.VPSDE()
    p = discretised_gaussian(0.1, 0.35)
    std = 0.02  # the model: components 0.17 bin widths wide at the centres; exact P(x) in closed form
    oracle = grid_mixture(p, std)
    eps = 1e-5
    alpha, s_eps = (float(v) for v in sde.marginal_coeffs(torch.tensor([eps], dtype=F64)))
    # the ODE's density at eps is the mixture with std^2 alpha^2 + s_eps^2, means alpha c_k
    centres = bin_centres(K, (LO, HI), p)
    edges = LO + WIDTH * torch.arange(K + 1, dtype=F64)
    spread = math.sqrt((alpha * std) ** 2 + s_eps**2)
    cdf = torch.distributions.Normal(alpha * centres[:, None], spread).cdf(edges[None, :])  # (K, K + 1)
    p_model = (p[:, None] * (cdf[:, 1:] - cdf[:, :-1])).sum(0)
    x_int = torch.tensor([8, 10, 5]).repeat_interleave(16)[:, None]  # 16 draws of each value
    exact = -p_model[x_int[:, 0]].log() / math.log(2)
    kw = dict(generator=gens(48), rtol=1e-6, atol=1e-6, eps=eps)
    score = oracle.score_fn(sde)
    uniform1 = dequantized_bits_per_dim(sde, score, x_int, K, (LO, HI), **kw)
    uniform4 = dequantized_bits_per_dim(sde, score, x_int, K, (LO, HI), n_samples=4, **kw)
    q = TruncatedNormalDequantizer(spread / WIDTH)
    matched = dequantized_bits_per_dim(sde, score, x_int, K, (LO, HI), dequantizer=q, n_samples=2, **kw)
    gap1, gap4, gap_q = ((r.bpd - exact).mean() for r in (uniform1, uniform4, matched))
    # averages over 48 images: each bound is above the exact value (the matched q to within its MC
    # error, ~1e-3 here), and the gap shrinks from uniform x1 to uniform x4 (importance weighting) to the
    # matched truncated normal, which is nearly tight
    assert float(gap1) > float(gap4) > float(gap_q) > -0.01
    assert float(gap1) > 0.2  # uniform dequantization of a density 1/6 of a bin wide: ~0.45 bits/dim
    assert abs(float(gap_q)) < 0.05


def test_bin_posterior_net_is_the_exact_denoiser_of_independent_bins():
    # untrained (zero correction), the network's score is the exact score of the per-pixel categorical
    # distribution given by its bin logits: a Gaussian mixture at the bin centres with vanishing width
    sde = ds.VPSDE()
    p = discretised_gaussian(-0.2, 0.3)
    net = BinPosteriorNet(1, K, (LO, HI), sde_to_config(sde)).to(F64).eval()
    with torch.no_grad():
        net.bin_logits.copy_(p.log()[None])
    model = ds.ScoreModel(net, sde, "noise")
    oracle = grid_mixture(p, 1e-7)
    t = torch.tensor([1e-3, 0.05, 0.3, 0.9], dtype=F64)
    z = torch.tensor([[-0.4], [0.1], [0.7], [-1.5]], dtype=F64)
    torch.testing.assert_close(model(z, t), oracle.score(z, t, sde), rtol=1e-6, atol=1e-6)


def trained_like_bin_posterior_net(sde: ds.SDE, prior_mean_input: bool = True) -> BinPosteriorNet:
    """A float64 BinPosteriorNet on 8x8 images whose MLP correction is far from zero (random output
    layer), in eval mode."""
    torch.manual_seed(0)
    net = BinPosteriorNet(64, K, (LO, HI), sde_to_config(sde), hidden=32, prior_mean_input=prior_mean_input)
    torch.nn.init.normal_(net.fc_out.weight, std=0.1)
    return net.to(F64).eval()


@pytest.mark.parametrize("prior_mean_input", [True, False])
@pytest.mark.parametrize("sde", [ds.VPSDE(), ds.SubVPSDE()], ids=["vp", "subvp"])
def test_closed_form_divergence_of_the_bin_posterior_net_is_its_jacobian_trace(sde, prior_mean_input):
    net = trained_like_bin_posterior_net(sde, prior_mean_input)
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    for t in (1e-4, 0.05, 0.5, 1.0):  # from nearly sharp posteriors (small t) to the prior
        tt = torch.full((4,), t, dtype=F64)
        out, div = net.noise_and_divergence(z, tt)
        jac = torch.autograd.functional.jacobian(lambda q, tt=tt: net(q, tt).sum(0), z).reshape(64, 4, 64)
        torch.testing.assert_close(out, net(z, tt), rtol=0, atol=0)
        # float64: the two orders of summation differ by rounding only
        torch.testing.assert_close(div, torch.einsum("ibi->b", jac), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="eval"):
        net.train().noise_and_divergence(z, tt)


def test_likelihood_uses_the_closed_form_divergence_and_agrees_with_autograd():
    sde = ds.VPSDE()
    model = ds.ScoreModel(trained_like_bin_posterior_net(sde), sde, "noise", event_shape=(1, 8, 8))
    assert model.score_and_divergence is not None and model.train().score_and_divergence is None
    model.eval()
    x = LO + WIDTH * (torch.randint(0, K, (3, 1, 8, 8), generator=torch.Generator().manual_seed(2)) + 0.5)
    x = x.to(F64)
    kw = dict(eps=1e-4, rtol=1e-7, atol=1e-7)
    closed = ds.log_likelihood(sde, model, x, **kw)
    # a plain function hides score_and_divergence: D vector-Jacobian products per evaluation
    autograd = ds.log_likelihood(sde, lambda q, t: model(q, t), x, **kw)
    # the same ODE with the same vector field up to rounding (~1e-13): the solves agree far below their
    # tolerance (1e-7 relative on a log-likelihood of ~100 nats)
    torch.testing.assert_close(closed.logp, autograd.logp, rtol=1e-8, atol=1e-8)
    assert closed.nfe == autograd.nfe


def test_bound_checks_its_arguments():
    sde = ds.VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 1), 1.0).score_fn(sde)
    with pytest.raises(ValueError, match=r"x_int must lie in \[0, num_bins\)"):
        likelihood_bound(sde, score, torch.tensor([[17]]), K)
    with pytest.raises(ValueError, match="integer"):
        likelihood_bound(sde, score, torch.tensor([[1.5]]), K)
    with pytest.raises(ValueError, match="n_samples"):
        likelihood_bound(sde, score, torch.tensor([[1]]), K, n_samples=0)
    with pytest.raises(ValueError, match="importance"):
        likelihood_bound(sde, score, torch.tensor([[1]]), K, importance="sobol")
    # the score and the SDE are checked like the ODE likelihood's: a (B, 1) output would broadcast
    with pytest.raises(TypeError, match="sde"):
        likelihood_bound(None, score, torch.tensor([[1]]), K)
    with pytest.raises(TypeError, match="score must be callable"):
        likelihood_bound(sde, "score", torch.tensor([[1]]), K)
    with pytest.raises(ValueError, match=r"score returned shape \(1, 1\) for a state of shape \(1, 2\)"):
        likelihood_bound(sde, lambda x, t: x[:, :1], torch.tensor([[1, 2]]), K)
    with pytest.raises(ValueError, match="inf"):
        likelihood_bound(sde, score, torch.tensor([[math.inf]]), K)
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        likelihood_bound(sde, score, torch.tensor([[1]]), K, dtype=torch.float16)


def test_discrete_likelihoods_refuse_bins_other_than_the_models_card(tmp_path):
    # scoring a 17-bin model's data as 256 bins gave ~1700 bits/dim with no other sign
    sde = ds.VPSDE()
    net = BinPosteriorNet(4, K, (LO, HI), sde_to_config(sde), hidden=8, depth=1)
    ds.ScoreModel(net, sde, "noise").save_pretrained(
        tmp_path / "m", metadata={"num_bins": K, "data_range": [LO, HI], "decoder": "categorical"}
    )
    model = ds.ScoreModel.from_pretrained(tmp_path / "m")
    x = torch.tensor([[3, 9, 8, 16]])
    for estimate in (likelihood_bound, ds.bits_per_dim, dequantized_bits_per_dim):
        with pytest.raises(ValueError, match=f"pass num_bins={K}"):
            estimate(sde, model, x)  # the default 256 bins
        with pytest.raises(ValueError, match=r"pass data_range=\(-1.0, 1.0\)"):
            estimate(sde, model, x, K, (0.0, 1.0))
    assert likelihood_bound(sde, model, x, K, (LO, HI), n_samples=2).bpd.isfinite().all()


def test_dequantizers_check_their_arguments_and_draws():
    sde = ds.VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 1), 1.0).score_fn(sde)
    x = torch.tensor([[1, 2]])
    for bad in (0.0, 1e-7, 1e4, math.nan):
        with pytest.raises(ValueError, match="scale"):
            TruncatedNormalDequantizer(bad)
    with pytest.raises(TypeError, match="scale"):
        TruncatedNormalDequantizer(True)
    with pytest.raises(TypeError, match="dequantizer"):
        dequantized_bits_per_dim(sde, score, x, K, dequantizer=TruncatedNormalDequantizer)

    def nan_log_q(x_int, generator):
        return torch.full_like(x_int, 0.5), torch.full((x_int.shape[0],), math.nan)

    def outside_the_bin(x_int, generator):
        return torch.full_like(x_int, 1.5), torch.zeros(x_int.shape[0])

    for q in (nan_log_q, outside_the_bin):
        with pytest.raises(ValueError, match="dequantizer must return"):
            dequantized_bits_per_dim(sde, score, x, K, dequantizer=q)


def test_dataset_evaluations_name_their_bad_arguments():
    from diffscore.evaluation import evaluate_bound, evaluate_bpd

    sde = ds.VPSDE()
    net = BinPosteriorNet(4, K, (LO, HI), sde_to_config(sde), hidden=8, depth=1)
    model = ds.ScoreModel(net, sde, "noise")
    x = torch.tensor([[3, 9, 8, 16]])
    # std(1e-300) is ~1e-151 bin widths: no float32 draw of the truncated normal resolves it
    with pytest.raises(ValueError, match="eps=1e-300 is too small for truncated-normal"):
        evaluate_bpd(model.eval(), x, K, (LO, HI), eps=1e-300, dequantization="truncated_normal")
    with pytest.raises(ValueError, match="eps"):
        evaluate_bpd(model, x, K, (LO, HI), eps=-1.0, dequantization="truncated_normal")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_bound(model, x, K, (LO, HI), batch_size=0)
