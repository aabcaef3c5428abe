"""diffscore.distributed: environment detection, sharding, gathers across real gloo processes, seeds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from diffscore import distributed as dd
from diffscore.evaluation import evaluate_bpd, generate_samples
from diffscore.io import read_tensors, remove_temporaries
from diffscore.score import ScoreModel
from diffscore.training import (
    TrainConfig,
    Trainer,
    apply_overrides,
    check_bf16,
    get_preset,
    list_checkpoints,
    load_checkpoint,
    load_splits,
)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- environment ----------------------------------------------------------------------------------------
def test_env_info_single_process_needs_no_variables():
    info = dd.env_info({})
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.enabled) == (0, 1, 0, True, False)
    # init_distributed starts no process group without the variables
    info, device = dd.init_distributed(environ={})
    assert not info.enabled and device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert dd.current() == dd.DistInfo() and not dd.is_enabled()


def test_env_info_reads_torchrun_variables():
    info = dd.env_info({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.enabled) == (5, 8, 1, False, True)
    assert dd.env_info({"RANK": "3", "WORLD_SIZE": "4"}).local_rank == 3  # one node: LOCAL_RANK = RANK
    assert dd.resolve_device("cuda", info) == torch.device("cuda", 1)
    assert dd.resolve_device("cuda:0", info) == torch.device("cuda", 0)
    assert dd.resolve_device(None, info) == torch.device("cpu")
    assert dd.backend_for("cuda:3") == "nccl" and dd.backend_for("cpu") == "gloo"


@pytest.mark.parametrize(
    "env, name",
    [
        ({"RANK": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK"),
    ],
)
def test_env_info_rejects_malformed_environment(env, name):
    with pytest.raises(ValueError, match=name):
        dd.env_info(env)


def test_init_distributed_rejects_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        dd.init_distributed(timeout_s=0, environ={})
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(ValueError, match="nccl"):
        dd.init_distributed("cpu", backend="nccl", environ=env)


# ---- sharding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n, batch", [(1, 4), (5, 1), (7, 2), (10, 3), (16, 4), (297, 64), (3, 512)])
def test_shard_batches_partition_in_order(n, batch, world):
    shards = [dd.shard_batches(n, batch, r, world) for r in range(world)]
    flat = [i for shard in shards for b in shard for i in b]
    assert flat == list(range(n))  # every item once, in order, ranks concatenated in rank order
    single = dd.shard_batches(n, batch, 0, 1)
    assert single == [range(s, min(s + batch, n)) for s in range(0, n, batch)]
    sizes = [sum(len(b) for b in shard) for shard in shards]
    if len(single) >= world:
        # whole single-process batches, and the runs differ by at most one batch
        assert [b for shard in shards for b in shard] == single
        counts = [len(shard) for shard in shards]
        assert max(counts) - min(counts) <= 1
    else:
        assert max(sizes) - min(sizes) <= 1  # near-equal blocks
        assert all(len(shard) <= 1 for shard in shards)


@pytest.mark.parametrize(
    "kwargs, err, name",
    [
        (dict(n=-1, batch_size=2, rank=0, world_size=1), ValueError, "n must"),
        (dict(n=4, batch_size=0, rank=0, world_size=1), ValueError, "batch_size"),
        (dict(n=4, batch_size=2, rank=2, world_size=2), ValueError, "rank"),
        (dict(n=4, batch_size=2, rank=0, world_size=0), ValueError, "world_size"),
        (dict(n=4.0, batch_size=2, rank=0, world_size=1), TypeError, "n must"),
    ],
)
def test_shard_batches_rejects_bad_arguments(kwargs, err, name):
    with pytest.raises(err, match=name):
        dd.shard_batches(**kwargs)


def test_single_process_helpers_are_local():
    out = dd.map_sharded(lambda idx: torch.tensor(list(idx), dtype=torch.float64)[:, None] ** 2, 7, 3)
    assert torch.equal(out[:, 0], torch.arange(7, dtype=torch.float64) ** 2)
    assert dd.sum_over_ranks(3) == 3 and dd.all_gather_objects("a") == ["a"] and dd.broadcast_object(1) == 1
    with pytest.raises(ValueError, match="one row per index"):
        dd.map_sharded(lambda idx: torch.zeros(1), 7, 3)
    with pytest.raises(TypeError, match="local"):
        dd.all_gather_rows([1.0])


# ---- seeds ------------------------------------------------------------------------------------------------
def test_sample_seeds_are_distinct_deterministic_and_63_bit():
    seeds = {dd.sample_seed(s, i, k) for s in range(4) for i in range(300) for k in range(3)}
    assert len(seeds) == 4 * 300 * 3  # no collision over the grid (a bijective hash chain)
    assert all(0 <= s < 2**63 for s in seeds)
    assert dd.sample_seed(7, 11, 2) == dd.sample_seed(7, 11, 2)
    # run seed + 1 does not repeat run seed shifted by one item (the flaw of seed + index)
    assert dd.sample_seed(1, 0) != dd.sample_seed(0, 1)
    with pytest.raises(TypeError, match="index"):
        dd.sample_seed(0, 1.0)


def test_sample_generators_draws_depend_on_the_global_index_only():
    gens = dd.sample_generators(3, [4, 9])
    ref = dd.sample_generators(3, range(10))
    assert torch.equal(torch.randn(5, generator=gens[0]), torch.randn(5, generator=ref[4]))
    assert torch.equal(torch.randn(5, generator=gens[1]), torch.randn(5, generator=ref[9]))
    other = dd.sample_generators(3, [4], stream=1)[0]
    assert not torch.equal(
        torch.randn(5, generator=other), torch.randn(5, generator=dd.sample_generators(3, [4])[0])
    )


# ---- trainer pieces ------------------------------------------------------------------------------------
def tiny_config(*extra: str) -> TrainConfig:
    items = ["net_options.hidden=32", "net_options.depth=2", "net_options.dropout=0.0", "batch_size=16"]
    items.append("bound_model=null")
    return apply_overrides(get_preset("digits"), [*items, "warmup=2", *extra])


def test_process_blocks_make_up_the_single_process_batch():
    trainer = Trainer(tiny_config(), None, progress=False)
    single = [trainer.batch_indices(step) for step in (0, 84, 85)]  # 85 batches of 16 cross epoch 1
    for world in (2, 4, 8):
        blocks = []
        for rank in range(world):
            trainer.rank, trainer.world_size, trainer.local_batch_size = rank, world, 16 // world
            assert trainer.batch_block == range(rank * 16 // world, (rank + 1) * 16 // world)
            blocks.append([trainer.batch_indices(step) for step in (0, 84, 85)])
        for k in range(3):
            assert torch.equal(torch.cat([b[k] for b in blocks]), single[k])


def test_bf16_autocast_training_on_cpu():
    plain = Trainer(tiny_config(), None, progress=False)
    bf16 = Trainer(tiny_config(), None, progress=False, bf16=True)
    for _ in range(2):
        a, b = float(plain.train_step()[0]), float(bf16.train_step()[0])
        # the same weights and per-sample noise; bfloat16 products carry 8 significant bits, and the
        # loss is a mean of 16 x 64 squared residuals: measured 4e-4 to 6e-4 relative
        assert b == pytest.approx(a, rel=1e-2) and b != a
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert check_bf16(False, "meta", torch.float64) is False
    with pytest.raises(ValueError, match="float32"):
        check_bf16(True, "cpu", torch.float64)
    with pytest.raises(ValueError, match="cuda and cpu"):
        check_bf16(True, "meta", torch.float32)
    with pytest.raises(TypeError, match="bf16"):
        Trainer(tiny_config(), None, bf16=1)


def test_remove_temporaries_deletes_only_unfinished_writes(tmp_path):
    hex32 = "0123456789abcdef" * 2
    (tmp_path / f".metrics.jsonl.{hex32}.diffscore-tmp").write_text("{")  # atomic_write's temporary file
    staging = tmp_path / f".step_00000004.{hex32}.diffscore-tmp"  # write_directory's staging directory
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"\x00")
    (tmp_path / f".model.{hex32}.diffscore-trash").mkdir()  # a directory being deleted
    # names like ours that diffscore never makes: a user's files, kept
    kept = ["step_00000003", ".gitignore", "notes.tmp", ".zshrc.old-2024", ".git.old-backup", ".a.b.tmp"]
    (tmp_path / "step_00000003").mkdir()
    (tmp_path / ".gitignore").write_text("*")
    (tmp_path / "notes.tmp").write_text("mine")
    (tmp_path / ".zshrc.old-2024").write_text("mine")
    (tmp_path / ".git.old-backup").mkdir()
    (tmp_path / ".a.b.tmp").write_text("mine")
    removed = remove_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [
        f".metrics.jsonl.{hex32}.diffscore-tmp",
        f".model.{hex32}.diffscore-trash",
        f".step_00000004.{hex32}.diffscore-tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert remove_temporaries(tmp_path / "missing") == []


# ---- real processes (gloo) -------------------------------------------------------------------------------
def _per_item(indices: range) -> torch.Tensor:
    """A per-item random result: three normals from the item's own generator, and the index."""
    gens = dd.sample_generators(11, indices)
    return torch.stack(
        [torch.cat([torch.randn(3, generator=g), torch.tensor([float(i)])]) for g, i in zip(gens, indices)]
    )


def _collectives_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    os.environ.update(env)
    torch.set_num_threads(1)
    info, device = dd.init_distributed("cpu", timeout_s=120)
    results: dict[str, object] = {"info": (info.rank, info.world_size, info.local_rank)}
    results["backend"] = torch.distributed.get_backend()
    results["current"] = dd.current() == info and dd.is_enabled()
    # sharded maps: 3 batches over 2 ranks (whole batches), and 1 item over 2 ranks (rank 1 empty)
    results["map_5_2"] = dd.map_sharded(_per_item, 5, 2)
    results["map_1_5"] = dd.map_sharded(_per_item, 1, 5)
    # uneven rows, a rank with nothing, integer dtype
    local = None if rank == 0 else torch.arange(6, dtype=torch.int64).reshape(3, 2)
    results["rows"] = dd.all_gather_rows(local)
    results["sum_int"] = dd.sum_over_ranks(rank + 1)
    results["sum_float"] = dd.sum_over_ranks(0.5 * rank)
    results["mean"] = dd.mean_over_ranks(torch.tensor([float(rank), 1.0]))
    results["objects"] = dd.all_gather_objects({"rank": rank})
    results["broadcast"] = dd.broadcast_object(f"from {rank}", src=1)
    try:  # checked before any collective, so every rank raises
        Trainer(TrainConfig(batch_size=15), None)
        results["batch_error"] = None
    except ValueError as err:
        results["batch_error"] = str(err)
    try:  # every rank sees the mismatch after the metadata exchange, so none is left waiting
        dd.all_gather_rows(torch.zeros(1, 2, dtype=torch.float32 if rank else torch.float64))
        results["mismatch"] = None
    except ValueError as err:
        results["mismatch"] = str(err)
    dd.barrier()
    dd.shutdown()
    results["after_shutdown"] = torch.distributed.is_initialized()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.distributed
def test_collectives_across_two_gloo_processes(tmp_path, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    world = 2
    mp.spawn(_collectives_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    rows = torch.arange(6, dtype=torch.int64).reshape(3, 2)
    for r, res in enumerate(results):
        assert res["info"] == (r, world, r) and res["backend"] == "gloo" and res["current"]
        # sharded results equal the single-process computation bit for bit (per-item generators)
        assert torch.equal(res["map_5_2"], _per_item(range(5)))
        assert torch.equal(res["map_1_5"], _per_item(range(1)))
        assert torch.equal(res["rows"], rows)
        assert res["sum_int"] == 1 + 2 and isinstance(res["sum_int"], int)
        assert res["sum_float"] == 0.5
        assert torch.equal(res["mean"], torch.tensor([0.5, 1.0]))
        assert res["objects"] == [{"rank": 0}, {"rank": 1}]
        assert res["broadcast"] == "from 1"
        assert "different trailing shapes" in res["mismatch"]
        assert "batch_size 15 (the global batch) must be divisible" in res["batch_error"]
        assert res["after_shutdown"] is False


# ---- the commands under torchrun (2 gloo processes) ------------------------------------------------------

#: a tiny digits run: 16 images per global batch (8 per process), a 2 x 32 MLP on the Gaussian fit
TINY = {
    "batch_size": 16,
    "net_options.hidden": 32,
    "net_options.depth": 2,
    "net_options.dropout": 0.0,
    "warmup": 2,
    "log_every": 1,
    "val_limit": 8,
    "test_limit": 8,
    "eval_batch_size": 4,
    "num_samples": 4,
    "quality_samples": 0,  # the sample-quality report runs on the main process only: tests/test_cli.py
    "bound_model": "null",
    "sample_method": "sde",
    "sample_options": '{"num_steps": 10}',
}


def sets(**fields: object) -> list[str]:
    out = []
    for key, value in {**TINY, **fields}.items():
        out += ["--set", f"{key}={value}"]
    return out


def command(args: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "diffscore.cli", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "diffscore.cli", *args]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(args: list[str], nproc: int, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command(args, nproc), env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc; torchrun starts its workers in new sessions,
    so killing the launcher's process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """A 6-step `diffscore train` on 2 gloo processes (validation and checkpoints every 3 steps)."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    args = ["train", "--out", str(run), "--no-progress"]
    run_cli(args + sets(steps=6, eval_every=3, checkpoint_every=3), nproc=2)
    return run


@pytest.mark.distributed
def test_ddp_training_matches_one_process_on_the_global_batch(ddp_run):
    run = ddp_run
    cfg = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))

    torch.set_num_threads(1)
    ref = Trainer(cfg, None, progress=False)
    losses, val = [], []
    for _ in range(cfg.steps):
        losses.append(float(ref.train_step()[0]))
        if ref.step % cfg.eval_every == 0:
            val.append(ref.validate()["mean"])
    records = metrics(run)
    ddp_losses = [r["loss"] for r in records if r["event"] == "train"]
    ddp_val = [r["mean"] for r in records if r["event"] == "validation"]
    # the global-batch mean of the two processes' losses (the same per-sample draws, summed in another
    # order): float32 rounding only, measured ~1e-7 relative
    assert ddp_losses == pytest.approx(losses, rel=1e-5)
    groups, state = load_checkpoint(run / "checkpoints" / "step_00000006")
    assert state["world_size"] == 2 and state["step"] == 6
    for name, module in (("model", ref.model), ("ema", ref.ema)):
        for key, value in module.state_dict().items():
            # gradients averaged over 2 processes vs one mean: float32 rounding through 6 Adam steps of
            # lr 1e-3 (measured 5e-8); EMA identical on every rank, else it would not match either
            torch.testing.assert_close(groups[name][key], value, rtol=0, atol=2e-6, msg=f"{name}.{key}")
    # validation bits/dim, sharded in whole batches of 4 over 2 processes, equals the one-process value
    # up to the 1e-8 weight differences above
    assert ddp_val == pytest.approx(val, abs=1e-5)
    # samples drawn in two halves with per-sample generators equal one batch of 4 on one process
    samples = read_tensors(run / "samples.safetensors")["samples"]
    x, _ = generate_samples(
        ref.best_model(), 4, ref.image_shape, ref.num_bins, ref.data_range, "sde", cfg.seed, num_steps=10
    )
    torch.testing.assert_close(samples, x, rtol=0, atol=1e-4)


@pytest.mark.distributed
def test_sharded_bpd_equals_one_process(ddp_run, tmp_path):
    out = tmp_path / "bpd.safetensors"
    # 10 test images in one batch (--batch-size 512), so the 2 processes solve 5 each
    args = ["bpd", "--model", str(ddp_run / "model"), "--limit", "10", "--dtype", "float64", "--seed", "3"]
    proc = run_cli(args + ["--output", str(out), "--no-progress"], nproc=2)
    assert proc.stdout.count("bits/dim") == 1  # printed by the main process only
    model = ScoreModel.from_pretrained(ddp_run / "model").double()
    cfg = TrainConfig.from_dict(json.loads((ddp_run / "train_config.json").read_text()))
    images = load_splits(cfg)["test"].images[:10]
    ref = evaluate_bpd(model, images, 17, (-1.0, 1.0), seed=3, rtol=1e-5, atol=1e-5)["bpd"]
    # the same per-image dequantization noise; only the adaptive steps differ (solves of 5 images vs
    # one of 10), each meeting rtol = atol = 1e-5 per sample: measured 1.2e-6 bits/dim. In float64,
    # because in float32 the round-off of two differently stepped solves alone reaches ~1e-5 here.
    torch.testing.assert_close(read_tensors(out)["bpd"], ref, rtol=0, atol=1e-5)


@pytest.mark.distributed
def test_killed_run_resumes_on_another_number_of_processes(tmp_path):
    run = tmp_path / "run"
    # a run too long to end before the kill however the machine is loaded; the resumed run stops STEPS
    # after the kill (a constant learning rate, so the length of the run does not change its steps)
    fields = {"steps": 10**6, "lr_schedule": "constant", "checkpoint_every": 1, "keep_checkpoints": 3}
    args = ["train", "--out", str(run), "--no-progress"] + sets(**fields, eval_every=1000)
    log = tmp_path / "torchrun.log"  # what the job printed, shown if it ends before the kill
    with open(log, "wb") as out:
        proc = subprocess.Popen(command(args, 2), env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = list_checkpoints(run / "checkpoints")
            if done and int(done[-1].name[5:]) >= 4:
                break
            time.sleep(0.02)
    finally:
        # a crash: SIGKILL the launcher and both workers at once, mid-training
        tree = process_tree(proc.pid)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(tree) >= 3, f"the job ended before the kill:\n{log.read_text()[-3000:]}"
    assert not any(alive(pid) for pid in tree)
    assert not (run / "results.json").exists(), "the run finished before it was killed"
    # every complete checkpoint the killed run left loads; partial ones can only be hidden temporaries
    left = list_checkpoints(run / "checkpoints")
    killed_at = int(left[-1].name[5:])
    assert killed_at >= 4
    steps = killed_at + 20
    for path in left:
        groups, state = load_checkpoint(path)
        assert state["step"] == int(path.name[5:]) and state["world_size"] == 2
    visible = {p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")}
    assert visible == {p.name for p in left}
    # what a kill in the middle of a write leaves: a hidden temporary directory and a cut-off log line
    partial = run / "checkpoints" / f".step_00000999.{'ab12' * 8}.diffscore-tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00\x01")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 9')

    run_cli(["train", "--out", str(run), "--resume", "--no-progress", "--set", f"steps={steps}"], nproc=1)
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == steps and results["world_size"] == 1
    ours = {".diffscore.json", ".diffscore.lock"}  # the manifests and the run's lock file
    hidden = [p for d in (run, run / "checkpoints") for p in d.iterdir() if p.name.startswith(".")]
    assert [p for p in hidden if p.name not in ours] == []
    final = list_checkpoints(run / "checkpoints")
    assert [int(p.name[5:]) for p in final] == [steps - 2, steps - 1, steps]
    for path in final:
        Trainer.from_checkpoint(path, progress=False)  # complete and consistent with its config
    # the log holds each step once: the records after the resumed checkpoint and the cut line are gone
    logged = [r["step"] for r in metrics(run) if r["event"] == "train"]
    assert logged == list(range(1, steps + 1))
    # data order and training noise depend on the step only, so the resumed run continues the
    # trajectory of an uninterrupted one-process run (float32 rounding of the 2-process steps: measured
    # 6e-8 after 120 Adam steps; this run is about 30 steps long unless the kill came late)
    cfg = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    torch.set_num_threads(1)
    ref = Trainer(cfg, None, progress=False)
    for _ in range(cfg.steps):
        ref.train_step()
    groups, _ = load_checkpoint(final[-1])
    for key, value in ref.model.state_dict().items():
        torch.testing.assert_close(groups["model"][key], value, rtol=0, atol=1e-6, msg=key)
