"""diffscore.perf.optimize: same function as the plain network, and each option really applied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffscore as ds
from diffscore.perf import OptimizedNet, optimize


class TinyConvNet(nn.Module):
    """x (B, C, H, W), t (B,) -> like x; small enough for CPU tests."""

    def __init__(self, channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.temb = nn.Linear(1, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        self.config = {"name": "tiny", "channels": channels, "width": width}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + self.temb(t[:, None]).reshape(x.shape[0], -1, 1, 1)
        return self.conv_out(torch.nn.functional.silu(h))


def inputs(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.rand(b, generator=g)


def test_no_option_returns_the_network_itself():
    net = TinyConvNet()
    assert optimize(net) is net


def test_channels_last_same_values_and_layout():
    net = TinyConvNet()
    x, t = inputs()
    want = net(x, t)
    opt = optimize(net, channels_last=True)
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    net.conv_in.register_forward_hook(
        lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last))
    )
    got = opt(x, t)
    assert seen == [True]
    # a different convolution kernel ordering: float32 round-off only
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # attributes and state dict of the wrapped network stay reachable and unprefixed under .net
    assert opt.config == net.config
    assert set(opt.net.state_dict()) == set(TinyConvNet().state_dict())


def test_bf16_autocast_runs_convolutions_in_bf16_and_returns_input_dtype():
    net = TinyConvNet()
    x, t = inputs(1)
    want = net(x, t)
    dtypes = []
    net.conv_out.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    out = optimize(net, autocast_dtype=torch.bfloat16)(x, t)
    assert dtypes[-1] == torch.bfloat16 and out.dtype == torch.float32
    # bf16 keeps 8 significant bits: relative error of a short conv stack a few 2^-8
    err = (out - want).abs().max() / want.abs().max()
    assert 0 < err < 3e-2


class MLPScore(nn.Module):
    """x (B, 2), t (B,) -> (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, t[:, None]], 1))


def test_compile_goes_through_the_backend_and_samples_like_eager():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):  # records each compiled graph and runs it eagerly
        graphs.append(gm)
        return gm.forward

    sde, net = ds.VPSDE(), MLPScore()
    opt = optimize(net, compile=True, compile_options={"backend": backend})
    x_T = sde.prior_sample((6, 2), torch.Generator().manual_seed(3))
    want = ds.sample(sde, ds.ScoreModel(net, sde), (6, 2), method="heun", x_T=x_T, num_steps=4)
    got = ds.sample(sde, ds.ScoreModel(opt, sde), (6, 2), method="heun", x_T=x_T, num_steps=4)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert len(graphs) == 1  # one graph for 7 evaluations of the same shape: no recompilation


def test_compile_with_inductor():
    """The default backend (inductor; C++ on a CPU): one small compile, same values as eager."""
    torch._dynamo.reset()
    net = MLPScore()
    x, t = torch.randn(6, 2, generator=torch.Generator().manual_seed(4)), torch.rand(6)
    # inductor may fuse and reorder float32 operations
    torch.testing.assert_close(optimize(net, compile=True)(x, t), net(x, t), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(TypeError, match="net"):
        optimize(lambda x, t: x, channels_last=True)
    with pytest.raises(ValueError, match="autocast_dtype"):
        optimize(TinyConvNet(), autocast_dtype=torch.float64)
    with pytest.raises(TypeError, match="compile"):
        OptimizedNet(TinyConvNet(), compile="yes")
