"""``diffscore inpaint``, ``colorize``, ``classifier train`` and ``conditional`` on a tiny trained model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffscore.cli import main
from diffscore.data import bin_centers, load_digits, make_mask, quantize
from diffscore.nets import load_classifier

TINY = [
    "steps=60",
    "eval_every=60",
    "checkpoint_every=60",
    "val_limit=8",
    "test_limit=4",
    "num_samples=4",
    "net_options.hidden=32",
    "net_options.depth=1",
    "bound_model=null",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 60-step `diffscore train` run (a few seconds); quality is irrelevant to these tests."""
    out = tmp_path_factory.mktemp("ctl") / "digits"
    argv = ["train", "--out", str(out), "--no-progress"]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    return out


def known_set(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in torch.nonzero(mask[0, 0] == 1)}


def test_mask_presets_hide_the_named_region():
    every = {(i, j) for i in range(8) for j in range(8)}
    assert known_set(make_mask("left_half", (1, 8, 8))) == {(i, j) for i, j in every if j >= 4}
    assert known_set(make_mask("right_half", (1, 8, 8))) == {(i, j) for i, j in every if j < 4}
    assert known_set(make_mask("top_half", (1, 8, 8))) == {(i, j) for i, j in every if i >= 4}
    box = {(i, j) for i, j in every if 2 <= i < 6 and 2 <= j < 6}
    assert known_set(make_mask("center_box", (3, 8, 8))) == every - box
    # odd sizes: a 3x5 box hidden in the middle of 7x10 (rows 2-4, columns 2-6)
    odd = {(i, j) for i in range(7) for j in range(10)} - {(i, j) for i in range(2, 5) for j in range(2, 7)}
    assert known_set(make_mask("center_box", (1, 7, 10))) == odd
    # random:p hides each pixel independently with probability p; 64 x 64 pixels: the hidden fraction is
    # within 4 binomial standard deviations (4 * sqrt(0.3 * 0.7 / 4096) = 0.029) of p
    m = make_mask("random:0.3", (1, 64, 64), seed=3)
    assert abs(float(1 - m.mean()) - 0.3) < 0.029
    assert torch.equal(m, make_mask("random:0.3", (1, 64, 64), seed=3))
    assert not torch.equal(m, make_mask("random:0.3", (1, 64, 64), seed=4))
    assert float(make_mask("random:0", (1, 8, 8)).min()) == 1.0


def test_mask_files_are_read_and_validated(tmp_path):
    good = make_mask("top_half", (1, 8, 8))[0, 0]
    Image.fromarray((good * 255).to(torch.uint8).numpy()).save(tmp_path / "m.png")
    assert torch.equal(make_mask(str(tmp_path / "m.png"), (1, 8, 8)), good[None, None])
    save_file({"mask": good.clone()}, tmp_path / "m.safetensors")
    assert torch.equal(make_mask(str(tmp_path / "m.safetensors"), (1, 8, 8)), good[None, None])
    torch.save(good[None].clone(), tmp_path / "m.pt")
    assert torch.equal(make_mask(str(tmp_path / "m.pt"), (1, 8, 8)), good[None, None])

    torch.save(torch.ones(7, 8), tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="--mask.*shape"):
        make_mask(str(tmp_path / "shape.pt"), (1, 8, 8))
    torch.save(torch.full((8, 8), 0.5), tmp_path / "values.pt")
    with pytest.raises(ValueError, match="--mask.*only 0"):
        make_mask(str(tmp_path / "values.pt"), (1, 8, 8))
    Image.fromarray((good * 128).to(torch.uint8).numpy()).save(tmp_path / "gray.png")
    with pytest.raises(ValueError, match="--mask.*black"):
        make_mask(str(tmp_path / "gray.png"), (1, 8, 8))
    for spec in ("left_third", "random:2", "random:x"):
        with pytest.raises(ValueError, match="--mask"):
            make_mask(spec, (1, 8, 8))


def test_inpaint_cli_keeps_known_pixels(run, tmp_path, capsys):
    out = tmp_path / "inp.png"
    argv = ["inpaint", "--model", str(run), "--mask", "right_half", "--num", "5", "--steps", "10"]
    assert main([*argv, "--out", str(out)]) == 0
    t = load_file(tmp_path / "inp.safetensors")
    test = load_digits("test")
    x = bin_centers(test.images[:5], 17)
    assert torch.equal(t["original"], x)
    known = t["mask"].bool()
    assert known.sum() == 5 * 8 * 4 and bool(known[..., :4].all())
    # the output equals the input exactly on known pixels, and differs from it on hidden ones
    assert torch.equal(t["inpainted"][known], x[known])
    assert float((t["inpainted"] - x)[~known].abs().max()) > 0.1
    assert bool(torch.isfinite(t["inpainted"]).all())
    # PNG: 3 rows (original, masked, inpainted) of 5 digits enlarged 8 times, 2-pixel padding
    with Image.open(out) as im:
        assert im.size == (5 * 64 + 6 * 2, 3 * 64 + 4 * 2)
    # a tensor file of integer bins gives the same known pixels
    save_file({"images": test.images[:2].clone()}, tmp_path / "in.safetensors")
    argv = [
        "inpaint",
        "--model",
        str(run),
        "--mask",
        "center_box",
        "--input",
        str(tmp_path / "in.safetensors"),
    ]
    assert main([*argv, "--steps", "5", "--method", "sde", "--out", str(tmp_path / "b.png")]) == 0
    t = load_file(tmp_path / "b.safetensors")
    known = t["mask"].bool()
    assert torch.equal(quantize(t["inpainted"], 17)[known], test.images[:2].long()[known])
    # a bad mask file is reported with the argument's name and exit status 2
    torch.save(torch.ones(2, 3, 8, 8), tmp_path / "bad.pt")
    capsys.readouterr()
    assert main([*argv[:3], "--mask", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "c.png")]) == 2
    assert "--mask" in capsys.readouterr().err


def test_classifier_train_and_conditional_sampling(run, tmp_path, capsys):
    clf_dir = tmp_path / "clf"
    argv = ["classifier", "train", "--model", str(run), "--out", str(clf_dir), "--steps", "300"]
    assert main([*argv, "--hidden", "64"]) == 0
    cfg = json.loads((clf_dir / "config.json").read_text())
    assert cfg["num_classes"] == 10 and cfg["image_shape"] == [1, 8, 8]
    # 300 steps on clean-ish digits: far above chance (0.1) at t = 0; the reported number is recomputed
    clf = load_classifier(clf_dir)
    test = load_digits("test")
    x = bin_centers(test.images, 17)
    with torch.no_grad():
        acc = float((clf(x, torch.zeros(x.shape[0])).argmax(1) == test.labels).float().mean())
    assert cfg["metadata"]["test_accuracy"]["0"] == pytest.approx(acc, abs=1e-6)
    assert acc > 0.6
    # at t = T the data is gone: p_T(y | x) is the class prior, so the classifier should be far less sure
    with torch.no_grad():
        x_T = clf.sde.prior_sample((64, 1, 8, 8), torch.Generator().manual_seed(0))
        probs_T = clf(x_T, torch.full((64,), clf.sde.T)).softmax(1)
    assert float(probs_T.max(1).values.mean()) < 0.5

    out = tmp_path / "cond.png"
    argv = ["conditional", "--model", str(run), "--classifier", str(clf_dir), "--label", "0,7"]
    assert main([*argv, "--num", "3", "--steps", "20", "--scale", "2", "--out", str(out)]) == 0
    t = load_file(tmp_path / "cond.safetensors")
    assert t["labels"].tolist() == [0, 0, 0, 7, 7, 7] and t["samples"].shape == (6, 1, 8, 8)
    assert bool(torch.isfinite(t["samples"]).all())
    with Image.open(out) as im:
        assert im.size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)
    capsys.readouterr()
    assert main([*argv[:5], "--label", "10", "--out", str(out)]) == 2
    assert "--label" in capsys.readouterr().err


def test_colorize_on_a_gray_model_errors_clearly(run, tmp_path, capsys):
    save_file({"gray": torch.zeros(2, 1, 8, 8)}, tmp_path / "g.safetensors")
    argv = ["colorize", "--model", str(run), "--input", str(tmp_path / "g.safetensors")]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "c.png")]) == 2
    assert "3-channel" in capsys.readouterr().err
