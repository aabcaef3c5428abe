"""ForwardSDE, ReverseSDE and ProbabilityFlowODE given to torchsde / torchdiffeq as they are.

Exact answers come from Gaussian data N(mu, s0^2 I), for which every object here is linear in x:

* Strong solutions. For ``dy = -k(t) y dt + phi(t) dW`` the solution on a given Brownian path is
  ``y(t1) = Phi y(t0) + int Phi(s -> t1) phi(s) dW_s``. The stochastic integral is evaluated on a fine
  grid of the *same* BrownianInterval the solver uses, with the space-time Levy area correcting the
  midpoint rule: ``int_a^b phi dW = phi(m) W + phi'(m) (h W / 2 - U) + O(h^2)`` where
  ``U = int_a^b (W_s - W_a) ds`` (torchsde's ``return_U``). With 500 sub-intervals this reference is
  over 10x more accurate than the best solve compared with it (measured: 4e-5 on VP, 2e-3 on a VE path
  of scale 100, against 1e-3 and 2e-2 for srk at dt = 0.005).
  Forward SDE: ``Phi(s -> t) = alpha(t) / alpha(s)``. Reverse SDE with the exact score
  ``-(x - m_t) / v_t`` (``m_t = alpha mu``, ``v_t = alpha^2 s0^2 + std^2``): in solver time
  ``tau = -t``, ``y = x - m_t`` obeys ``dy = -(g^2 / v + f) y dtau + g dW`` and, since
  ``g^2 / v + f = d log v / dt - f``, ``Phi(t0 -> t1) = (v(t1) / v(t0)) (alpha(t0) / alpha(t1))``.
* Probability flow: ``x_t = m_t + sqrt(v_t / v_s) (x_s - m_s)`` maps time s to time t exactly (the
  velocity ``f x + g^2 (x - m) / (2 v)`` is ``d log sqrt(v) / dt`` times ``x - m`` plus ``dm / dt``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq
import torchsde

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import brownian_motion
from diffscore.sde import VESDE, VPSDE

F64 = torch.float64
B, D = 4, 8
S0 = 0.5
ITO = ("euler", "milstein", "srk")
STRATONOVICH = ("euler_heun", "heun", "midpoint", "reversible_heun")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian(d: int = D, dtype=F64) -> GaussianMixture:
    mu = torch.linspace(-1.0, 1.0, d, dtype=dtype)
    return GaussianMixture(torch.ones(1, dtype=dtype), mu[None], S0)


def variance(sde, t, s0=S0):
    alpha, std = sde.alpha_std(t)
    return alpha.square() * s0**2 + std.square()


def rms(e: torch.Tensor) -> float:
    return float(e.square().mean().sqrt())


class Recorder:
    """A score wrapper that records every time it is called with."""

    def __init__(self, score):
        self.score, self.times = score, []

    def __call__(self, x, t):
        self.times.append(t.detach().clone())
        return self.score(x, t)

    def all_times(self) -> torch.Tensor:
        return torch.cat(self.times)


def ito_integral(phi, bm, a: float, b: float, m: int = 500) -> torch.Tensor:
    """int_a^b phi(s) dW_s on bm's path (Levy-area-corrected midpoint rule, error O(h^2))."""
    grid = torch.linspace(a, b, m + 1, dtype=F64)
    h = (b - a) / m
    p_mid, p_a, p_b = phi(0.5 * (grid[1:] + grid[:-1])), phi(grid[:-1]), phi(grid[1:])
    total = 0.0
    for k in range(m):
        w, u = bm(float(grid[k]), float(grid[k + 1]), return_U=True)
        total = total + p_mid[k] * w + (p_b[k] - p_a[k]) / h * (h * w / 2 - u)
    return total


def exact_forward(sde, x0, bm):
    T = torch.tensor(sde.T, dtype=F64)
    la = sde.log_alpha

    def phi(s):
        return torch.exp(la(T) - la(s)) * sde.g2(s).sqrt()

    return torch.exp(la(T)) * x0 + ito_integral(phi, bm, 0.0, sde.T)


def exact_reverse(sde, mu, x_T, bm, eps):
    T, te = torch.tensor(sde.T, dtype=F64), torch.tensor(eps, dtype=F64)

    def transfer(t0, t1):  # Phi(t0 -> t1) of the reverse flow, t0 >= t1
        return variance(sde, t1) / variance(sde, t0) * torch.exp(sde.log_alpha(t0) - sde.log_alpha(t1))

    def phi(tau):
        return transfer(-tau, te) * sde.g2(-tau).sqrt()

    def m(t):
        return sde.log_alpha(t).exp() * mu

    y = transfer(T, te) * (x_T - m(T)) + ito_integral(phi, bm, -sde.T, -eps)
    return y + m(te)


def exact_flow(sde, mu, x_s, s: float, t: float):
    ts, tt = torch.tensor(s, dtype=x_s.dtype), torch.tensor(t, dtype=x_s.dtype)
    a_s, a_t = sde.log_alpha(ts).exp(), sde.log_alpha(tt).exp()
    return a_t * mu + (variance(sde, tt) / variance(sde, ts)).sqrt() * (x_s - a_s * mu)


# ---- torchsde: every method on the forward and the reverse SDE ---------------------------------------


def solve_error(make, method, bm, t0, t1, y0, ref, dt, **kw):
    dyn = make("stratonovich" if method in STRATONOVICH else "ito")
    ts = torch.tensor([t0, t1], dtype=F64)
    y = torchsde.sdeint(dyn, y0, ts, bm=bm, method=method, dt=dt, **kw)[-1]
    return rms(y - ref), dyn


# Strong order for additive noise (g depends on t only): 1 for every method but srk, whose order is 1.5
# (Kloeden & Platen 1992; Roessler 2010). Quartering dt (0.02 -> 0.005) should cut the error by 4 (8 for
# srk); the bounds 0.45 and 0.2 leave room for a 32-path estimate and pre-asymptotic steps, while a solve
# of the wrong SDE (sign, time direction) keeps a constant error against the exact path: ratio ~ 1.
RATIO = {"srk": 0.2}
STEPS = (0.02, 0.005)
# reversible_heun on the *reverse* SDE needs finer steps: its parasitic mode grows with the contraction
# rate (g^2 / v + f) dt, and at dt = 0.02 its error is 10-30x heun's (0.34 vs 0.025 relative on VP, 0.65
# vs 0.019 on VE); from dt = 0.005 on it matches heun on VP, sub-VP and VE alike (docs/dynamics.md).
REVERSE_STEPS = {"reversible_heun": (0.01, 0.0025)}


@pytest.mark.parametrize("method", ITO + STRATONOVICH)
def test_forward_sde_methods_converge_to_exact_path(method):
    sde = VPSDE()
    x0 = torch.randn(B, D, generator=gen(0), dtype=F64)
    bm = torchsde.BrownianInterval(
        t0=0.0, t1=sde.T, size=(B, D), dtype=F64, entropy=7, levy_area_approximation="space-time", dt=0.005
    )
    ref = exact_forward(sde, x0, bm)
    errs = []
    for dt in STEPS:
        err, fwd = solve_error(lambda st: ds.ForwardSDE(sde, (D,), st), method, bm, 0.0, sde.T, x0, ref, dt)
        errs.append(err)
    assert errs[1] < RATIO.get(method, 0.45) * errs[0], errs
    # a solve of the right SDE: measured at dt = 0.02, 0.05 to 0.09 rms(ref) for the first-order methods,
    # 0.008 for srk (reversible_heun on the reverse SDE: 0.04 to 0.07 at its dt = 0.01)
    assert errs[0] < 0.2 * rms(ref), errs


@pytest.mark.parametrize("make_sde", [VPSDE, VESDE], ids=["vp", "ve"])
@pytest.mark.parametrize("method", ITO + STRATONOVICH)
def test_reverse_sde_methods_converge_to_exact_path(make_sde, method):
    sde = make_sde()
    eps = 1e-3
    oracle = gaussian()
    x_T = sde.prior_sample((B, D), generator=gen(1), dtype=F64)
    tau0, tau1 = -sde.T, -eps
    bm = torchsde.BrownianInterval(
        t0=tau0, t1=tau1, size=(B, D), dtype=F64, entropy=11, levy_area_approximation="space-time", dt=0.005
    )
    ref = exact_reverse(sde, oracle.means[0], x_T, bm, eps)
    errs = []
    for dt in REVERSE_STEPS.get(method, STEPS):
        score = Recorder(oracle.score_fn(sde))
        err, rev = solve_error(
            lambda st, score=score: ds.ReverseSDE(sde, score, (D,), st), method, bm, tau0, tau1, x_T, ref, dt
        )
        errs.append(err)
        # the score only ever sees true times in [eps, T]; nfe counts its evaluations
        t = score.all_times()
        assert float(t.min()) >= eps and float(t.max()) <= sde.T
        assert rev.nfe == len(score.times)
    assert errs[1] < RATIO.get(method, 0.45) * errs[0], errs
    assert errs[0] < 0.2 * rms(ref), errs


def test_solver_times_keep_float64():
    assert ds.ReverseSDE.solver_times([1.0, 1e-3]).tolist() == [-1.0, -1e-3]
    t32 = torch.tensor([1.0, 1e-3])
    assert ds.ReverseSDE.solver_times(t32).dtype == torch.float32


def test_reverse_euler_evaluates_score_on_the_step_grid():
    sde, eps, dt = VPSDE(), 0.05, 0.1
    oracle = gaussian()
    score = Recorder(oracle.score_fn(sde))
    rev = ds.ReverseSDE(sde, score, (D,))
    x_T = sde.prior_sample((B, D), generator=gen(2), dtype=F64)
    ts = ds.ReverseSDE.solver_times([sde.T, eps])
    bm = brownian_motion(float(ts[0]), float(ts[1]), x_T, gen(3), dt=dt)
    torchsde.sdeint(rev, x_T, ts.to(x_T), bm=bm, method="euler", dt=dt)
    # torchsde's shape check at T, then one evaluation at the start of each of the 10 steps
    want = [sde.T] + [sde.T - k * dt for k in range(10)]
    got = [float(t[0]) for t in score.times]
    assert all(torch.equal(t, t[:1].expand(B)) for t in score.times)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert rev.nfe == 11


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_adaptive_stepping_reaches_exact_path(direction):
    sde, eps = VPSDE(), 1e-3
    oracle = gaussian()
    if direction == "forward":
        t0, t1 = 0.0, sde.T
        y0 = torch.randn(B, D, generator=gen(4), dtype=F64)
    else:
        t0, t1 = -sde.T, -eps
        y0 = sde.prior_sample((B, D), generator=gen(5), dtype=F64)
    bm = torchsde.BrownianInterval(
        t0=t0, t1=t1, size=(B, D), dtype=F64, entropy=13, levy_area_approximation="space-time", dt=0.01
    )
    score = Recorder(oracle.score_fn(sde))
    if direction == "forward":
        dyn, ref = ds.ForwardSDE(sde, (D,)), exact_forward(sde, y0, bm)
    else:
        dyn, ref = ds.ReverseSDE(sde, score, (D,)), exact_reverse(sde, oracle.means[0], y0, bm, eps)
    ts = torch.tensor([t0, t1], dtype=F64)
    y = torchsde.sdeint(dyn, y0, ts, bm=bm, method="srk", dt=0.05, adaptive=True, rtol=1e-3, atol=1e-3)[-1]
    # srk's local error control at 1e-3 (measured global error 7e-4 rms(ref) forward); a fixed-step srk
    # at the initial dt = 0.05 without adaptation is ~2e-2 off
    assert rms(y - ref) < 5e-3 * rms(ref)
    if direction == "reverse":
        t = score.all_times()
        assert float(t.min()) >= eps and float(t.max()) <= sde.T


# ---- Brownian motion from the caller's generator -----------------------------------------------------


def test_brownian_motion_comes_from_the_generator():
    y0 = torch.zeros(3, 5, dtype=F64)

    def increments(seed, numpy_seed):
        np.random.seed(numpy_seed)  # noqa: NPY002 - torchsde's default entropy source: must not matter
        bm = brownian_motion(0.0, 1.0, y0, gen(seed), dt=0.25)
        return torch.stack([bm(0.25 * k, 0.25 * (k + 1)) for k in range(4)])

    a = increments(0, numpy_seed=1)
    assert torch.equal(a, increments(0, numpy_seed=2))
    assert not torch.equal(a, increments(1, numpy_seed=1))
    # 60 N(0, 0.25) increments: the sample variance is within 4 standard errors of 0.25
    assert abs(float(a.square().mean()) - 0.25) < 4 * 0.25 * math.sqrt(2 / a.numel())
    # one generator per sample: row k is the path generator k gives alone
    rows = brownian_motion(0.0, 1.0, y0, [gen(10 + k) for k in range(3)], dt=0.25)
    for k in range(3):
        alone = brownian_motion(0.0, 1.0, y0[:1], [gen(10 + k)], dt=0.25)
        assert torch.equal(rows(0.0, 0.5)[k], alone(0.0, 0.5)[0])


def test_stepwise_brownian_motion_for_fixed_step_solvers():
    # drawn step by step: the same independence per sample, N(0, dt) increments, queries in order only
    y0 = torch.zeros(400, 5, dtype=F64)
    gens = [gen(10 + k) for k in range(400)]
    bm = brownian_motion(-1.0, 0.0, y0, gens, dt=0.25, stepwise=True)
    steps = torch.stack([bm(-1.0 + 0.25 * k, -0.75 + 0.25 * k) for k in range(4)])
    assert torch.equal(bm(-0.25, 0.0), steps[-1])  # asking again for the last step: the same increment
    # 8000 N(0, 0.25) increments: their variance within 4 standard errors of 0.25, no correlation in time
    assert abs(float(steps.square().mean()) - 0.25) < 4 * 0.25 * math.sqrt(2 / steps.numel())
    assert abs(float((steps[0] * steps[1]).mean())) < 4 * 0.25 / math.sqrt(2000)
    alone = brownian_motion(-1.0, 0.0, y0[:1], [gen(12)], dt=0.25, stepwise=True)
    assert torch.equal(alone(-1.0, -0.75)[0], steps[0, 2])
    with pytest.raises(RuntimeError, match="out of order"):
        bm(-1.0, -0.5)


@pytest.mark.parametrize("solver", ["euler", "srk"])
def test_sde_sampling_ignores_numpy_rng(solver):
    sde, oracle = VPSDE(), gaussian()

    def run(seed, numpy_seed):
        np.random.seed(numpy_seed)  # noqa: NPY002 - the global RNG is what torchsde would use
        return ds.sample(
            sde, oracle.score_fn(sde), (B, D), method="sde", generator=gen(seed), dtype=F64,
            solver=solver, num_steps=20,
        )  # fmt: skip

    a = run(0, 0)
    assert torch.equal(a, run(0, 123))
    assert not torch.equal(a, run(1, 0))


# ---- torchdiffeq: the probability-flow ODE -----------------------------------------------------------

ODE_METHODS = {
    # adaptive, with a step boundary at the final time (step_t) as diffscore's own solves set it: the
    # global error stays within 10x the local tolerance (measured <= 3e-7 relative at rtol = 1e-7)
    "dopri5": (dict(rtol=1e-7, atol=1e-7), 1e-6),
    "bosh3": (dict(rtol=1e-6, atol=1e-6), 5e-5),  # third order: 1.1e-5 on VE, where x grows 100-fold
    # fixed steps: rk4's error ~ (L h)^4 with L = log(sigma_max / sigma_min) = 8.5 on VE (measured 1e-6
    # relative at h = 0.01); euler is first order, error ~ L h / 2 (measured 2e-2 on VE at h = 1e-3)
    "rk4": (dict(options=dict(step_size=0.01)), 1e-5),
    "euler": (dict(options=dict(step_size=2e-3)), 0.1),
}
STAGES = {"rk4": 4, "euler": 1}


@pytest.mark.parametrize("backward", [False, True], ids=["eps-to-T", "T-to-eps"])
@pytest.mark.parametrize("method", sorted(ODE_METHODS))
def test_probability_flow_matches_exact_flow(sde, method, backward):
    eps = 1e-3
    oracle = gaussian()
    s, t = (sde.T, eps) if backward else (eps, sde.T)
    x_s = oracle.sample(B, gen(6), sde=sde, t=s)
    score = Recorder(oracle.score_fn(sde))
    flow = ds.ProbabilityFlowODE(sde, score, t_min=eps)
    kw, tol = ODE_METHODS[method]
    if method not in STAGES:
        kw = dict(kw, options=dict(step_t=torch.tensor([t], dtype=F64)))
    x = torchdiffeq.odeint(flow, x_s, torch.tensor([s, t], dtype=F64), method=method, **kw)[-1]
    ref = exact_flow(sde, oracle.means[0], x_s, s, t)
    assert rms(x - ref) < tol * rms(ref)
    assert flow.nfe == len(score.times)
    if method in STAGES:  # fixed grid: ceil(span / h) steps of STAGES evaluations each
        steps = math.ceil(round((sde.T - eps) / kw["options"]["step_size"], 9))
        assert flow.nfe == STAGES[method] * steps
    times = score.all_times()
    assert float(times.min()) >= eps and float(times.max()) <= sde.T


class RawTimes(torch.nn.Module):
    """Records the times torchdiffeq asks the vector field for, before ProbabilityFlowODE clamps them."""

    def __init__(self, flow):
        super().__init__()
        self.flow, self.times = flow, []

    def forward(self, t, x):
        self.times.append(float(t))
        return self.flow(t, x)


def test_adaptive_solver_past_the_end_gives_no_nan():
    # VP solved T -> 1e-3 with dopri5 and no step_t: the solver steps past 1e-3 (to t < 0 here, where
    # the VP variance 1 - exp(-B(t)) is negative) and interpolates back. A score built like a network's,
    # dividing by the unclamped std, is NaN there; the flow clamps t to [t_min, T] so the solve stays
    # finite, at the price of a kink inside the last step (measured error 2e-5 at rtol = 1e-5).
    sde, eps = VPSDE(), 1e-3
    mu = torch.linspace(-1.0, 1.0, D, dtype=F64)

    def score(x, t):
        alpha, std = sde.alpha_std(t)  # unchecked: NaN std for t < 0
        v = (alpha.square() * S0**2 + std.square())[:, None]
        return -(x - alpha[:, None] * mu) / v

    assert torch.isnan(sde.alpha_std(torch.tensor([-1e-3], dtype=F64))[1]).all()
    flow = ds.ProbabilityFlowODE(sde, score, t_min=eps)
    raw = RawTimes(flow)
    x_T = sde.prior_sample((B, D), generator=gen(7), dtype=F64)
    x = torchdiffeq.odeint(
        raw, x_T, torch.tensor([sde.T, eps], dtype=F64), method="dopri5", rtol=1e-5, atol=1e-5
    )
    assert min(raw.times) < 0.0  # the overshoot really happened
    assert torch.isfinite(x).all()
    ref = exact_flow(sde, mu, x_T, sde.T, eps)
    assert rms(x[-1] - ref) < 1e-3 * rms(ref)  # 100x the tolerance; measured 2e-5


# ---- a NaN during a solve raises at once, naming the time --------------------------------------------


class NaNBelow(Recorder):
    """The exact score above ``t_bad``, NaN below it."""

    def __init__(self, score, t_bad):
        super().__init__(score)
        self.t_bad = t_bad

    def __call__(self, x, t):
        s = super().__call__(x, t)
        return torch.where((t < self.t_bad)[:, None], torch.nan, s)


def assert_raised_at_first_nan(score, err):
    times = [float(t[0]) for t in score.times]
    assert times[-1] < score.t_bad and all(t >= score.t_bad for t in times[:-1])
    assert f"t = {times[-1]:.6g}" in str(err.value)


@pytest.mark.parametrize("kind", ["ode", "sde"])
def test_nan_score_raises_at_the_time_it_appears(kind):
    sde, oracle = VPSDE(), gaussian()
    score = NaNBelow(oracle.score_fn(sde), t_bad=0.45)
    x_T = sde.prior_sample((B, D), generator=gen(8), dtype=F64)
    with pytest.raises(FloatingPointError, match=r"non-finite score at t = 0\.4") as err:
        if kind == "ode":
            flow = ds.ProbabilityFlowODE(sde, score, t_min=1e-3)
            torchdiffeq.odeint(flow, x_T, torch.tensor([1.0, 1e-3], dtype=F64), method="dopri5")
        else:
            rev = ds.ReverseSDE(sde, score, (D,))
            torchsde.sdeint(rev, x_T, torch.tensor([-1.0, -1e-3], dtype=F64), method="euler", dt=0.01)
    assert_raised_at_first_nan(score, err)


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_arguments_raise():
    sde, score = VPSDE(), gaussian().score_fn(VPSDE())
    with pytest.raises(TypeError, match="sde"):
        ds.ForwardSDE("vp", (D,))
    with pytest.raises(ValueError, match="shape"):
        ds.ForwardSDE(sde, (0, 3))
    with pytest.raises(ValueError, match="shape"):
        ds.ReverseSDE(sde, score, ())
    with pytest.raises(ValueError, match="sde_type"):
        ds.ReverseSDE(sde, score, (D,), sde_type="ito-ish")
    with pytest.raises(TypeError, match="score"):
        ds.ReverseSDE(sde, 3.0, (D,))
    with pytest.raises(TypeError, match="score"):
        ds.ProbabilityFlowODE(sde, None)
    with pytest.raises(ValueError, match="t_min"):
        ds.ProbabilityFlowODE(sde, score, t_min=1.0)
    with pytest.raises(ValueError, match="t_min"):
        ds.ProbabilityFlowODE(sde, score, t_min=-1e-3)
