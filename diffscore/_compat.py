"""Deprecated module paths of diffscore 0.1, forwarding with a DeprecationWarning to where names live now."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def moved(old: str, homes: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for the deprecated module ``old``.

    ``homes`` maps each new module to the names that moved there. Reading ``old.NAME`` warns
    (DeprecationWarning naming the new path) and returns ``new.NAME``; other names raise AttributeError.
    """
    where = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old}.{name} moved to {where[name]}.{name}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__
