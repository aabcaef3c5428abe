"""Fault injection: diffscore never touches a user's files, resumes only what is whole, and turns every
failure into one line (issue 11). Marked ``faults``; about a minute on one core.

Each probe does what a careful user or a hostile file would: files of the user's in the folders
diffscore writes, two trainings into one folder, SIGKILL and SIGINT at chosen moments followed by
``--resume``, damaged checkpoints and model files, and bad command-line input. The resumed runs are
compared bitwise with an uninterrupted one (CPU training is deterministic: tests/test_train.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import diffscore as ds
from diffscore import io
from diffscore.cli import main

pytestmark = pytest.mark.faults

#: A tiny run: 2-layer MLP of width 32, batches of 16, 40 steps, a checkpoint every 5 steps.
TINY = [
    "steps=40",
    "batch_size=16",
    "net_options.hidden=32",
    "net_options.depth=2",
    "eval_every=20",
    "checkpoint_every=5",
    "keep_checkpoints=2",
    "log_every=5",
    "val_limit=4",
    "test_limit=4",
    "num_samples=4",
    "quality_samples=0",
    "sample_options.num_steps=5",
    "bound_model=null",  # the likelihood model beside the sample model: its own tests in test_cli.py
]


def train_argv(out: Path, *extra: str) -> list[str]:
    argv = ["train", "--out", str(out), "--no-progress"]
    for item in TINY:
        argv += ["--set", item]
    return argv + list(extra)


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run the CLI in this process; returns (exit status, the lines it wrote to stderr)."""
    capsys.readouterr()
    rc = main(list(argv))  # returns the exit status (usage errors included)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def spawn(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "diffscore.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.02)


def records(run: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for key in ("time", "seconds", "steps_per_second"):
            r.pop(key, None)
        out.append(r)
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def plant_user_files(folder: Path) -> dict[Path, bytes]:
    """Files a user keeps in a folder diffscore writes to, hidden ones and ones that look like ours."""
    files = {
        folder / "notes.txt": b"my notes",
        folder / "data" / "x.csv": b"1,2,3",
        folder / ".zshrc.old-2024": b"alias ll=ls",
        folder / ".git.old-backup" / "HEAD": b"ref: refs/heads/main",
        folder / ".cache.tmp": b"mine",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def assert_intact(files: dict[Path, bytes]) -> None:
    for path, content in files.items():
        assert path.read_bytes() == content, f"{path} was changed or deleted"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny run (in a subprocess, like the runs it is compared with)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = spawn(train_argv(out))
    assert proc.wait(timeout=1800) == 0, proc.communicate()
    return out


# ---- the user's files -------------------------------------------------------------------------------
def test_user_files_survive_train_resume_overwrite_and_clean_up(tmp_path, capsys):
    out = tmp_path / "run"
    files = plant_user_files(out)
    assert cli(capsys, *train_argv(out, "--set", "steps=10"))[0] == 0
    assert_intact(files)
    assert cli(capsys, "train", "--out", str(out), "--resume", "--steps", "15", "--no-progress")[0] == 0
    assert_intact(files)
    assert json.loads((out / "results.json").read_text())["steps"] == 15
    assert cli(capsys, *train_argv(out, "--set", "steps=5", "--overwrite"))[0] == 0
    assert_intact(files)
    assert io.remove_temporaries(out) == [] and io.remove_temporaries(out / "checkpoints") == []
    assert_intact(files)
    # a file of a run's name that diffscore did not write stops the run before anything is written
    other = tmp_path / "other"
    (other / "results.json").parent.mkdir()
    (other / "results.json").write_text("my results")
    rc, err = cli(capsys, *train_argv(other))
    assert rc == 2 and len(err) == 1 and "results.json" in err[0] and "not written by diffscore" in err[0]
    assert (other / "results.json").read_text() == "my results"
    assert sorted(p.name for p in other.iterdir()) == ["results.json"]


def test_save_pretrained_keeps_the_users_files(tmp_path):
    model = ds.ScoreModel(ds.nets.build("mlp_2d"), ds.VPSDE())
    target = tmp_path / "model"
    files = plant_user_files(target)
    for _ in range(2):  # a new model directory, then one replaced
        model.save_pretrained(target)
        assert_intact(files)
    loaded = ds.ScoreModel.from_pretrained(target)
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    assert torch.equal(loaded(x, t), model(x, t))
    # a config.json of the user's is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="config.json"):
        model.save_pretrained(mine)
    assert (mine / "config.json").read_text() == "{}"
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]


def test_output_files_the_user_owns_are_never_replaced(tmp_path, capsys, reference):
    png, tensors = tmp_path / "mine.png", tmp_path / "mine.safetensors"
    png.write_bytes(b"not a diffscore grid")
    save_file({"x": torch.zeros(1)}, tensors)  # a safetensors file without diffscore's mark
    before = tensors.read_bytes()
    rc, err = cli(capsys, "sample", "--model", str(reference), "--num", "2", "--out", str(png))
    assert rc == 2 and len(err) == 1 and "--out" in err[0] and "not written by diffscore" in err[0]
    rc, err = cli(capsys, "sample", "--model", str(reference), "--num", "2", "--out", str(tmp_path / "s.png"),
                  "--tensors", str(tensors))  # fmt: skip
    assert rc == 2 and "--tensors" in err[0]
    assert png.read_bytes() == b"not a diffscore grid" and tensors.read_bytes() == before
    # what diffscore wrote it may write again
    ok = [
        "sample",
        "--model",
        str(reference),
        "--num",
        "2",
        "--out",
        str(tmp_path / "s.png"),
        "--no-progress",
    ]
    assert cli(capsys, *ok)[0] == 0 and cli(capsys, *ok)[0] == 0


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, but the run lock (a refused command may take it)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(io.LOCK))
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def test_a_model_or_run_folder_is_never_written_over_by_another_kind(
    tmp_path, capsys, reference, monkeypatch
):
    import shutil

    import diffscore.cli.controllable as cli_controllable
    import diffscore.evaluation.digits as digits

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the output folder was checked")

    # refused before any work: neither the extractor nor the classifier may be trained
    monkeypatch.setattr(digits, "train_feature_classifier", no_training)
    monkeypatch.setattr(cli_controllable, "train_classifier", no_training)

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "model" / "mine.txt").write_text("mine")  # a user's file inside diffscore's model folder
    before = _tree(run)
    x = tmp_path / "x.safetensors"
    io.write_tensors(x, {"x": torch.rand(4, 1, 8, 8) * 2 - 1})
    weights_file = str(run / "model" / "model.safetensors")
    clf = ["classifier", "train", "--model", str(run), "--steps", "2", "--out"]
    probes = {
        "classifier into the run": [*clf, str(run)],
        "classifier into the model": [*clf, str(run / "model")],
        "extractor into the model": ["fid", "--model", str(run), "--samples", str(x), "--no-progress",
                                     "--extractor-cache", str(run / "model")],
        "extractor into the run": ["fid", "--model", str(run), "--samples", str(x), "--no-progress",
                                   "--extractor-cache", str(run)],
        "samples over the weights": ["sample", "--model", str(run), "--num", "2", "--no-progress",
                                     "--out", str(tmp_path / "s.png"), "--tensors", weights_file],
        "latent over the weights": ["encode", "--model", str(run), "--input", str(x), "--no-progress",
                                    "--output", weights_file],
    }  # fmt: skip
    for name, argv in probes.items():
        rc, err = cli(capsys, *argv)
        assert rc == 2 and len(err) == 1, (name, err)
        assert "another kind" in err[0] or "a file of the diffscore folder" in err[0], (name, err[0])
        assert _tree(run) == before, name
    # --overwrite stops at the user's file inside the model folder, before deleting anything
    rc, err = cli(capsys, *train_argv(run, "--overwrite"))
    assert rc == 2 and len(err) == 1 and "mine.txt" in err[0] and "not written by diffscore" in err[0], err
    assert _tree(run) == before


def test_pruning_keeps_a_checkpoint_holding_a_users_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(capsys, *train_argv(out, "--set", "steps=10"))[0] == 0
    first = out / "checkpoints" / "step_00000005"
    (first / "mine.txt").write_text("mine")
    with pytest.warns(UserWarning, match="kept an old checkpoint"):
        assert cli(capsys, "train", "--out", str(out), "--resume", "--steps", "20", "--no-progress")[0] == 0
    assert (first / "mine.txt").read_text() == "mine"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == ["step_00000005", "step_00000015", "step_00000020"]  # keep_checkpoints=2, plus the user's


def test_a_bad_sampler_setting_stops_the_run_before_training_and_keeps_the_previous_one(
    tmp_path, capsys, reference
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _tree(run)
    for setting in ("sample_options.bogus=1", "sample_options.num_steps=0", "sample_method=foo"):
        rc, err = cli(capsys, *train_argv(run, "--overwrite", "--set", setting))
        assert rc == 2 and len(err) == 1 and "sample_method / sample_options" in err[0], err
        assert _tree(run) == before  # --overwrite deleted nothing
    # in a new folder: refused before the first step, and the corrected command then runs there
    fresh = tmp_path / "fresh"
    rc, err = cli(capsys, *train_argv(fresh, "--set", "sample_options.eps=2"))
    assert rc == 2 and "eps must lie in [0, T)" in err[0], err
    assert not (fresh / "checkpoints").exists() and not (fresh / "metrics.jsonl").exists()
    assert cli(capsys, *train_argv(fresh, "--set", "steps=5"))[0] == 0


def test_sde_and_net_flags_replace_the_presets_options():
    digits = ds.training.get_preset("digits")
    assert digits.sde_options and digits.net_options  # the preset's options belong to its vp / mlp
    ve = ds.training.apply_overrides(digits, ["sde=ve"])
    assert ve.sde == "ve" and ve.sde_options == {} and ve.net_options == digits.net_options
    net = ds.training.apply_overrides(digits, ["net=ddpmpp_digits"])
    assert net.net_options == {} and net.sde_options == digits.sde_options
    # options given with the new choice are kept, in either order
    for overrides in (["sde=ve", "sde_options.sigma_max=20"], ["sde_options.sigma_max=20", "sde=ve"]):
        assert ds.training.apply_overrides(digits, overrides).sde_options == {"sigma_max": 20}
    # the same value is no change
    assert ds.training.apply_overrides(digits, ["sde=vp"]).sde_options == digits.sde_options


# ---- one run at a time ----------------------------------------------------------------------------------
def test_a_second_training_into_the_same_folder_is_refused(tmp_path, capsys, reference):
    out = tmp_path / "run"
    first = spawn(train_argv(out, "--set", "steps=400", "--set", "checkpoint_every=100"))
    wait_for(out / "metrics.jsonl", first)  # the first run holds the lock and trains
    rc, err = cli(capsys, *train_argv(out))
    assert rc == 2 and len(err) == 1
    assert "in use by process" in err[0] and str(first.pid) in err[0]
    assert first.wait(timeout=1800) == 0, first.communicate()
    # the first run is whole: every step logged once, its model loads, its checkpoints verify
    steps = [r["step"] for r in records(out) if r["event"] == "train"]
    assert steps == list(range(5, 401, 5))
    ds.ScoreModel.from_pretrained(out / "model")
    for ckpt in ds.training.list_checkpoints(out / "checkpoints"):
        ds.training.load_checkpoint(ckpt)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(37, "No locks available")  # ENOLCK: some network file systems

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "run"
    folder.mkdir()
    with io.lock_directory(folder):
        with pytest.raises(BlockingIOError, match=f"process {os.getpid()}"), io.lock_directory(folder):
            pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    io.claim(folder / ".diffscore.lock.held")
    marker = {"pid": dead.pid, "host": os.uname().nodename, "since": "earlier"}
    (folder / ".diffscore.lock.held").write_text(json.dumps(marker))
    with io.lock_directory(folder):  # stale: its process is gone
        pass


# ---- kills and interrupts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sig, at",
    [
        (signal.SIGKILL, "checkpoints/step_00000015"),  # mid-training, as a checkpoint lands
        (signal.SIGKILL, "model/model.safetensors"),  # after training, during export and evaluation
        (signal.SIGINT, "checkpoints/step_00000010"),
        (signal.SIGTERM, "checkpoints/step_00000030"),
    ],
)
def test_killed_or_interrupted_run_resumes_bitwise(tmp_path, capsys, reference, sig, at):
    out = tmp_path / "run"
    proc = spawn(train_argv(out))
    wait_for(out / at, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    saved = set(range(5, 41, 5))  # the checkpoints of the uninterrupted run (every 5 steps)
    if sig == signal.SIGKILL:
        assert proc.returncode == -9 or at.startswith("model"), err  # (the run may finish first)
    else:  # the step in progress ends, a checkpoint is saved, and the command says how to go on
        assert proc.returncode == 130, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"diffscore train --out {out} --resume" in lines[0]
        stopped = re.search(r"training stopped at step (\d+)", lines[0])
        assert stopped, lines[0]
        # whichever step was in progress when the signal came (on a busy machine, several after `at`)
        saved.add(int(stopped[1]))
    rc, err = cli(capsys, "train", "--out", str(out), "--resume", "--no-progress")
    assert rc == 0, err
    assert same_weights(weights(out), weights(reference))
    assert records(out) == records(reference)  # every record once, as in the uninterrupted run
    # the two latest saves are kept: step_00000035 and step_00000040, or the interrupted step and 40
    kept = [f"step_{step:08d}" for step in sorted(saved)[-2:]]
    assert [p.name for p in ds.training.list_checkpoints(out / "checkpoints")] == kept


#: The console script's own first step (import diffscore.cli, light), then main(), which loads torch. A
#: profile hook prints "ready" once main() has installed its Ctrl-C handler, with the functions main()
#: called before that (imports included): a signal in that window hits Python itself, so there must be
#: none.
STARTUP = """
import signal, sys
import diffscore.cli as c

ran = []

def hook(frame, event, arg):
    code = frame.f_code
    if event == "call" and frame.f_back.f_code is c.main.__code__ and code is not signal.signal.__code__:
        ran.append(code.co_name)
    elif event == "return" and code is signal.signal.__code__:
        sys.setprofile(None)
        print("ready", ran, flush=True)

sys.setprofile(hook)
sys.exit(c.main(sys.argv[1:]))
"""


def test_interrupt_during_start_up_is_one_line(tmp_path):
    for delay in (0.0, 0.3):
        proc = subprocess.Popen(
            [sys.executable, "-c", STARTUP, "sample", "--model", str(tmp_path / "nowhere")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready []"  # nothing ran before the handler
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err, err
        # interrupted while torch loads (130), or on a fast machine after the missing model was reported
        assert len(lines) == 1, err
        assert (proc.returncode, lines[0].endswith("interrupted")) in ((130, True), (2, False)), err


def test_full_disk_leaves_no_cut_line(tmp_path, monkeypatch):
    cfg = ds.training.apply_overrides(ds.training.get_preset("digits"), TINY)
    trainer = ds.training.Trainer(cfg, tmp_path, progress=False)
    trainer.log({"event": "train", "step": 1})
    real = os.write

    def full(fd, data):
        real(fd, data[:7])  # part of the line reaches the disk, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        trainer.log({"event": "train", "step": 2})
    monkeypatch.undo()
    trainer.log({"event": "train", "step": 3})
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        1,
        3,
    ]


def test_interrupted_prune_and_export_leave_whole_directories(tmp_path, monkeypatch):
    cfg = ds.training.apply_overrides(ds.training.get_preset("digits"), TINY + ["keep_checkpoints=1"])
    trainer = ds.training.Trainer(cfg, tmp_path, progress=False)
    trainer.fit(until=5)
    trainer.export()
    before = load_file(tmp_path / "model" / "model.safetensors")

    def killed(path):
        raise OSError("killed")

    # the prune of step 5 dies after renaming it away: no half checkpoint under a real name
    monkeypatch.setattr(io, "_delete", killed)
    with pytest.raises(OSError, match="killed"):
        trainer.fit(until=10)
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert [n for n in names if not n.startswith(".")] == ["step_00000010"]
    for ckpt in ds.training.list_checkpoints(tmp_path / "checkpoints"):
        ds.training.load_checkpoint(ckpt)
    # the export dies between the renames of its files: the model directory still loads, whole
    real = os.replace
    calls = []

    def dies_after_first(src, dst):
        if "diffscore-tmp" in str(src) and Path(dst).parent.name == "model":
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("killed between renames")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dies_after_first)
    with pytest.raises(OSError, match="between renames"):
        trainer.export()
    monkeypatch.undo()
    model = ds.ScoreModel.from_pretrained(tmp_path / "model")  # finishes the interrupted commit first
    now = model.state_dict()
    assert not same_weights({k: now[k] for k in before}, before)  # the new weights, complete
    assert io.remove_temporaries(tmp_path) == []


# ---- damaged checkpoints ------------------------------------------------------------------------------
def _resign(directory: Path) -> None:
    """Rewrite a directory's manifest for its current files: an edit the manifest cannot catch."""
    files = io.read_manifest(directory)
    io._write_manifest(directory, {name: io._file_entry(directory / name) for name in files})


def _edit_state(ckpt: Path, edit) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    edit(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    _resign(ckpt)


def _wrong_optimizer_shape(ckpt: Path) -> None:
    tensors = load_file(ckpt / "optimizer.safetensors")
    key = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, ckpt / "optimizer.safetensors")
    _resign(ckpt)


def _deep(ckpt: Path) -> None:
    (ckpt / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    _resign(ckpt)


DAMAGE = {
    "optimizer deleted": (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors"),
    "model truncated": (
        lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:100]),
        "model.safetensors",
    ),
    "ema padded to 8 GiB": (lambda c: os.truncate(c / "ema.safetensors", 8 << 30), "ema.safetensors"),
    "state edited without the manifest": (
        lambda c: (c / "state.json").write_text(
            (c / "state.json").read_text().replace('"step": 40', '"step": 4')
        ),
        "state.json",
    ),
    "step -5": (lambda c: _edit_state(c, lambda s: s.update(step=-5)), "state.json"),
    "step 1e9": (lambda c: _edit_state(c, lambda s: s.update(step=10**9)), "state.json"),
    "field missing": (lambda c: _edit_state(c, lambda s: s.pop("rng")), "state.json"),
    "deeply nested": (_deep, "state.json"),
    "optimizer of another shape": (_wrong_optimizer_shape, "optimizer.safetensors"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, capsys, reference, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    ckpt = ds.training.latest_checkpoint(run / "checkpoints")
    spoil, name = DAMAGE[damage]
    spoil(ckpt)
    rc, err = cli(capsys, "train", "--out", str(run), "--resume", "--steps", "50", "--no-progress")
    assert rc == 2 and len(err) == 1, err
    assert name in err[0], err[0]
    assert same_weights(weights(run), weights(reference))  # nothing was trained or exported


# ---- bad input: exit 2 and one line naming the flag or file -----------------------------------------------
def _model_with(reference: Path, tmp_path: Path, edit) -> Path:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(reference / "model", model)
    edit(model)
    return model


def _oversized(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["net"]["inner"]["hidden"] = 10**7  # a 10^14-parameter network, if it were built
    (model / "config.json").write_text(json.dumps(config))
    _resign(model)


def _deep_config(model: Path) -> None:
    (model / "config.json").write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    _resign(model)


@pytest.mark.parametrize(
    "case, flag",
    [
        ("device cuda", "--device"),
        ("device gpu", "--device"),
        ("oversized config", "model.safetensors"),
        ("deep config", "config.json"),
        ("padded model", "model.safetensors"),
        ("images in [0, 255]", "--input"),
        ("limit -1", "--limit"),
        ("output csv", "--output"),
        ("steps 0", "--steps"),
        ("fid of 1 sample", "--num"),
        ("gray levels out of range", "--samples"),
        ("unknown flag", "diffscore sample: error: unrecognized arguments: --bogus"),
        ("euler without a step", "--step-size"),
        ("classifier error prefix", "diffscore classifier train: error:"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, reference, monkeypatch, case, flag):
    import diffscore.cli.controllable as cli_controllable
    import diffscore.evaluation.digits as digits

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the bad input was refused")

    # refused before any real work: neither the extractor nor a classifier may be trained (the padded
    # 8 GiB model is refused from its header, checked against the file size, never read)
    monkeypatch.setattr(digits, "train_feature_classifier", no_training)
    monkeypatch.setattr(cli_controllable, "train_classifier", no_training)
    x255 = tmp_path / "x.safetensors"
    io.write_tensors(x255, {"x": torch.rand(2, 1, 8, 8) * 255})
    levels = tmp_path / "levels.safetensors"
    io.write_tensors(levels, {"samples_int": torch.full((4, 1, 8, 8), 17)})  # 17 bins: 0..16
    model = str(reference)
    if case == "oversized config":
        model = str(_model_with(reference, tmp_path, _oversized))
    elif case == "deep config":
        model = str(_model_with(reference, tmp_path, _deep_config))
    elif case == "padded model":
        model = str(_model_with(reference, tmp_path, lambda m: os.truncate(m / "model.safetensors", 8 << 30)))
    argv = {
        "device cuda": ["sample", "--model", model, "--device", "cuda"],
        "device gpu": ["sample", "--model", model, "--device", "gpu"],
        "oversized config": ["sample", "--model", model, "--num", "1"],
        "deep config": ["sample", "--model", model, "--num", "1"],
        "padded model": ["sample", "--model", model, "--num", "1"],
        "images in [0, 255]": [
            "encode",
            "--model",
            model,
            "--input",
            str(x255),
            "--output",
            str(tmp_path / "z.pt"),
        ],
        "limit -1": ["bpd", "--model", model, "--limit", "-1"],
        "output csv": ["bpd", "--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "res.csv")],
        "steps 0": ["train", "--out", str(tmp_path / "r"), "--steps", "0"],
        "fid of 1 sample": ["fid", "--model", model, "--num", "1"],
        "gray levels out of range": ["fid", "--model", model, "--samples", str(levels)],
        "unknown flag": ["sample", "--model", model, "--bogus"],
        "euler without a step": [
            "decode",
            "--model",
            model,
            "--input",
            str(x255),
            "--output",
            "x.pt",
            "--method",
            "euler",
        ],
        "classifier error prefix": ["classifier", "train", "--model", str(tmp_path / "none"), "--out", "c"],
    }[case]
    rc, err = cli(capsys, *argv)
    assert rc == 2 and len(err) == 1, err
    assert flag in err[0], err[0]


def test_model_dtype_and_shape_are_checked_at_the_first_call(reference):
    model = ds.ScoreModel.from_pretrained(reference / "model")
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(TypeError, match="float64 but the model's weights are torch.float32"):
        model(x.double(), torch.full((1,), 0.5))
    # an unbatched image is refused, not read as a batch of 1 image of 8 x 8
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        ds.bits_per_dim(model.sde, model, torch.randint(0, 17, (1, 8, 8)), num_bins=17)


def test_sixteen_bit_pngs_round_trip_at_full_depth(tmp_path):
    ramp = (np.arange(16 * 16).reshape(16, 16) * 257 - 2).clip(0).astype(np.uint16)  # 0 ... 65533
    for i in range(3):
        Image.fromarray(ramp + i).save(tmp_path / f"{i}.png")
    data = ds.data.load_image_folder(tmp_path, 16, channels=1)
    assert data.num_bins == 65536 and data.images.dtype == torch.int32
    for i in range(3):
        assert torch.equal(data.images[i, 0], torch.from_numpy(ramp.astype(np.int32) + i))
    # dequantized onto [-1, 1] and quantized back, every one of the 65536 levels is kept
    y = ds.data.uniform_dequantize(
        data.images, 65536, (-1, 1), torch.Generator().manual_seed(0), torch.float64
    )
    assert torch.equal(ds.data.quantize(y, 65536, (-1, 1)), data.images.long())
    # 16-bit color, or 16- and 8-bit files mixed: refused, naming a file
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(ValueError, match="mixes 16-bit"):
        ds.data.load_image_folder(tmp_path, 16, channels=1)
    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    Image.fromarray(ramp).save(sixteen / "a.png")
    with pytest.raises(ValueError, match="channels=1"):
        ds.data.load_image_folder(sixteen, 16, channels=3)


def test_the_gaussian_baseline_of_a_few_sixteen_bit_images_is_finite_and_exact():
    # 4 images in D = 64 with 65536 bins: the fit's covariance is s^2 (Cov + I / 12) with s^2 = 1e-9,
    # rank-3 data plus a tiny ridge (not positive definite in float32; the baseline works in float64)
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 65536, (4, 1, 8, 8), generator=g)
    test = torch.randint(0, 65536, (3, 1, 8, 8), generator=g)
    bpd = ds.evaluation.gaussian_baseline_bpd(train, test, 65536, (-1.0, 1.0))
    # the closed form against its definition: mean of -log2 N(y) over dequantized draws y, per dim,
    # plus the offset log2(num_bins) - log2(hi - lo); Monte-Carlo over 4000 draws, s.e. ~1e-3 bits/dim
    s = 2 / 65536
    mean, cov = ds.data.gaussian_moments(train, 65536, (-1.0, 1.0), torch.float64)
    normal = torch.distributions.MultivariateNormal(mean, cov)
    centres = -1 + s * (test.reshape(3, -1).double() + 0.5)
    y = centres + s * (torch.rand((4000, 3, 64), generator=g, dtype=torch.float64) - 0.5)
    mc = -normal.log_prob(y).mean(0) / (64 * math.log(2)) + 16 - 1
    assert torch.isfinite(bpd).all()
    assert torch.allclose(bpd, mc, atol=5e-3), (bpd, mc)


def test_a_string_of_extensions_is_one_ending(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.jpg")  # ends in "g", not in ".png"
    with pytest.raises(ValueError, match="no image"):
        ds.data.load_image_folder(tmp_path, 8, channels=1, extensions=".png")
    assert len(ds.data.load_image_folder(tmp_path, 8, channels=1, extensions=".JPG").images) == 1
