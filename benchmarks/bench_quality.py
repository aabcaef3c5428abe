"""Digits FID against NFE for every sampler, on a trained digits model (the SDE paper's Table 1 question).

    python benchmarks/bench_quality.py --model runs/digits/model [--num 1000] [--seeds 3] [--quick]
        [--budget 1000 ...] [--tables samplers equal_nfe] [--extractor-dir DIR] [--out DIR] [--threads 1]

``--model`` is a directory written by ``diffscore train`` (``ScoreModel.from_pretrained``; its metadata
give ``num_bins``, ``data_range`` and the split seed). The digits feature extractor
(:func:`diffscore.evaluation.digits_classifier`) is read from, or trained into, ``--extractor-dir``
(default: ``digits_classifier`` beside the model directory, i.e. in the run folder).

Every row draws ``--num`` samples per seed (one ``torch.Generator`` per seed and row, seeds 1000,
1001, ...), quantizes them to the data's bins as ``diffscore train`` does, and scores them against the
test split: digits FID (mean and standard error over the seeds), KID x 1e3 (mean over seeds), the
Inception-Score analogue and the mean NFE. ``floor`` is ``--num`` training images (a seeded subset per
seed) and ``gaussian fit`` as many draws of the Gaussian fit to the training images: the same N, since
FID is biased upwards at small N.

Tables:

* ``digits_fid_samplers``: every sampler at its usual settings: the probability flow (dopri5 at two
  tolerances), heun, dpm_solver, dpmpp, unipc, sde_dpmpp_2m, the reverse SDE with torchsde's Euler,
  sde_adaptive, PC stopped at eps 0.1 (the main job's default: the speckle study), and PC with
  each predictor (euler_maruyama, reverse_diffusion, ancestral) x corrector (langevin,
  langevin_score_norm, none) at 500 grid steps and one corrector step each.
* ``digits_fid_equal_nfe`` (Song et al. 2021, Table 1 question): at equal NFE (each ``--budget``,
  default 1000), predictor-only on ``budget`` steps (P), corrector-only on ``budget`` steps (C, predictor
  "none", Langevin corrector) and PC on ``budget / 2`` steps with one corrector step each.

Timings are wall-clock on a shared machine: rough.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_samplers import print_table, write_csv  # noqa: E402

import diffscore as ds  # noqa: E402
from diffscore.data import load_digits, quantize  # noqa: E402
from diffscore.evaluation import digits_evaluator, gaussian_fit_samples  # noqa: E402

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral")
CORRECTORS = ("langevin", "langevin_score_norm", "none")  # (annealed_langevin is langevin now)


def sampler_rows(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, setting label, options) for the sampler table."""
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("ode", "dopri5 rtol=atol=1e-5", {}),
        ("ode", "dopri5 rtol=atol=1e-3", dict(rtol=1e-3, atol=1e-3)),
        ("heun", "18 levels (denoise)", dict(num_steps=18)),
        ("dpm_solver", "order 3, 10 steps", dict(num_steps=10)),
        ("dpm_solver", "order 3, 10 steps, denoise", dict(num_steps=10, denoise=True)),
        ("dpmpp", "order 3, 20 steps, logsnr", dict(num_steps=20, order=3)),
        (
            "unipc",
            "order 3 bh2, 20 steps, time_quadratic",
            dict(num_steps=20, order=3, grid="time_quadratic"),
        ),
        ("sde_dpmpp_2m", "100 steps, logsnr", dict(num_steps=100)),
        ("sde", "euler, 1000 steps", dict(num_steps=1000)),
        ("sde_adaptive", "rtol 0.01 atol 0.0078", {}),
        ("pc", "reverse_diffusion + langevin, 500 steps, eps 0.1", dict(num_steps=500, eps=0.1)),
        (
            "pc",
            "reverse_diffusion + langevin, 500 steps, eps 0.1, logsnr",
            dict(num_steps=500, eps=0.1, grid="logsnr"),
        ),
    ]
    if quick:
        rows = rows[:1] + rows[2:4]
    steps = 100 if quick else 500
    for p in PREDICTORS:
        for c in CORRECTORS:
            if quick and (p == "euler_maruyama" or c == "langevin_score_norm"):
                continue
            rows.append(("pc", f"{p} + {c}, {steps} steps", dict(predictor=p, corrector=c, num_steps=steps)))
    return rows


def equal_nfe_rows(budgets: list[int]) -> list[tuple[str, str, dict[str, Any]]]:
    """Predictor-only, corrector-only and PC at each budget of score evaluations (plus one denoising)."""
    rows = []
    for budget in budgets:
        half = budget // 2
        for p in PREDICTORS:
            rows.append(("pc", f"P{budget}: {p} only", dict(predictor=p, corrector="none", num_steps=budget)))
            rows.append(
                ("pc", f"PC{half}: {p} + langevin", dict(predictor=p, corrector="langevin", num_steps=half))
            )
        rows.append(
            (
                "pc",
                f"C{budget}: langevin only",
                dict(predictor="none", corrector="langevin", num_steps=budget),
            )
        )
    return rows


def summarize(label: dict[str, Any], results: list[dict[str, float]]) -> dict[str, Any]:
    fids = [r["fid"] for r in results]
    se = statistics.stdev(fids) / math.sqrt(len(fids)) if len(fids) > 1 else float("nan")
    row = dict(label)
    row.update(
        nfe=round(statistics.mean(r["nfe"] for r in results), 1),
        fid=statistics.mean(fids),
        fid_se=se,
        kid_x1e3=1e3 * statistics.mean(r["kid"] for r in results),
        IS=statistics.mean(r["is"] for r in results),
        wall_s=statistics.mean(r["seconds"] for r in results),
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory of diffscore train")
    parser.add_argument("--num", type=int, default=1000, help="samples per seed and row (default 1000)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--budget", type=int, nargs="+", default=[1000], help="NFE of the equal-NFE table")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=("samplers", "equal_nfe"),
        default=["samplers", "equal_nfe"],
        help="tables to run",
    )
    parser.add_argument("--quick", action="store_true", help="300 samples, 2 seeds, fewer rows (a smoke run)")
    parser.add_argument("--extractor-dir", type=Path, default=None, help="cache of the digits extractor")
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSV files")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 1)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num, seeds, budgets = (300, 2, [200]) if args.quick else (args.num, args.seeds, args.budget)

    from diffscore.io import read_json

    model = ds.ScoreModel.from_pretrained(args.model)
    meta = read_json(args.model / "config.json").get("metadata", {})
    num_bins, data_range = int(meta.get("num_bins", 17)), tuple(meta.get("data_range", (-1.0, 1.0)))
    split_seed = int(meta.get("train_config", {}).get("split_seed", 0))
    shape = tuple(meta.get("image_shape", (1, 8, 8)))
    if meta.get("dataset", "digits") != "digits":
        raise SystemExit(f"{args.model} is not a digits model (dataset {meta.get('dataset')!r})")
    extractor_dir = args.extractor_dir or args.model.resolve().parent / "digits_classifier"
    evaluator = digits_evaluator(
        extractor_dir, split_seed=split_seed, data_range=data_range, echo=print, kid_subsets=50
    )
    train = load_digits("train", seed=split_seed).images
    ref = evaluator.reference(load_digits("test", seed=split_seed).images)
    print(
        f"digits FID of {args.model}: {num} samples per seed, {seeds} seeds, "
        f"{num_bins} bins on {data_range}, "
        f"vs the {ref.num} test images; extractor in {extractor_dir}; torch {torch.__version__}, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    )

    def score(images: torch.Tensor, nfe: float, seconds: float) -> dict[str, float]:
        s = evaluator.score(images, ref)
        return {"fid": s.fid, "kid": s.kid.mean, "is": s.inception_score.mean, "nfe": nfe, "seconds": seconds}

    def draw(method: str, options: dict[str, Any], seed: int) -> dict[str, float]:
        stats: dict[str, Any] = {}
        start = time.perf_counter()
        with torch.no_grad():
            x = ds.sample(
                model.sde,
                model,
                (num, *shape),
                method,
                generator=torch.Generator().manual_seed(1000 + seed),
                stats=stats,
                **options,
            )
        return score(
            quantize(x, num_bins, data_range), stats.get("nfe", float("nan")), time.perf_counter() - start
        )

    references = []
    for name in ("floor (train images)", "gaussian fit"):
        results = []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            if name.startswith("floor"):
                images = train[torch.randperm(train.shape[0], generator=g)[:num]]
            else:
                images = gaussian_fit_samples(train, num, num_bins, data_range, generator=g)
            results.append(score(images, 0, 0.0))
        references.append(summarize(dict(method=name, setting=""), results))

    tables = {}
    done: dict[tuple[str, tuple[tuple[str, Any], ...]], list[dict[str, float]]] = {}
    chosen = {"samplers": sampler_rows(args.quick), "equal_nfe": equal_nfe_rows(budgets)}
    for table, rows in ((f"digits_fid_{name}", chosen[name]) for name in args.tables):
        out = list(references)
        for method, setting, options in rows:
            key = (method, tuple(sorted(options.items())))
            if key not in done:  # the PC rows of the equal-NFE table repeat rows of the sampler table
                done[key] = [draw(method, options, seed) for seed in range(seeds)]
            results = done[key]
            out.append(summarize(dict(method=method, setting=setting), results))
            print(f"  {method} {setting}: FID {out[-1]['fid']:.3f} +- {out[-1]['fid_se']:.3f}", flush=True)
        print_table(table, out)
        write_csv(args.out, table, out)
        tables[table] = out


if __name__ == "__main__":
    main()
