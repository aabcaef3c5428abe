"""`diffscore train --preset ncsn_digits` (NCSN, Song & Ermon 2019) and the PC flags of `diffscore sample`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffscore import distributed as dd
from diffscore.cli import main
from diffscore.data import load_digits, uniform_dequantize
from diffscore.evaluation import generate_samples
from diffscore.losses import dsm_loss
from diffscore.nets import from_config
from diffscore.score import ScoreModel
from diffscore.sde import VPSDE
from diffscore.training import TrainConfig, build_net, get_preset
from diffscore.training.ncsn import load_ncsn, ncsn_batch_loss

# a narrow RefineNet and few Langevin steps keep the run near 10 s on one core
SMOKE = [
    "batch_size=32",
    "net_options.nf=8",
    "ema_rate=0.5",
    "warmup=1",
    "test_limit=64",
    "num_samples=4",
    "sample_options.n_steps_each=5",
    "log_every=10",
]


@pytest.fixture(scope="module")
def ncsn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ncsn") / "run"
    argv = ["train", "--preset", "ncsn_digits", "--steps", "40", "--out", str(out), "--no-progress"]
    for item in SMOKE:
        argv += ["--set", item]
    assert main(argv) == 0
    return out


def test_ncsn_preset_trains_saves_and_samples(ncsn_run, capsys):
    out = ncsn_run
    assert (out / "samples.png").is_file()
    samples = load_file(out / "samples.safetensors")["samples"]
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()
    results = json.loads((out / "results.json").read_text())
    assert results["objective"] == "ncsn" and results["bits_per_dim"] is None
    # the loss of the fixed test batch (seeded dequantization, levels and noise) fell from initialisation
    assert results["test_ncsn_loss"] < results["initial_test_ncsn_loss"]

    net, metadata = load_ncsn(out / "model")
    config = TrainConfig.from_dict(metadata["train_config"])
    assert config.objective == "ncsn" and metadata["image_shape"] == [1, 8, 8]
    # the saved network reproduces the reported test loss: same draws, same float32 ops (1e-5 relative
    # allows for summation-order differences only)
    test = load_digits("test", seed=config.split_seed).images[: config.test_limit]
    gens = dd.sample_generators(config.seed + 12345, range(len(test)))
    x0 = uniform_dequantize(test, metadata["num_bins"], tuple(metadata["data_range"]), generator=gens)
    with torch.no_grad():
        loss = float(ncsn_batch_loss(net, x0, gens))
    assert loss == pytest.approx(results["test_ncsn_loss"], rel=1e-5)


def test_ncsn_loss_decreases_on_a_fixed_batch():
    """A few Adam steps of the preset's network on one fixed batch lower its NCSN loss (same draws)."""
    config = get_preset("ncsn_digits")
    torch.manual_seed(0)
    net = build_net(TrainConfig.from_dict({**config.to_dict(), "net_options": {"nf": 8}}), (1, 8, 8))
    x_int = load_digits("train").images[:32]
    gens = dd.sample_generators(7, range(32))
    x0 = uniform_dequantize(x_int, 17, (-1.0, 1.0), generator=gens)

    def fixed_loss() -> torch.Tensor:
        return ncsn_batch_loss(net, x0, dd.sample_generators(8, range(32)))

    with torch.no_grad():
        before = float(fixed_loss())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(15):
        opt.zero_grad()
        fixed_loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(fixed_loss())
    assert after < 0.9 * before  # fitting one fixed batch: at least a 10 % drop, well above noise (none)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small MLP score model trained for 30 DSM steps on the digits, saved like `diffscore train` does."""
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(from_config({"name": "mlp", "dim": 64, "hidden": 32, "depth": 2}), sde, "noise")
    x0 = uniform_dequantize(load_digits("train").images[:256], 17, (-1.0, 1.0), generator=torch.Generator())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        dsm_loss(model, sde, x0).backward()
        opt.step()
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.eval().save_pretrained(
        out, metadata={"num_bins": 17, "data_range": [-1, 1], "image_shape": [1, 8, 8]}
    )
    return out, model


def test_sample_pc_flags_reach_the_sampler(tiny_model, tmp_path):
    directory, model = tiny_model
    common = ["sample", "--model", str(directory), "--num", "3", "--method", "pc", "--steps", "20"]
    flags = ["--predictor", "ancestral", "--corrector", "none", "--snr", "0.2"]
    assert main([*common, *flags, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").is_file()
    got = load_file(tmp_path / "a.safetensors")["samples"]
    # the same draw through the library with the options spelled out: identical (same generators)
    want, _ = generate_samples(
        model,
        3,
        (1, 8, 8),
        17,
        (-1.0, 1.0),
        "pc",
        0,
        num_steps=20,
        predictor="ancestral",
        corrector="none",
        snr=0.2,
    )
    assert torch.equal(got, want)
    # the default predictor / corrector (reverse diffusion + Langevin) gives other samples: flags matter
    assert main([*common, "--out", str(tmp_path / "b.png")]) == 0
    assert not torch.allclose(load_file(tmp_path / "b.safetensors")["samples"], got)
    # two corrector steps at snr 0.2 differ from one
    extra = ["--corrector", "langevin", "--snr", "0.2"]
    assert main([*common, *extra, "--corrector-steps", "2", "--out", str(tmp_path / "c.png")]) == 0
    assert main([*common, *extra, "--corrector-steps", "1", "--out", str(tmp_path / "d.png")]) == 0
    c, d = (load_file(tmp_path / f"{n}.safetensors")["samples"] for n in "cd")
    assert torch.isfinite(c).all() and not torch.allclose(c, d)
