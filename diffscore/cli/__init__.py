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

from .app import build_parser, main

__all__ = ["main", "build_parser"]
