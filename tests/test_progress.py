"""The progress bar of solves (diffscore.evaluation.progress): it ends showing the NFE and end time."""

from __future__ import annotations

import pytest
import torch

import diffscore as ds
from diffscore.evaluation.progress import SolveProgress
from diffscore.oracles import GaussianMixture


@pytest.mark.parametrize(
    ("method", "options", "nfe"),
    [
        ("unipc", dict(num_steps=10), 10),
        ("dpmpp", dict(num_steps=7), 7),
        ("heun", dict(num_steps=4), 7),  # 2 N - 1 with the denoising step (at t = eps)
        ("pc", dict(num_steps=5, corrector="none", denoise=False), 5),
        ("sde_dpmpp_2m", dict(num_steps=6), 6),
    ],
)
def test_the_bar_ends_showing_the_solve_nfe_and_end_time(method, options, nfe):
    # a fast solve (well under the bar's 0.1 s refresh interval) must still end showing its own NFE and
    # the time of its last score call (not those of its first call, at t = T); the second solve shows its
    # own count, not the sum
    sde = ds.VPSDE()
    exact = GaussianMixture([1.0], torch.zeros(1, 2), 0.5).score_fn(sde)
    calls = []

    def score(x, t):
        calls.append(float(t[0]))
        return exact(x, t)

    bar = SolveProgress("test", total=8)
    counted = bar.wrap(score)
    for _ in range(2):
        stats: dict = {}
        ds.sample(
            sde,
            counted,
            (4, 2),
            method=method,
            generator=torch.Generator().manual_seed(0),
            stats=stats,
            **options,
        )
        bar.advance(4)
        assert stats["nfe"] == nfe
        assert f"nfe={nfe}" in bar.bar.postfix, bar.bar.postfix
        assert calls[-1] < 0.25 and f"t={calls[-1]:.4f}" in bar.bar.postfix, (calls[-1], bar.bar.postfix)
    bar.close()
