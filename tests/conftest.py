"""Shared fixtures: the three forward SDEs at their reference defaults and Gaussian-mixture oracles."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from diffscore.oracles import GaussianMixture
from diffscore.sde import SDE, VESDE, VPSDE, SubVPSDE

#: Song et al. 2021 defaults: VE sigma 0.01 -> 50, VP / sub-VP beta 0.1 -> 20.
SDE_CLASSES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}

# The tests' tensors are small: a second intra-op thread only adds contention on a 2-core CI machine
# (one oracle score call measured 3 ms on one thread, 82 ms on two under load).
torch.set_num_threads(1)


@pytest.fixture(params=sorted(SDE_CLASSES))
def sde(request: pytest.FixtureRequest) -> SDE:
    """Each of VESDE(), VPSDE(), SubVPSDE() in turn."""
    return SDE_CLASSES[request.param]()


@pytest.fixture
def make_mixture() -> Callable[..., GaussianMixture]:
    """Factory of a K-component diagonal Gaussian mixture with means uniform in [-spread, spread].

    Defaults: weights (0.2, 0.3, 0.5), component stds (0.2, 0.3, 0.4), float64. In D >= 16 the
    components are many standard deviations apart, so ``posterior`` classifies exact draws without error.
    """

    def make(
        event_shape: Sequence[int],
        weights: Sequence[float] = (0.2, 0.3, 0.5),
        stds: Sequence[float] = (0.2, 0.3, 0.4),
        spread: float = 0.8,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> GaussianMixture:
        g = torch.Generator().manual_seed(seed)
        k = len(weights)
        means = spread * (2 * torch.rand((k, *event_shape), generator=g, dtype=dtype) - 1)
        return GaussianMixture(torch.tensor(weights, dtype=dtype), means, torch.tensor(stds, dtype=dtype))

    return make
