"""Training a discrete-data score model for likelihood: the variational bound as the loss, early stopping
on the validation bound.

The model is a :class:`~diffscore.nets.BinPosteriorNet` (the clean image predicted through the exact
per-dimension posterior over the bins) under the run's SDE, trained on the bin centres (no
dequantization) with one draw of the variational bound per image as the loss
(:func:`diffscore.bound.elbo_terms`, log-SNR uniform on [lambda(T), lambda(eps)]: Kingma et al. 2021).
On small data sets such models overfit within minutes, so the weights of the best validation bound
are kept and training stops when the bound has not improved for ``patience`` evaluations.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..bound import (
    LogSNRProposal,
    bin_centres,
    categorical_decoder,
    elbo_terms,
    likelihood_bound,
    log_snr_range,
)
from ..nets import BinPosteriorNet
from ..score import ScoreModel
from ..sde import SDE, sde_to_config

__all__ = ["BoundTrainingConfig", "train_bound_model", "validation_bound"]


@dataclass
class BoundTrainingConfig:
    """Options of :func:`train_bound_model` (plain values; a JSON dict in a run's config).

    net_options: :class:`~diffscore.nets.BinPosteriorNet` arguments (hidden, depth, dropout, ...).
    lr, weight_decay (AdamW), batch_size, max_steps, max_seconds (wall-clock budget of the loop),
    ema_rate (0: none; else the validation and the selection use the EMA weights),
    eval_every (steps between validation bounds), patience (evaluations without improvement before
    stopping), val_samples (bound draws per validation image), eps (the decoder's time), seed,
    test_samples (bound draws per test image in a training run's report).
    """

    net_options: dict[str, Any] = field(default_factory=dict)
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_steps: int = 20_000
    max_seconds: float = 120.0
    eval_every: int = 100
    patience: int = 10
    val_samples: int = 8
    eps: float = 1e-5
    ema_rate: float = 0.0
    seed: int = 0
    test_samples: int = 256

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BoundTrainingConfig:
        """Build from a dict of the fields; ValueError naming unknown ones."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown bound-model options {unknown}; valid: {sorted(names)}")
        return cls(**d)


def validation_bound(
    model: ScoreModel,
    x_int: Tensor,
    num_bins: int,
    data_range: tuple[float, float],
    n: int,
    eps: float,
    seed: int,
) -> float:
    """Mean bits/dim of the variational bound over ``x_int`` with ``n`` seeded draws per image (the same
    draws at every call)."""
    gens = [torch.Generator(x_int.device).manual_seed(seed + i) for i in range(x_int.shape[0])]
    res = likelihood_bound(
        model.sde,
        model,
        x_int,
        num_bins,
        data_range,
        n_samples=n,
        eps=eps,
        generator=gens,
        dtype=model.net.centres.dtype,
    )
    return float(res.bpd.mean())


def train_bound_model(
    sde: SDE,
    train_int: Tensor,
    val_int: Tensor,
    num_bins: int,
    data_range: tuple[float, float],
    config: BoundTrainingConfig,
    echo: Callable[[str], None] | None = None,
) -> tuple[ScoreModel, dict[str, Any]]:
    """Train a :class:`~diffscore.nets.BinPosteriorNet` score model on ``train_int`` (N, *shape) integers
    by the variational bound; keep the weights of the best validation bound.

    Runs on the device of ``train_int`` in torch's default dtype; dropout draws from torch's global RNG,
    seeded from ``config.seed``.

    Returns:
        ``(model, info)``: the selected model (eval mode) and ``{"steps", "best_step", "val_bpd",
        "seconds", "history"}`` (history: (step, validation bits/dim) pairs).
    """
    torch.manual_seed(config.seed)
    device, dim = train_int.device, train_int[0].numel()
    net = BinPosteriorNet(dim, num_bins, tuple(data_range), sde_to_config(sde), **config.net_options)
    net.set_bin_frequencies(train_int)
    model = ScoreModel(net.to(device), sde, "noise", event_shape=tuple(train_int.shape[1:]))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lo, hi = data_range
    x_all = lo + (hi - lo) * (train_int.to(net.centres.dtype) + 0.5) / num_bins
    centres = bin_centres(num_bins, (lo, hi), x_all)
    gen = torch.Generator(device).manual_seed(config.seed)
    proposal = LogSNRProposal(*log_snr_range(sde, config.eps))

    ema = copy.deepcopy(model).eval() if config.ema_rate > 0 else None
    scored = ema if ema is not None else model

    def evaluate() -> float:
        model.eval()
        value = validation_bound(scored, val_int, num_bins, data_range, config.val_samples, config.eps, 777)
        model.train()
        return value

    best = evaluate()
    best_state, best_step, history = copy.deepcopy(scored.state_dict()), 0, [(0, best)]
    start, since_best, step = time.perf_counter(), 0, 0
    model.train()
    while step < config.max_steps and time.perf_counter() - start < config.max_seconds:
        idx = torch.randint(0, x_all.shape[0], (config.batch_size,), generator=gen, device=device)
        x, x_int = x_all[idx], train_int[idx]
        u = torch.rand(config.batch_size, generator=gen, device=device, dtype=x.dtype)
        terms = elbo_terms(
            sde, model, x, categorical_decoder(x_int, centres), config.eps, u, gen, proposal=proposal
        )
        loss = sum(terms).mean() / dim
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - config.ema_rate)
        step += 1
        if step % 50 == 0:
            proposal.fit()
        if step % config.eval_every == 0:
            value = evaluate()
            history.append((step, value))
            if value < best:
                best, best_state, best_step, since_best = value, copy.deepcopy(scored.state_dict()), step, 0
            else:
                since_best += 1
            if echo is not None:
                echo(f"step {step}: validation bound {value:.4f} bits/dim (best {best:.4f} at {best_step})")
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    info = dict(
        steps=step, best_step=best_step, val_bpd=best, seconds=time.perf_counter() - start, history=history
    )
    return model, info
