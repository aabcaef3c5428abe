"""``diffscore edit`` and ``interpolate`` on a tiny trained model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffscore.cli import main
from diffscore.data import bin_centers, load_digits, save_image_grid

TINY = [
    "steps=60",
    "eval_every=60",
    "checkpoint_every=60",
    "val_limit=8",
    "test_limit=4",
    "num_samples=4",
    "quality_samples=0",
    "net_options.hidden=32",
    "net_options.depth=1",
    "bound_model=null",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 60-step `diffscore train` run (a few seconds); quality is irrelevant to these tests."""
    out = tmp_path_factory.mktemp("edit") / "digits"
    argv = ["train", "--out", str(out), "--no-progress"]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Four test digits as integer bins in a tensor file, and the first one as an 8x8 PNG."""
    folder = tmp_path_factory.mktemp("digits")
    images = load_digits("test").images[:4]
    save_file({"x": images}, folder / "four.safetensors")
    save_image_grid(images[:1], folder / "one.png", num_bins=17, scale=1, padding=0)
    save_image_grid(images[1:2], folder / "two.png", num_bins=17, scale=1, padding=0)
    return folder, bin_centers(images, 17, (-1.0, 1.0))


def test_edit_writes_input_noised_and_edited_rows(run, digits, tmp_path, capsys):
    folder, x = digits
    out = tmp_path / "edited.png"
    argv = ["edit", "--model", str(run), "--input", str(folder / "four.safetensors"), "--strength", "0.5"]
    argv += ["--steps", "50", "--seed", "3", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "edited 4 images (strength 0.5: t_start = 0.5;" in line and "rows: input, noised, edited" in line
    with Image.open(out) as im:  # 3 rows of 4 digits, each 8x8 enlarged 8 times, 2 pixels apart
        assert im.size == (4 * 64 + 5 * 2, 3 * 64 + 4 * 2)
    saved = load_file(tmp_path / "edited.safetensors")
    assert torch.equal(saved["input"], x)
    assert saved["edited"].shape == x.shape and bool(torch.isfinite(saved["edited"]).all())
    # the noised row is alpha(t) x + std(t) z at t = 0.5: its mean over pixels follows alpha(0.5) x
    assert float((saved["noised"] - saved["input"]).abs().mean()) > 0.1
    # per-image seeds: the same seed gives the same edit, in any batch size; another seed another one
    again = tmp_path / "again.png"
    assert main([*argv, "--batch-size", "3", "--out", str(again)]) == 0
    torch.testing.assert_close(load_file(tmp_path / "again.safetensors")["edited"], saved["edited"])
    argv[argv.index("--seed") + 1] = "4"
    assert main([*argv, "--out", str(tmp_path / "other.png")]) == 0
    assert not torch.equal(load_file(tmp_path / "other.safetensors")["edited"], saved["edited"])
    # writing over its own output is allowed (diffscore wrote it)
    assert main([*argv, "--out", str(out)]) == 0


def test_edit_reads_a_png_of_the_models_size(run, digits, tmp_path):
    folder, x = digits
    argv = ["edit", "--model", str(run), "--input", str(folder / "one.png")]
    argv += ["--input", str(folder / "two.png"), "--strength", "0.3", "--steps", "20", "--no-progress"]
    argv += ["--out", str(tmp_path / "e.png")]
    assert main(argv) == 0
    # the PNG's 8-bit levels map back to the model's 17 bins exactly
    assert torch.equal(load_file(tmp_path / "e.safetensors")["input"], x[:2])


def test_edit_errors_are_one_line_before_any_work(run, digits, tmp_path, capsys):
    folder, _ = digits
    out = tmp_path / "e.png"
    base = ["edit", "--model", str(run), "--out", str(out), "--no-progress"]
    good = ["--input", str(folder / "four.safetensors")]
    torch.save(torch.zeros(2, 1, 4, 4), tmp_path / "small.pt")
    torch.save(torch.full((2, 1, 8, 8), 5.0), tmp_path / "bright.pt")
    Image.new("L", (16, 16)).save(tmp_path / "big.png")
    (tmp_path / "foreign.png").write_bytes(b"not diffscore's")
    shape = "--input must hold a batch shaped (B, 1, 8, 8)"
    size = "is 16x16 pixels; the model's images are 8x8"
    cases = [
        ([*good, "--strength", "0"], "--strength must lie in (0, 1], got 0"),
        ([*good, "--strength", "1.5"], "--strength must lie in (0, 1], got 1.5"),
        ([*good, "--strength", "0.05"], "strength must exceed eps / T = 0.1"),  # the run's eps is 0.1
        (["--input", str(tmp_path / "none.pt"), "--strength", "0.5"], "no such file"),
        (["--input", str(tmp_path / "none.png"), "--strength", "0.5"], "no such file"),
        (["--input", str(tmp_path / "small.pt"), "--strength", "0.5"], shape),
        (["--input", str(tmp_path / "bright.pt"), "--strength", "0.5"], "values in [5, 5]"),
        (["--input", str(tmp_path / "big.png"), "--strength", "0.5"], size),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("diffscore edit: error: ") and message in err and err.count("\n") == 1, err
        assert not out.exists()
    foreign = ["edit", "--model", str(run), *good, "--strength", "0.5"]
    foreign += ["--out", str(tmp_path / "foreign.png")]
    assert main(foreign) == 2
    assert "exists and it was not written by diffscore" in capsys.readouterr().err
    assert (tmp_path / "foreign.png").read_bytes() == b"not diffscore's"


def test_interpolate_writes_a_strip_whose_ends_are_the_inputs(run, digits, tmp_path, capsys):
    folder, x = digits
    out = tmp_path / "strip.png"
    argv = ["interpolate", "--model", str(run), "--input", str(folder / "one.png"), "--input"]
    argv += [str(folder / "two.png"), "--frames", "5", "--out", str(out), "--no-progress"]
    assert main([*argv, "--space", "latent", "--space", "data", "--space", "time", "--time", "0.3"]) == 0
    assert "interpolated 1 pair(s), 5 frames (latent, data, time;" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (5 * 64 + 6 * 2, 3 * 64 + 4 * 2)
    paths = load_file(tmp_path / "strip.safetensors")
    assert set(paths) == {"latent", "data", "time"}
    for space in ("latent", "time"):  # decode(encode(x)) with dopri8 at 1e-5: within 1e-3 (docs/encoding.md)
        assert float((paths[space][0] - x[0]).abs().max()) < 1e-3
        assert float((paths[space][-1] - x[1]).abs().max()) < 1e-3
    torch.testing.assert_close(paths["data"][2], (x[0] + x[1]) / 2)
    # the latent path differs from the cross-fade in between
    assert float((paths["latent"][2] - paths["data"][2]).abs().max()) > 0.05


def test_interpolate_errors_are_one_line(run, digits, tmp_path, capsys):
    folder, _ = digits
    one = str(folder / "one.png")
    base = ["interpolate", "--model", str(run), "--out", str(tmp_path / "s.png"), "--no-progress"]
    cases = [
        (["--input", one], "--input must be given twice"),
        (["--input", one, "--input", one, "--frames", "1"], "--frames must be >= 2"),
        (["--input", one, "--input", one, "--time", "0.5"], "--time is the time of --space time"),
        (["--input", one, "--input", one, "--space", "time", "--time", "1"], "--time (a fraction of T)"),
        (["--input", one, "--input", one, "--method", "rk4"], "fixed-step solver: give --step-size"),
        (["--input", one, "--input", str(folder / "four.safetensors")], "as many images, got 1 and 4"),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("diffscore interpolate: error: ") and message in err, err
        assert not (tmp_path / "s.png").exists()
