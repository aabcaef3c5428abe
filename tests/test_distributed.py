"""diffscore.distributed: environment detection, sharding, gathers across real gloo processes, seeds."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from diffscore import distributed as dd

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
        assert res["after_shutdown"] is False
