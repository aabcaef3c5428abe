"""The ``diffscore`` command: ``train``, ``sample``, ``bpd``, ``encode``, ``decode``, ``inpaint``,
``colorize``, ``classifier train`` and ``conditional``.

``diffscore train`` with no arguments trains the default "digits" preset on scikit-learn's bundled 8x8
digits (no download) into ``runs/digits`` and reports test bits/dim beside a Gaussian baseline. The
other commands read a model directory written by training (``runs/digits`` or ``runs/digits/model``).
See docs/cli.md for a tour.

One module per command group (:mod:`~diffscore.cli.train`, :mod:`~diffscore.cli.generate`,
:mod:`~diffscore.cli.evaluate`, :mod:`~diffscore.cli.controllable`), each with ``add_commands``; what
they share is in :mod:`~diffscore.cli.common`, and :mod:`~diffscore.cli.app` builds the parser and runs it.

Under ``torchrun`` (``python -m torch.distributed.run ... -m diffscore.cli``) ``train`` is data-parallel
and ``bpd`` and ``sample`` split their images over the processes; only the main process prints and
writes files (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffscore`` command; returns the exit status (0 success, 2 an error, 130 interrupted).

    The handler of Ctrl-C is installed first, with nothing imported but ``signal`` and ``sys``; the
    command's modules (and torch) are imported inside it, so an interrupt while they load ends with one
    line too.
    """
    interrupted = []

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    try:  # first, before anything that takes time is imported
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        from .app import run
    except BaseException:
        # an interrupt inside a library's import can surface as another error (a module left half
        # initialised): whatever it became, it was the interrupt
        if not interrupted:
            raise
        print("diffscore: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``diffscore`` command."""
    from .app import build_parser as build

    return build()
