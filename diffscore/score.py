"""ScoreModel: a network plus a parameterization, giving ``score(x, t) ~ grad_x log p_t(x)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ._checks import as_time, bcast
from .sde import SDE

__all__ = ["ScoreModel", "ScoreFn", "PARAMETERIZATIONS"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: How a network output ``out`` at noise std ``std`` becomes a score.
PARAMETERIZATIONS = {
    # the output is the score itself
    "score": "score = out",
    # epsilon prediction (Ho et al. 2020): x_t = alpha x_0 + std eps, score = -eps / std
    "noise": "score = -out / std",
    # the output is std * score (NCSN++ on VE, Song et al. 2021 App. H "output scaled by 1/sigma")
    "scaled": "score = out / std",
}


class ScoreModel(nn.Module):
    """Turns a network ``net(x, t) -> like x`` into a score function under ``sde``.

    Args:
        net: module mapping x (B, *shape) and t (B,) to a tensor shaped like x.
        sde: the forward SDE whose marginal std the parameterization uses.
        parameterization: one of ``"score"``, ``"noise"``, ``"scaled"`` (see ``PARAMETERIZATIONS``).
        min_std: floor on std(t) in the divisions of "noise" and "scaled", so t = 0 (std = 0) gives a
            large finite score instead of inf.

    ``model(x, t)`` returns the score, shaped like x. ``t`` is a float, 0-d or (B,) tensor of times.

    Raises:
        ValueError: for an unknown parameterization.
        TypeError: if ``net`` is not callable or ``sde`` is not an :class:`~diffscore.sde.SDE`.
    """

    def __init__(
        self, net: nn.Module, sde: SDE, parameterization: str = "noise", min_std: float = 1e-12
    ) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError("net must be callable: net(x, t) -> like x")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a diffscore SDE, got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {sorted(PARAMETERIZATIONS)}, got {parameterization!r}"
            )
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.min_std = float(min_std)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = as_time(t, x.shape[0], x)
        out = self.net(x, t)
        if self.parameterization == "score":
            return out
        std = bcast(self.sde._alpha_std(t)[1].clamp_min(self.min_std), out)
        return -out / std if self.parameterization == "noise" else out / std

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization!r}, sde={self.sde!r}"
