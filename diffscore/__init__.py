"""diffscore: score-based generative modeling with SDEs (Song & Ermon 2019; Song et al. 2021)."""

from . import oracles
from .sde import SDE, VESDE, VPSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "oracles"]
