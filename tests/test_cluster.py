"""Batch-system clusters: the job shape from cluster.yaml, the job scripts dask-jobqueue writes from it, GPU
pinning per worker, and a real single-node SLURM running the masks stage while one of its jobs is cancelled."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.cluster import ClusterSpec, job_cluster, load_cluster_spec
from pipeline.errors import InputError
from pipeline.executor import ExecOptions
from pipeline.gpu_preload import gpu_for
from pipeline.masks import run_masks
from tests.conftest import ROOT
from tests.slurm_node import Unavailable, single_node
from tests.test_faults import SLOW, wait_for
from tests.test_masks_stage import config, shard_bytes


def test_the_documented_cluster_file_holds_the_defaults():
    assert load_cluster_spec(ROOT / "cluster.yaml", "slurm") == ClusterSpec(kind="slurm")
    assert load_cluster_spec(ROOT / "cluster.yaml", "pbs", max_jobs=3) == ClusterSpec(kind="pbs", max_jobs=3)


@pytest.mark.parametrize("text, message", [
    ("cpus: 4\n", "unknown keys cpus"),
    ("walltime: 4h\n", "walltime '4h'"),
    ("min_jobs: 5\nmax_jobs: 2\n", "min_jobs <= max_jobs"),
    ("- a\n", "expected key: value"),
])
def test_bad_cluster_files_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        load_cluster_spec(path, "slurm")
    assert str(path) in str(err.value)


def test_cli_refuses_a_missing_cluster_file_and_a_second_scheduler(tmp_path, capsys):
    base = ["masks", "--dataset", "sample", "--out", str(tmp_path), "--cluster", "slurm"]
    assert main(base + ["--cluster-config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml not found" in capsys.readouterr().err
    assert main(base + ["--cluster-config", str(ROOT / "cluster.yaml"), "--scheduler", "tcp://x:8786"]) == 2
    assert "leave out --scheduler" in capsys.readouterr().err
    assert not (tmp_path / "masks").exists()


def job_script(spec: ClusterSpec) -> str:
    cluster = job_cluster(spec, adapt=False)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def test_gpu_jobs_run_one_gpu_worker_per_gpu():
    spec = ClusterSpec(kind="slurm", queue="gpu", account="lab", gpus=2, cores=16, memory="64GB", walltime="02:00:00",
                       setup=("module load cuda",), directives=("--constraint=a100",))
    script = job_script(spec)
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH --gres=gpu:2", "#SBATCH --constraint=a100", "#SBATCH -t 02:00:00",
                 "module load cuda", "export PIPELINE_GPUS_PER_JOB=2", "export PIPELINE_CORES_PER_GPU=8"):
        assert line in script.splitlines(), line
    for args in ("--nworkers 2", "--nthreads 8", "--resources GPU=1", "--preload pipeline.gpu_preload", "--lifetime 6900s"):
        assert args in script, args
    pbs = job_script(dataclasses.replace(spec, kind="pbs", directives=("-l ngpus=2",)))
    assert "#PBS -l ngpus=2" in pbs and "gres" not in pbs and "--resources GPU=1" in pbs


def test_job_workers_start_with_glibc_memory_thresholds_not_dasks_trim_setting():
    """Dask's nanny would start each worker with MALLOC_TRIM_THRESHOLD_=65536 (a CPU forward at 0.6-0.8x): the job
    script's first setup line unsets it for the nannies the job starts; the file's own setup lines come after."""
    lines = job_script(ClusterSpec(kind="slurm", cores=2, memory="8GB", setup=("module load x",))).splitlines()
    export = next(line for line in lines if "PRE_SPAWN_ENVIRON" in line)
    assert lines.index(export) < lines.index("module load x")
    shown = subprocess.run(
        ["bash", "-c", f"{export}; {shlex.quote(sys.executable)} -c 'from distributed.nanny import _get_env_variables; "
                       "print(sorted(_get_env_variables(\"distributed.nanny.pre-spawn-environ\").items()))'"],
        capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items()
                                                          if k != "MALLOC_TRIM_THRESHOLD_"}).stdout
    assert "MALLOC_TRIM_THRESHOLD_" not in shown and "('OMP_NUM_THREADS', '1')" in shown  # Dask's others kept


def test_cpu_jobs_run_one_single_threaded_worker_per_core():
    script = job_script(ClusterSpec(kind="sge", cores=4, memory="8GB", account="proj"))
    assert "--nworkers 4" in script and "--nthreads 1" in script and "#$ -P proj" in script
    assert "GPU=1" not in script and "gpu_preload" not in script and "PIPELINE_CORES_PER_GPU" not in script


def test_gpu_jobs_whose_memory_cannot_hold_a_gpu_worker_are_refused_naming_the_file(tmp_path):
    """The review's case: 32GB over 8 GPU workers is 4 GB each, less than a CUDA context and the runtime."""
    path = tmp_path / "mine.yaml"
    path.write_text("cores: 8\nmemory: 32GB\ngpus: 8\n")
    with pytest.raises(InputError, match="memory 32GB over 8 GPU worker.* is 3.7 GiB each") as err:
        load_cluster_spec(path, "slurm")
    assert str(path) in str(err.value) and "set memory to at least 93GB" in str(err.value)
    with pytest.raises(InputError, match="a GPU worker needs a memory limit of 10.7 GiB"):
        job_cluster(ClusterSpec(kind="slurm", cores=8, memory="32GB", gpus=8), adapt=False)
    path.write_text("cores: 8\nmemory: 93GB\ngpus: 8\n")
    assert load_cluster_spec(path, "slurm").gpus == 8


def test_gpu_jobs_with_room_for_a_worker_but_not_for_1080p_frames_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        assert "--memory-limit 6.00GiB" in job_script(ClusterSpec(kind="slurm", cores=8, memory="12GiB", gpus=2))
    assert "is 6.0 GiB each, and a GPU worker needs a memory limit of 10.6 GiB" in caplog.text
    assert "SHORT_SIDE" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        job_script(ClusterSpec(kind="slurm", cores=8, memory="24GB", gpus=2))
    assert not caplog.records


def test_each_worker_of_a_gpu_job_owns_one_of_its_gpus():
    assert [gpu_for(f"SLURMCluster-7-{i}", "4,5", 2) for i in range(2)] == ["4", "5"]
    assert gpu_for("SLURMCluster-7-1", "", 2) == "1"
    assert gpu_for("SLURMCluster-7", "3", 1) is None  # one GPU per job: the job's own CUDA_VISIBLE_DEVICES


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with single_node(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except Unavailable as exc:
        pytest.skip(f"no SLURM here: {exc}")


def slow_jobs(tmp_path: Path, *, walltime: str, max_jobs: int, sleep: float) -> tuple[ClusterSpec, Path]:
    """One-core SLURM jobs whose workers run the slow luma segmenter (FAULT_SLEEP seconds a batch, marks in
    the returned folder), with their logs in tmp_path/logs."""
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = ClusterSpec(kind="slurm", cores=1, memory="1GB", walltime=walltime, min_jobs=1, max_jobs=max_jobs,
                       log_directory=str(tmp_path / "logs"),
                       setup=(f"export PYTHONPATH={ROOT}", f"export FAULT_SLEEP={sleep}", f"export FAULT_MARKS={marks}"))
    return spec, marks


def job_of(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"SLURM_JOB_ID="))


def test_slurm_job_stopped_mid_shard_costs_no_clip_a_try(slurm, shapes_dataset, tmp_path, monkeypatch):
    """What SLURM does at a job's walltime or on preemption: SIGTERM to the job. With one try per clip, the clip
    the job was on is not given up: the stop was not its fault. The shards come out as an undisturbed run's."""
    root, _ = shapes_dataset
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    reference = run_masks(config(root, tmp_path / "reference", segmenter=SLOW), progress=False)
    spec, marks = slow_jobs(tmp_path, walltime="00:10:00", max_jobs=2, sleep=0.2)
    cancelled: list[str] = []

    def stop_a_busy_job() -> None:
        wait_for(lambda: any(marks.iterdir()), timeout=120, what="a SLURM worker to start a batch")
        cancelled.append(job_of(int(next(marks.iterdir()).name)))
        subprocess.run(["scancel", "--full", "--signal=TERM", cancelled[0]], env=slurm, check=True)

    canceller = threading.Thread(target=stop_a_busy_job)
    canceller.start()
    summary = run_masks(config(root, tmp_path / "out", segmenter=SLOW, execution=ExecOptions(cluster=spec, max_tries=1)),
                        progress=False)
    canceller.join()
    assert cancelled and not summary.failed_shards and summary.by_status == {"ok": 5}, summary.failed_items
    assert summary.retried == {}, "the stopped try was taken back, not counted"
    assert shard_bytes(Path(summary.output)) == shard_bytes(Path(reference.output))
    assert not list(Path(summary.output).glob(".*tmp*"))
    wait_for(lambda: cancelled[0] not in subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True,
                                                         text=True).stdout.split(), what="the stopped job to end")
    assert os.environ["SLURM_CONF"] == slurm["SLURM_CONF"]


def test_slurm_run_outlives_a_job_that_reaches_its_walltime(slurm, shapes_dataset, tmp_path, monkeypatch):
    """One job at a time, with a one-minute walltime, and about 75 s of work: the first job's worker retires
    (or SLURM ends it) mid-run, a second job takes over, and the shards come out as an undisturbed run's."""
    root, _ = shapes_dataset
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    reference = run_masks(config(root, tmp_path / "reference", segmenter=SLOW), progress=False)
    spec, _ = slow_jobs(tmp_path, walltime="00:01:00", max_jobs=1, sleep=12)
    summary = run_masks(config(root, tmp_path / "out", segmenter=SLOW, execution=ExecOptions(cluster=spec)), progress=False)
    jobs = sorted(path.name for path in (tmp_path / "logs").glob("*.err"))
    assert len(jobs) >= 2, f"the work outlived the first job: {jobs}"
    assert "worker-lifetime-reached" in (tmp_path / "logs" / jobs[0]).read_text()
    assert not summary.failed_shards and summary.by_status == {"ok": 5}
    assert shard_bytes(Path(summary.output)) == shard_bytes(Path(reference.output))
    assert not list(Path(summary.output).glob(".*tmp*"))
