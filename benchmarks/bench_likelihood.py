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
   truncated-normal dequantization at two tolerances, with the network's closed-form divergence and,
   at the tighter one, with D vector-Jacobian products instead (NFE per solve, seconds), and the
   importance-weighted bound over 4 and 16 dequantization draws per image (with the standard error of
   the mean over the draws).

With ``--choices`` it first trains the likelihood model of the ``digits`` preset and each variation in
``CHOICES`` (``diffscore.training.bound_model``) and prints their validation bound, the table by which the
preset was chosen (a few minutes).
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
from diffscore.sde import sde_from_config

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


#: Variations of the digits preset's likelihood model (BoundTrainingConfig fields; net_options merged).
CHOICES = [
    ("the preset: width 256, dropout 0.6", {}),
    ("dropout 0.5", {"net_options": {"dropout": 0.5}}),
    ("dropout 0.4", {"net_options": {"dropout": 0.4}}),
    ("input dropout 0.5", {"net_options": {"input_dropout": 0.5}}),
    ("width 512, dropout 0.5", {"net_options": {"hidden": 512, "dropout": 0.5}}),
    ("width 320, dropout 0.5", {"net_options": {"hidden": 320, "dropout": 0.5}}),
    ("3 blocks, dropout 0.5", {"net_options": {"depth": 3, "dropout": 0.5}}),
    ("weight decay 0.1, dropout 0.5", {"weight_decay": 0.1, "net_options": {"dropout": 0.5}}),
]


def choices_table(splits: dict[str, Tensor]) -> None:
    """Validation bound of the preset's likelihood model and of each variation in CHOICES."""
    from diffscore.training import PRESETS
    from diffscore.training.bound_model import BoundTrainingConfig, train_bound_model

    preset = PRESETS["digits"]
    sde = sde_from_config({"name": preset.sde, **preset.sde_options})
    print("| likelihood model (train_bound_model) | validation bits/dim | selected step | seconds |")
    print("|---|---|---|---|")
    for name, change in CHOICES:
        options = {**preset.bound_model, **change}
        options["net_options"] = {**preset.bound_model["net_options"], **change.get("net_options", {})}
        _, info = train_bound_model(
            sde, splits["train"].reshape(-1, 1, 8, 8), splits["validation"].reshape(-1, 1, 8, 8), K,
            (-1.0, 1.0), BoundTrainingConfig.from_dict(options),
        )  # fmt: skip
        step = f"{info['best_step']} of {info['steps']}"
        print(f"| {name} | {info['val_bpd']:.4f} | {step} | {info['seconds']:.0f} |")
    print()


def row(name: str, s: dict, note: str = "") -> str:
    return f"| {name} | {s['mean']:.3f} / {s['median']:.3f} / {s['worst']:.3f} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/digits", help="the output folder of `diffscore train`")
    parser.add_argument("--images", type=int, default=64, help="test images of the estimator table")
    parser.add_argument("--choices", action="store_true", help="first, the table of likelihood-model choices")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.model)
    results = json.loads((run / "results.json").read_text())
    splits = {s: load_digits(s).images.reshape(-1, 64) for s in ("train", "validation", "test")}
    if args.choices:
        choices_table(splits)

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
    # uniform noise over a bin scores this sharp model badly: truncated-normal dequantization only
    vjp = VJPDivergence(model)  # the same score without its closed-form divergence
    # the weighted draws: how far q is from the model's own p(u | x)
    for tol, scored, how, draws in (
        (1e-3, model, "closed-form", 1),
        (1e-4, model, "closed-form", 1),
        (1e-4, vjp, "64 VJPs", 1),
        (1e-4, model, "closed-form", 4),
        (1e-4, model, "closed-form", 16),
    ):
        start = time.perf_counter()
        res = evaluate_bpd(
            scored, x, K, (-1.0, 1.0), eps=meta.get("likelihood_eps", 1e-5), rtol=tol, atol=tol, seed=12345,
            dequantization="truncated_normal", n_samples=draws,
        )  # fmt: skip
        took = time.perf_counter() - start
        weighted = f", {draws} weighted draws" if draws > 1 else ""
        stderr = f"{res['stderr_mean']:.4f}" if draws > 1 else "-"
        name = f"exact ODE ({how} divergence), truncated-normal deq.{weighted}, tol {tol:g}"
        print(f"| {name} | {float(res['bpd'].mean()):.4f} | {stderr} | {res['nfe']} | {took:.1f} |")


class VJPDivergence(nn.Module):
    """A score model seen as a plain score: the likelihood takes D vector-Jacobian products."""

    def __init__(self, model: ds.ScoreModel) -> None:
        super().__init__()
        self.model, self.sde = model, model.sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t)


if __name__ == "__main__":
    main()
