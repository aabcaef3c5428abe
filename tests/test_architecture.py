"""The package's import graph: one-way layers and no cycles (docs/architecture.md).

Every ``import`` and ``from ... import`` in every module of diffscore is read with ``ast`` (imports inside
functions included: a lazy import is still a dependency), resolved to the diffscore module it loads, and
checked against the layer table below. Importing a submodule also runs its package's ``__init__``, but
that edge is implied by Python, not written by us, so only written imports are edges here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import diffscore as ds

PACKAGE = Path(ds.__file__).parent

#: Layers, lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("utilities", {"_checks", "io", "distributed"}),
    (
        "math core",
        {"sde", "score", "oracles", "dynamics", "likelihood", "sampling", "controllable", "losses", "perf"}
        | {"nets"},
    ),
    ("data", {"data"}),
    ("evaluation", {"evaluation"}),
    ("training and conversion", {"training", "convert"}),
    ("cli", {"cli"}),
    # the package itself: names from every layer, each imported on first use
    ("package facade", {"__init__"}),
]
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
#: The core modules the design card names: they never import data, evaluation, training or cli code.
MATH = {"sde", "dynamics", "likelihood", "sampling"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a diffscore module (``a.b.c`` -> ``a.b`` for a function c)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The diffscore modules that ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # "from pkg import sub" imports the submodule pkg.sub when there is one
            targets = [
                f"{root}.{alias.name}" if f"{root}.{alias.name}" in known else root for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "diffscore":
                module = resolve(target, known)
                if module is not None and module != name:
                    found.add(module)
    return found


def unit(module: str) -> str:
    """The top-level unit of a module: ``diffscore.data.images`` -> ``data``; the package -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer(graph):
    missing = sorted({unit(m) for m in graph} - set(RANK))
    assert not missing, f"modules outside the layer table: {missing} (add them to LAYERS and the docs)"


def test_no_import_goes_up_a_layer(graph):
    upward = [
        f"{m} ({LAYERS[RANK[unit(m)]][0]}) imports {d} ({LAYERS[RANK[unit(d)]][0]})"
        for m, deps in graph.items()
        for d in deps
        if RANK[unit(d)] > RANK[unit(m)]
    ]
    assert not upward, "\n".join(upward)


def test_math_never_imports_data_evaluation_training_or_cli(graph):
    above = {"data", "evaluation", "training", "cli"}
    bad = [
        f"{m} imports {d}" for m, deps in graph.items() if unit(m) in MATH for d in deps if unit(d) in above
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle(graph):
    # depth-first search with colours; a grey -> grey edge closes a cycle
    colour: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt, 0) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif colour.get(nxt, 0) == 0:
                visit(nxt)
        stack.pop()
        colour[node] = 2

    for node in sorted(graph):
        if colour.get(node, 0) == 0:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_violation(tmp_path):
    # the walker must catch what it is for: an upward import and a cycle, written in both import styles
    known = {
        "diffscore.sde": tmp_path / "sde.py",
        "diffscore.training": tmp_path / "training" / "__init__.py",
    }
    known["diffscore.sde"].write_text("from .training import Trainer\n")
    (tmp_path / "training").mkdir()
    known["diffscore.training"].write_text("import diffscore.sde\n")
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert graph == {"diffscore.sde": {"diffscore.training"}, "diffscore.training": {"diffscore.sde"}}
    assert RANK[unit("diffscore.training")] > RANK[unit("diffscore.sde")]


def test_public_subpackages_are_reachable_from_the_package():
    # docs/cli.md writes ds.data.load_digits(...): the layers above the core load on first use
    assert ds.data.load_digits("test").images.shape == (297, 1, 8, 8)
    for name in ("data", "evaluation", "training", "cli", "io", "distributed", "nets", "sampling"):
        assert getattr(ds, name).__name__ == f"diffscore.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        ds.nonexistent  # noqa: B018


def test_docs_name_every_module():
    # docs/architecture.md's table names each module by its path in the package (a package by its folder)
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    wanted = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue  # the package itself: the facade, described in the text
        wanted.append(f"`{rel.parent.as_posix()}/`" if rel.name == "__init__.py" else f"`{rel.as_posix()}`")
    missing = [name for name in wanted if name not in text]
    assert not missing, f"docs/architecture.md does not name {missing}"
