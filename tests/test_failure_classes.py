"""Faults injected in fresh processes: a crash between the renames of a commit, SIGTERM against SIGKILL, an
error that looks like a broken GPU, and a worker started in another folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engine.journal import read_tries
from pipeline.executor import ExecOptions
from pipeline.masks import read_clips, run_masks
from pipeline.segment import SegmenterSpec
from tests.conftest import LUMA, ROOT
from tests.test_faults import env, masks_cli, wait_for
from tests.test_masks_stage import add_bright_clip, config, shard_bytes

CRASH_AT_RENAME = """
import os, sys
real, seen, crash_at = os.replace, [0], int(sys.argv[1])
def replace(src, dst):
    name = os.path.basename(str(dst))
    if name.startswith("train-00000"):  # the shard's visible files and its stats, in commit order
        if seen[0] == crash_at:
            os._exit(9)
        seen[0] += 1
    return real(src, dst)
os.replace = replace
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("crash_at", [0, 1, 2])  # before the masks file, before the clips file, before the stats
def test_a_crash_between_the_renames_of_a_commit_leaves_the_shard_not_done(shapes_dataset, tmp_path, crash_at):
    root, _ = shapes_dataset
    reference = Path(run_masks(config(root, tmp_path / "reference"), progress=False).output)
    shutil.copytree(tmp_path / "reference", tmp_path / "out")
    run_dir = tmp_path / "out" / reference.relative_to(tmp_path / "reference")
    argv = ["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(tmp_path / "out"), "--segmenter",
            LUMA, "--workers", "0", "--shard-size", "2", "--overwrite"]  # recompute shards that are done
    crashed = subprocess.run([sys.executable, "-c", CRASH_AT_RENAME, str(crash_at), *argv], cwd=ROOT, env=env(),
                             capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stdout + crashed.stderr
    assert not (run_dir / "train-00000_stats.json").exists(), "the old done marker went first"
    served = {row["shard"] for row in read_clips(run_dir).to_pylist()}
    assert served == {"train-00001", "val-00000"}, "readers never serve the half-committed shard"
    resumed = run_masks(config(root, tmp_path / "out"), progress=False)
    assert (resumed.computed, resumed.skipped, resumed.by_status) == (1, 2, {"ok": 5})
    assert shard_bytes(run_dir) == shard_bytes(reference)
    assert not list(run_dir.glob(".*tmp*"))


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "ok"), (signal.SIGKILL, "failed")])
def test_sigterm_is_not_the_clips_fault_but_sigkill_counts(shapes_dataset, tmp_path, sig, status):
    """With one try per clip: a clip cut short by SIGTERM (walltime, preemption) is tried again by the next run;
    one whose process was killed outright (as by a crash it caused) has used its try."""
    root, _ = shapes_dataset
    run = masks_cli(root, tmp_path / "out", FAULT_SLEEP="0.15")
    # a clip's try begun, not only the journal there: a signal before it finds no try to take back or to count
    wait_for(lambda: any(read_tries(p) for p in (tmp_path / "out").rglob(".train-00000_tries.json")),
             what="a try of a train-00000 clip begun")
    os.kill(run.pid, sig)
    output = run.communicate(timeout=60)[0]
    if sig == signal.SIGTERM:
        assert run.returncode == 143 and "interrupted" in output and "rerun to resume" in output, output
    (tries,) = (tmp_path / "out").rglob(".train-00000_tries.json")
    counted = read_tries(tries)
    assert sum(entry.failures for entry in counted.values()) == (0 if sig == signal.SIGTERM else 1), counted
    slow = SegmenterSpec(backend="tests.segmenters:SlowLumaSegmenter")
    resumed = run_masks(config(root, tmp_path / "out", segmenter=slow, execution=ExecOptions(workers=0, max_tries=1)),
                        progress=False)
    assert resumed.by_status == ({"ok": 5} if status == "ok" else {"failed": 1, "ok": 4})


def test_a_device_error_fails_the_shard_not_the_clip(shapes_dataset, tmp_path, monkeypatch):
    root, _ = shapes_dataset
    monkeypatch.setenv("FAULT_ONCE", str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    spec = SegmenterSpec(backend="tests.segmenters:DeviceErrorOnceSegmenter")
    first = run_masks(config(root, tmp_path / "out", segmenter=spec), progress=False)
    assert "InfrastructureError" in first.failed_shards["train-00000"] and "CUDA error" in first.failed_shards["train-00000"]
    assert first.failed_shards["train-00001"] == "not run: the machine failed on train-00000 first"
    assert first.by_status == {"shard_failed": 5} and not first.failed_items
    again = run_masks(config(root, tmp_path / "out", segmenter=spec), progress=False)
    assert (again.computed, again.by_status, again.retried) == (3, {"ok": 5}, {}), "the try was not the clip's"


def test_a_clip_that_fails_every_machine_is_its_own_problem(shapes_dataset, tmp_path):
    """A MemoryError that the clip causes wherever it goes: after max_tries of them in a row, each in a fresh
    process (here: run), it is given up like any clip, before it touches the machine again."""
    root, _ = shapes_dataset
    add_bright_clip(root)
    spec = SegmenterSpec(backend="tests.segmenters:MemoryHogSegmenter")
    options = ExecOptions(workers=0, max_tries=2)
    for _ in range(2):
        summary = run_masks(config(root, tmp_path / "out", segmenter=spec, execution=options), progress=False)
        assert "failed" not in summary.by_status and summary.by_status.get("shard_failed"), summary.by_status
        assert any("zzbright_000000_000010: MemoryError" in error for error in summary.failed_shards.values())
    summary = run_masks(config(root, tmp_path / "out", segmenter=spec, execution=options), progress=False)
    assert (summary.by_status, summary.failed_shards) == ({"failed": 1, "ok": 5}, {})
    assert summary.failed_items == {"zzbright_000000_000010": "gave up after 2 device, memory or disk errors in a "
                                    "row, each in a fresh process: MemoryError: out of host memory"}


def test_clips_that_shared_batches_with_it_are_not_given_up(shapes_dataset, tmp_path):
    """Several clips in flight when the bright clip runs out of memory: the machine error is counted against
    none of them (max_tries 1 would give each up at once); each is tried alone next, and only the bright clip,
    failing alone, is given up."""
    root, _ = shapes_dataset
    add_bright_clip(root)
    spec = SegmenterSpec(backend="tests.segmenters:MemoryHogSegmenter")
    masks = config(root, tmp_path / "out", segmenter=spec, execution=ExecOptions(workers=0, max_tries=1), decoders=3,
                   shard_size=6)
    runs = [run_masks(masks, progress=False) for _ in range(3)]
    assert [bool(run.failed_shards) for run in runs] == [True, True, False]  # together; the bright clip alone; done
    assert (runs[-1].by_status, runs[-1].failed_items) == ({"failed": 1, "ok": 5}, {
        "zzbright_000000_000010": "gave up after 1 device, memory or disk errors in a row, each in a fresh "
                                  "process: MemoryError: out of host memory"})


def test_machine_errors_are_told_from_the_clips_own():
    import errno

    from pipeline.engine.failures import is_infrastructure

    assert is_infrastructure(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_infrastructure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_infrastructure(MemoryError())
    assert is_infrastructure(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_infrastructure(OSError(errno.ENOENT, "No such file or directory"))
    assert not is_infrastructure(RuntimeError("shape mismatch in the model"))
    assert not is_infrastructure(ValueError("CUDA error"))  # only what torch raises for it


def test_on_dask_a_device_error_restarts_the_worker_and_the_shard_runs_elsewhere(shapes_dataset, tmp_path, monkeypatch):
    root, _ = shapes_dataset
    monkeypatch.setenv("FAULT_ONCE", str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    spec = SegmenterSpec(backend="tests.segmenters:DeviceErrorOnceSegmenter")
    summary = run_masks(config(root, tmp_path / "out", segmenter=spec, execution=ExecOptions(workers=2)), progress=False)
    assert not (tmp_path / "flag").exists(), "the error was raised"
    assert (summary.failed_shards, summary.by_status, summary.retried) == ({}, {"ok": 5}, {})


@pytest.fixture
def scheduler_elsewhere(tmp_path):
    """A `dask scheduler` and one `dask worker`, both started in a folder of their own; yields the address."""
    elsewhere, scheduler_file = tmp_path / "elsewhere", tmp_path / "scheduler.json"
    elsewhere.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], cwd=elsewhere, env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for(scheduler_file.exists, what="the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                       "--no-dashboard"], cwd=elsewhere, env=env(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        yield address
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_worker_in_another_folder_sees_the_same_files(shapes_dataset, tmp_path, scheduler_elsewhere):
    root, _ = shapes_dataset
    here = root.parent  # relative paths from here: k400/, out/
    common = ["--dataset", "kinetics400", "--out", "out", "--scheduler", scheduler_elsewhere]
    for argv, printed in ((["masks", *common, "--root", root.name, "--segmenter", LUMA, "--shard-size", "2"],
                           "masks kinetics400: 5 clips (ok 5)"),
                          (["render", *common, "--variants", "bg,swap"], "render bg: 5 clips (ok 5)")):
        done = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=here, env=env(), capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0 and printed in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "elsewhere" / "out").exists()


def test_config_paths_are_absolute_before_tasks_leave(shapes_dataset, monkeypatch):
    root, _ = shapes_dataset
    monkeypatch.chdir(root.parent)
    absolute = config(Path(root.name), Path("out")).absolute()
    assert (absolute.root, absolute.out) == (root, root.parent / "out")


@pytest.fixture
def nanny_workers(tmp_path):
    """A `dask scheduler` and two `dask worker` processes with their nannies, as batch jobs start them; yields
    (address, marks folder, worker processes)."""
    marks, scheduler_file = tmp_path / "marks", tmp_path / "scheduler.json"
    marks.mkdir()
    extra = env(FAULT_SLEEP="0.5", FAULT_MARKS=str(marks))
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], cwd=ROOT, env=extra,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for(scheduler_file.exists, what="the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                     "--no-dashboard", "--name", f"w{i}"], cwd=ROOT, env=extra,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        procs += workers
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, marks, workers
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_worker_stopped_with_sigterm_mid_clip_does_not_use_up_the_clips_tries(shapes_dataset, tmp_path,
                                                                                 nanny_workers, caplog):
    """As a batch system stops a job (walltime, preemption): SIGTERM to `dask worker`. Each clip has one try,
    yet the clip it was on is done by the other worker, not given up."""
    import threading

    root, _ = shapes_dataset
    address, marks, workers = nanny_workers
    stopped: list[int] = []

    def stop_first_busy_worker() -> None:
        wait_for(lambda: any(marks.iterdir()), what="a worker to start a batch")
        busy = int(next(marks.iterdir()).name)  # the worker process the nanny started
        stopped.append(busy)
        os.kill(busy, signal.SIGTERM)

    stopper = threading.Thread(target=stop_first_busy_worker)
    stopper.start()
    slow = SegmenterSpec(backend="tests.segmenters:SlowLumaSegmenter")
    summary = run_masks(config(root, tmp_path / "out", segmenter=slow,
                               execution=ExecOptions(scheduler=address, max_tries=1)), progress=False)
    stopper.join()
    assert stopped
    assert (summary.failed_shards, summary.by_status) == ({}, {"ok": 5}), summary.failed_items


def test_a_clip_that_takes_its_worker_past_the_memory_limit_is_given_up_as_a_memory_error(shapes_dataset, tmp_path):
    """Dask's nanny stops a worker past its memory limit with SIGTERM, as a batch system does at walltime. That
    stop is the clip's doing: counted as a machine error, it gives the clip up after max_tries of them, where
    taking it back each time would have had Dask fail the whole shard (KilledWorker), run after run."""
    from distributed import LocalCluster

    root, _ = shapes_dataset
    add_bright_clip(root)
    hog = SegmenterSpec(backend="tests.segmenters:MemoryGrowingSegmenter")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="1.5GiB",
                      dashboard_address=None) as cluster:
        summary = run_masks(config(root, tmp_path / "out", segmenter=hog, shard_size=6,
                                   execution=ExecOptions(scheduler=cluster.scheduler_address, max_tries=2)),
                            progress=False)
    assert not summary.failed_shards and summary.by_status == {"failed": 1, "ok": 5}
    error = summary.failed_items["zzbright_000000_000010"]
    assert error.startswith("gave up after 2 device, memory or disk errors in a row, each in a fresh process: "
                            "MemoryError: the worker's memory passed 95% of its limit"), error
