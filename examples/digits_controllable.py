"""Controllable generation on the 8x8 digits: inpainting and class-conditional sampling.

Trains (or loads) the default digits score model (``diffscore train``, about 2 minutes on a CPU) and a
time-dependent classifier (``diffscore classifier train``, under a minute), then writes

- docs/digits_inpainting.png: 16 TEST digits with their left half hidden; rows: original, masked
  input (hidden pixels mid-gray), inpainted (PC sampler, Song et al. 2021 App. I.2);
- docs/digits_class_conditional.png: 8 samples of each class 0-9 (one row per class), drawn with
  ``conditional_score(score, classifier_log_prob(clf, y), scale)`` (Song et al. 2021 eq. 14, App. I.1).

It prints how often an independent judge (a logistic regression fitted to the clean training digits,
never used for guidance) recognises the wanted class in the samples, beside the same figure for
unconditional samples (scale 0) and for the inpainted test digits.

    python examples/digits_controllable.py [--run runs/digits] [--scale 1] [--steps 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

import diffscore as ds
from diffscore.cli import main as cli_main
from diffscore.controllable import classifier_log_prob, conditional_score, inpaint
from diffscore.data import bin_centers, load_digits, make_mask, quantize, save_image_grid
from diffscore.nets import load_classifier

NUM_BINS, DATA_RANGE = 17, (-1.0, 1.0)


def judge_accuracy(judge: LogisticRegression, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images x (B, 1, 8, 8) in data space that the judge assigns to ``labels``."""
    pred = judge.predict(bin_centers(quantize(x, NUM_BINS, DATA_RANGE), NUM_BINS).flatten(1).numpy())
    return float((torch.as_tensor(pred) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/digits", help="digits training run (trained if missing)")
    parser.add_argument("--scale", type=float, default=1.0, help="classifier guidance scale")
    parser.add_argument("--steps", type=int, default=500, help="PC steps")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    if not (run / "model" / "model.safetensors").is_file():
        assert cli_main(["train", "--out", str(run), "--no-progress"]) == 0
    if not (run / "classifier" / "config.json").is_file():
        assert cli_main(["classifier", "train", "--model", str(run), "--out", str(run / "classifier")]) == 0
    model = ds.ScoreModel.from_pretrained(run / "model").eval()
    clf = load_classifier(run / "classifier")

    train, test = load_digits("train"), load_digits("test")
    judge = LogisticRegression(max_iter=2000).fit(
        bin_centers(train.images, NUM_BINS).flatten(1).numpy(), train.labels.numpy()
    )
    x_test = bin_centers(test.images, NUM_BINS)
    print(f"judge accuracy on the clean test digits: {judge_accuracy(judge, x_test, test.labels):.3f}")

    # inpainting: 16 test digits (the first 1-2 of each class), left half hidden
    idx = torch.cat([torch.nonzero(test.labels == c)[:2, 0] for c in range(10)])[:16]
    x, y = x_test[idx], test.labels[idx]
    mask = make_mask("left_half", x.shape[1:])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = inpaint(model.sde, model, x, mask, generator=gen, num_steps=args.steps)
    hidden = ~torch.broadcast_to(mask.bool(), x.shape)
    rmse = float((out - x)[hidden].pow(2).mean().sqrt())
    masked = torch.where(hidden, torch.zeros_like(x), x)
    grid = torch.cat([x, masked, out])
    save_image_grid(
        quantize(grid, NUM_BINS, DATA_RANGE),
        Path(args.docs) / "digits_inpainting.png",
        nrow=16,
        num_bins=NUM_BINS,
    )
    background = torch.where(hidden, torch.full_like(x, -1.0), x)
    print(
        f"inpainting (left half hidden, {args.steps} PC steps): RMSE on hidden pixels {rmse:.3f} on "
        f"[-1, 1]; judge recognises the true class in {judge_accuracy(judge, out, y):.3f} of the inpainted "
        f"digits (masked input, hidden pixels set to background: {judge_accuracy(judge, background, y):.3f})"
    )

    # class-conditional samples: 8 of each class
    labels = torch.arange(10).repeat_interleave(8)
    for scale in (0.0, args.scale):
        score = conditional_score(model, classifier_log_prob(clf, labels), scale)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            samples = ds.sample(model.sde, score, (80, 1, 8, 8), "pc", gen, num_steps=args.steps)
        t0 = torch.zeros(80)
        with torch.no_grad():
            self_acc = float((clf(samples, t0).argmax(1) == labels).float().mean())
        print(
            f"scale {scale:g}: judge finds the wanted class in {judge_accuracy(judge, samples, labels):.3f} "
            f"of 80 samples (guiding classifier at t = 0: {self_acc:.3f})"
        )
    save_image_grid(
        quantize(samples, NUM_BINS, DATA_RANGE),
        Path(args.docs) / "digits_class_conditional.png",
        nrow=8,
        num_bins=NUM_BINS,
    )


if __name__ == "__main__":
    main()
