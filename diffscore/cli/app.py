"""The ``diffscore`` command: its parser and :func:`run`, the one place where an error becomes one line.

Every failure, a usage error included, ends the command with one line on stderr, ``diffscore COMMAND:
error: ...``, and exit status 2; Ctrl-C ends it with exit status 130 (after a training run saved its
checkpoint, with the command that resumes it). ``DIFFSCORE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..training import TrainingInterrupted
from . import controllable, convert, editing, evaluate, generate, quality, train
from .common import setup

__all__ = ["run", "build_parser"]

#: The command groups, in the order ``diffscore --help`` lists them; each module has ``add_commands``.
COMMAND_GROUPS = (train, generate, editing, evaluate, quality, controllable, convert)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the usage itself stays available with --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        # an unknown flag is reported by the (sub)command that got it, not by the top-level parser
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``diffscore`` command."""
    parser = _Parser(
        prog="diffscore",
        description="Score-based generative models: train, sample, bits/dim, encode, decode.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (MemoryError, RecursionError, AssertionError, KeyError)) or text == type(err).__name__:
        text = f"{type(err).__name__}: {text}"
    return text


def _command(args: argparse.Namespace) -> str:
    """The command as typed, with its action: ``sample``, ``classifier train``, ``convert diffusers``."""
    action = getattr(args, "classifier_command", None) or getattr(args, "format", None)
    return f"{args.command} {action}" if action else args.command


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (already printed on one line)
        return int(done.code or 0)
    except KeyboardInterrupt:
        print("diffscore: interrupted", file=sys.stderr)
        return 130
    try:
        setup(args)
        return args.func(args)
    except TrainingInterrupted as stop:
        resume = f"diffscore train --out {args.out} --resume" if getattr(args, "out", None) else "--resume"
        print(f"diffscore {_command(args)}: {stop}; continue with: {resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"diffscore {_command(args)}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every library error: one line, exit status 2
        if os.environ.get("DIFFSCORE_DEBUG"):
            raise
        print(f"diffscore {_command(args)}: error: {_one_line(err)}", file=sys.stderr)
        return 2
