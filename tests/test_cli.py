"""The ``diffscore`` command end to end on a short training run."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffscore import ScoreModel
from diffscore.cli import main
from diffscore.data import load_digits, uniform_dequantize
from diffscore.evaluation import evaluate_bpd, gaussian_baseline_bpd
from diffscore.training import latest_checkpoint

SMOKE = [
    "steps=300",
    "eval_every=150",
    "checkpoint_every=150",
    "val_limit=16",
    "test_limit=12",
    "num_samples=4",
    "quality_samples=64",
    "net_options.hidden=64",
    "net_options.depth=2",
    "log_every=50",
    # a few steps of the likelihood model: its report lines and `diffscore bpd --estimator elbo`
    "bound_model.max_steps=20",
    "bound_model.eval_every=10",
    "bound_model.val_samples=2",
    "bound_model.test_samples=4",
    'bound_model.net_options={"hidden": 32, "depth": 1}',
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short `diffscore train` run through the CLI entry point (about 10 s on one core)."""
    out = tmp_path_factory.mktemp("run") / "digits"
    argv = ["train", "--out", str(out), "--no-progress"]
    for item in SMOKE:
        argv += ["--set", item]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    PRINTED[out] = printed.getvalue()
    return out


#: What the fixture's `diffscore train` printed.
PRINTED: dict = {}


def test_train_reports_sample_quality(run):
    quality = json.loads((run / "results.json").read_text())["sample_quality"]
    assert {quality[k]["num"] for k in ("samples", "floor", "gaussian")} == {64}
    # with the digits extractor the training images score far closer to the test split than draws of
    # the Gaussian fit (at 1000 images 0.5 against 7; tests/test_quality_digits.py), whatever the model
    assert quality["floor"]["fid"] < 0.5 * quality["gaussian"]["fid"]
    line = next(line for line in PRINTED[run].splitlines() if line.startswith("sample quality"))
    assert f"samples {quality['samples']['fid']:.2f} / " in line
    assert f"floor (train images) {quality['floor']['fid']:.2f} / " in line
    assert (run / "digits_classifier" / "model.safetensors").is_file()  # the extractor, cached


def numbers(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(mean|median|worst) (-?[\d.]+)", line)}


def test_train_writes_checkpoint_metrics_model_and_samples(run, capsys):
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000300"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "best_ema.safetensors",
        "state.json",
        ".diffscore.json",  # the manifest: size and SHA-256 of every file, checked before a resume
    }
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 300 and isinstance(state["rng"]["noise"], list)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events.count("validation") == 2 and events.count("test") == 1 and "gaussian_baseline" in events
    # the PNG is a 2 x 2 grid of 8x8 digits enlarged 8 times with 2-pixel padding
    with Image.open(run / "samples.png") as im:
        assert im.size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)
    samples = load_file(run / "samples.safetensors")
    # the 64 samples the quality report scored; the grid shows the first num_samples = 4 of them
    assert samples["samples"].shape == (64, 1, 8, 8) and samples["samples_int"].max() <= 16

    results = json.loads((run / "results.json").read_text())
    assert results["test_bpd"]["n"] == 12 and results["steps"] == 300
    # the printed baseline is the closed-form Gaussian fit, recomputed here
    train, test = load_digits("train"), load_digits("test")
    baseline = gaussian_baseline_bpd(train.images, test.images[:12], 17, (-1.0, 1.0))
    assert results["gaussian_baseline_bpd"]["mean"] == pytest.approx(float(baseline.mean()), abs=1e-4)
    # 300 steps on top of the Gaussian fit: better than the baseline on these 12 images, not absurdly
    assert 1.5 < results["test_bpd"]["mean"] < results["gaussian_baseline_bpd"]["mean"]


def test_bpd_command_reproduces_the_training_report(run, capsys):
    results = json.loads((run / "results.json").read_text())
    args = ["bpd", "--model", str(run), "--limit", "12", "--seed", "12345", "--no-progress"]
    assert main([*args, "--rtol", "1e-4", "--atol", "1e-4"]) == 0
    got = numbers(capsys.readouterr().out)
    # same weights, dequantization noise, tolerance: the same numbers up to float32 summation order
    for key in ("mean", "median", "worst"):
        assert got[key] == pytest.approx(results["test_bpd"][key], abs=1e-3)
    assert main([*args, "--divergence", "hutchinson", "--split", "validation"]) == 0
    assert "validation bits/dim (hutchinson" in capsys.readouterr().out


def test_bpd_estimators_reproduce_the_likelihood_models_report(run, capsys):
    lm = json.loads((run / "results.json").read_text())["likelihood_model"]
    printed = PRINTED[run]
    assert "test bits/dim, variational bound (ELBO" in printed
    assert "test bits/dim, exact ODE of the same model" in printed
    model = str(run / "bound_model")
    args = ["bpd", "--model", model, "--limit", "12", "--no-progress"]
    # the run's draws: seed 23456 + image, 4 draws per image; no --estimator: a model with a
    # categorical decoder is scored by its ELBO
    assert main([*args, "--samples", "4", "--seed", "23456"]) == 0
    out = capsys.readouterr().out
    assert "variational bound (ELBO), categorical decoder, 4 draws per image" in out and " s.e. of" in out
    got = numbers(out)
    for key in ("mean", "median", "worst"):
        assert got[key] == pytest.approx(lm["elbo"][key], abs=1e-4)
    common = ["--estimator", "ode-truncated-normal", "--seed", "12345", "--rtol", "1e-4", "--atol", "1e-4"]
    assert main([*args, *common]) == 0
    out = capsys.readouterr().out
    assert "1 draw per image (no s.e." in out
    got = numbers(out)
    for key in ("mean", "median", "worst"):
        assert got[key] == pytest.approx(lm["ode_truncated_normal"][key], abs=1e-3)
    # two dequantization draws: the importance-weighted bound and its standard error, as the API gives
    assert main([*args[:4], "4", "--no-progress", *common, "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 weighted draws per image" in out
    printed_se = float(re.search(r"\+- ([\d.]+) s\.e\. of the mean", out).group(1))
    model = ScoreModel.from_pretrained(run / "bound_model")
    images = load_digits("test").images[:4]
    res = evaluate_bpd(
        model, images, 17, (-1.0, 1.0), seed=12345, eps=model.card.likelihood_eps, rtol=1e-4, atol=1e-4,
        n_samples=2, dequantization="truncated_normal",
    )  # fmt: skip
    assert res["stderr"].isfinite().all() and res["stderr_mean"] > 0
    assert printed_se == pytest.approx(res["stderr_mean"], abs=1e-4)
    assert numbers(out)["mean"] == pytest.approx(float(res["bpd"].mean()), abs=1e-4)


def test_bpd_estimator_errors_are_one_line(run, capsys):
    # the sample model was trained on dequantized data: no categorical decoder, no ELBO
    assert main(["bpd", "--model", str(run), "--estimator", "elbo", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "categorical decoder" in err
    assert main(["bpd", "--model", str(run), "--estimator", "iwae", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--estimator" in err


def test_sample_command_is_seeded(run, tmp_path):
    common = [
        "sample",
        "--model",
        str(run),
        "--num",
        "4",
        "--method",
        "ode",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
    ]
    assert main([*common, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.png"), "--tensors", str(tmp_path / "b.pt")]) == 0
    assert main([*common, "--out", str(tmp_path / "c.png"), "--seed", "1"]) == 0
    a = load_file(tmp_path / "a.safetensors")["samples"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    c = load_file(tmp_path / "c.safetensors")["samples"]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert (tmp_path / "a.png").is_file()
    # fixed-step samplers take --steps
    assert main(["sample", "--model", str(run), "--num", "2", "--method", "sde", "--steps", "20",
                 "--out", str(tmp_path / "d.png")]) == 0  # fmt: skip
    assert torch.isfinite(load_file(tmp_path / "d.safetensors")["samples"]).all()
    # the default sampler: unipc, 20 NFE
    assert main(["sample", "--model", str(run), "--num", "2", "--out", str(tmp_path / "e.png")]) == 0
    assert torch.isfinite(load_file(tmp_path / "e.safetensors")["samples"]).all()


def test_encode_decode_round_trip_on_real_digits(run, tmp_path):
    """Encode then decode real test digits through the trained model's probability flow.

    The smoke model is a Gaussian fit plus a briefly trained MLP correction, so the flow is a nonlinear
    map that moves every pixel by O(1) (checked below): the round trip exercises the CLI's file handling,
    the two solves in opposite directions and their tolerances, not an identity map.
    """
    test = load_digits("test").images[:6]
    x = uniform_dequantize(test, 17, (-1.0, 1.0), torch.Generator().manual_seed(0))
    save_file({"x": x}, tmp_path / "x.safetensors")
    flow = ["--model", str(run), "--rtol", "1e-5", "--atol", "1e-5"]
    assert (
        main(
            ["encode", *flow, "--input", str(tmp_path / "x.safetensors"), "--output", str(tmp_path / "z.pt")]
        )
        == 0
    )
    z = torch.load(tmp_path / "z.pt", weights_only=True)
    assert z.shape == x.shape and float((z - x).abs().max()) > 0.5
    out = ["--output", str(tmp_path / "x2.safetensors"), "--png", str(tmp_path / "x2.png")]
    assert main(["decode", *flow, "--input", str(tmp_path / "z.pt"), *out]) == 0
    x2 = load_file(tmp_path / "x2.safetensors")["x"]
    assert x2.dtype == torch.float32
    # two adaptive solves at rtol = atol = 1e-5 on data of size ~1: errors of order 1e-4 at most
    assert float((x2 - x).abs().max()) < 1e-3


def test_usage_errors_are_clear(run, tmp_path, capsys):
    assert main(["train", "--preset", "imagenet", "--out", str(tmp_path / "x")]) == 2
    assert "valid presets: cifar10, digits, digits_unet, image_folder" in capsys.readouterr().err
    assert main(["train", "--dataset", "svhn", "--out", str(tmp_path / "x")]) == 2
    assert "dataset must be one of ('digits', 'cifar10', 'mnist', 'image_folder')" in capsys.readouterr().err
    assert main(["train", "--set", "lr", "--out", str(tmp_path / "x")]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--set", "steps=1"]) == 2  # would clobber the finished run
    assert "--resume" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert (
        main(["encode", "--model", str(run), "--input", str(tmp_path / "none.pt"), "--output", "z.pt"]) == 2
    )
    assert "none.pt" in capsys.readouterr().err
    # images of another size, or raw integer bins, are named as the bad --input (no traceback)
    torch.save(torch.zeros(2, 1, 4, 4), tmp_path / "small.pt")
    torch.save(torch.zeros(2, 1, 8, 8, dtype=torch.long), tmp_path / "ints.pt")
    out = str(tmp_path / "z.pt")
    assert main(["encode", "--model", str(run), "--input", str(tmp_path / "small.pt"), "--output", out]) == 2
    assert "--input must hold a batch shaped (B, 1, 8, 8)" in capsys.readouterr().err
    assert main(["decode", "--model", str(run), "--input", str(tmp_path / "ints.pt"), "--output", out]) == 2
    assert "--input must hold floating-point data" in capsys.readouterr().err


def test_fid_command_reproduces_the_training_report(run, capsys, tmp_path):
    # the same 64 samples (per-sample seeds 0..63, the run's sampler: pc, 500 steps on the log-SNR grid,
    # stopped at eps = 0.1) and the same cached extractor as the main job: the same FID to round-off
    results = json.loads((run / "results.json").read_text())
    assert json.loads((run / "train_config.json").read_text())["sample_options"] == {
        "num_steps": 500,
        "eps": 0.1,
        "grid": "logsnr",
    }
    quality = results["sample_quality"]["samples"]
    stats, scores = tmp_path / "test_stats.safetensors", tmp_path / "fid.json"
    argv = ["fid", "--model", str(run), "--num", "64", "--method", "pc", "--steps", "500", "--no-progress"]
    argv += ["--eps", "0.1", "--grid", "logsnr"]
    assert main([*argv, "--save-reference", str(stats), "--output", str(scores)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("digits FID ") and "against the digits test split, 297 images" in line
    got = json.loads(scores.read_text())
    assert got["fid"] == pytest.approx(quality["fid"], rel=1e-9)
    assert got["kid"] == pytest.approx(quality["kid"], rel=1e-9)
    # against the saved reference statistics: the same numbers again
    assert main([*argv, "--reference-stats", str(stats), "--output", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["fid"] == pytest.approx(got["fid"], rel=1e-9)
    # the run's sampler comes with the run's options: no flags give the same samples, and say so
    plain = ["fid", "--model", str(run), "--num", "64", "--no-progress", "--reference-stats", str(stats)]
    assert main([*plain, "--output", str(tmp_path / "plain.json")]) == 0
    assert "(pc, eps=0.1, grid=logsnr, num_steps=500)" in capsys.readouterr().out
    assert json.loads((tmp_path / "plain.json").read_text())["fid"] == pytest.approx(got["fid"], rel=1e-9)
    # a flag given overrides the run's option of that name only
    assert main([*plain, "--eps", "0.001", "--output", str(tmp_path / "eps.json")]) == 0
    assert "(pc, eps=0.001, grid=logsnr, num_steps=500)" in capsys.readouterr().out
    assert json.loads((tmp_path / "eps.json").read_text())["fid"] != pytest.approx(got["fid"], rel=1e-3)


def test_fid_command_without_inception_weights_is_one_line(run, capsys, tmp_path):
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    argv = ["fid", "--model", str(run), "--extractor", "inception", "--inception-weights", str(missing)]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(missing) in err[0]
