"""The numbers docs/cli.md and docs/encoding.md quote about the trained digits model, measured again.

    python benchmarks/bench_digits_model.py --model runs/digits

``--model`` is what ``diffscore train`` (no arguments) wrote. Prints:

* the ``diffscore bpd`` line (test split, exact divergence, rtol = atol = 1e-5: the command of cli.md);
* the encode -> decode round trip of every dequantized test digit, float32, rtol = atol = 1e-5, with
  dopri5 and dopri8: max abs error and NFE of each direction (docs/encoding.md);
* the main job's ``sample quality`` line from its results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import diffscore as ds


def round_trip(model: ds.ScoreModel, x: torch.Tensor, method: str) -> dict:
    start = time.perf_counter()
    enc, dec = {}, {}
    with torch.no_grad():
        z = ds.encode(model.sde, model, x, eps=1e-5, rtol=1e-5, atol=1e-5, method=method, stats=enc)
        back = ds.decode(model.sde, model, z, eps=1e-5, rtol=1e-5, atol=1e-5, method=method, stats=dec)
    return {
        "method": method,
        "max_abs": float((back - x).abs().max()),
        "nfe": (enc["nfe"], dec["nfe"]),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/digits"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = args.model
    bpd = [sys.executable, "-m", "diffscore.cli", "bpd", "--model", str(run), "--no-progress"]
    print(subprocess.run(bpd, capture_output=True, text=True, check=True).stdout.strip())

    model = ds.ScoreModel.from_pretrained(run / "model" if (run / "model").is_dir() else run)
    test = ds.data.load_digits("test")
    x = ds.data.uniform_dequantize(test.images, 17, (-1, 1), torch.Generator().manual_seed(0))
    for method in ("dopri5", "dopri8"):
        r = round_trip(model, x, method)
        print(
            f"encode -> decode, {x.shape[0]} dequantized test digits, float32, rtol = atol = 1e-5, {method}: "
            f"max abs error {r['max_abs']:.1e} ({r['nfe'][0]} + {r['nfe'][1]} NFE, {r['seconds']:.0f} s)"
        )
    results = run / "results.json"
    if results.is_file() and "sample_quality" in json.loads(results.read_text()):
        from diffscore.evaluation import format_quality_report

        print(format_quality_report(json.loads(results.read_text())["sample_quality"]))


if __name__ == "__main__":
    main()
