"""Digits bits/dim against a discrete autoregressive peer, and bits/dim against NFE and wall time for each
likelihood estimator of the trained likelihood model.

    python benchmarks/bench_likelihood.py --model runs/digits

``--model`` is what ``diffscore train`` (no arguments) wrote. Prints two tables (docs/likelihood.md):

1. test bits/dim (mean / median / worst, 297 images, 17 levels, the split of ``diffscore train``) of
   MADE (Germain et al. 2015: 2 hidden layers of 128, a per-pixel categorical over the 17 levels,
   AdamW, lr 1e-3, weight decay 1.0 (chosen on the validation split among weight decay 0.1 / 1.0 and
   dropout 0.3), 150 epochs, the validation NLL selects the epoch; exact -log2 P(x) / D), of the run's
   likelihood model (its ELBO and its exact ODE with truncated-normal dequantization, from its
   results.json), of the run's sample model (exact ODE, uniform dequantization) and of the Gaussian fit;
2. the likelihood model's estimators on the first ``--images`` test images: the ELBO at 16 / 64 / 256
   draws per image (mean, standard error of the mean, NFE per image, seconds) and the exact ODE with
   truncated-normal dequantization at two tolerances (NFE per solve, seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import diffscore as ds
from diffscore.data import load_digits
from diffscore.evaluation import evaluate_bound, evaluate_bpd, summarize

K = 17


class MADE(nn.Module):
    """Masked autoencoder (Germain et al. 2015) for D pixels with K levels each: pixel i's categorical
    depends on pixels 0..i-1 (raster order) through masked hidden layers."""

    def __init__(self, d: int, hidden: int = 128, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.d = d
        degrees_in = torch.arange(1, d + 1)
        hidden_degrees = [torch.arange(hidden) % (d - 1) + 1 for _ in range(layers)]
        sizes = [d * K, *[hidden] * layers]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out = nn.Linear(hidden, d * K)
        masks, prev = [], degrees_in.repeat_interleave(K)
        for deg in hidden_degrees:
            masks.append((deg[:, None] >= prev[None, :]).float())
            prev = deg
        out_deg = degrees_in.repeat_interleave(K)
        masks.append((out_deg[:, None] > prev[None, :]).float())
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_int: Tensor) -> Tensor:
        """(N, D) integers -> (N, D, K) logits."""
        h = F.one_hot(x_int.long(), K).float().flatten(1)
        for i, lin in enumerate(self.linears):
            h = self.dropout(F.relu(F.linear(h, lin.weight * getattr(self, f"mask{i}"), lin.bias)))
        w = self.out.weight * getattr(self, f"mask{len(self.linears)}")
        return F.linear(h, w, self.out.bias).reshape(-1, self.d, K)

    def bpd(self, x_int: Tensor) -> Tensor:
        """(N,) exact -log2 P(x) / D."""
        logp = -F.cross_entropy(self(x_int).transpose(1, 2), x_int.long(), reduction="none").sum(1)
        return -logp / (self.d * math.log(2))


def train_made(
    train: Tensor, val: Tensor, epochs: int = 150, seed: int = 0, lr: float = 1e-3, weight_decay: float = 1.0,
    dropout: float = 0.0,
) -> tuple[MADE, float]:  # fmt: skip
    torch.manual_seed(seed)
    model = MADE(train.shape[1], dropout=dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state = math.inf, None
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(train.shape[0]).split(128):
            loss = model.bpd(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(model.bpd(val).mean())
        if v < best:
            best, best_state = v, {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), time.perf_counter() - start


def row(name: str, s: dict, note: str = "") -> str:
    return f"| {name} | {s['mean']:.3f} / {s['median']:.3f} / {s['worst']:.3f} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/digits", help="the output folder of `diffscore train`")
    parser.add_argument("--images", type=int, default=64, help="test images of the estimator table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.model)
    results = json.loads((run / "results.json").read_text())
    splits = {s: load_digits(s).images.reshape(-1, 64) for s in ("train", "validation", "test")}

    made, seconds = train_made(splits["train"], splits["validation"])
    with torch.no_grad():
        made_test = summarize(made.bpd(splits["test"]))
    lm = results["likelihood_model"]
    print("| model (digits test split, 297 images) | bits/dim mean / median / worst | estimator |")
    print("|---|---|---|")
    print(row("diffscore likelihood model", lm["elbo"], f"ELBO, {lm['elbo']['samples']} draws per image"))
    print(row("same model", lm["ode_truncated_normal"], "exact ODE, truncated-normal dequantization"))
    print(row("MADE, 2 x 128, weight decay 1.0", made_test, f"exact; trained in {seconds:.0f} s"))
    print(row("diffscore sample model", results["test_bpd"], "exact ODE, uniform dequantization"))
    print(row("full-covariance Gaussian fit", results["gaussian_baseline_bpd"], "closed form, uniform deq."))

    model = ds.ScoreModel.from_pretrained(run / "bound_model")
    meta = json.loads((run / "bound_model" / "config.json").read_text())["metadata"]
    x = splits["test"][: args.images].reshape(-1, 1, 8, 8)
    print(f"\n| estimator (first {args.images} test images) | mean bits/dim | +- s.e. | NFE | seconds |")
    print("|---|---|---|---|---|")
    for n in (16, 64, 256):
        start = time.perf_counter()
        res = evaluate_bound(model, x, K, (-1.0, 1.0), n_samples=n, eps=1e-5, seed=23456)
        took = time.perf_counter() - start
        print(
            f"| ELBO, {n} draws | {float(res['bpd'].mean()):.4f} | {res['stderr_mean']:.4f} | "
            f"{res['nfe']} per image | {took:.1f} |"
        )
    for deq in ("truncated_normal",):  # uniform noise over a bin scores this sharp model badly
        for tol in (1e-3, 1e-4):
            start = time.perf_counter()
            bpd, nfe = evaluate_bpd(
                model, x, K, (-1.0, 1.0), eps=meta.get("likelihood_eps", 1e-5), rtol=tol, atol=tol,
                seed=12345, dequantization=deq,
            )  # fmt: skip
            took = time.perf_counter() - start
            name = deq.replace("_", "-")
            print(
                f"| exact ODE, {name} deq., tol {tol:g} | {float(bpd.mean()):.4f} | - | {nfe} | {took:.1f} |"
            )


if __name__ == "__main__":
    main()
