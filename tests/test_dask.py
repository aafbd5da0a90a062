"""The same stage on two Dask worker processes gives the same shards as in-process; GPU workers and resources."""

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import dask
import pytest
import torch
from distributed import Client, LocalCluster

from pipeline.cluster import nanny_environ_config
from pipeline.engine.journal import BEGIN, OK
from pipeline.engine.records import ShardTask
from pipeline.engine.run import run_stage
from pipeline.engine.tries import Tries
from pipeline.engine.worker_plugin import ReleaseOnClose
from pipeline.errors import InputError
from pipeline.executor import GPU, ExecOptions, dask_client, run_tasks
from pipeline.masks import run_masks
from pipeline.segment import SegmenterSpec
from tests.conftest import LUMA
from tests.test_masks_stage import config, shard_bytes
from tests.toy_stage import Item, Outcome, ToyWork


def test_two_worker_processes_match_in_process_run(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    local = run_masks(config(root, tmp_path / "local"), progress=False)
    dask = run_masks(config(root, tmp_path / "dask", execution=ExecOptions(workers=2)), progress=False)
    assert dask.by_status == {"ok": 5} and dask.computed == 3
    assert shard_bytes(Path(dask.output)) == shard_bytes(Path(local.output))
    workers = {json.loads(p.read_text())["worker"] for p in Path(dask.output).glob("*_stats.json")}
    assert len(workers) >= 1 and not any(w.endswith(f":{os.getpid()}") for w in workers)


def hold_a_try(folder: str) -> list[str]:
    """On a worker: a try of a shard's item begun, and held until the driver says go; then its journal's events."""
    journal = Path(folder) / ".shard_tries.json"
    tries = Tries(journal, max_tries=3)
    tries.open()
    tries.begin("clip")
    (Path(folder) / "begun").touch()
    deadline = time.monotonic() + 120
    while not (Path(folder) / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    tries.succeeded("clip")
    tries.close()
    return [json.loads(line)["ev"] for line in journal.read_text().splitlines()]


def test_a_second_driver_on_a_shared_scheduler_takes_back_no_try_in_flight(shapes_dataset, tmp_path):
    """Each stage registers the plugin that gives tries back when a worker closes. Registered again by another
    client (a second `pipeline` run on the same `--scheduler`), it must not tear the first down on every worker,
    which takes the tries in flight there back as if the worker were closing: a clip that then kills its worker
    would not have that try counted."""
    root, _ = shapes_dataset
    held = tmp_path / "held"
    held.mkdir()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster, Client(cluster) as first:
        first.register_plugin(ReleaseOnClose())  # the first driver's stage
        future = first.submit(hold_a_try, str(held), pure=False)
        deadline = time.monotonic() + 60
        while not (held / "begun").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (held / "begun").exists()
        shared = ExecOptions(scheduler=cluster.scheduler_address)
        second = run_masks(config(root, tmp_path / "second", execution=shared), progress=False)
        (held / "go").touch()
        assert second.by_status == {"ok": 5}
        assert future.result(timeout=60) == [BEGIN, OK]  # not taken back ("back") in between


@dataclass(frozen=True)
class GateStage:
    """A shard's items make one file, its name; an item named "slow" first waits for the file `gate`."""

    gate: str

    def open(self, task: ShardTask, commit) -> "GateWork":
        return GateWork(self.gate, task)


@dataclass
class GateWork(ToyWork):
    gate: str
    task: ShardTask

    def process(self, item: Item) -> Outcome:
        deadline = time.monotonic() + 120
        while item.key == "slow" and not Path(self.gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return Outcome("ok")

    def finish(self, outcomes, commit) -> dict:
        commit.stage(self.task.folder / f"{self.task.name}.txt").write_text(self.task.name)
        return {}


def test_a_later_run_on_a_shared_scheduler_is_not_handed_another_runs_result(tmp_path):
    """Two runs on one scheduler that want the same shard share one Dask task while it runs. Once the first run
    has its result (and waits on for its other shards), a run that comes later, here after the shard's files were
    removed, or one that asks for the shard to be redone (OVERWRITE), must compute it, not be handed that result."""
    out, gate = tmp_path / "out", tmp_path / "gate"
    stage = GateStage(str(gate))
    plan = [ShardTask(stage=stage, name=name, folder=out, items=(Item(key),), identity={key: "x"}, fingerprint="f")
            for name, key in (("s-00000", "fast"), ("s-00001", "slow"))]
    fast = out / "s-00000.txt"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        shared = ExecOptions(scheduler=cluster.scheduler_address)
        with Client(cluster.scheduler_address) as client, ThreadPoolExecutor(1) as pool:
            first = pool.submit(run_stage, "toy", out, plan, plan, options=shared, progress=False, client=client)
            deadline = time.monotonic() + 60
            while not (out / "plan.json").exists() and time.monotonic() < deadline:  # written as s-00000's result
                time.sleep(0.05)  # comes back to the first run, which holds it, waiting for s-00001
            for redo in (False, True):  # a plain rerun after the files went, then one that asks for it again
                fast.unlink(), plan[0].marker.unlink()
                with Client(cluster.scheduler_address) as second:
                    again = run_stage("toy", out, plan, [replace(plan[0], overwrite=redo)], options=shared,
                                      progress=False, client=second)
                assert (again.computed, again.failed_shards, fast.exists(), plan[0].marker.exists()) == \
                    (1, {}, True, True)
            gate.touch()
            assert first.result(timeout=60).computed == 2


def visible_device(seconds: float) -> str:
    time.sleep(seconds)  # long enough that both workers get tasks
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_gpu_workers_each_see_one_gpu_and_take_gpu_tasks():
    seen: list[str] = []
    failed = run_tasks(visible_device, [0.3] * 6, names=[str(i) for i in range(6)], options=ExecOptions(gpus=("0", "1")),
                       on_done=lambda task, result: seen.append(result), resources={GPU: 1})
    assert not failed and len(seen) == 6 and set(seen) == {"0", "1"}


def memory_environ(_: object) -> tuple[str | None, str | None]:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


@pytest.mark.parametrize("options", [ExecOptions(workers=1), ExecOptions(gpus=("0",))], ids=["cpu", "gpu"])
def test_workers_started_here_keep_glibcs_memory_thresholds(options, monkeypatch):
    """Dask's nanny would start them with MALLOC_TRIM_THRESHOLD_=65536, which made a CPU forward 0.6-0.8x as fast;
    its other settings stay (a worker's numpy on one thread)."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a nanny started by another test sets it here
    seen = []
    failed = run_tasks(memory_environ, [0], names=["0"], options=options, on_done=lambda _, found: seen.append(found),
                       resources={GPU: 1} if options.gpus else None)
    assert not failed and seen == [(None, "1")]
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor set in this process for the nannies started later


@pytest.mark.parametrize("told", [False, True], ids=["dasks-default", "told"])
def test_workers_started_elsewhere_with_dasks_trim_setting_are_warned_about(told, caplog, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "")  # recorded, so that the nanny's setting here is undone after
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    with dask.config.set(nanny_environ_config() if told else {}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        # this process's environment unlike the workers': the check must ask them
        if told:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
        else:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # the nanny set it here as it started the worker
        with caplog.at_level(logging.WARNING, logger="pipeline.executor"), \
                dask_client(ExecOptions(scheduler=cluster.scheduler_address)):
            pass
    warned = "1 of the 1 workers" in caplog.text and "PRE_SPAWN_ENVIRON" in caplog.text
    assert warned != told


def test_gpu_stage_on_a_cluster_without_gpu_workers_fails_at_once_and_clearly(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    spec = SegmenterSpec(backend=LUMA, device="cuda")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(InputError, match=r"none of the 1 workers .* declares the resources GPU=1.*--resources GPU=1"):
            run_masks(config(root, tmp_path / "out", segmenter=spec, execution=ExecOptions(scheduler=cluster.scheduler_address)), progress=False)
    assert not list((tmp_path / "out").rglob("*_stats.json"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_run_uses_one_worker_per_visible_gpu(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    spec = SegmenterSpec(backend=LUMA, device="cuda")
    summary = run_masks(config(root, tmp_path / "out", segmenter=spec, execution=ExecOptions(workers=2)), progress=False)
    assert summary.by_status == {"ok": 5}
    workers = {json.loads(p.read_text())["worker"] for p in Path(summary.output).glob("*_stats.json")}
    assert 1 <= len(workers) <= torch.cuda.device_count()
