"""GPU checks of the fast samplers and perf options (skipped without CUDA).

* Device independence: heun / dpm_solver / dpmpp / unipc / sde_adaptive on CUDA give the CPU answer
  (float64).
* No host synchronisation inside fixed-step loops: with ``torch.cuda.set_sync_debug_mode("warn")``
  every synchronising call warns; the count must not grow with the number of steps (the time grid is
  built and the NaN check read once per solve). sde_adaptive may sync once per iteration.
* ``perf.optimize`` with fp16 / bf16 autocast and channels-last on the small NCSN++: output in the
  input's dtype, close to the float32 network.
* The discrete-data likelihoods on CUDA (bin-posterior model, closed-form divergence): the ELBO and the
  exact ODE with truncated-normal dequantization give the CPU answer (float64).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import diffscore as ds
from diffscore import nets
from diffscore.oracles import GaussianMixture
from diffscore.perf import optimize

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

F64 = torch.float64


def oracle(device, dtype=F64, d=16):
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.rand(3, d, generator=g, dtype=F64) - 1
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, 0.1).to(device, dtype)


@pytest.mark.parametrize("method", ["heun", "dpm_solver", "dpmpp", "unipc"])
def test_fixed_step_samplers_match_cpu(method):
    sde = ds.VPSDE()
    x_T = sde.prior_sample((32, 16), torch.Generator().manual_seed(1), dtype=F64)
    cpu = ds.sample(sde, oracle("cpu").score_fn(sde), x_T.shape, method=method, x_T=x_T, num_steps=8)
    gpu = ds.sample(sde, oracle("cuda").score_fn(sde), x_T.shape, method=method, x_T=x_T.cuda(), num_steps=8)
    assert gpu.device.type == "cuda"
    # float64 on both devices: only reduction order differs
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


def count_syncs(fn) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "method", ["heun", "dpm_solver", "dpmpp", "unipc", "sde_dpmpp_2m", "sde_dpmpp_3m", "pc"]
)
def test_no_host_sync_per_step(method):
    sde = ds.VESDE()
    score = oracle("cuda", torch.float32).score_fn(sde)
    x_T = sde.prior_sample((64, 16), device="cuda")

    def run(steps: int) -> None:
        ds.sample(sde, score, x_T.shape, method=method, x_T=x_T, num_steps=steps)

    run(4)  # warm-up (lazy CUDA initialisation syncs)
    few, many = count_syncs(lambda: run(4)), count_syncs(lambda: run(16))
    assert many == few, (few, many)


def test_sde_adaptive_syncs_at_most_once_per_iteration():
    sde = ds.VPSDE()
    score = oracle("cuda", torch.float32).score_fn(sde)
    x_T = sde.prior_sample((64, 16), device="cuda")
    gen = torch.Generator("cuda").manual_seed(0)  # draws on the device: no host-to-device copies
    stats = {}
    kw = dict(x_T=x_T, eps=1e-3, rtol=0.05, stats=stats)
    syncs = count_syncs(lambda: ds.sample(sde, score, x_T.shape, "sde_adaptive", gen, **kw))
    # one per iteration (the stopping / NaN test), the gate's check of x_T, one to start and a few to
    # read the statistics
    assert syncs <= stats["iterations"] + 5, (syncs, stats)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_and_channels_last_on_small_ncsnpp(dtype):
    torch.manual_seed(0)
    net = nets.build("ncsnpp_small").cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    t = torch.rand(8, device="cuda")
    with torch.no_grad():
        want = net(x, t)
        got = optimize(net, autocast_dtype=dtype, channels_last=True)(x, t)
    assert got.dtype == torch.float32
    # fp16 keeps ~3 significant digits, bf16 ~2; a deep U-Net accumulates a few of those roundings
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert float((got - want).abs().max() / want.abs().max()) < tol


def test_heun_with_optimized_network_on_gpu():
    """The network path end to end: ScoreModel(optimize(net)) inside heun, close to float32."""
    torch.manual_seed(0)
    sde = ds.VPSDE()
    net = nets.build("ncsnpp_small").cuda().eval()
    x_T = sde.prior_sample((4, 3, 32, 32), torch.Generator("cuda").manual_seed(2), device="cuda")
    plain = ds.sample(sde, ds.ScoreModel(net, sde), x_T.shape, method="heun", x_T=x_T, num_steps=4)
    fast = ds.ScoreModel(optimize(net, autocast_dtype=torch.bfloat16, channels_last=True), sde)
    mixed = ds.sample(sde, fast, x_T.shape, method="heun", x_T=x_T, num_steps=4)
    assert torch.isfinite(mixed).all()
    # an untrained network: only check that bf16 rounding stays a small fraction of the sample's scale
    assert float((mixed - plain).abs().max() / plain.abs().max()) < 0.1


def test_discrete_likelihoods_match_cpu():
    from diffscore.nets import BinPosteriorNet
    from diffscore.sde import sde_to_config

    sde = ds.VPSDE()
    torch.manual_seed(0)
    net = BinPosteriorNet(16, 17, (-1.0, 1.0), sde_to_config(sde), hidden=32)
    torch.nn.init.normal_(net.fc_out.weight, std=0.1)
    x_int = torch.randint(0, 17, (4, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    out = {}
    for device in ("cpu", "cuda"):
        model = ds.ScoreModel(net.to(device, F64).eval(), sde, "noise", event_shape=(1, 4, 4))
        x = x_int.to(device)
        # CPU generators on both devices: the same noise (drawn on the CPU, then moved)
        gens = [torch.Generator().manual_seed(i) for i in range(4)]
        elbo = ds.likelihood_bound(sde, model, x, 17, (-1.0, 1.0), n_samples=8, generator=gens, dtype=F64)
        gens = [torch.Generator().manual_seed(i) for i in range(4)]
        q = ds.TruncatedNormalDequantizer(0.01)
        ode = ds.dequantized_bits_per_dim(
            sde, model, x, 17, (-1.0, 1.0), q, generator=gens, dtype=F64, rtol=1e-7, atol=1e-7
        )
        assert elbo.bpd.device.type == ode.bpd.device.type == device
        out[device] = torch.stack([elbo.bpd, ode.bpd]).cpu()
    # float64 on both devices: only reduction order differs (1e-7 is the ODE's tolerance)
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=1e-6, atol=1e-6)
