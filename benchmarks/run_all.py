"""Run every performance benchmark: print the tables and write one CSV per table.

    python benchmarks/run_all.py [--quick] [--out runs/bench] [--threads 2] [--only samplers|solvers|overhead]

``bench_samplers.py``: sample quality against NFE for every sampler on Gaussian mixtures (D = 64 and
3072) and the fast ODE samplers' error curves against a tight probability flow. ``bench_solvers.py``
(issue 10): the PC sampler's variance in every dimension, inpainting / colorization against the exact
conditional, every deterministic sampler's RMS to a tight PF-ODE at NFE 5-50 and every stochastic
sampler's log-density gap at NFE 20-100 on the D = 64 mixture, beside the peers' figures.
``bench_overhead.py``: cost per NFE against the bare network (small NCSN++), the likelihood's cost,
exact against Hutchinson divergence, batch-size scaling and training throughput. See each file's
docstring for the columns.

The full run takes about 25 minutes on 2 busy CPU cores (``--quick``: about 5). Timings are wall-clock
on whatever else the machine is doing: compare rows of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_overhead  # noqa: E402
import bench_samplers  # noqa: E402
import bench_solvers  # noqa: E402

SUITES = {"samplers": bench_samplers.run, "solvers": bench_solvers.run, "overhead": bench_overhead.run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings, samples and repeats")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the CSV files")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 1)))
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run only these suites")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"diffscore benchmarks: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, quick={args.quick}"
    )
    start = time.perf_counter()
    for name in args.only or list(SUITES):
        suite_start = time.perf_counter()
        SUITES[name](args.quick, args.out)
        print(f"\n[{name}: {time.perf_counter() - suite_start:.0f} s]")
    print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s; CSV files in {args.out}/")


if __name__ == "__main__":
    main()
