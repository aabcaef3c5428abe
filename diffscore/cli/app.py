"""The ``diffscore`` command: its parser and :func:`main`, which turns every error into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import controllable, evaluate, generate, train
from .common import setup

__all__ = ["main", "build_parser"]

#: The command groups, in the order ``diffscore --help`` lists them; each module has ``add_commands``.
COMMAND_GROUPS = (train, generate, evaluate, controllable)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``diffscore`` command."""
    parser = argparse.ArgumentParser(
        prog="diffscore",
        description="Score-based generative models: train, sample, bits/dim, encode, decode.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffscore`` command; returns the exit status (2 for a usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup(args)
        return args.func(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"diffscore {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
