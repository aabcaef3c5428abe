"""Peak memory of the exact-divergence likelihood: the default chunking against fixed chunk sizes.

Each configuration runs in its own process (peak resident memory, ``ru_maxrss``, is per process) and
computes ``diffscore.log_likelihood(divergence="exact")`` of a batch of 3x32x32 images under a small
convolutional score network (four 3x3 convolutions of 32 channels with SiLU, the time as an extra
input channel; random weights; VP SDE) with one Euler step: one evaluation, D = 3072 vector-Jacobian
products, whose memory is what the chunk size decides. Prints a table.

    python benchmarks/bench_memory.py [--batch 8] [--chunks auto 64 3072]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def small_conv_net():
    """A small convolutional network(x, t) -> like x for 3-channel images."""
    import torch
    from torch import nn

    class SmallConvNet(nn.Module):
        def __init__(self, width: int = 32) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Conv2d(4, width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, 3, 3, padding=1),
            )

        def forward(self, x, t):
            time = t[:, None, None, None].expand(-1, 1, *x.shape[2:])
            return self.layers(torch.cat([x, time], dim=1))

    return SmallConvNet()


def one(batch: int, chunk: str) -> dict:
    import torch

    import diffscore as ds

    torch.manual_seed(0)
    torch.set_num_threads(1)
    sde = ds.VPSDE()
    model = ds.ScoreModel(small_conv_net(), sde).eval()
    x = torch.randn(batch, 3, 32, 32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = ds.log_likelihood(
        sde,
        model,
        x,
        divergence="exact",
        method="euler",
        options={"step_size": 1.0},
        chunk_size=None if chunk == "auto" else int(chunk),
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "batch": batch,
        "chunk": chunk,
        "nfe": out.nfe,
        "seconds": round(seconds, 1),
        "peak_mib": round(peak / 1024),
        "before_mib": round(before / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunks", nargs="+", default=["auto", "64"])
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.batch, args.one)))
        return
    print(f"{'batch':>5} {'chunk':>6} {'nfe':>4} {'seconds':>8} {'peak MiB':>9} {'before solve MiB':>17}")
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--one", chunk]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"{r['batch']:>5} {r['chunk']:>6} {r['nfe']:>4} {r['seconds']:>8} {r['peak_mib']:>9} "
            f"{r['before_mib']:>17}"
        )


if __name__ == "__main__":
    main()
