"""Identifiable encoding (Song et al. 2021, Sec. 4.3 and Fig. 7): two digits models, one latent.

The probability-flow ODE of the exact score maps each image to one latent, fixed by the data
distribution alone; two models that learned the same distribution should therefore encode an image to
(nearly) the same latent, whatever their architecture and seed. This script trains

    mlp        the "digits" preset (residual MLP), seed 1
    mlp_seed2  the same architecture, seed 2 (separates the seed from the architecture)
    shuffled   the "digits" preset on digits whose 64 pixels are permuted by a fixed permutation P
    unet       the "digits_unet" preset (the small DDPM++ U-Net), seed 3, batch 64, lr 5e-4

encodes the dequantized test digits with each (probability flow, dopri5, rtol = atol = 1e-5) and
prints, against the mlp latents z1 of the same images: the relative distance ||z1 - z2|| / ||z1||
(median over images) and the correlation of the 64 coordinates of z1 and z2 (mean over images). Two
references: latents of two different images (about sqrt(2) for independent N(0, I) latents), and the
shuffled-pixel model, a model of another distribution, which encodes the same images elsewhere; its
latents of the shuffled images P x, with the permutation undone, come back to z1 (the exact flow
commutes with a permutation of the pixels).

    python examples/identifiable_encoding.py                        # trains, encodes, prints the table
    python examples/identifiable_encoding.py --figure docs/encoding_identifiable.png \
        --strip docs/encoding_interpolation.png

``--figure`` draws the latents of three test digits under the mlp and U-Net models (paper Fig. 7);
``--strip`` interpolates between test digits of different classes with the mlp model (rows per pair:
through the latents at T, in data space, through the flow's states at T / 2).

Models go to ``--out`` (default runs/identifiable) and are reused when the script runs again. One CPU
thread; the U-Net dominates the cost (see docs/encoding.md for the measured time).
"""

import argparse
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, PngImagePlugin

import diffscore as ds
from diffscore.data import ImageData, load_splits, quantize, save_image_grid, uniform_dequantize
from diffscore.training import Trainer, apply_overrides, get_preset

#: name -> (preset, overrides); every model validates once, at its last step, on 64 images
MODELS = {
    "mlp": ("digits", ["seed=1"]),
    "mlp_seed2": ("digits", ["seed=2"]),
    "shuffled": ("digits", ["seed=4"]),
    "unet": ("digits_unet", ["seed=3", "batch_size=64", "lr=5e-4", "lr_schedule=cosine"]),
}


def permute_pixels(data: ImageData, perm: torch.Tensor) -> ImageData:
    """The same images with their pixels (the flattened H x W positions) reordered by ``perm``."""
    images = data.images.flatten(1)[:, perm].reshape(data.images.shape)
    return ImageData(images, data.labels, data.num_bins, data.classes)


def train_or_load(name: str, steps: int, out: Path, splits: dict[str, ImageData]) -> ds.ScoreModel:
    directory = out / name / "model"
    if (directory / "config.json").is_file():
        return ds.ScoreModel.from_pretrained(directory)
    preset, overrides = MODELS[name]
    config = apply_overrides(
        get_preset(preset),
        [*overrides, f"steps={steps}", f"eval_every={steps}", "val_limit=64", "quality_samples=0"],
    )
    trainer = Trainer(config, out / name, data=splits)
    trainer.fit()
    trainer.export()
    return trainer.best_model()


def encode(model: ds.ScoreModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ds.encode(model.sde, model, x, eps=1e-5, rtol=1e-5, atol=1e-5).flatten(1)


def compare(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float]:
    """Median over images of ||z1 - z2|| / ||z1||, and mean over images of the correlation of the
    coordinates of z1 and z2."""
    distance = (z1 - z2).norm(dim=1) / z1.norm(dim=1)
    a, b = z1 - z1.mean(1, keepdim=True), z2 - z2.mean(1, keepdim=True)
    correlation = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return float(distance.median()), float(correlation.mean())


def bar_figure(latents: dict[str, torch.Tensor], images: list[int], path: str) -> None:
    """Paper Fig. 7 for the digits: the 64 coordinates of each model's latent of a few test images, as
    paired bars (mlp dark, U-Net light), one panel per image."""
    z1, z2 = latents["mlp"], latents["unet"]
    width, height, bar = 8 * 64 + 20, 120, 3
    canvas = Image.new("RGB", (width, len(images) * (height + 10) + 10), "white")
    draw = ImageDraw.Draw(canvas)
    for row, i in enumerate(images):
        top = 10 + row * (height + 10)
        zero, unit = (
            top + height // 2,
            height / 2 / max(3.0, float(max(z1[i].abs().max(), z2[i].abs().max()))),
        )
        draw.line([(10, zero), (width - 10, zero)], fill=(128, 128, 128))
        for d in range(z1.shape[1]):
            left = 10 + 8 * d
            for offset, z, color in ((0, z1, (31, 73, 125)), (bar, z2, (230, 150, 60))):
                y = zero - float(z[i, d]) * unit
                draw.rectangle(
                    [left + offset, min(y, zero), left + offset + bar - 1, max(y, zero)], fill=color
                )
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "diffscore")
    ds.io.atomic_write(
        ds.io.check_output(path, (".png",), "--figure"), lambda f: canvas.save(f, "PNG", pnginfo=info)
    )


def interpolation_strip(model: ds.ScoreModel, test: ImageData, x: torch.Tensor, path: str) -> None:
    """Two pairs of test digits of different classes, 8 frames each: latent, data and time rows."""
    first = {int(c): int((test.labels == c).nonzero()[0, 0]) for c in (0, 1, 4, 7)}
    a, b = x[[first[0], first[4]]], x[[first[1], first[7]]]
    rows = []
    with torch.no_grad():
        for space in ("latent", "data", "time"):
            solver = dict(eps=1e-5, rtol=1e-5, atol=1e-5, method="dopri8")
            rows.append(ds.interpolate(model.sde, model, a, b, 8, space, **solver))
    strip = torch.stack(rows, dim=1).flatten(0, 2)  # pair, space, frame
    strip = quantize(strip, test.num_bins, (-1.0, 1.0))
    save_image_grid(strip, path, nrow=8, num_bins=test.num_bins, scale=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/identifiable", help="where the models go (reused if there)")
    parser.add_argument("--mlp-steps", type=int, default=4000, help="training steps of the MLP models")
    parser.add_argument("--unet-steps", type=int, default=1000, help="training steps of the U-Net (batch 64)")
    parser.add_argument("--figure", help="write the latents of three test digits as a PNG bar chart")
    parser.add_argument("--strip", help="write interpolations between test digits as a PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)

    splits = load_splits("digits")
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = {k: permute_pixels(v, perm) for k, v in splits.items()}
    test = splits["test"]
    x = uniform_dequantize(test.images, test.num_bins, (-1.0, 1.0), torch.Generator().manual_seed(0))
    x_shuffled = x.flatten(1)[:, perm].reshape(x.shape)

    latents, models = {}, {}
    for name in MODELS:
        steps = args.unet_steps if name == "unet" else args.mlp_steps
        model = models[name] = train_or_load(name, steps, out, shuffled if name == "shuffled" else splits)
        latents[name] = encode(model, x)
        if name == "shuffled":  # the shuffled images, their latents put back in the pixels' order
            latents["shuffled, P x, unpermuted"] = encode(model, x_shuffled)[:, torch.argsort(perm)]

    z1 = latents["mlp"]
    print(f"{len(x)} test digits, D = 64; against the latents z1 of the mlp model")
    print(f"{'latents z2':<32} {'||z1 - z2|| / ||z1||':>22} {'correlation':>12}")
    rows = {name: z for name, z in latents.items() if name != "mlp"}
    rows["mlp, another image"] = z1.roll(1, dims=0)
    for name, z2 in rows.items():
        distance, correlation = compare(z1, z2)
        print(f"{name:<32} {distance:>22.3f} {correlation:>12.3f}")
    print(f"(independent N(0, I) latents: distance sqrt(2) = {math.sqrt(2):.3f}, correlation 0)")
    if args.figure:
        bar_figure(latents, [0, 1, 2], args.figure)
    if args.strip:
        interpolation_strip(models["mlp"], test, x, args.strip)


if __name__ == "__main__":
    main()
