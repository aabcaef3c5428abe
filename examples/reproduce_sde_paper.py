"""Song et al. 2021 (score SDEs) with the released checkpoints: Table 2 bits/dim and Table 3 samples.

Takes a model directory converted by ``diffscore convert`` (docs/pretrained.md) and local data; nothing
is downloaded. Meant for a GPU machine: the full test-set bits/dim is 5 x 10,000 likelihood solves of a
62M-parameter network, and 50,000 PC samples take 1000 steps (2000 at 256 px) each.

Bits/dim (Table 2: DDPM++ cont. VP 3.16, sub-VP 3.02; deep: 3.13, 2.99), the reference's evaluation:
uniformly dequantized CIFAR-10 test images, 5 passes over the test set with fresh dequantization noise,
the probability-flow ODE from t = 1e-5 with RK45 (here dopri5) at rtol = atol = 1e-5 and a Rademacher
Hutchinson divergence estimate::

    python examples/reproduce_sde_paper.py bpd --model vp_ddpmpp --cifar10 ~/data/cifar10 --device cuda

``--cifar10`` is the folder holding ``cifar-10-batches-py`` (``pip install diffscore[vision]``);
``--images x.safetensors`` takes any uint8 (N, C, H, W) tensor instead. ``--limit``/``--repeats`` make
short runs.

Samples for Table 3's FID (NCSN++ cont. VE 2.38, deep 2.20; DDPM++ cont. VP 2.55, sub-VP 2.61): the
sampler stored in the converted model's metadata (the released config's PC sampler: reverse diffusion
+ Langevin at snr 0.16 for VE, Euler-Maruyama without corrector for VP / sub-VP, N = 1000 steps, final
denoising step), written as PNG files::

    python examples/reproduce_sde_paper.py samples --model ve_ncsnpp --num 50000 --out samples/ --device cuda

Score them with ``diffscore fid`` (issue 13's ``metrics`` extra), see docs/pretrained.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import diffscore as ds
from diffscore.data import load_cifar10, quantize

#: Song et al. 2021, Table 2 (and the score_sde_pytorch README): bits/dim on the CIFAR-10 test set
PAPER_BPD = {
    "vp/cifar10_ddpmpp_continuous": 3.16,
    "vp/cifar10_ddpmpp_deep_continuous": 3.13,
    "subvp/cifar10_ddpmpp_continuous": 3.02,
    "subvp/cifar10_ddpmpp_deep_continuous": 2.99,
}


def load(model_dir: str | Path, device: str) -> tuple[ds.ScoreModel, dict[str, Any]]:
    """The converted model on ``device`` and its metadata (config.json's ``metadata``)."""
    model = ds.ScoreModel.from_pretrained(model_dir, map_location=device)
    metadata = json.loads((Path(model_dir) / "config.json").read_text())["metadata"]
    return model, metadata


def _generators(seeds: range, device: str) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(s) for s in seeds]


def bits_per_dim(
    model_dir: str | Path,
    images: torch.Tensor,
    repeats: int = 5,
    batch_size: int = 250,
    seed: int = 0,
    device: str = "cpu",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    log=print,
) -> torch.Tensor:
    """Bits/dim of every image in every pass: (repeats, N).

    Image i of pass r draws its dequantization noise and Hutchinson probe from its own generator,
    seeded ``seed + r * N + i``, so the result does not depend on the batch size.
    """
    model, metadata = load(model_dir, device)
    n = images.shape[0]
    out = torch.empty(repeats, n, dtype=torch.float64)
    start = time.perf_counter()
    for r in range(repeats):
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            res = ds.bits_per_dim(
                model.sde,
                model,
                images[lo:hi].to(device),
                num_bins=int(metadata["num_bins"]),
                data_range=tuple(metadata["data_range"]),
                divergence="hutchinson",
                probe="rademacher",
                eps=float(metadata["likelihood_eps"]),
                rtol=rtol,
                atol=atol,
                generator=_generators(range(seed + r * n + lo, seed + r * n + hi), device),
            )
            out[r, lo:hi] = res.bpd.double().cpu()
            done = r * n + hi
            log(
                f"pass {r + 1}/{repeats}, images {hi}/{n}: mean so far {out.flatten()[:done].mean():.4f} "
                f"bits/dim ({res.nfe} NFE for this batch, {time.perf_counter() - start:.0f} s)"
            )
    return out


def write_samples(
    model_dir: str | Path,
    out: str | Path,
    num: int,
    batch_size: int = 500,
    seed: int = 0,
    device: str = "cpu",
    num_steps: int | None = None,
    log=print,
) -> int:
    """Draw ``num`` samples with the model's stored sampler settings and write ``out/000000.png``, ...

    Sample i uses its own generator seeded ``seed + i``. Returns the number of files written.
    """
    model, metadata = load(model_dir, device)
    settings = dict(metadata["sampling"])
    method = settings.pop("method")
    if num_steps is not None:
        settings["num_steps"] = num_steps
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(metadata["image_shape"])
    data_range = tuple(metadata["data_range"])
    start = time.perf_counter()
    for lo in range(0, num, batch_size):
        hi = min(lo + batch_size, num)
        with torch.no_grad():
            x = ds.sample(
                model.sde,
                model,
                (hi - lo, *shape),
                method=method,
                generator=_generators(range(seed + lo, seed + hi), device),
                **settings,
            )
        x_int = quantize(x.cpu(), int(metadata["num_bins"]), data_range)
        for i, image in enumerate(x_int):
            Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(out / f"{lo + i:06d}.png")
        log(f"{hi}/{num} samples ({time.perf_counter() - start:.0f} s)")
    return num


def _images(args: argparse.Namespace) -> torch.Tensor:
    if args.images:
        from safetensors.torch import load_file

        tensors = load_file(args.images)
        if len(tensors) != 1:
            raise SystemExit(f"--images: {args.images} must hold exactly one tensor, holds {sorted(tensors)}")
        images = next(iter(tensors.values()))
    elif args.cifar10:
        images = load_cifar10(args.cifar10, split="test").images
    else:
        raise SystemExit("give --cifar10 ROOT or --images FILE.safetensors")
    return images[: args.limit] if args.limit else images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bpd = sub.add_parser("bpd", help="Table 2: bits/dim on the CIFAR-10 test set")
    bpd.add_argument("--model", required=True, help="converted model directory")
    bpd.add_argument("--cifar10", help="folder holding cifar-10-batches-py")
    bpd.add_argument("--images", help="a .safetensors file with one uint8 (N, C, H, W) tensor instead")
    bpd.add_argument("--repeats", type=int, default=5, help="passes over the images (reference: 5)")
    bpd.add_argument("--limit", type=int, help="only the first N images")
    bpd.add_argument("--batch-size", type=int, default=250)
    bpd.add_argument("--output", help="write the (repeats, N) bits/dim to this .safetensors file")
    smp = sub.add_parser("samples", help="Table 3: samples with the paper's sampler settings, as PNG files")
    smp.add_argument("--model", required=True, help="converted model directory")
    smp.add_argument("--out", required=True, help="folder for 000000.png, 000001.png, ...")
    smp.add_argument("--num", type=int, default=50000)
    smp.add_argument("--batch-size", type=int, default=500)
    smp.add_argument("--steps", type=int, help="override the number of sampler steps (short test runs)")
    for p in (bpd, smp):
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "bpd":
        values = bits_per_dim(
            args.model, _images(args), args.repeats, args.batch_size, args.seed, args.device
        )
        if args.output:
            from safetensors.torch import save_file

            save_file({"bpd": values.float()}, args.output)
        _, metadata = load(args.model, "cpu")
        name = metadata.get("source", {}).get("config")
        paper = f" (paper: {PAPER_BPD[name]})" if name in PAPER_BPD else ""
        sem = values.flatten().std().item() / math.sqrt(values.numel())
        print(f"bits/dim: {values.mean():.4f} +- {sem:.4f} over {values.numel()} evaluations{paper}")
    else:
        write_samples(args.model, args.out, args.num, args.batch_size, args.seed, args.device, args.steps)
        print(f"wrote {args.num} PNG files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
