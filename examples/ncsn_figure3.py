"""Song & Ermon 2019, Figure 3: Langevin vs annealed Langevin dynamics on a two-mode mixture.

Data: 0.2 N((-5, -5), I) + 0.8 N((5, 5), I). Both samplers use exact scores and start from the uniform
distribution on [-8, 8]^2. Plain Langevin (eps = 0.1, 1000 steps) keeps the mode weights of its
initialization; annealed Langevin (sigma geometric from 20 to 1, 10 levels, 100 steps each, eps = 0.1)
recovers 0.2 / 0.8. Prints the weight of the (-5, -5) mode for each and saves a three-panel scatter plot
(matplotlib if installed, else Pillow).

    python examples/ncsn_figure3.py --out ncsn_figure3.png --n 1280 --seed 0
"""

from __future__ import annotations

import argparse

import torch

import diffscore as ds
from diffscore.oracles import GaussianMixture
from diffscore.sampling import geometric_sigmas, langevin_dynamics

LIMIT = 9.0  # plot window [-LIMIT, LIMIT]^2


def run(n: int, seed: int) -> dict[str, torch.Tensor]:
    gm = GaussianMixture([0.2, 0.8], torch.tensor([[-5.0, -5.0], [5.0, 5.0]]), 1.0)
    ve = ds.VESDE(sigma_min=0.01, sigma_max=100.0)  # its std(t) is the NCSN sigma: exact perturbed scores

    def score_sigma(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return gm.score(x, ve.t_from_sigma(sigma), ve)

    g = torch.Generator().manual_seed(seed)
    x0 = 16 * torch.rand(n, 2, generator=g) - 8
    return {
        "Samples": gm.sample(n, g),
        "Langevin": langevin_dynamics(lambda x: gm.score(x, 0.0, ve), x0, 0.1, 1000, g),
        "Annealed Langevin": ds.annealed_langevin(
            score_sigma, geometric_sigmas(20.0, 1.0, 10), x0, 0.1, 100, g
        ),
    }


def save_matplotlib(panels: dict[str, torch.Tensor], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (title, x) in zip(axes, panels.items(), strict=True):
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2)
        ax.set(title=title, xlim=(-LIMIT, LIMIT), ylim=(-LIMIT, LIMIT), aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_pillow(panels: dict[str, torch.Tensor], path: str, size: int = 360) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size * len(panels), size + 24), "white")
    draw = ImageDraw.Draw(image)
    for k, (title, x) in enumerate(panels.items()):
        left = k * size
        draw.rectangle([left + 4, 28, left + size - 4, size + 20], outline="black")
        draw.text((left + 8, 6), title, fill="black")
        pix = ((x.clamp(-LIMIT, LIMIT) + LIMIT) / (2 * LIMIT) * (size - 16)).round().long().tolist()
        for px, py in pix:
            cx, cy = left + 8 + px, 24 + size - 8 - py
            draw.ellipse([cx - 1, cy - 1, cx + 1, cy + 1], fill=(31, 119, 180))
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ncsn_figure3.png")
    parser.add_argument("--n", type=int, default=1280)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    panels = run(args.n, args.seed)
    for title, x in panels.items():
        weight = float((x.sum(1) < 0).float().mean())
        print(f"{title:>18}: weight of the (-5, -5) mode = {weight:.3f} (true 0.2)")
    try:
        save_matplotlib(panels, args.out)
    except ImportError:
        save_pillow(panels, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
