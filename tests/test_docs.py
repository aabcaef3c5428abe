"""Every code block in README.md and docs/ runs as written.

Python blocks: the blocks of a page run in order, as one script, in a fresh interpreter, in a scratch
folder that holds the repository's folders (``tests/data`` for the published fixtures) and a small
trained digits model at ``runs/digits`` (what the pages assume a reader has made with
``diffscore train``). A page whose blocks need a GPU says so with ``<!-- docs-test: cuda -->``.

Shell blocks: every ``diffscore`` command (also under ``torchrun -m diffscore.cli``) is parsed by the
command's own parser, so each flag exists as written; the commands that run in seconds on a CPU are
then run in that folder too. Commands that need a GPU (``--device cuda``, ``torchrun``), data that is
not on this machine (CIFAR-10, an image folder) or minutes of training are parsed only; the install
lines are what CI itself runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffscore.cli import build_parser, main

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)

#: The small model every page's ``runs/digits`` means here (the real run takes minutes).
TINY_RUN = [
    "steps=200",
    "eval_every=100",
    "checkpoint_every=100",
    "val_limit=16",
    "test_limit=16",
    "num_samples=4",
    "quality_samples=0",
    "net_options.hidden=64",
    "net_options.depth=2",
    "bound_model.max_steps=20",
    "bound_model.eval_every=10",
    "bound_model.val_samples=2",
    "bound_model.test_samples=4",
    'bound_model.net_options={"hidden": 32, "depth": 1}',
]


def blocks(page: Path, lang: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(page.read_text(encoding="utf-8")) if m.group(1) == lang]


def commands(page: Path) -> list[str]:
    """The shell commands of a page's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in blocks(page, "bash") + blocks(page, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def diffscore_argv(command: str) -> list[str] | None:
    """The arguments of the ``diffscore`` command in a shell line (None if it runs no diffscore)."""
    words = shlex.split(command.split("&&")[-1])
    if words[:1] == ["diffscore"]:
        return words[1:]
    if "diffscore.cli" in words:
        return words[words.index("diffscore.cli") + 1 :]
    return None


def runnable_here(command: str) -> bool:
    """Whether a command runs here in seconds: no GPU, no data this machine lacks, no minutes of training,
    and no placeholder for a file of the reader's (an upper-case word such as CHECKPOINT.pth or DIR)."""
    # (diffscore fid with its 1000 samples runs in tests/test_cli.py with 64)
    slow_or_elsewhere = (
        "torchrun",
        "--device cuda",
        "cifar10",
        "image_folder",
        "pip install",
        "train",
        "fid",
    )
    placeholder = any(re.fullmatch(r"[A-Z][A-Z_]{2,}(\.\w+)?", word) for word in shlex.split(command))
    return not placeholder and not any(word in command for word in slow_or_elsewhere)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder with the repository's folders and a small digits model at runs/digits."""
    work = tmp_path_factory.mktemp("docs")
    for name in ("tests", "docs", "examples", "benchmarks"):
        (work / name).symlink_to(ROOT / name)
    argv = ["train", "--out", str(work / "runs" / "digits"), "--no-progress"]
    for item in TINY_RUN:
        argv += ["--set", item]
    assert main(argv) == 0
    # the data file the encode examples start from: 8 dequantized test digits
    from diffscore import data, io

    x = data.uniform_dequantize(data.load_digits("test").images[:8], 17, (-1, 1), torch.Generator())
    io.write_tensors(work / "x.safetensors", {"x": x})
    return work


def run(argv: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page, workdir):
    if "<!-- docs-test: cuda -->" in page.read_text(encoding="utf-8") and not torch.cuda.is_available():
        pytest.skip(f"{page.name} shows GPU code")
    script = "\n\n".join(blocks(page, "python"))
    proc = run([sys.executable, "-c", script], workdir)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stderr[-3000:]}"


ALL_COMMANDS = [(p, c) for p in PAGES for c in commands(p) if diffscore_argv(c) is not None]


@pytest.mark.parametrize("page, command", ALL_COMMANDS, ids=[f"{p.name}: {c[:60]}" for p, c in ALL_COMMANDS])
def test_commands_parse_and_run(page, command, workdir):
    argv = diffscore_argv(command)
    build_parser().parse_args(argv)  # every flag as written exists (argparse exits 2 otherwise)
    if runnable_here(command):
        proc = run([sys.executable, "-m", "diffscore.cli", *argv, "--no-progress"], workdir)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"


def test_every_shell_line_is_a_command_the_tests_know():
    # a shell line is an install (run by CI), a diffscore command (parsed above), a script of this
    # repository (which must exist), or a `python -c` snippet to run elsewhere (in a checkout of
    # score_sde_pytorch, say); nothing else
    for page in PAGES:
        for command in commands(page):
            words = shlex.split(command)
            if words[:2] == ["python", "-c"] or "pip install" in command or diffscore_argv(command):
                continue
            assert words[0] == "python" and (ROOT / words[1]).is_file(), f"{page.name}: {command}"
