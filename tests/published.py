"""Helpers for the published-checkpoint fixtures in tests/data/published/ (see its README.md).

The fixtures are small, randomly weighted NCSN++ / DDPM++ models written by the reference code itself
(score_sde_pytorch at cb1f359 and diffusers 0.42.1), with the reference's own scores. A test (or the CLI
test of ``diffscore convert``) converts one, then calls :func:`check_model_dir` on the output directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from diffscore import ScoreModel
from diffscore.io import read_tensors

ROOT = Path(__file__).parent / "data" / "published"
#: score_sde_pytorch fixtures: <name>/checkpoint.pth, <name>/config.json, <name>/expected.safetensors
SCORE_SDE = [
    "ve_ncsnpp_cifar10_continuous",
    "vp_ddpmpp_cifar10_continuous",
    "subvp_ddpmpp_cifar10_continuous",
    "ve_ncsnpp_celebahq256_continuous",
]
#: the diffusers fixture: a ScoreSdeVePipeline folder (unet/, scheduler/) and expected.safetensors
DIFFUSERS = "diffusers_ncsnpp"
#: The acceptance tolerance on the per-sample relative error. The fixtures' README measures what the
#: reference itself contributes: its float32 VP / sub-VP std at t = 1e-3 is off by 1.2e-4 / 2.4e-4
#: relative (1 - exp(.) cancels), and float32 Fourier phases of ~1e3 rad give ~1e-5.
TOLERANCE = 5e-4


def score_sde_paths(name: str) -> tuple[Path, Path]:
    """(checkpoint.pth, config.json) of a score_sde_pytorch fixture."""
    return ROOT / name / "checkpoint.pth", ROOT / name / "config.json"


def reference(name: str, sde=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, t, score)`` of fixture ``name``: inputs in the reference's data space, times, its score.

    For the diffusers fixture the reference evaluates at noise levels sigma; ``t`` is the time at which
    ``sde`` (the converted model's ``VESDE(kernel="sigma")``) has std sigma.
    """
    expected = read_tensors(ROOT / name / "expected.safetensors")
    if name == DIFFUSERS:
        return expected["x"], sde.t_from_sigma(expected["sigma"]), expected["model_output"]
    return expected["x"], expected["t"], expected["score"]


def relative_errors(model: ScoreModel, name: str) -> Tensor:
    """Per-sample ``||model(x, t) - score|| / ||score||`` against fixture ``name``'s reference score."""
    x, t, score = reference(name, model.sde)
    with torch.no_grad():
        ours = model.eval()(x, t)
    return (ours - score).flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1)


def check_model_dir(model_dir: str | Path, name: str, tolerance: float = TOLERANCE) -> float:
    """Load a converted model directory and assert its score matches fixture ``name``'s reference.

    Returns the largest per-sample relative error (asserted below ``tolerance``).
    """
    model = ScoreModel.from_pretrained(model_dir)
    errors = relative_errors(model, name)
    assert bool((errors < tolerance).all()), f"{name}: per-sample relative errors {errors.tolist()}"
    return float(errors.max())
