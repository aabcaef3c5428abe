"""diffscore: score-based generative modeling with SDEs (Song & Ermon 2019; Song et al. 2021).

``import diffscore as ds`` is instant: every name below and every subpackage (``ds.data``,
``ds.evaluation``, ``ds.training``, ``ds.nets``, ...) is imported on first use (PEP 562), so a command
interrupted while torch loads stops with one line, and a script pays only for what it uses.
docs/architecture.md describes the layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: Public names -> the module that defines them.
_NAMES = {
    "sde": ("SDE", "VESDE", "VPSDE", "SubVPSDE"),
    "score": ("ScoreModel", "ModelCard", "TrainingData"),
    "dynamics": ("ForwardSDE", "ReverseSDE", "ProbabilityFlowODE", "LikelihoodODE"),
    "likelihood": (
        "encode",
        "decode",
        "log_likelihood",
        "bits_per_dim",
        "LikelihoodResult",
        "BitsPerDimResult",
    ),
    "sampling": ("sample", "annealed_langevin"),
    "controllable": ("inpaint", "colorize", "conditional_score"),
    "_checks": ("StepSizeUnderflowError",),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}
#: Subpackages and modules reachable as attributes.
_MODULES = (
    "sde",
    "score",
    "oracles",
    "dynamics",
    "likelihood",
    "sampling",
    "controllable",
    "losses",
    "nets",
    "perf",
    "data",
    "evaluation",
    "training",
    "convert",
    "cli",
    "io",
    "distributed",
)

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ScoreModel",
    "ModelCard",
    "TrainingData",
    "ForwardSDE",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "LikelihoodODE",
    "encode",
    "decode",
    "log_likelihood",
    "bits_per_dim",
    "LikelihoodResult",
    "BitsPerDimResult",
    "sample",
    "annealed_langevin",
    "inpaint",
    "colorize",
    "conditional_score",
    "StepSizeUnderflowError",
    "oracles",
    "losses",
    "nets",
    "perf",
    "sampling",
    "data",
    "evaluation",
    "training",
    "convert",
    "cli",
    "io",
    "distributed",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'diffscore' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from . import (
        cli,
        convert,
        data,
        distributed,
        evaluation,
        io,
        losses,
        nets,
        oracles,
        perf,
        sampling,
        training,
    )
    from ._checks import StepSizeUnderflowError
    from .controllable import colorize, conditional_score, inpaint
    from .dynamics import ForwardSDE, LikelihoodODE, ProbabilityFlowODE, ReverseSDE
    from .likelihood import BitsPerDimResult, LikelihoodResult, bits_per_dim, decode, encode, log_likelihood
    from .sampling import annealed_langevin, sample
    from .score import ModelCard, ScoreModel, TrainingData
    from .sde import SDE, VESDE, VPSDE, SubVPSDE
