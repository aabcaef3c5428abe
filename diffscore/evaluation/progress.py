"""Progress of long solves: a tqdm bar that the score function drives, one update per evaluation (NFE).

A solver calls the score once per NFE, whatever the solver is (adaptive ODE, fixed-step SDE, PC), so a
score wrapped by :meth:`SolveProgress.wrap` reports every solve without any change to the solvers. On
the CPU the bar also shows the time t reached; on a GPU it shows the NFE only (reading t would make the
host wait for the device at every evaluation).
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
        self.nfe = 0
        self._shown = 0.0
        unit = "NFE" if total is None else "it"
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)

    def wrap(self, score: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """``score`` with every call counted (and shown at most ten times a second)."""

        def counted(x: Tensor, t: Any) -> Tensor:
            self.nfe += 1
            if self.total is None:
                self.bar.update(1)
            now = time.monotonic()
            if now - self._shown > 0.1 and not self.bar.disable:
                self._shown = now
                shown = {"nfe": self.nfe}
                if isinstance(t, Tensor) and t.device.type == "cpu":
                    shown["t"] = f"{float(t.reshape(-1)[0]):.4f}"
                self.bar.set_postfix(shown, refresh=True)
            return score(x, t)

        return counted

    def advance(self, n: int) -> None:
        """``n`` more items done."""
        if self.total is not None:
            self.bar.update(n)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()

    def __enter__(self) -> SolveProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
