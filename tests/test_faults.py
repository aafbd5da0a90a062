"""Faults really injected: a Dask worker killed by pid, the whole run killed with SIGKILL and resumed, two runs
at once on one output folder, a clip that kills its worker every time. Each ends with the same shard bytes as
an undisturbed run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.executor import ExecOptions
from pipeline.masks import run_masks
from pipeline.segment import SegmenterSpec
from tests.conftest import ROOT
from tests.test_masks_stage import add_bright_clip, config, shard_bytes

SLOW = SegmenterSpec(backend="tests.segmenters:SlowLumaSegmenter")


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def masks_cli(root: Path, out: Path, **extra: str) -> subprocess.Popen:
    """`python -m pipeline masks` on the shapes dataset, in-process, in its own process group."""
    argv = [sys.executable, "-m", "pipeline", "masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(out),
            "--segmenter", SLOW.backend, "--workers", "0", "--shard-size", "2"]
    return subprocess.Popen(argv, cwd=ROOT, env=env(**extra), start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture
def reference(shapes_dataset, tmp_path) -> Path:
    """The run folder of an undisturbed in-process run with the same segmenter settings."""
    root, _ = shapes_dataset
    return Path(run_masks(config(root, tmp_path / "reference", segmenter=SLOW), progress=False).output)


def test_run_killed_with_sigkill_mid_shard_resumes_to_identical_shards(shapes_dataset, reference, tmp_path):
    root, _ = shapes_dataset
    run_dir = tmp_path / "out" / reference.relative_to(tmp_path / "reference")
    proc = masks_cli(root, tmp_path / "out", FAULT_SLEEP="0.15")
    wait_for(lambda: (run_dir / "train-00000_stats.json").exists() and (run_dir / ".train-00001_tries.json").exists(),
             what="train-00000 done and train-00001 started")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "train-00001_stats.json").exists() and not (run_dir / "train-00001.parquet").exists()
    assert list(run_dir.glob(".train-00001.parquet.tmp-*")), "the killed writer's partial file is hidden"

    resumed = run_masks(config(root, tmp_path / "out", segmenter=SLOW), progress=False)
    assert (resumed.skipped, resumed.computed, resumed.by_status) == (1, 2, {"ok": 5})
    assert list(resumed.retried.values()) == [2], "the clip cut short is tried again"
    assert shard_bytes(run_dir) == shard_bytes(reference)
    assert not list(run_dir.glob(".*tmp*")) and not list(run_dir.glob(".*_tries.json"))


def test_a_claim_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path):
    from pipeline.engine.claims import ShardBusy, claim

    marker = tmp_path / "shard-00000_stats.json"
    stale = tmp_path / ".shard-00000.parquet.tmp-otherhost-123"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.engine.claims import claim\n"
                               f"with claim(__import__('pathlib').Path({str(marker)!r})):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    stale.write_bytes(b"partial")
    with pytest.raises(ShardBusy, match=rf"shard-00000: being computed by another process \(.+:{holder.pid}\)"):
        with claim(marker, wait=0.3):
            pass
    assert stale.exists(), "a busy claim touches nothing"
    holder.kill()
    holder.wait()
    with claim(marker, wait=0):
        assert not stale.exists(), "the killed holder's partial file is removed under the claim"


def test_two_runs_at_once_compute_each_shard_once(shapes_dataset, reference, tmp_path):
    root, _ = shapes_dataset
    runs = [masks_cli(root, tmp_path / "out", FAULT_SLEEP="0.5") for _ in range(2)]  # ~2.5 s each: they overlap
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    computed = re.findall(r"pipeline\.engine\.shard: ([a-z]+-\d+): \d+ items, \d+ frames in", "".join(outputs))
    assert sorted(computed) == ["train-00000", "train-00001", "val-00000"], "each shard computed by one run only"
    assert [run.returncode for run in runs] == [0, 0], "a run that meets a claimed shard waits, then finds it done"
    assert "finished by another run meanwhile" in "".join(outputs)
    run_dir = tmp_path / "out" / reference.relative_to(tmp_path / "reference")
    assert shard_bytes(run_dir) == shard_bytes(reference)
    after = run_masks(config(root, tmp_path / "out", segmenter=SLOW), progress=False)
    assert (after.computed, after.by_status) == (0, {"ok": 5})


@pytest.fixture
def dask_processes(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes (no nanny) on 127.0.0.1; yields (address, marks)."""
    marks, scheduler_file = tmp_path / "marks", tmp_path / "scheduler.json"
    marks.mkdir()
    extra = env(FAULT_SLEEP="0.15", FAULT_MARKS=str(marks))
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=extra, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for(scheduler_file.exists, what="the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                    "--no-nanny", "--no-dashboard", "--name", f"w{i}"], env=extra, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, marks
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_worker_killed_mid_shard_is_replaced_and_the_run_completes(shapes_dataset, reference, dask_processes, tmp_path):
    root, _ = shapes_dataset
    address, marks = dask_processes
    killed: list[int] = []

    def kill_first_busy_worker() -> None:
        wait_for(lambda: any(marks.iterdir()), what="a worker to start a batch")
        killed.append(int(next(marks.iterdir()).name))
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_first_busy_worker)
    killer.start()
    summary = run_masks(config(root, tmp_path / "out", segmenter=SLOW, execution=ExecOptions(scheduler=address)),
                        progress=False)
    killer.join()
    assert killed and not summary.failed_shards and summary.by_status == {"ok": 5}
    assert list(summary.retried.values()) == [2], "the clip the killed worker was on is tried again"
    assert not any(name.endswith(f":{killed[0]}") for name in summary.workers)
    run_dir = Path(summary.output)
    assert shard_bytes(run_dir) == shard_bytes(reference)
    assert not list(run_dir.glob(".*tmp*")) and not list(run_dir.glob(".*_tries.json"))


@pytest.mark.parametrize("decoders, max_tries", [(1, 2), (3, 2), (3, 1)])
def test_clip_that_kills_its_worker_every_time_is_given_up_and_the_run_completes(shapes_dataset, tmp_path, decoders,
                                                                                 max_tries):
    """With several decoders the killed worker was on several clips: the death is counted against none of them
    (with max_tries 1 that would give each up), each is tried alone next, and only the clip that kills its
    worker by itself is given up."""
    root, _ = shapes_dataset
    add_bright_clip(root)
    spec = SegmenterSpec(backend="tests.segmenters:WorkerKillingSegmenter")
    summary = run_masks(config(root, tmp_path / "out", segmenter=spec,
                               execution=ExecOptions(workers=2, max_tries=max_tries), decoders=decoders, shard_size=6),
                        progress=False)
    assert not summary.failed_shards and summary.by_status == {"failed": 1, "ok": 5}
    assert summary.failed_items == {"zzbright_000000_000010": f"gave up after {max_tries} tries: its worker died "
                                                              "each time (killed, out of memory, or crashed)"}


SLOW_RENDER = """
import sys, time
import pipeline.render.encode as encode
write = encode.ClipWriter.write
encode.ClipWriter.write = lambda self, frame: (time.sleep(0.03), write(self, frame))[1]
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["mp4", "rawframes", "webdataset"])
def test_render_killed_with_sigkill_resumes_to_identical_outputs(shapes_dataset, tmp_path, fmt):
    import shutil

    from pipeline.render import RenderConfig, run_render
    from pipeline.render.encode import EncodeOptions
    from pipeline.render.variants import resolve

    root, _ = shapes_dataset
    masks = run_masks(config(root, tmp_path / "reference"), progress=False)
    shutil.copytree(tmp_path / "reference" / "masks", tmp_path / "out" / "masks")
    render = dict(dataset="kinetics400", variants=resolve(["bg_obj2"]), execution=ExecOptions(workers=0),
                  encode=EncodeOptions(format=fmt))
    run_render(RenderConfig(out=tmp_path / "reference", **render), progress=False)
    assert masks.by_status == {"ok": 5}

    variant_dir = tmp_path / "out" / "renders" / "kinetics400" / Path(masks.output).name / "bg_obj2"
    status = variant_dir / "_status" / fmt
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RENDER, "render", "--dataset", "kinetics400", "--out",
                             str(tmp_path / "out"), "--variants", "bg_obj2", "--workers", "0", "--format", fmt],
                            cwd=ROOT, env=env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for(lambda: (status / "train-00000_stats.json").exists() and (status / ".train-00001_tries.json").exists(),
             what="render train-00000 done and train-00001 started")
    time.sleep(0.15)  # into the clip's frames
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if fmt == "rawframes":  # x264 holds a short clip's packets until the end, so only rawframes shows its partial
        assert list(variant_dir.rglob(".*.tmp-*/img_00001.jpg")), "the killed writer's partial clip is hidden"
    if fmt == "webdataset":  # the shard it was on has no tar yet; the one it finished has
        assert (variant_dir / "train-00000.tar").is_file() and not (variant_dir / "train-00001.tar").exists()

    resumed = run_render(RenderConfig(out=tmp_path / "out", **render), progress=False)
    assert resumed.variants[0].skipped == 1 and resumed.variants[0].by_status == {"ok": 5}

    def outputs(base: Path) -> dict[str, bytes]:
        folder = base / "renders" / "kinetics400" / Path(masks.output).name / "bg_obj2"
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.suffix in (".mp4", ".jpg", ".tar")}

    assert outputs(tmp_path / "out") == outputs(tmp_path / "reference")
    assert len(outputs(tmp_path / "out")) >= (3 if fmt == "webdataset" else 5)  # a tar per shard, or a file per clip
    assert not list(variant_dir.rglob(".*tmp*")) and not list(variant_dir.rglob(".*_tries.json"))
