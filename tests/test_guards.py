"""The numerical guard: a state or score past any plausible size raises, naming the time, everywhere.

Plausible: ``|x| <= 1e4`` prior stds, and for the torchsde / torchdiffeq paths ``|score| std(t)^2 <=
2 x`` that (Tweedie's formula with a plausible state and denoised estimate). A score of 1e6 or 1e30 is
far outside what any trained model returns; before issue 10 it produced garbage silently (bits/dim
3.7e11).
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import diffscore as ds
import diffscore.likelihood as likelihood
from diffscore._checks import FiniteMonitor, StepSizeUnderflowError
from diffscore.sampling import METHODS, annealed_langevin_inpaint, langevin_dynamics

F64 = torch.float64
SDES = {"vp": ds.VPSDE(), "ve": ds.VESDE(), "subvp": ds.SubVPSDE()}
FIXED_STEP = {"sde", "pc", "heun", "dpm_solver", "dpmpp", "unipc", "sde_dpmpp_2m", "sde_dpmpp_3m"}


def _entry_points(sde, value):
    """Every public entry point, called with a score that returns ``value`` everywhere (few steps)."""

    def score(x, t):
        return torch.full_like(x, value)

    def score_sigma(x, sigma):
        return torch.full_like(x, value)

    x = torch.zeros(4, 3, dtype=F64)
    mask = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    calls = {
        f"sample[{m}]": (
            lambda m=m: ds.sample(
                sde, score, (4, 3), method=m, generator=torch.Generator().manual_seed(0), dtype=F64,
                **(dict(num_steps=10) if m in FIXED_STEP else {}),
            )
        )
        for m in METHODS
    }  # fmt: skip
    calls.update(
        encode=lambda: ds.encode(sde, score, x),
        decode=lambda: ds.decode(sde, score, x),
        log_likelihood=lambda: ds.log_likelihood(sde, score, x).logp,
        bits_per_dim=lambda: ds.bits_per_dim(sde, score, torch.zeros(4, 3, dtype=torch.long), dtype=F64).bpd,
        inpaint=lambda: ds.inpaint(sde, score, x, mask, num_steps=10),
        colorize=lambda: ds.colorize(sde, score, torch.zeros(4, 1, 2, 2, dtype=F64), num_steps=10),
        # NCSN samplers with their default 100 steps per level
        annealed_langevin=lambda: ds.annealed_langevin(score_sigma, [1.0, 0.1], x),
        annealed_langevin_inpaint=lambda: annealed_langevin_inpaint(score_sigma, [1.0, 0.1], x, mask),
        langevin_dynamics=lambda: langevin_dynamics(lambda y: torch.full_like(y, value), x, 0.1, 100),
    )
    return calls


@pytest.mark.parametrize("value", [1e6, 1e30])
@pytest.mark.parametrize("name", list(SDES))
def test_an_absurd_score_makes_every_entry_point_raise(name, value):
    for entry, call in _entry_points(SDES[name], value).items():
        with pytest.raises(FloatingPointError, match=r"(t = |sigma = |step )"):
            call()
            pytest.fail(f"{entry} returned")  # pragma: no cover


def test_the_message_names_the_time_of_the_first_implausible_state():
    sde = ds.VPSDE()

    def score(x, t):  # plausible until t = 0.5, then 1e6
        return torch.where((t < 0.5)[:, None], torch.full_like(x, 1e6), -x)

    # 10 steps uniform in t: the score first goes wrong at t_5 = 0.4006; the bad state appears at t_5
    # (PC: its corrector step there) or at t_6 = 0.3007 (the multistep solvers' update from t_5)
    for method in ("pc", "dpmpp", "unipc", "sde_dpmpp_2m", "sde_dpmpp_3m"):
        with pytest.raises(FloatingPointError, match=r"implausibly large .*state at t = 0\.(4006|3007)"):
            ds.sample(sde, score, (2, 3), method=method, num_steps=10, grid="time_uniform", dtype=F64)
    with pytest.raises(FloatingPointError, match=r"t = 0\.4"):  # the torchsde path checks every call
        ds.sample(sde, score, (2, 3), method="sde", num_steps=10, dtype=F64)


def test_plausible_large_data_pass():
    # data at 1000 (VP, prior std 1): far from the prior but within 1e4 prior stds; the exact score of
    # N(1000, 1) then reaches ~1e3 / std^2, within the score bound. Nothing may raise.
    sde = ds.VPSDE()
    oracle = ds.oracles.GaussianMixture([1.0], torch.full((1, 3), 1000.0, dtype=F64), 1.0)
    x_T = oracle.sample(
        4, torch.Generator().manual_seed(0), sde=sde, t=sde.T
    )  # p_T is N(6.7, 1), not N(0, 1)
    x = ds.sample(sde, oracle.score_fn(sde), (4, 3), method="dpmpp", num_steps=20, x_T=x_T)
    assert float((x - 1000).abs().max()) < 6  # 12 draws of N(1000, 1): 6 standard deviations
    ds.encode(sde, oracle.score_fn(sde), x)


def test_monitor_flags_nan_inf_and_the_limit_without_syncing_per_step():
    m = FiniteMonitor("state", limit=10.0)
    m.update(torch.ones(3), 0)
    m.update(torch.tensor([1.0, -11.0]), 1)
    m.update(torch.tensor([float("nan")]), 2)
    with pytest.raises(FloatingPointError, match=r"t = 0\.5 \(step 1\)"):
        m.check([1.0, 0.5, 0.25])
    m = FiniteMonitor("state")  # no limit: finiteness only
    m.update(torch.tensor([1e300], dtype=F64), 0)
    m.check([1.0])
    m.update(torch.tensor([float("inf")], dtype=F64), 1)
    with pytest.raises(FloatingPointError, match="step 1"):
        m.check([1.0, 0.5])


def test_torchdiffeq_step_underflow_becomes_the_librarys_error(monkeypatch):
    # torchdiffeq asserts "t0 + dt > t0" ("underflow in dt ..."); the library raises its own error naming
    # the time of the last evaluation and the step. The solver is replaced by one that evaluates the
    # dynamics once at t = 0.25 and then fails as torchdiffeq does.
    def fake_odeint(func, y0, ts, **kwargs):
        func(torch.tensor(0.25, dtype=y0.dtype), y0)
        raise AssertionError("underflow in dt 1.3877787807814457e-17")

    monkeypatch.setattr(torchdiffeq, "odeint", fake_odeint)
    sde, x = ds.VPSDE(), torch.zeros(2, 3, dtype=F64)
    for call in (
        lambda: ds.encode(sde, lambda y, t: -y, x),
        lambda: ds.sample(sde, lambda y, t: -y, (2, 3), method="ode", dtype=F64),
        lambda: ds.log_likelihood(sde, lambda y, t: -y, x),
    ):
        with pytest.raises(StepSizeUnderflowError, match=r"t = 0\.25 \(dt = 1\.38") as err:
            call()
        assert isinstance(err.value, FloatingPointError)
    assert likelihood.torchdiffeq.odeint is fake_odeint  # the library goes through torchdiffeq.odeint


def test_sde_adaptive_step_budget_has_a_clear_error():
    with pytest.raises(RuntimeError, match=r"max_iters = 3 .* still at t in \[0\.9"):
        ds.sample(ds.VPSDE(), lambda x, t: -x, (2, 3), method="sde_adaptive", max_iters=3, dtype=F64)
