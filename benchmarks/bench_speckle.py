"""Where the grey speckle of the digits samples comes from: model, sampler, eps, denoising, quantization.

    python benchmarks/bench_speckle.py --model runs/digits/model [--rows NAME ...] [--quantiles] [--main-job]
        [--extractor-dir DIR]

For each row (a sampler setting; ``--rows`` picks some, default all), 1000 samples per seed for seeds
1000, 1001, 1002 (one ``torch.Generator`` per seed, as in bench_quality.py), scored against the test
split with the digits extractor:

* ``fid_bins``: digits FID of the samples quantized to the 17 bins (what ``diffscore train`` saves),
  mean +- standard error over the seeds; ``fid_float``: of the float samples (clipped to [-1, 1]);
* ``kid_x1e3``: KID of the quantized samples; ``IS``: the Inception-Score analogue;
* ``isolated``: isolated grey pixels per image: a pixel at level 1..8 whose four neighbours are all 0
  (the test images have none);
* ``bg_nonzero``: fraction of nonzero pixels at the "background" positions, where at least 90% of the
  test images are 0 (test images: 1.4%).

``--main-job`` also prints the ``sample quality`` line (:func:`diffscore.evaluation.quality_report`)
for 1000 samples drawn as ``diffscore train`` draws them (per-sample generators, seed 0), with the
old default (eps 1e-3) and the recommended one (eps 0.1). ``--quantiles`` also prints quantiles of
the float values the probability flow (dopri5) gives at the background positions, against the cell
[-1, -1 + 2/17) that bin 0 dequantizes to.
Timings are wall-clock on a shared machine: rough.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_samplers import print_table  # noqa: E402

import diffscore as ds  # noqa: E402
from diffscore.data import load_digits, quantize  # noqa: E402
from diffscore.evaluation import digits_evaluator, gaussian_fit_samples  # noqa: E402

NUM, SEEDS = 1000, (0, 1, 2)


def isolated(images: torch.Tensor) -> float:
    """Mean number per image of pixels at level 1..8 whose four neighbours are all 0."""
    x = images.to(torch.int64)[:, 0]
    p = torch.nn.functional.pad(x, (1, 1, 1, 1))
    neighbours = torch.stack([p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]).amax(0)
    return float(((x >= 1) & (x <= 8) & (neighbours == 0)).double().sum((1, 2)).mean())


def rows() -> dict[str, tuple[str, dict[str, Any], bool]]:
    """name -> (method, options, Tweedie step after the solve)."""
    pc = dict(num_steps=500)
    return {
        "pc_default": ("pc", pc, False),
        "pc_eps1e-5": ("pc", dict(pc, eps=1e-5), False),
        "pc_2000": ("pc", dict(num_steps=2000), False),
        "pc_snr0.08": ("pc", dict(pc, snr=0.08), False),
        "pc_snr0.32": ("pc", dict(pc, snr=0.32), False),
        "ode_tight": ("ode", dict(rtol=1e-7, atol=1e-7), False),
        "ode_tweedie": ("ode", {}, True),
        "sde": ("sde", dict(num_steps=1000), False),
        **{
            f"pc_eps{e:g}": ("pc", dict(pc, eps=e), False)
            for e in (1e-2, 3e-2, 5e-2, 7e-2, 1e-1, 1.5e-1, 2e-1)
        },
        "pc_eps0.1_nodenoise": ("pc", dict(pc, eps=0.1, denoise=False), False),
        "pc_snr0.08_eps0.1": ("pc", dict(pc, snr=0.08, eps=0.1), False),
        "pc_ancestral_eps0.1": ("pc", dict(pc, predictor="ancestral", eps=0.1), False),
        "pc_200_eps0.1": ("pc", dict(num_steps=200, eps=0.1), False),
        "ode_tweedie_eps0.1": ("ode", dict(eps=0.1), True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory of diffscore train")
    parser.add_argument(
        "--rows", nargs="+", choices=sorted(rows()), default=None, help="rows to run (default all)"
    )
    parser.add_argument("--quantiles", action="store_true", help="also print the background value quantiles")
    parser.add_argument(
        "--main-job",
        action="store_true",
        help="also print the sample quality line of the old and new default",
    )
    parser.add_argument("--extractor-dir", type=Path, default=None, help="cache of the digits extractor")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 1)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ds.ScoreModel.from_pretrained(args.model)
    sde = model.sde
    evaluator = digits_evaluator(args.extractor_dir or args.model.resolve().parent / "digits_classifier")
    train, test = load_digits("train").images, load_digits("test").images
    ref = evaluator.reference(test)
    background = (test == 0).double().mean(0) >= 0.9  # (1, 8, 8) positions

    def bg_nonzero(images: torch.Tensor) -> float:
        return float((images[:, background] >= 1).double().mean())

    def tweedie(x: torch.Tensor, eps: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), eps)
        alpha, std = sde.marginal_prob(torch.ones_like(x), t)
        with torch.no_grad():
            return (x + std[0] ** 2 * model(x, t)) / alpha.reshape(-1)[0]

    def measure(name: str, draw: Callable[[int], tuple[torch.Tensor, float]]) -> dict[str, Any]:
        out: list[dict[str, float]] = []
        for seed in SEEDS:
            start = time.perf_counter()
            x, nfe = draw(seed)
            seconds = time.perf_counter() - start
            bins = x if not x.is_floating_point() else quantize(x, 17, (-1.0, 1.0))
            q = evaluator.score(bins, ref)
            f = evaluator.score(x.clamp(-1, 1), ref) if x.is_floating_point() else q
            out.append(
                dict(
                    fid=q.fid,
                    fid_float=f.fid,
                    kid=q.kid.mean,
                    IS=q.inception_score.mean,
                    iso=isolated(bins),
                    bg=bg_nonzero(bins),
                    nfe=nfe,
                    s=seconds,
                )
            )
        fids = [r["fid"] for r in out]
        mean = {k: statistics.mean(r[k] for r in out) for k in out[0]}
        row = dict(
            row=name,
            nfe=mean["nfe"],
            fid_bins=mean["fid"],
            fid_se=statistics.stdev(fids) / math.sqrt(len(fids)),
            fid_float=mean["fid_float"],
            kid_x1e3=1e3 * mean["kid"],
            IS=mean["IS"],
            isolated=mean["iso"],
            bg_nonzero=mean["bg"],
            wall_s=mean["s"],
        )
        print(f"  {name}: FID {row['fid_bins']:.3f} +- {row['fid_se']:.3f}", flush=True)
        return row

    print(
        f"speckle study of {args.model}: {NUM} samples x {len(SEEDS)} seeds; "
        f"test images: isolated grey pixels "
        f"per image {isolated(test):.3f}, background nonzero {bg_nonzero(test):.4f} ({int(background.sum())} "
        f"background positions); torch {torch.__version__}, {args.threads} thread(s)"
    )
    table = [
        measure("floor (train images)", lambda s: (train[torch.randperm(1350, generator=gen(s))[:NUM]], 0)),
        measure("gaussian fit", lambda s: (gaussian_fit_samples(train, NUM, 17, generator=gen(s)), 0)),
        measure(
            "uniform noise",
            lambda s: (torch.randint(0, 17, (NUM, 1, 8, 8), generator=gen(s), dtype=torch.uint8), 0),
        ),
    ]
    for name in args.rows or list(rows()):
        method, options, denoise = rows()[name]

        def draw(seed: int, method=method, options=options, denoise=denoise) -> tuple[torch.Tensor, float]:
            stats: dict[str, Any] = {}
            with torch.no_grad():
                x = ds.sample(
                    sde, model, (NUM, 1, 8, 8), method, generator=gen(1000 + seed), stats=stats, **options
                )
            if denoise:
                x = tweedie(x, options.get("eps", 1e-3))
            return x, stats["nfe"] + int(denoise)

        table.append(measure(name, draw))
    print_table("digits_speckle", table)

    if args.main_job:
        from diffscore.evaluation import format_quality_report, generate_samples, quality_report

        for label, options in (
            ("pc, 500 steps, eps 1e-3", dict(num_steps=500)),
            ("pc, 500 steps, eps 0.1", dict(num_steps=500, eps=0.1)),
        ):
            _, bins = generate_samples(model, NUM, (1, 8, 8), 17, (-1.0, 1.0), "pc", seed=0, **options)
            print(f"\nmain job's sampling ({label}, per-sample generators, seed 0):")
            print(format_quality_report(quality_report(evaluator, bins, train, ref, seed=0)))

    if args.quantiles:
        x = ds.sample(sde, model, (NUM, 1, 8, 8), "ode", generator=gen(5))
        v = x[:, background].flatten()
        qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
        values = v.quantile(torch.tensor(qs, dtype=v.dtype))
        print("\nprobability-flow samples, float values at the background positions (bin 0 is [-1, -0.882)):")
        print("  quantiles " + "  ".join(f"{q:g}: {float(a):.3f}" for q, a in zip(qs, values, strict=True)))
        print(
            f"  above -0.882 (bin >= 1): {float((v >= -1 + 2 / 17).double().mean()):.3f}; "
            f"above -0.765 (bin >= 2): {float((v >= -1 + 4 / 17).double().mean()):.3f}; "
            f"below -1: {float((v < -1).double().mean()):.3f}"
        )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


if __name__ == "__main__":
    main()
