"""Tests of diffscore.nets: parameter counts, forward/backward, configs, conditioning, FIR, RefineNet."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffscore._checks import bcast
from diffscore.nets import PRESETS, NCSNRefineNet, build, from_config, num_parameters
from diffscore.nets.layers import FIRConv2d, downsample_2d, fir_kernel_2d, upsample_2d

# Song et al. 2021, Table 3 / App. H: parameter counts of the CIFAR-10 configurations.
PUBLISHED = {
    "ncsnpp_cifar10": 62.76e6,
    "ncsnpp_cifar10_deep": 107.59e6,
    "ddpmpp_cifar10": 61.80e6,
    "ddpmpp_cifar10_deep": 106.63e6,
}
SMALL = ["ddpmpp_digits", "ncsnpp_small", "ncsn_digits", "mlp_2d"]
IMAGE = {"ddpmpp_digits": (1, 8), "ncsnpp_small": (3, 32), "ncsn_digits": (1, 8), "ncsn_cifar10": (3, 32)}


def _inputs(net, preset: str, batch: int, size: int | None = None, seed: int = 0):
    """A random input batch and a time (or sigma) per sample for ``preset``."""
    g = torch.Generator().manual_seed(seed)
    if preset.startswith("mlp"):
        x = torch.randn(batch, net.dim, generator=g)
    else:
        channels, native = IMAGE.get(preset, (3, 32))
        x = torch.randn(batch, channels, size or native, size or native, generator=g)
    if isinstance(net, NCSNRefineNet):
        t = net.sigmas[torch.arange(batch) % len(net.sigmas)].clone()
    else:
        t = torch.rand(batch, generator=g)
    return x, t


# ---- parameter counts ----------------------------------------------------------------------------
def test_preset_parameter_counts():
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):  # no memory, no init work
            counts[name] = num_parameters(build(name))
    for name, published in PUBLISHED.items():
        # the brief's tolerance: within 1% of the published count
        assert abs(counts[name] / published - 1) < 0.01, (name, counts[name])
    assert 0.5e6 <= counts["ddpmpp_digits"] <= 2e6
    assert 1e6 <= counts["ncsnpp_small"] <= 10e6
    # deep = 4 more res blocks per level on each path: strictly more parameters than the base model
    assert counts["ncsnpp_cifar10_deep"] > counts["ncsnpp_cifar10"]


def test_num_parameters_matches_closed_form_for_mlp():
    net = from_config({"name": "mlp", "dim": 3, "hidden": 8, "depth": 2, "time_embed_dim": 4})
    lin = lambda i, o: i * o + o  # noqa: E731
    expected = lin(4, 8) + lin(8, 8) + lin(3, 8) + 2 * 3 * lin(8, 8) + lin(8, 3)
    assert num_parameters(net) == expected


# ---- forward / backward --------------------------------------------------------------------------
def _forward_backward(preset: str, batch: int, size: int | None = None):
    torch.manual_seed(0)
    net = build(preset)
    x, t = _inputs(net, preset, batch, size)
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        # every parameter is used, so each must receive a finite, non-zero gradient
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    return num_parameters(net)


@pytest.mark.parametrize("preset", SMALL + ["ncsn_cifar10"])
def test_small_presets_forward_backward_32(preset):
    # checked inside: output shape/dtype/finite, a finite non-zero gradient for every parameter
    assert _forward_backward(preset, batch=2, size=32) > 0


@pytest.mark.parametrize("preset", ["ddpmpp_digits", "ncsn_digits"])
def test_digit_presets_native_8x8(preset):
    # checked inside: output shape/dtype/finite, a finite non-zero gradient for every parameter
    assert _forward_backward(preset, batch=2, size=8) > 0


@pytest.mark.parametrize("preset", ["ncsnpp_cifar10", "ddpmpp_cifar10"])
def test_cifar10_presets_forward_backward(preset):
    # checked inside: output shape/dtype/finite, a finite non-zero gradient for every parameter
    assert _forward_backward(preset, batch=1) > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ncsnpp_cifar10_deep", "ddpmpp_cifar10_deep"])
def test_deep_presets_forward_backward(preset):
    # checked inside: output shape/dtype/finite, a finite non-zero gradient for every parameter
    assert _forward_backward(preset, batch=1) > 0


VARIANTS = [
    dict(progressive="output_skip", progressive_input="input_skip"),
    dict(progressive="residual", progressive_input="input_skip", progressive_combine="cat"),
    dict(progressive="residual", resblock_type="ddpm"),
    dict(progressive="output_skip", resblock_type="ddpm", fir=False),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, progressive_input="input_skip"),
    dict(resblock_type="ddpm", resamp_with_conv=False, embedding_type="positional", time_scale=999.0),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_ncsnpp_variants_forward_backward_and_config(variant):
    torch.manual_seed(0)
    net = build("ncsnpp_small", nf=16, image_size=16, attn_resolutions=(8,), **variant)
    x, t = _inputs(net, "ncsnpp_small", 2, 16)
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        for p in net.parameters()
    )
    _check_rebuild(net, x, t)


# ---- configs -------------------------------------------------------------------------------------
def _check_rebuild(net, x, t):
    config = json.loads(json.dumps(net.config))
    assert config == net.config  # JSON-serialisable without loss
    clone = from_config(config)
    assert clone.config == net.config
    clone.load_state_dict(net.state_dict(), strict=True)
    net.eval()
    clone.eval()
    with torch.no_grad():
        # same weights, same ops, same inputs: bitwise equal
        torch.testing.assert_close(clone(x, t), net(x, t), rtol=0, atol=0)
    return clone


@pytest.mark.parametrize("preset", SMALL)
def test_from_config_rebuilds_same_network(preset):
    torch.manual_seed(1)
    net = build(preset, init_scale=1.0) if PRESETS[preset][0] == "ncsnpp" else build(preset)
    x, t = _inputs(net, preset, 2)
    clone = _check_rebuild(net, x, t)  # asserts the JSON round trip and bitwise-equal outputs
    assert clone is not net and clone.config == net.config


def test_presets_are_not_mutated_by_overrides():
    before = json.dumps(PRESETS["ddpmpp_digits"][1], default=list)
    net = build("ddpmpp_digits", nf=16, dropout=0.0)
    assert net.config["nf"] == 16 and net.config["dropout"] == 0.0
    assert json.dumps(PRESETS["ddpmpp_digits"][1], default=list) == before


# ---- time conditioning ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["ddpmpp_digits", "ncsnpp_small", "mlp_2d"])
def test_time_embedding_conditions_output(preset):
    torch.manual_seed(2)
    # init_scale = 1 replaces the near-zero init of the output layers, so the output is O(1)
    net = build(preset, init_scale=1.0) if preset != "mlp_2d" else build(preset)
    net.eval()
    x, _ = _inputs(net, preset, 3, size=8 if preset == "ddpmpp_digits" else 32)
    with torch.no_grad():
        out_a = net(x, torch.full((3,), 0.2))
        out_b = net(x, torch.full((3,), 0.8))
        out_a2 = net(x, torch.full((3,), 0.2))
        mixed = net(x, torch.tensor([0.2, 0.8, 0.2]))
        single = torch.cat([net(x[i : i + 1], torch.tensor([tt])) for i, tt in enumerate([0.2, 0.8, 0.2])])
    torch.testing.assert_close(out_a2, out_a, rtol=0, atol=0)  # deterministic in eval mode
    # different t must change the output by far more than float32 round-off (~1e-6 relative)
    assert (out_a - out_b).norm() > 1e-3 * out_a.norm()
    # each sample sees its own t and no batch-mate (GroupNorm/InstanceNorm are per sample);
    # tolerance: float32 round-off of different batch sizes, ~1e-6 relative
    torch.testing.assert_close(mixed, single, rtol=1e-4, atol=1e-5 * float(out_a.abs().max()))
    torch.testing.assert_close(mixed[1], out_b[1], rtol=1e-4, atol=1e-5 * float(out_a.abs().max()))


@pytest.mark.parametrize("progressive_input", ["input_skip", "residual"])
def test_center_input_maps_unit_data_to_symmetric(progressive_input, tmp_path):
    # center_input=True is the same function as the uncentred network applied to 2x - 1 (the input
    # pyramid included), bitwise; the option survives the config / save_pretrained round trip
    torch.manual_seed(4)
    kw = dict(
        nf=16, image_size=16, attn_resolutions=(8,), init_scale=1.0, progressive_input=progressive_input
    )
    plain = build("ncsnpp_small", **kw).eval()
    centred = build("ncsnpp_small", center_input=True, **kw).eval()
    centred.load_state_dict(plain.state_dict())
    x, t = torch.rand(2, 3, 16, 16), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(centred(x, t), plain(2 * x - 1, t), rtol=0, atol=0)
        assert (centred(x, t) - plain(x, t)).norm() > 1e-2 * plain(x, t).norm()
    assert centred.config["center_input"] is True and plain.config["center_input"] is False
    from diffscore import ScoreModel
    from diffscore.sde import VESDE

    ScoreModel(centred, VESDE(), "scaled").save_pretrained(tmp_path / "m")
    loaded = ScoreModel.from_pretrained(tmp_path / "m")
    assert loaded.net.center_input
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, t), centred(x, t), rtol=0, atol=0)
    # a config written before the option existed loads as center_input=False
    old = {k: v for k, v in plain.config.items() if k != "center_input"}
    assert from_config(old).config == plain.config


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_raise_naming_the_argument():
    torch.manual_seed(3)
    unet, ncsn, mlp = build("ddpmpp_digits"), build("ncsn_digits"), build("mlp_2d")
    x = torch.randn(2, 1, 8, 8)
    t = torch.rand(2)
    with pytest.raises(ValueError, match="x has 3 channels"):
        unet(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="x has 3 channels"):
        ncsn(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        unet(torch.randn(2, 64), t)
    with pytest.raises(ValueError, match="x must have H and W divisible by 2"):
        unet(torch.randn(2, 1, 7, 7), t)
    for bad_t in (torch.rand(2, 1), torch.tensor(0.5), torch.rand(3)):
        with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
            unet(x, bad_t)
        with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
            mlp(torch.randn(2, 2), bad_t)
    with pytest.raises(ValueError, match=r"sigma must have shape \(B,\)"):
        ncsn(x, torch.rand(2, 1))
    with pytest.raises(TypeError, match="t must be a floating-point"):
        unet(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"x must have shape \(B, \*shape\) with prod\(shape\) = dim = 2"):
        mlp(torch.randn(2, 3), t)
    with pytest.raises(ValueError, match="preset must be one of .*ncsnpp_cifar10"):
        build("ncsnpp_cifar100")
    with pytest.raises(ValueError, match=r"config\['name'\] must be one of"):
        from_config({"name": "unet"})
    with pytest.raises(ValueError, match="progressive must be one of"):
        build("ncsnpp_small", progressive="skip")
    with pytest.raises(ValueError, match="attn_resolutions must be among"):
        build("ddpmpp_digits", attn_resolutions=(16,))
    with pytest.raises(ValueError, match="sigmas must be"):
        NCSNRefineNet(1, 8, [1.0, -0.1])
    with pytest.raises(TypeError):
        build("mlp_2d", channels=3)


# ---- dtypes and devices --------------------------------------------------------------------------
class _DtypeSpy(TorchDispatchMode):
    """Records the dtype of every tensor produced by an ATen op."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.dtypes |= {o.dtype for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)}
        return out


@pytest.mark.parametrize("preset", SMALL)
def test_float32_creates_no_float64_and_float64_works(preset):
    torch.manual_seed(4)
    net = build(preset)
    x, t = _inputs(net, preset, 2)
    t64 = t.double()  # a float64 t must not leak float64 into a float32 net
    with torch.no_grad(), _DtypeSpy() as spy:
        out32 = net(x, t64)
    assert out32.dtype == torch.float32
    assert torch.float64 not in spy.dtypes
    net.double()
    with torch.no_grad():
        out64 = net(x.double(), t64)
    assert out64.dtype == torch.float64
    # same weights in both precisions: float32 round-off through ~20 layers, ~1e-5 relative
    torch.testing.assert_close(out64.float(), out32, rtol=1e-3, atol=1e-4 * float(out64.abs().max()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["ncsnpp_small", "ncsn_digits", "mlp_2d"])
def test_cuda_matches_cpu(preset):
    torch.manual_seed(5)
    net = build(preset, init_scale=1.0) if PRESETS[preset][0] == "ncsnpp" else build(preset)
    net.eval()
    x, t = _inputs(net, preset, 2)
    with torch.no_grad():
        ref = net(x, t)
        out = net.cuda()(x.cuda(), t.cuda()).cpu()
    # TF32 / different kernels: ~1e-3 relative on GPU
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


# ---- FIR resampling ------------------------------------------------------------------------------
K = fir_kernel_2d((1, 3, 3, 1)).double()


def test_fir_kernel_normalised():
    torch.testing.assert_close(
        K, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])).double() / 64
    )


def test_fir_resampling_keeps_a_constant_image():
    c = 1.7
    x = torch.full((2, 3, 8, 8), c, dtype=torch.float64)
    up = upsample_2d(x, K)
    down = downsample_2d(x, K)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    # interior: the even and odd phases of [1, 3, 3, 1] / 8 each sum to 1/2, so the constant is exact
    torch.testing.assert_close(
        up[..., 1:-1, 1:-1], torch.full_like(up[..., 1:-1, 1:-1], c), rtol=1e-15, atol=0
    )
    torch.testing.assert_close(
        down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], c), rtol=1e-15, atol=0
    )
    # border (zero padding, as the reference upfirdn2d): per axis, the edge output of up keeps
    # 2 * 3/8 = 3/4 of the constant, the edge output of down keeps (3 + 3 + 1) / 8 = 7/8
    edge_up = torch.tensor([0.75] + [1.0] * 14 + [0.75], dtype=torch.float64)
    edge_down = torch.tensor([0.875, 1.0, 1.0, 0.875], dtype=torch.float64)
    torch.testing.assert_close(up[0, 0], c * torch.outer(edge_up, edge_up), rtol=1e-15, atol=0)
    torch.testing.assert_close(down[0, 0], c * torch.outer(edge_down, edge_down), rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fir_down_up_is_close_to_identity_for_smooth_images(dtype):
    # down(up(.)) is the separable filter [3, 10, 3] / 16 on each axis (the even taps of
    # 2 * [1,3,3,1] * [1,3,3,1] / 64). A separable cosine of frequency w is an eigenfunction with
    # eigenvalue g^2, g = (10 + 6 cos w) / 16, so the error is (1 - g^2) |x| <= (3/4)(1 - cos w) |x|,
    # about 0.056 for w = 2 pi * 2 / 32: small for smooth x, O(w^2).
    n = 32
    i = torch.arange(n, dtype=torch.float64)
    w = 2 * math.pi * 2 / n
    x = (torch.cos(w * i + 0.3)[:, None] * torch.cos(w * i + 1.1)[None, :]).to(dtype)[None, None]
    k = K.to(dtype)
    y = downsample_2d(upsample_2d(x, k), k)
    g = (10 + 6 * math.cos(w)) / 16
    inner = (..., slice(2, -2), slice(2, -2))  # away from the zero-padded border
    tol = 1e-12 if dtype == torch.float64 else 1e-6  # round-off of a few dozen multiply-adds
    torch.testing.assert_close(y[inner], g * g * x[inner], rtol=0, atol=tol)
    bound = 0.75 * (1 - math.cos(w))
    assert float((y - x)[inner].abs().max()) <= bound + tol
    assert bound < 0.06


@pytest.mark.parametrize("up", [True, False])
def test_fir_conv_on_constant_image(up):
    torch.manual_seed(6)
    conv = FIRConv2d(2, 3, 3, up=up, down=not up).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.full((1, 2, 8, 8), 0.5, dtype=torch.float64)
    y = conv(x)
    assert y.shape == ((1, 3, 16, 16) if up else (1, 3, 4, 4))
    # interior of a conv fused with a DC-preserving resampler: 0.5 * sum of weights + bias, per channel
    expected = 0.5 * conv.weight.sum(dim=(1, 2, 3)) + conv.bias
    interior = y[..., 2:-2, 2:-2] if up else y[..., 1:-1, 1:-1]
    torch.testing.assert_close(
        interior, expected.reshape(1, -1, 1, 1).expand_as(interior), rtol=1e-12, atol=1e-12
    )


# ---- RefineNet noise-level selection ----------------------------------------------------------
def test_refinenet_picks_nearest_level_in_log_space():
    net = build("ncsn_digits")
    sigmas = net.sigmas
    n = len(sigmas)
    torch.testing.assert_close(net.level_index(sigmas), torch.arange(n))
    # levels are a factor r = 100^(1/9) ~ 1.67 apart; the log-midpoint is sqrt(r) ~ 1.29
    r = float(sigmas[0] / sigmas[1])
    assert net.level_index(sigmas[1:] * r**0.4).tolist() == list(range(1, n))
    assert net.level_index(sigmas[1:] * r**0.6).tolist() == list(range(0, n - 1))
    assert net.level_index(torch.tensor([1e3, 1e-6])).tolist() == [0, n - 1]


def test_refinenet_output_at_sigma_i_matches_level_i():
    torch.manual_seed(7)
    net = build("ncsn_digits").eval()
    with torch.no_grad():  # spread the per-level CIN++ parameters so levels are clearly distinct
        for module in net.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
    x = torch.randn(4, 1, 8, 8)
    levels = [0, 3, 7, 9]
    sigma = net.sigmas[levels].clone()
    state = net.state_dict()
    with torch.no_grad():
        out = net(x, sigma)
        for b, i in enumerate(levels):
            # an independent one-level network holding row i of every level table
            single = NCSNRefineNet(1, 32, [float(net.sigmas[i])], dilations=(1, 2)).eval()
            single.load_state_dict(
                {
                    k: (v[i : i + 1] if k.endswith("embed.weight") or k == "sigmas" else v)
                    for k, v in state.items()
                }
            )
            ref = single(x[b : b + 1], sigma[b : b + 1])
            # float32 round-off of a batch of 4 vs 1, ~1e-6 relative
            torch.testing.assert_close(out[b : b + 1], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        # a different level gives a different output, and a nearby sigma the same one
        other = net(x[:1], net.sigmas[1:2])
        assert (other - out[:1]).norm() > 1e-2 * out[:1].norm()
        torch.testing.assert_close(net(x[:1], sigma[:1] * 1.1), out[:1], rtol=1e-4, atol=1e-6)


def test_refinenet_scale_by_sigma_divides_by_the_level():
    torch.manual_seed(8)
    scaled = build("ncsn_digits").eval()
    plain = build("ncsn_digits", scale_by_sigma=False).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(3, 1, 8, 8)
    sigma = scaled.sigmas[[0, 4, 9]].clone()
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, sigma) * bcast(sigma, x), plain(x, sigma), rtol=1e-5, atol=1e-6)
