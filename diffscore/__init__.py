"""diffscore: score-based generative modeling with SDEs (Song & Ermon 2019; Song et al. 2021).

The math core (SDEs, scores, dynamics, likelihood, samplers, controllable generation, losses, networks)
is imported with the package; the layers above it (``ds.data``, ``ds.evaluation``, ``ds.training``,
``ds.cli``) and the utilities ``ds.io`` and ``ds.distributed`` are imported on first use.
docs/architecture.md describes the layers.
"""

import importlib
from typing import Any

from . import losses, nets, oracles, perf, sampling
from .controllable import colorize, conditional_score, inpaint
from .dynamics import ForwardSDE, LikelihoodODE, ProbabilityFlowODE, ReverseSDE
from .likelihood import BitsPerDimResult, LikelihoodResult, bits_per_dim, decode, encode, log_likelihood
from .sampling import annealed_langevin, sample
from .score import ScoreModel
from .sde import SDE, VESDE, VPSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ScoreModel",
    "ForwardSDE",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "LikelihoodODE",
    "sample",
    "encode",
    "decode",
    "log_likelihood",
    "bits_per_dim",
    "LikelihoodResult",
    "BitsPerDimResult",
    "oracles",
    "losses",
    "nets",
    "perf",
    "sampling",
    "data",
    "evaluation",
    "training",
    "cli",
    "io",
    "distributed",
    "annealed_langevin",
    "inpaint",
    "colorize",
    "conditional_score",
]

#: Subpackages imported on first attribute access (PEP 562), so ``import diffscore`` stays light.
_LAZY = ("data", "evaluation", "training", "cli", "io", "distributed")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'diffscore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
