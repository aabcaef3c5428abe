"""Bad inputs that used to give a silent wrong result now raise, naming the argument.

1. A fixed-grid torchdiffeq method without a step (one step over [eps, T]: a latent off by ~10).
2. A score whose output is not shaped like the state (broadcast into a finite wrong image).
3. A latent / x_T beyond the samplers' plausible bound (decoded to x in [339, 8531]).
4. eps where std(eps) = 0 for the solves that evaluate the score at eps (an obscure failure at t = 1e-45).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import diffscore as ds
from diffscore.likelihood import fixed_grid_methods
from diffscore.oracles import GaussianMixture
from diffscore.sampling import METHODS

F64 = torch.float64
SHAPE = (2, 3, 4, 4)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mixture() -> GaussianMixture:
    means = 0.5 * torch.randn((2,) + SHAPE[1:], generator=gen(0), dtype=F64)
    return GaussianMixture([0.4, 0.6], means, 0.3)


# ---- 1. fixed-grid torchdiffeq methods need a step ------------------------------------------------------


def test_fixed_grid_methods_come_from_torchdiffeq():
    names = set(fixed_grid_methods())
    assert {"euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams"} <= names
    assert not names & {"dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2"}


def _fixed_step_message(name: str, method: str) -> str:
    return re.escape(
        f"{name}={method!r} is a fixed-step solver and no step was given: torchdiffeq would take a single "
        f'step over the whole interval. Pass options={{"step_size": ...}} (e.g. 1e-3) or choose an '
        f"adaptive {name} such as 'dopri5'"
    )


@pytest.mark.parametrize("method", fixed_grid_methods())
def test_fixed_grid_method_without_step_size_is_refused(method):
    sde, oracle = ds.VPSDE(), _mixture()
    score = oracle.score_fn(sde)
    x = oracle.sample(2, gen(1), sde=sde, t=1e-3)
    calls = {
        "encode": lambda **kw: ds.encode(sde, score, x, method=method, **kw),
        "decode": lambda **kw: ds.decode(sde, score, x, method=method, **kw),
        "log_likelihood": lambda **kw: ds.log_likelihood(sde, score, x, method=method, **kw),
    }
    for entry, call in calls.items():
        for options in (None, {}, {"step_size": None}, {"perturb": True}):
            with pytest.raises(ValueError, match=_fixed_step_message("method", method)):
                call(options=options)
                pytest.fail(f"{entry} returned")  # pragma: no cover
    with pytest.raises(ValueError, match=_fixed_step_message("solver", method)):
        ds.sample(sde, score, SHAPE, method="ode", solver=method, dtype=F64)
    with pytest.raises(ValueError, match=re.escape('options["step_size"] must be finite and > 0, got -0.1')):
        ds.encode(sde, score, x, method=method, options={"step_size": -0.1})


def test_euler_with_a_step_size_matches_the_dopri5_latent():
    sde, oracle = ds.VPSDE(), _mixture()
    score = oracle.score_fn(sde)
    x = oracle.sample(4, gen(1), sde=sde, t=1e-3)
    z_ref = ds.encode(sde, score, x, eps=1e-3, rtol=1e-10, atol=1e-10)  # dopri5, far below Euler's error
    err = {}
    for h in (1e-3, 5e-4):
        z = ds.encode(sde, score, x, eps=1e-3, method="euler", options={"step_size": h})
        err[h] = float((z - z_ref).abs().max())
    # Euler's global error is first order, ~C h: measured 5.7e-3 at h = 1e-3 (latents of scale 3.7), so
    # 1e-2 leaves a 1.75x margin; the single silent step of the defect was off by ~10. Halving h must
    # halve the error (measured ratio 2.00), which a solve ignoring step_size would not do.
    assert err[1e-3] < 1e-2
    assert 1.8 < err[1e-3] / err[5e-4] < 2.2


# ---- 2. the score's output must be shaped like the state ---------------------------------------------


def _entry_points(score_of_state):
    """Each public entry point, as ``call(score)``, on a (2, 3, 4, 4) state (few steps)."""
    sde = ds.VPSDE()
    x = _mixture().sample(2, gen(2), sde=sde, t=1e-3)
    mask = torch.zeros(1, 1, 4, 4, dtype=F64)
    mask[..., :2] = 1
    steps = {"ode": {}, "sde_adaptive": {}, "dpm_solver": dict(num_steps=3)}
    calls = {
        f"sample[{m}]": (
            lambda s, m=m: ds.sample(sde, s, SHAPE, method=m, generator=gen(3), dtype=F64,
                                     **steps.get(m, dict(num_steps=5)))
        )
        for m in METHODS
    }  # fmt: skip
    calls.update(
        encode=lambda s: ds.encode(sde, s, x),
        decode=lambda s: ds.decode(sde, s, x),
        log_likelihood=lambda s: ds.log_likelihood(sde, s, x),
        log_likelihood_hutchinson=lambda s: ds.log_likelihood(sde, s, x, divergence="hutchinson"),
        inpaint=lambda s: ds.inpaint(sde, s, x, mask, num_steps=20),
        colorize=lambda s: ds.colorize(sde, s, x[:, :1], num_steps=20),
        conditional_score=lambda s: ds.sample(
            sde, ds.conditional_score(s, lambda y, t: -y.square().flatten(1).sum(1)), SHAPE,
            method="heun", num_steps=3, dtype=F64,
        ),
    )  # fmt: skip
    return sde, calls


ENTRY_POINTS = sorted(_entry_points(None)[1])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_score_of_the_wrong_shape_is_refused(entry):
    sde, calls = _entry_points(None)
    score = _mixture().score_fn(sde)
    message = re.escape("score returned shape (2, 1, 4, 4) for a state of shape (2, 3, 4, 4)")
    with pytest.raises(ValueError, match=f"^{message}$"):
        calls[entry](lambda x, t: score(x, t)[:, :1])  # the user's report: one channel of three


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_score_returning_none_or_integers_is_refused(entry):
    _, calls = _entry_points(None)
    msg = "score returned NoneType, not a tensor: score(x, t) must return a tensor shaped like x"
    with pytest.raises(TypeError, match=f"^{re.escape(msg)}$"):
        calls[entry](lambda x, t: None)
    msg = "score returned a tensor of dtype torch.int64: score(x, t) must return a floating-point tensor"
    with pytest.raises(TypeError, match=f"^{re.escape(msg)}$"):
        calls[entry](lambda x, t: torch.zeros(x.shape, dtype=torch.long))


@pytest.mark.parametrize("method", ["pc", "dpmpp", "heun"])
def test_a_score_whose_shape_changes_with_t_is_caught_where_it_changes(method):
    # right shape above t = 0.5, one channel below: every call is checked, not only the first
    sde = ds.VPSDE()
    score = _mixture().score_fn(sde)
    times = []

    def bad_late(x, t):
        times.append(float(t[0]))
        s = score(x, t)
        return s if float(t[0]) >= 0.5 else s[:, :1]

    with pytest.raises(ValueError, match=re.escape("score returned shape (2, 1, 4, 4)")):
        ds.sample(sde, bad_late, SHAPE, method=method, num_steps=10, generator=gen(4), dtype=F64)
    assert times[-1] < 0.5 and all(t >= 0.5 for t in times[:-1])


# ---- 3. a latent / x_T beyond the plausible bound -------------------------------------------------------


def _bound_message(name: str, value: str, limit: str, prior_std: str) -> str:
    return re.escape(
        f"{name} has an entry of magnitude {value}: not a plausible state at T (entries must satisfy "
        f"|{name}| < {limit}, 10000 x the prior std {prior_std})"
    )


def test_decode_refuses_an_implausible_latent():
    sde = ds.VPSDE()
    score = _mixture().score_fn(sde)
    z = torch.full(SHAPE, 1e4, dtype=F64)  # the user's report: decoded to x in [339, 8531]
    with pytest.raises(ValueError, match=_bound_message("z", "10000", "10000", "1")):
        ds.decode(sde, score, z)
    z = torch.zeros(SHAPE, dtype=F64)
    z[1, 2, 3, 3] = -2.5e4  # one entry is enough; the sign does not matter
    with pytest.raises(ValueError, match=_bound_message("z", "25000", "10000", "1")):
        ds.decode(sde, score, z)
    ve = ds.VESDE()  # prior std sigma_max = 50: bound 5e5
    with pytest.raises(ValueError, match=_bound_message("z", "600000", "500000", "50")):
        ds.decode(ve, _mixture().score_fn(ve), torch.full(SHAPE, 6e5, dtype=F64))


def test_a_given_x_T_beyond_the_bound_is_refused():
    sde = ds.VPSDE()
    score = _mixture().score_fn(sde)
    x_T = torch.full(SHAPE, 2e4, dtype=F64)
    msg = _bound_message("x_T", "20000", "10000", "1")
    for method in METHODS:
        with pytest.raises(ValueError, match=msg):
            ds.sample(sde, score, SHAPE, method=method, x_T=x_T)
    x = torch.zeros(SHAPE, dtype=F64)
    with pytest.raises(ValueError, match=msg):
        ds.inpaint(sde, score, x, torch.ones(1, 1, 4, 4, dtype=F64), x_T=x_T, num_steps=5)
    with pytest.raises(ValueError, match=msg):
        ds.colorize(sde, score, x[:, :1], x_T=x_T, num_steps=5)


def test_a_large_latent_within_the_bound_decodes_exactly():
    # 1000 prior stds: far from any prior draw, within the bound. For Gaussian data N(0, s^2 I) the flow
    # is linear, x_t = sqrt(v_t / v_T) z with v_t = alpha_t^2 s^2 + std_t^2: the exact answer.
    sde, s, eps = ds.VPSDE(), 0.5, 1e-3
    oracle = GaussianMixture([1.0], torch.zeros((1,) + SHAPE[1:], dtype=F64), s)
    z = torch.full(SHAPE, 1000.0, dtype=F64)
    z[0] = -3.0
    x = ds.decode(sde, oracle.score_fn(sde), z, eps=eps, rtol=1e-9, atol=1e-9)
    alpha, std = sde.marginal_coeffs(torch.tensor([eps, sde.T], dtype=F64))
    v = alpha.square() * s**2 + std.square()
    exact = (v[0] / v[1]).sqrt() * z
    # rtol = atol = 1e-9 on a linear flow: 1e-6 relative is far above the solver's error
    torch.testing.assert_close(x, exact, rtol=1e-6, atol=1e-9)


# ---- 4. eps with std(eps) = 0 ------------------------------------------------------------------------------


EPS_MESSAGE = re.escape(
    "eps = 0 is a time where the SDE's std(t) is 0, so the score is singular there and the solver "
    "evaluates it at eps: use eps > 0 (e.g. 1e-5 for a likelihood, 1e-3 for sampling)"
)


@pytest.mark.parametrize(
    "sde", [ds.VPSDE(), ds.SubVPSDE(), ds.VESDE(kernel="exact")], ids=["vp", "subvp", "ve_exact"]
)
def test_eps_where_the_std_vanishes_is_refused_by_the_solves_that_evaluate_the_score_there(sde):
    score = _mixture().score_fn(sde)
    x = torch.zeros(SHAPE, dtype=F64)
    calls = {
        "encode": lambda: ds.encode(sde, score, x, eps=0.0),
        "decode": lambda: ds.decode(sde, score, x, eps=0),
        "log_likelihood": lambda: ds.log_likelihood(sde, score, x, eps=0.0),
        "bits_per_dim": lambda: ds.bits_per_dim(sde, score, torch.zeros(SHAPE, dtype=torch.long), eps=0.0),
        "sample[ode]": lambda: ds.sample(sde, score, SHAPE, method="ode", eps=0.0, dtype=F64),
        "sample[sde]": lambda: ds.sample(sde, score, SHAPE, method="sde", eps=0.0, dtype=F64),
        "sample[sde_adaptive]": lambda: ds.sample(sde, score, SHAPE, method="sde_adaptive", eps=0.0),
    }
    for entry, call in calls.items():
        with pytest.raises(ValueError, match=f"^{EPS_MESSAGE}$"):
            call()
            pytest.fail(f"{entry} returned")  # pragma: no cover


def test_eps_zero_stays_valid_where_it_is_legitimate():
    # the fixed-grid samplers that never weigh the score at a zero std keep eps = 0 (heun: the last step
    # to sigma = 0 is an Euler step from the previous grid point; pc: the corrector step at eps is
    # proportional to std(eps)^2 = 0, and there is no denoising step at eps = 0); and where std(0) > 0
    # (VESDE(kernel="sigma"): std(0) = sigma_min) eps = 0 is an ordinary time.
    vp = ds.VPSDE()
    oracle = GaussianMixture([1.0], torch.zeros(1, 3, dtype=F64), 0.5)
    x_T = vp.prior_sample((4000, 3), generator=gen(5), dtype=F64)
    # heun is deterministic and second order: against the exact linear flow of N(0, 0.25 I) data,
    # x_0 = sqrt(v_0 / v_T) x_T with v_t = alpha_t^2 0.25 + std_t^2 (measured 1.5e-3 at N = 100, 4.5e-2
    # at N = 20: the error falls as N^-2.1)
    x = ds.sample(vp, oracle.score_fn(vp), x_T.shape, method="heun", num_steps=100, eps=0.0, x_T=x_T)
    alpha, std = vp.marginal_coeffs(torch.tensor([0.0, vp.T], dtype=F64))
    v = alpha.square() * 0.25 + std.square()
    exact = (v[0] / v[1]).sqrt() * x_T
    assert float((x - exact).abs().max() / x_T.abs().max()) < 3e-3
    # pc: 12000 values of p_0 = N(0, 0.25); the sample variance has a standard error of 1.3% (measured
    # ratio 0.996 at N = 200), so 5% is about 4 standard errors
    x = ds.sample(vp, oracle.score_fn(vp), x_T.shape, method="pc", num_steps=200, eps=0.0, x_T=x_T,
                  generator=gen(6))  # fmt: skip
    assert abs(float(x.var()) / 0.25 - 1) < 0.05
    ve = ds.VESDE(kernel="sigma")
    x = oracle.sample(4, gen(6), sde=ve, t=0.0)
    z = ds.encode(ve, oracle.score_fn(ve), x, eps=0.0, rtol=1e-9, atol=1e-9)
    # linear flow of Gaussian data: z = sqrt(v_T / v_0) x with v_t = s^2 + std_t^2
    _, std = ve.marginal_coeffs(torch.tensor([0.0, ve.T], dtype=F64))
    v = 0.25 + std.square()
    torch.testing.assert_close(z, (v[1] / v[0]).sqrt() * x, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_unknown_option_is_refused_naming_it_and_the_methods_options(method):
    sde = ds.VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 2), 0.5).score_fn(sde)
    with pytest.raises(
        TypeError, match=rf"^method '{method}' has no option 'stepsize'; its options: .*stats$"
    ):
        ds.sample(sde, score, (2, 2), method=method, stepsize=0.1)


@pytest.mark.parametrize("weights", ["abc", [[1.0, "x"]], object()])
def test_colorize_weights_that_are_not_numbers_are_refused(weights):
    sde = ds.VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 3), 0.5).score_fn(sde)
    with pytest.raises(TypeError, match="^weights must be a 1-D sequence"):
        ds.colorize(sde, score, torch.zeros(2, 1, 1, 1), weights, num_steps=2)


# ---- 5. SDE times, sigmas and constructor numbers --------------------------------------------------------


def _sde_set() -> list[ds.SDE]:
    return [ds.VPSDE(), ds.SubVPSDE(), ds.VESDE(), ds.VESDE(kernel="sigma"), ds.VPSDE(beta_max=100.0)]


def test_transition_refuses_reversed_times_naming_both():
    sde = ds.VPSDE()
    want = re.escape(
        "transition needs t_from <= t_to (the kernel runs forward in time); got t_from = 0.5 > t_to = 0.2"
    )
    with pytest.raises(ValueError, match=f"^{want}$"):
        sde.transition(0.5, 0.2)  # used to be AttributeError: 'float' object has no attribute 'exp'
    with pytest.raises(ValueError, match=f"^{want}$"):
        sde.transition(torch.tensor([0.5]), torch.tensor([0.2]))  # used to return (2.886, 0.0)
    with pytest.raises(ValueError, match="got t_from = 0.7 > t_to = 0.6$"):
        sde.transition(torch.tensor([0.1, 0.7], dtype=F64), torch.tensor([0.2, 0.6], dtype=F64))


def test_transition_refuses_times_outside_0_T_and_non_numbers():
    sde = ds.VPSDE()
    with pytest.raises(
        ValueError, match=re.escape("t_to must lie in [0, T] = [0, 1.0]; got values in [1.5, 1.5]")
    ):
        sde.transition(0.2, 1.5)
    with pytest.raises(
        ValueError, match=re.escape("t_from must lie in [0, T] = [0, 1.0]; got values in [-0.5, -0.5]")
    ):
        sde.transition(-0.5, 0.5)
    with pytest.raises(
        ValueError, match=re.escape("t_from must lie in [0, T] = [0, 1.0]; got values in [nan, nan]")
    ):
        sde.transition(float("nan"), 0.5)
    with pytest.raises(ValueError, match=r"^t_to must lie in \[0, T\]"):
        sde.transition(torch.tensor([0.1, 0.2]), torch.tensor([0.3, float("nan")]))
    with pytest.raises(TypeError, match="^t_from must be a float or a tensor, got list$"):
        sde.transition([0.1], 0.5)
    with pytest.raises(
        ValueError, match=re.escape("t_from of shape (2,) and t_to of shape (3,) do not broadcast")
    ):
        sde.transition(torch.zeros(2), torch.ones(3))


def test_transition_of_floats_and_mixed_arguments_is_the_tensor_answer():
    sde = ds.VPSDE()
    t0 = torch.tensor([0.2, 0.2], dtype=F64)
    t1 = torch.tensor([0.5, 0.9], dtype=F64)
    a, s = sde.transition(t0, t1)
    # closed form: a = exp(-(B(t1) - B(t0)) / 2), s^2 = 1 - a^2 (VP)
    B = lambda t: 0.1 * t + 19.9 * t * t / 2  # noqa: E731
    want_a = torch.tensor([math.exp(-(B(0.5) - B(0.2)) / 2), math.exp(-(B(0.9) - B(0.2)) / 2)], dtype=F64)
    torch.testing.assert_close(a, want_a, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(s, (1 - want_a.square()).sqrt(), rtol=1e-13, atol=0.0)
    a_mixed, s_mixed = sde.transition(0.2, t1)  # the float takes the tensor's dtype
    assert a_mixed.dtype == F64
    assert torch.equal(a_mixed, a) and torch.equal(s_mixed, s)
    a_f, s_f = sde.transition(0.2, 0.5)
    assert a_f.dtype == torch.get_default_dtype()
    torch.testing.assert_close(a_f.double(), want_a[0], rtol=1e-6, atol=0.0)
    a_eq, s_eq = sde.transition(0.4, 0.4)
    assert float(a_eq) == 1.0 and float(s_eq) == 0.0


def _sigma_T(sde: ds.SDE) -> float:
    if isinstance(sde, ds.VESDE):
        r = sde.sigma_max / sde.sigma_min
        return (
            sde.sigma_max if sde.kernel == "sigma" else sde.sigma_min * math.sqrt(math.expm1(2 * math.log(r)))
        )
    B = sde.beta_min * sde.T + (sde.beta_max - sde.beta_min) * sde.T / 2
    if isinstance(sde, ds.SubVPSDE):
        return 2 * math.sinh(B / 2)
    return math.sqrt(math.expm1(B))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, "above"])
def test_t_from_sigma_refuses_nan_inf_negative_and_above_sigma_T(bad):
    for sde in _sde_set():
        s_T = _sigma_T(sde)
        head = re.escape(f"sigma must lie in [0, sigma(T)] = [0, {s_T:.9g}]; got values in [")
        # float64: 1e-9 above sigma(T) is far beyond rounding (4 eps = 9e-16 relative)
        value = s_T * (1 + 1e-9) if bad == "above" else bad
        with pytest.raises(ValueError, match=f"^{head}"):
            sde.t_from_sigma(torch.tensor([0.5, value], dtype=F64))
        # a Python number becomes a float32 tensor (4 eps = 4.8e-7 relative)
        value = s_T * (1 + 1e-5) if bad == "above" else bad
        with pytest.raises(ValueError, match=f"^{head}"):
            sde.t_from_sigma(value)
    with pytest.raises(TypeError, match="^sigma must be a float or a tensor, got list$"):
        ds.VPSDE().t_from_sigma([1.0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, F64])
def test_t_from_sigma_maps_sigma_T_to_T_in_every_dtype(dtype):
    # sigma(T) computed in the dtype may round above the float64 sigma(T): accepted and clamped to T
    for sde in _sde_set():
        sigma_T = sde.sigma(torch.tensor([sde.T], dtype=dtype))
        if not bool(torch.isfinite(sigma_T).all()):  # VP with beta_max = 100 overflows float16
            assert dtype == torch.float16
            continue
        t = sde.t_from_sigma(sigma_T)
        assert t.dtype == dtype and float(t.max()) <= sde.T
        want = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5, F64: 1e-12}[dtype]
        assert abs(float(t) - sde.T) <= want
        assert float(sde.t_from_sigma(torch.zeros(1, dtype=dtype))) == 0.0
    vp = ds.VPSDE()
    for s_T in (_sigma_T(vp), _sigma_T(vp) * (1 + 6e-16)):  # sigma(T), and 3 ulp above it (rounding)
        assert 0.0 <= 1.0 - float(vp.t_from_sigma(torch.tensor(s_T, dtype=F64))) <= 1e-15


@pytest.mark.parametrize(
    ("make", "err", "message"),
    [
        (lambda: ds.VPSDE(beta_max=float("nan")), ValueError, "beta_max must be finite, got nan"),
        (lambda: ds.VPSDE(beta_min=float("inf")), ValueError, "beta_min must be finite, got inf"),
        (lambda: ds.SubVPSDE(beta_max=float("-inf")), ValueError, "beta_max must be finite, got -inf"),
        (lambda: ds.VESDE(sigma_max=float("inf")), ValueError, "sigma_max must be finite and > 0, got inf"),
        (lambda: ds.VESDE(sigma_min=float("nan")), ValueError, "sigma_min must be finite and > 0, got nan"),
        (lambda: ds.VPSDE(T=float("nan")), ValueError, "T must be finite and > 0, got nan"),
        (lambda: ds.VPSDE(beta_max="20"), TypeError, "beta_max must be a real number, got str"),
        (lambda: ds.VPSDE(beta_min=True), TypeError, "beta_min must be a real number, got bool"),
        (lambda: ds.VESDE(sigma_max=None), TypeError, "sigma_max must be a real number, got NoneType"),
    ],
)
def test_sde_constructors_value_error_for_bad_numbers_type_error_for_non_numbers(make, err, message):
    with pytest.raises(err, match=f"^{re.escape(message)}$"):
        make()


def test_public_time_methods_name_t_for_a_list():
    sde = ds.VPSDE()
    for call in (sde.marginal_coeffs, sde.diffusion, sde.sigma):
        with pytest.raises(TypeError, match="^t must be a float or a tensor, got list$"):
            call([0.1, 0.2])  # used to be "float() argument must be a string or a real number"
    with pytest.raises(
        TypeError, match=re.escape("t must be a float, a 0-d tensor or a (B,) tensor, got list")
    ):
        sde.marginal_prob(torch.zeros(2, 3), [0.1, 0.2])
    alpha, std = sde.marginal_coeffs(torch.tensor([0, 1]))  # integer tensors are times too
    assert float(alpha[0]) == 1.0 and float(std[0]) == 0.0


# ---- 6. ScoreModel.min_std ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_std", "err", "message"),
    [
        (float("nan"), ValueError, "min_std must be finite and > 0, got nan"),
        (-1.0, ValueError, "min_std must be finite and > 0, got -1.0"),
        (0.0, ValueError, "min_std must be finite and > 0, got 0.0"),
        (float("inf"), ValueError, "min_std must be finite and > 0, got inf"),
        ("1e-12", TypeError, "min_std must be a real number, got str"),
    ],
)
def test_score_model_min_std_is_checked(min_std, err, message):
    with pytest.raises(err, match=f"^{re.escape(message)}$"):
        ds.ScoreModel(torch.nn.Identity(), ds.VPSDE(), min_std=min_std)


def test_score_model_floor_gives_the_finite_answer_at_t0_and_names_t():
    class Net(torch.nn.Module):
        def forward(self, x, t):
            return x

    model = ds.ScoreModel(Net(), ds.VPSDE(), "noise", min_std=0.5)
    x = torch.ones(2, 3)
    assert torch.equal(model(x, 0.0), torch.full_like(x, -2.0))  # -out / max(std(0) = 0, 0.5)
    with pytest.raises(
        TypeError, match=re.escape("t must be a float, a 0-d tensor or a (B,) tensor, got list")
    ):
        model(x, [0.0, 0.0])


# ---- 7. raw internal errors that now name the argument --------------------------------------------------


def test_bits_per_dim_data_range_and_dtype_are_named():
    sde = ds.VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 4, dtype=F64), 0.5).score_fn(sde)
    x_int = torch.zeros(2, 4, dtype=torch.long)
    for bad in [(-1, 0, 1), ("-1", "1"), 1.0, (True, 2.0), "ab"]:
        with pytest.raises(
            TypeError, match=f"^{re.escape(f'data_range must be a pair of numbers (lo, hi), got {bad!r}')}$"
        ):
            ds.bits_per_dim(sde, score, x_int, data_range=bad)
    for bad in [(1.0, 1.0), (0.0, float("nan"))]:
        with pytest.raises(
            ValueError, match=f"^{re.escape(f'data_range must be finite with lo < hi, got {bad!r}')}$"
        ):
            ds.bits_per_dim(sde, score, x_int, data_range=bad)
    with pytest.raises(
        TypeError,
        match=re.escape("dtype must be a floating-point dtype (e.g. torch.float32), got torch.int64"),
    ):
        ds.bits_per_dim(sde, score, x_int, dtype=torch.int64)
    # the data module shares the check
    from diffscore import data as D

    with pytest.raises(
        TypeError, match=re.escape("data_range must be a pair of numbers (lo, hi), got (-1, 0, 1)")
    ):
        D.bin_centers(torch.tensor([0]), 17, data_range=(-1, 0, 1))


_STATS_MESSAGE = "^stats must be a dict \\(it receives 'nfe'\\) or None, got list$"


def test_stats_that_is_not_a_dict_is_refused_before_any_work():
    sde = ds.VPSDE()
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(TypeError, match=_STATS_MESSAGE):
        ds.decode(sde, score, x, stats=[])  # used to be "list indices must be integers"
    with pytest.raises(TypeError, match=_STATS_MESSAGE):
        ds.encode(sde, score, x, stats=[])
    for method in sorted(METHODS):
        with pytest.raises(TypeError, match=_STATS_MESSAGE):
            ds.sample(sde, score, (2, 3), method=method, dtype=F64, stats=[])
        with pytest.raises(TypeError, match=_STATS_MESSAGE):
            ds.sample(sde, score, (2, 3), method=method, x_T=x, eps=1e-3, stats=[])
    from diffscore.sampling import annealed_langevin, annealed_langevin_inpaint, langevin_dynamics

    with pytest.raises(TypeError, match=_STATS_MESSAGE):
        langevin_dynamics(lambda x: -x, x, 0.1, 3, stats=[])
    with pytest.raises(TypeError, match=_STATS_MESSAGE):
        annealed_langevin(lambda x, s: -x, [1.0, 0.5], x, stats=[])
    with pytest.raises(TypeError, match=_STATS_MESSAGE):
        annealed_langevin_inpaint(lambda x, s: -x, [1.0, 0.5], x, torch.ones_like(x), stats=[])
    assert calls == []
    stats = {}
    ds.sample(sde, score, (2, 3), method="heun", num_steps=2, dtype=F64, stats=stats)
    assert stats == {"nfe": 3}  # 2 Heun steps, the last one Euler-only


def test_shape_and_dtype_of_a_prior_draw_are_named():
    sde = ds.VPSDE()
    score = GaussianMixture([1.0], torch.zeros(1, 2), 0.5).score_fn(sde)
    shape_msg = "^shape must be a tuple or list of ints \\(B, \\*event_shape\\), got int$"
    dtype_msg = re.escape("dtype must be a floating-point dtype (e.g. torch.float32), got torch.int64")
    with pytest.raises(TypeError, match=shape_msg):
        sde.prior_sample(4)
    with pytest.raises(TypeError, match=shape_msg):
        ds.sample(sde, score, 2)
    with pytest.raises(TypeError, match=dtype_msg):
        sde.prior_sample((4, 2), dtype=torch.long)
    with pytest.raises(TypeError, match=dtype_msg):
        ds.sample(sde, score, (4, 2), dtype=torch.int64)
    with pytest.raises(TypeError, match="^dtype must be a floating-point torch.dtype, got str$"):
        sde.prior_sample((4, 2), dtype="float32")
    with pytest.raises(ValueError, match=re.escape("shape must be (B, ...) of positive ints, got ()")):
        sde.prior_sample(())
    with pytest.raises(ValueError, match=re.escape("shape must be (B, ...) of positive ints, got (4, 0)")):
        sde.prior_sample([4, 0])
    z = sde.prior_sample(torch.Size([3, 2]), generator=gen(0), dtype=F64)
    assert torch.equal(z, torch.randn(3, 2, generator=gen(0), dtype=F64))  # prior_std = 1 for VP
