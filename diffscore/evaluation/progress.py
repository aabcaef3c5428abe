"""Progress of long solves: a tqdm bar that the score function drives, one update per evaluation (NFE).

A solver calls the score once per NFE, whatever the solver is (adaptive ODE, fixed-step SDE, PC, the
multistep samplers), so a score wrapped by :meth:`SolveProgress.wrap` reports every solve without any
change to the solvers. The postfix shows the NFE of the current solve and, on the CPU, the time t of
the latest score call (on a GPU reading t would make the host wait for the device), refreshed at most
ten times a second and after every batch, so that a solve shorter than a tenth of a second still ends
showing its last NFE and t.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["SolveProgress"]


class SolveProgress:
    """A progress bar over ``total`` items (images, samples; None: NFE) with the NFE in its postfix.

    Args:
        desc: the bar's label. total: items of the whole job (None: the bar counts NFE instead).
        enabled: False gives a silent object (every method does nothing).

    Use ``score = bar.wrap(score)`` before a solve, ``bar.advance(n)`` after each batch of ``n`` items,
    ``bar.close()`` at the end (or ``with SolveProgress(...) as bar``).
    """

    def __init__(self, desc: str, total: int | None = None, enabled: bool = True) -> None:
        self.total = total
        self.nfe = 0  # of the current (or the last finished) solve
        self._solve_done = False
        self._t: Tensor | None = None  # the time of the latest score call (CPU only)
        self._shown = 0.0
        unit = "NFE" if total is None else "it"
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)

    def wrap(self, score: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """``score`` with every call counted (and shown at most ten times a second, and after each batch);
        its ``score_and_divergence``, where it has one, is kept and counted too, and its ``card``."""

        def counted(x: Tensor, t: Any) -> Tensor:
            self._count(t)
            return score(x, t)

        counted.card = getattr(score, "card", None)  # what the model says about its data, for the gates
        pair = getattr(score, "score_and_divergence", None)
        if pair is not None:

            def counted_pair(x: Tensor, t: Any) -> tuple[Tensor, Tensor]:
                self._count(t)
                return pair(x, t)

            counted.score_and_divergence = counted_pair
        return counted

    def _count(self, t: Any) -> None:
        """One score evaluation at time t."""
        if self._solve_done:  # the first call of the next solve
            self.nfe, self._solve_done = 0, False
        self.nfe += 1
        if self.total is None:
            self.bar.update(1)
        if isinstance(t, Tensor) and t.device.type == "cpu":
            self._t = t
        if time.monotonic() - self._shown > 0.1:
            self._show()

    def _show(self) -> None:
        """Put the solve's NFE and the latest time t in the bar's postfix."""
        if self.bar.disable:
            return
        self._shown = time.monotonic()
        shown = {"nfe": self.nfe}
        if self._t is not None:
            shown["t"] = f"{float(self._t.reshape(-1)[0]):.4f}"
        self.bar.set_postfix(shown, refresh=True)

    def advance(self, n: int) -> None:
        """``n`` more items done by the solve just finished (the postfix shows where it ended)."""
        if self.total is not None:
            self.bar.update(n)
        self._show()
        self._solve_done = True

    def close(self) -> None:
        """Close the bar."""
        self._show()
        self.bar.close()

    def __enter__(self) -> SolveProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
