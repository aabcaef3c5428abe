"""Trainer, checkpoints, save_pretrained / from_pretrained, and the Gaussian pieces of the digits model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

import diffscore as ds
from diffscore import io
from diffscore.data import gaussian_moments, load_digits, uniform_dequantize
from diffscore.evaluation import gaussian_baseline_bpd
from diffscore.nets import GaussianResidualNet
from diffscore.training import TrainConfig, Trainer, apply_overrides, get_preset
from diffscore.training import checkpoints as ckpt

# A tiny configuration: a 2-block MLP of width 32, batches of 16, validation on 4 images.
TINY = [
    "net_options.hidden=32",
    "net_options.depth=2",
    "net_options.dropout=0.1",  # dropout draws from torch's global generator, which resume must restore
    "batch_size=16",
    "warmup=2",
    "eval_every=1000",
    "val_limit=4",
    "log_every=2",
    "checkpoint_every=1000",
    "keep_checkpoints=1",
]


def tiny_config(*extra: str) -> TrainConfig:
    return apply_overrides(get_preset("digits"), [*TINY, *extra])


@pytest.fixture(scope="module")
def digits():
    return {s: load_digits(s) for s in ("train", "validation", "test")}


def hidden_files(root: Path) -> list[str]:
    """Hidden names under ``root`` other than diffscore's manifests: leftovers of unfinished writes."""
    return [str(p) for p in root.rglob(".*") if p.name != ".diffscore.json"]


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    for (name, x), (_, y) in zip(a.ema.state_dict().items(), b.ema.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for pid in sa:
        for key in sa[pid]:
            assert torch.equal(sa[pid][key], sb[pid][key]), (pid, key)
    assert torch.equal(a.noise_generator.get_state(), b.noise_generator.get_state())


# ---- resume -------------------------------------------------------------------------------------------
def test_resume_is_bitwise_exact(tmp_path, digits):
    cfg = tiny_config("steps=6")
    full = Trainer(cfg, tmp_path / "full", data=digits, progress=False)
    full.fit()

    first = Trainer(cfg, tmp_path / "split", data=digits, progress=False)
    first.fit(until=3)
    path = ckpt.latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert path is not None and path.name == "step_00000003"
    torch.manual_seed(12345)  # disturb the global generator: the checkpoint must restore it
    resumed = Trainer.from_checkpoint(path, tmp_path / "split", data=digits, progress=False)
    assert resumed.step == 3
    resumed.fit()
    assert resumed.step == full.step == 6
    assert_same_state(full, resumed)
    # both validated once, at step 6, with identical weights: identical selection
    assert resumed.best_val == full.best_val and resumed.best_step == full.best_step == 6
    # the resumed run's metrics log has no duplicate steps
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [2, 3, 4, 6]


def test_batches_are_epoch_permutations(digits):
    trainer = Trainer(tiny_config("steps=1"), None, data=digits, progress=False)
    n, b = len(digits["train"]), trainer.config.batch_size
    per_epoch = math.ceil(n / b) + 1
    seen = torch.cat([trainer.batch_indices(s) for s in range(per_epoch)])
    # the first n stream positions are one permutation of the training set
    assert torch.equal(torch.sort(seen[:n]).values, torch.arange(n))
    # a pure function of (seed, step): a fresh trainer gives the same batch
    again = Trainer(tiny_config("steps=1"), None, data=digits, progress=False)
    assert torch.equal(again.batch_indices(7), trainer.batch_indices(7))
    other = Trainer(tiny_config("steps=1", "seed=1"), None, data=digits, progress=False)
    assert not torch.equal(other.batch_indices(0), trainer.batch_indices(0))


def test_learning_rate_schedule(digits):
    trainer = Trainer(tiny_config("steps=10", "warmup=4", "lr=0.01"), None, data=digits, progress=False)
    assert [trainer.lr_at(s) for s in range(5)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    cos = Trainer(tiny_config("steps=10", "warmup=0", "lr=0.01", "lr_schedule=cosine"), None, data=digits)
    assert cos.lr_at(0) == pytest.approx(0.01) and cos.lr_at(5) == pytest.approx(0.005)
    assert cos.lr_at(10) == pytest.approx(0.0, abs=1e-12)


# ---- EMA ------------------------------------------------------------------------------------------------
def test_ema_follows_its_recursion_and_is_what_is_exported(tmp_path, digits):
    rate = 0.9
    cfg = tiny_config("steps=2", f"ema_rate={rate}", "warmup=0", "lr=0.01", "net_options.dropout=0.0")
    trainer = Trainer(cfg, tmp_path, data=digits, progress=False)
    names = [n for n, _ in trainer.model.named_parameters()]
    theta = [dict((n, p.detach().clone()) for n, p in trainer.model.named_parameters())]
    for _ in range(2):
        trainer.train_step()
        theta.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    # by hand: e0 = theta0, e_k = rate e_{k-1} + (1 - rate) theta_k
    expected = {n: theta[0][n] for n in names}
    for k in (1, 2):
        expected = {n: rate * expected[n] + (1 - rate) * theta[k][n] for n in names}
    ema = dict(trainer.ema.named_parameters())
    for n in names:
        # float32: lerp and the hand formula differ by a few ulps of |theta| (<= 1)
        torch.testing.assert_close(ema[n], expected[n], rtol=1e-6, atol=1e-6)
    moved = max(float((theta[2][n] - theta[0][n]).abs().max()) for n in names)
    assert moved > 1e-3  # lr 0.01 Adam steps move the weights by about 0.01 each

    exported = ds.ScoreModel.from_pretrained(trainer.export())
    weights = {n: p.detach() for n, p in exported.named_parameters()}
    gap = max(float((weights[n] - theta[2][n]).abs().max()) for n in names)
    # e2 - theta2 = 0.81 (theta0 - theta2) + 0.09 (theta1 - theta2): the export is not the raw weights
    assert gap > 0.5 * moved
    for n in names:
        torch.testing.assert_close(weights[n], expected[n], rtol=1e-6, atol=1e-6)


# ---- checkpoints and atomic writes ----------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path):
    path = tmp_path / "f.bin"
    io.atomic_write(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"new-and-partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("victim, crash_at", [("write_tensors", 2), ("write_json", 1)])
def test_checkpoint_crash_leaves_previous_checkpoint_intact(tmp_path, digits, monkeypatch, victim, crash_at):
    cfg = tiny_config("steps=4", "keep_checkpoints=1")
    trainer = Trainer(cfg, tmp_path, data=digits, progress=False)
    trainer.fit(until=2)
    root = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in (root / "step_00000002").iterdir()}

    real = getattr(ckpt, victim)
    calls = []

    def crashing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == crash_at:  # crash once this file is written: the new directory is half full
            real(path, *args, **kwargs)
            raise OSError("simulated crash while writing")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, victim, crashing)
    trainer.train_step()
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint()
    monkeypatch.undo()

    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002"]
    # no partial directory, no temporary files (the manifest names the checkpoints diffscore wrote)
    assert sorted(os.listdir(root)) == [".diffscore.json", "step_00000002"]
    assert {p.name: p.read_bytes() for p in (root / "step_00000002").iterdir()} == before
    restored = Trainer.from_checkpoint(root / "step_00000002", None, data=digits, progress=False)
    assert restored.step == 2


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(3)
    opt.step()
    tensors, info = ckpt.optimizer_state_to_tensors(opt.state_dict())
    assert set(tensors) == {"state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}
    back = ckpt.optimizer_state_from_tensors(tensors, info)
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(back["state"][0][key], value)


# ---- save_pretrained / from_pretrained ---------------------------------------------------------------
@pytest.fixture
def saved_model(tmp_path, digits):
    trainer = Trainer(tiny_config("steps=2"), None, data=digits, progress=False)
    trainer.fit()
    return trainer.ema, trainer.export(tmp_path / "model")


def test_from_pretrained_round_trip(saved_model):
    model, path = saved_model
    loaded = ds.ScoreModel.from_pretrained(path)
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5) * 0.9 + 0.05
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    # the manifest records what diffscore wrote (size and SHA-256 of each file)
    assert sorted(os.listdir(path)) == [".diffscore.json", "config.json", "model.safetensors"]


def test_from_pretrained_carries_the_card(saved_model, digits):
    _, path = saved_model
    card = ds.ScoreModel.from_pretrained(path).card
    cfg = tiny_config("steps=2")
    # what the training run knew about its data, typed: the digits (17 gray levels, 8x8, one channel)
    assert card.image_shape == (1, 8, 8) and card.num_bins == digits["train"].num_bins == 17
    assert card.data_range == tuple(cfg.data_range) and card.likelihood_eps == cfg.likelihood_eps
    splits = ds.TrainingData(
        "digits", None, cfg.split_seed, cfg.val_size, cfg.test_size, cfg.image_size, cfg.channels
    )
    assert card.dataset == "digits" and card.training_data == splits
    assert (card.sample_method, dict(card.sample_options)) == (cfg.sample_method, cfg.sample_options)
    assert card.metadata["step"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.num_bins = 256
    # a model with no metadata (built in code, or converted without a training run): the defaults
    assert ds.ModelCard.from_metadata({}) == ds.ModelCard()
    assert ds.ModelCard().training_data.dataset == "digits" and ds.ModelCard().image_shape is None
    with pytest.raises(ValueError):  # from_pretrained names config.json in the message
        ds.ModelCard.from_metadata({"data_range": [-1.0]})


def test_from_pretrained_missing(tmp_path, saved_model):
    _, path = saved_model
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ds.ScoreModel.from_pretrained(tmp_path / "nowhere")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ds.ScoreModel.from_pretrained(path)


def test_from_pretrained_corrupt(saved_model):
    _, path = saved_model
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        ds.ScoreModel.from_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        ds.ScoreModel.from_pretrained(path)


def test_from_pretrained_wrong_architecture(tmp_path, saved_model, digits):
    _, path = saved_model
    wide = Trainer(tiny_config("steps=1", "net_options.hidden=48"), None, data=digits, progress=False)
    other = wide.export(tmp_path / "wide")
    # the wide network's config with the narrow network's weights: the manifest sees the file replaced
    (other / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="model.safetensors' has 73808 bytes but .diffscore.json records"):
        ds.ScoreModel.from_pretrained(other)
    # a directory assembled by hand (no manifest): the architecture check names the tensors
    (other / ".diffscore.json").unlink()
    with pytest.raises(ValueError, match="does not match the architecture") as info:
        ds.ScoreModel.from_pretrained(other)
    assert "model.safetensors" in str(info.value) and "wrong shape" in str(info.value)


def test_save_pretrained_crash_keeps_previous(saved_model, monkeypatch):
    model, path = saved_model
    before = (path / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(ds.score, "write_json", crash)
    with pytest.raises(OSError, match="simulated crash"):
        model.save_pretrained(path)
    assert (path / "model.safetensors").read_bytes() == before
    assert hidden_files(path.parent) == []


# ---- the Gaussian pieces -------------------------------------------------------------------------------
def test_gaussian_moments_are_those_of_dequantized_data(digits):
    x = digits["train"].images[:200]
    mean, cov = gaussian_moments(x, 17, (-1.0, 1.0), torch.float64)
    # Monte Carlo over many dequantization draws of the same 200 images
    g = torch.Generator().manual_seed(0)
    y = torch.cat([uniform_dequantize(x, 17, (-1.0, 1.0), g, torch.float64) for _ in range(200)])
    y = y.reshape(y.shape[0], -1)
    mc_mean, mc_cov = y.mean(0), torch.cov(y.T, correction=0)
    # 40000 draws: MC error of a mean ~ std(u) * s / sqrt(40000 / 200 ...) ~ 1e-4; of a covariance ~ 1e-4
    torch.testing.assert_close(mean, mc_mean, rtol=0, atol=1e-3)
    torch.testing.assert_close(cov, mc_cov, rtol=0, atol=1e-3)


def test_gaussian_baseline_is_the_expected_dequantized_nll(digits):
    train, test = digits["train"].images, digits["test"].images[:3]
    bpd = gaussian_baseline_bpd(train, test, 17, (-1.0, 1.0), torch.float64)
    mean, cov = gaussian_moments(train, 17, (-1.0, 1.0), torch.float64)
    mvn = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([uniform_dequantize(test, 17, (-1.0, 1.0), g, torch.float64) for _ in range(4000)])
    nll = -mvn.log_prob(draws.reshape(4000, 3, -1))  # (4000, 3) nats
    mc = nll.mean(0) / (64 * math.log(2)) + math.log2(17) - 1.0
    stderr = nll.std(0) / math.sqrt(4000) / (64 * math.log(2))
    assert torch.all((bpd - mc).abs() < 4 * stderr), (bpd, mc, stderr)
    # and the whole test split is between the model-free bounds of the lead's note (2.98 on another split)
    full = gaussian_baseline_bpd(train, digits["test"].images, 17, (-1.0, 1.0))
    assert 2.5 < float(full.mean()) < 3.5


def test_untrained_gaussian_residual_model_has_the_gaussian_density(digits):
    """With the inner network at zero the model is the exact score of N(mu, Sigma) under the SDE, so its
    probability-flow likelihood is the closed-form density of p_eps = N(alpha mu, alpha^2 Sigma + std^2 I)."""
    torch.manual_seed(0)
    cfg = tiny_config("steps=1")
    trainer = Trainer(cfg, None, data=digits, dtype=torch.float64, progress=False)
    model = trainer.ema
    assert isinstance(model.net, GaussianResidualNet)
    x = uniform_dequantize(
        digits["test"].images[:4], 17, (-1.0, 1.0), torch.Generator().manual_seed(2), torch.float64
    )
    res = ds.log_likelihood(model.sde, model, x, eps=1e-5, rtol=1e-8, atol=1e-8)
    net, eye = model.net, torch.eye(64, dtype=torch.float64)

    def marginal(t: float):  # the exact p_t of N(mu, Sigma) data
        alpha, std = model.sde.marginal_coeffs(torch.tensor(t, dtype=torch.float64))
        cov = alpha**2 * (net.eigvecs * net.eigvals) @ net.eigvecs.T + std**2 * eye
        return torch.distributions.MultivariateNormal(alpha * net.mean, covariance_matrix=cov)

    # The flow of the exact score carries p_eps onto p_T, so delta_logp + log p_T(z) = log p_eps(x);
    # only the ODE solve (tolerance 1e-8) separates the two. (With the N(0, I) prior in place of p_T the
    # model's logp differs by log N(z; 0, I) - log p_T(z), a few 1e-2 nats here.)
    flow = res.delta_logp + marginal(1.0).log_prob(res.z.reshape(4, -1))
    exact = marginal(1e-5).log_prob(x.reshape(4, -1))  # about +50 nats per image
    torch.testing.assert_close(flow, exact, rtol=0, atol=1e-4)
    assert float((res.logp - exact).abs().max()) < 0.1


def test_config_overrides_and_errors():
    cfg = apply_overrides(
        get_preset("digits"), ["lr=3e-4", "steps=10", "net_options.hidden=64", "data_range=[0, 1]"]
    )
    assert (
        cfg.lr == 3e-4
        and cfg.steps == 10
        and cfg.net_options["hidden"] == 64
        and cfg.data_range == (0.0, 1.0)
    )
    with pytest.raises(ValueError, match="valid fields: .*batch_size"):
        apply_overrides(cfg, ["learning_rate=1"])
    with pytest.raises(TypeError, match="steps"):
        apply_overrides(cfg, ["steps=ten"])
    with pytest.raises(ValueError, match="valid presets: cifar10, digits"):
        get_preset("mnist_big")
    with pytest.raises(ValueError, match="dataset must be one of"):
        apply_overrides(cfg, ["dataset=imagenet"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_validation_of_a_model_gone_bad_scores_nan_and_training_goes_on(digits):
    trainer = Trainer(tiny_config("steps=2"), None, data=digits, progress=False)
    trainer.fit()
    good = trainer.best_val
    assert math.isfinite(good)

    class Exploding(torch.nn.Module):  # a network whose output is far past any plausible score
        def __init__(self, net):
            super().__init__()
            self.net, self.config = net, net.config

        def forward(self, x, t):
            return 1e9 * self.net(x, t)

    trainer.ema.net = Exploding(trainer.ema.net)
    record = trainer.validate()  # the plausibility guard stops each solve; the run does not stop
    assert math.isnan(record["mean"]) and not record["best"]
    assert trainer.best_val == good  # the earlier weights stay selected
