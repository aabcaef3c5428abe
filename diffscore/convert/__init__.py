"""Published checkpoints -> diffscore models: score_sde_pytorch ``.pth`` files and diffusers NCSN++ models.

Each converter reads its files without running anything from them, maps every tensor onto
:class:`diffscore.nets.NCSNpp` by structure with shape checks, refuses what does not map exactly (a
:class:`ConversionError` naming the file and the tensor or field), and returns or writes a plain
:class:`diffscore.ScoreModel` whose SDE, parameterization, data range and time convention reproduce the
original's score. See docs/pretrained.md.

- :func:`from_score_sde` / :func:`load_score_sde`: a score_sde_pytorch checkpoint plus its config (a
  preset name of ``RELEASED`` or the config exported to JSON).
- :func:`from_diffusers` / :func:`load_diffusers`: a ``ScoreSdeVePipeline`` folder (UNet2DModel +
  ScoreSdeVeScheduler).
"""

from ._common import ConversionError
from .diffusers import diffusers_mapping, diffusers_spec, from_diffusers, load_diffusers
from .released import RELEASED, released_config
from .score_sde import from_score_sde, load_score_sde, score_sde_mapping, score_sde_spec

__all__ = [
    "ConversionError",
    "RELEASED",
    "released_config",
    "score_sde_spec",
    "score_sde_mapping",
    "load_score_sde",
    "from_score_sde",
    "diffusers_spec",
    "diffusers_mapping",
    "load_diffusers",
    "from_diffusers",
]
