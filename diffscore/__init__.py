"""diffscore: score-based generative modeling with SDEs (Song & Ermon 2019; Song et al. 2021)."""

from . import losses, nets, oracles, perf
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
    "annealed_langevin",
    "inpaint",
    "colorize",
    "conditional_score",
]
