"""What a GPU worker may use: its share of the cores (the decoders it runs) from the settings passed down, the
batch system's environment or the machine, and the host memory it needs; no GPU needed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import pipeline.gpu_workers as gpu_workers
from pipeline.decode import DecodeOptions
from pipeline.executor import ExecOptions
from pipeline.gpu_workers import CORES_ENV, CUDA_CONTEXT_BYTES, RUNTIME_BYTES, CoreShare, core_share, memory_need
from pipeline.in_flight import frames_held, pinned_budget
from pipeline.masks.feed import Feeder
from pipeline.masks.stage import MasksStage, auto_decoders
from pipeline.segment import SegmenterSpec
from pipeline.tracking import TrackOptions

# a segmenter whose decoders write into its memory (pinned, as YOLO's device path on CUDA)
PINNING = types.SimpleNamespace(frame_memory=lambda budget: lambda shape: np.empty(shape, dtype=np.uint8))
SCHEDULER_VARIABLES = (CORES_ENV, gpu_workers.GPUS_PER_JOB_ENV, "SLURM_CPUS_PER_GPU", "SLURM_CPUS_PER_TASK",
                       "SLURM_CPUS_ON_NODE", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "NCPUS", "NSLOTS")


def share(environ: dict[str, str], *, cores: int = 16, gpus: int = 8) -> CoreShare:
    """The share for `environ`, in a process that may run on `cores` cores of a machine with `gpus` GPUs."""
    return core_share(environ, affinity=lambda: cores, machine_gpus=lambda: gpus)


@pytest.mark.parametrize("environ, cores", [
    ({CORES_ENV: "3", "SLURM_CPUS_PER_TASK": "64", "SLURM_GPUS_ON_NODE": "1"}, 3),  # the setting passed down first
    ({"SLURM_CPUS_PER_GPU": "6", "SLURM_CPUS_PER_TASK": "64"}, 6),
    ({"SLURM_CPUS_PER_TASK": "32", "SLURM_CPUS_ON_NODE": "64", "SLURM_GPUS_ON_NODE": "4"}, 8),
    ({"SLURM_CPUS_ON_NODE": "32", "SLURM_JOB_GPUS": "4,5"}, 16),  # the job's GPU ids, not the machine's 8
    ({"NCPUS": "16", gpu_workers.GPUS_PER_JOB_ENV: "4"}, 4),  # PBS
    ({"NSLOTS": "12"}, 1),  # SGE, on a machine of 8 GPUs
    ({"OMP_NUM_THREADS": "1"}, 2),  # not a core count (PBS sets it to 1): 16 cores / 8 GPUs
    ({"SLURM_CPUS_PER_TASK": "lots"}, 2),  # not a number: the next source
    ({}, 2),
])
def test_a_gpu_workers_cores_come_from_the_first_source_that_says(environ, cores):
    assert share(environ).cores == cores


def test_a_pinned_worker_divides_by_the_machines_gpus_not_the_one_it_sees():
    """The review's case: 8 cores, 8 GPUs, each worker pinned to one (torch counts 1): one core each, not 8."""
    found = share({}, cores=8, gpus=8)
    assert (found.cores, found.decoders) == (1, 1)
    assert "8 cores of this process / 8 GPUs (the machine's)" == found.source


@pytest.mark.parametrize("cores, decoders", [(0, 1), (1, 1), (3, 3), (8, 8), (64, 8)])
def test_decoders_are_the_share_between_1_and_8(cores, decoders):
    assert CoreShare(cores=cores, source="test").decoders == decoders


@pytest.fixture
def no_scheduler(monkeypatch):
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_masks_stage_decodes_its_share_on_cuda_and_one_clip_on_a_cpu(monkeypatch, no_scheduler):
    import torch

    monkeypatch.setattr(gpu_workers, "available_cores", lambda: 8)
    monkeypatch.setattr(gpu_workers, "count_machine_gpus", lambda: 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # what a pinned worker's torch says
    assert auto_decoders("cuda") == 1 and auto_decoders("cpu") == 1
    monkeypatch.setenv(CORES_ENV, "5")
    stage = MasksStage(segmenter=SegmenterSpec(device="cuda"), decode=DecodeOptions(), track=TrackOptions(),
                       metadata={})
    assert stage.decoders_here() == 5 and stage.made_with()["decoders"] == 5
    assert MasksStage(segmenter=SegmenterSpec(device="cuda"), decode=DecodeOptions(), track=TrackOptions(),
                      metadata={}, decoders=2).decoders_here() == 2
    assert auto_decoders("cpu") == 1


@pytest.mark.parametrize("decoders, batch", [(1, 16), (8, 16), (8, 32)])
def test_memory_need_is_a_cuda_context_the_runtime_and_the_feeders_frames_in_flight(decoders, batch):
    need = memory_need(decoders=decoders, batch=batch)
    feeder = Feeder(PINNING, DecodeOptions(batch=batch), decoders=decoders, rows=None, overlap=True)
    frames = feeder.frames_in_flight_at(1920 * 1080 * 3)
    assert need.frames == frames and need.frame_bytes == 1920 * 1080 * 3
    assert need.bytes == CUDA_CONTEXT_BYTES + RUNTIME_BYTES + frames * 1920 * 1080 * 3
    assert need.limit() == int(need.bytes / 0.8)  # Dask pauses a worker at 0.8 of its limit
    assert memory_need(decoders=decoders, batch=batch, frame=(256, 340)).bytes < need.bytes


def test_frames_in_flight_are_capped_in_bytes():
    """At 1080p with 8 decoders and BATCH=32: 467 frames held (pieces of 3 frames and batches of 22, capped in
    bytes; a piece partly in a batch held whole), and pinned memory up to what they take plus two staging buffers
    of 256 MiB (torch's blocks are rounded up to powers of two and cached; past the budget, ordinary memory):
    1,021 frames, 5.9 GiB (the review counted 544 frames, before the caps in bytes, without the copies of the
    batches and without pinned memory). That frames held stay within `frames_held` is measured in test_feed, that
    pinned memory stays within its budget in test_launched. 4K frames are held fewer at a time."""
    options, frame = DecodeOptions(batch=32), 1920 * 1080 * 3
    held = frames_held(options, decoders=8, overlap=True, frame_bytes=frame)
    assert held == 467 and pinned_budget(options, decoders=8, frame_bytes=frame) == held * frame + (512 << 20)
    need = memory_need(decoders=8, batch=32)
    assert need.frames == 1021 and round(need.frames * need.frame_bytes / 2**30, 1) == 5.9
    four_k = memory_need(decoders=8, batch=32, frame=(2160, 3840))
    assert four_k.frames == 296 and four_k.frames * four_k.frame_bytes < 7 * 2**30
    pinning = Feeder(PINNING, options, decoders=8, rows=None, overlap=True)
    assert pinning.frames_in_flight_at(frame) == 1021
    assert Feeder(None, options, decoders=8, rows=None, overlap=True).frames_in_flight_at(frame) == held
    assert Feeder(None, options, decoders=8, rows=None, overlap=False).frames_in_flight == 480


def test_local_gpu_workers_get_their_share_of_the_cores_and_the_memory(monkeypatch, caplog):
    import distributed
    import distributed.system

    from pipeline.executor import gpu_cluster

    started = {}
    monkeypatch.setattr(distributed, "SpecCluster", lambda **kw: started.update(kw) or "cluster")
    monkeypatch.setattr(gpu_workers, "available_cores", lambda: 16)
    monkeypatch.setattr(distributed.system, "MEMORY_LIMIT", 64 << 30)
    assert gpu_cluster(("2", "3")) == "cluster"
    for gpu in ("2", "3"):
        options = started["workers"][f"gpu-{gpu}"]["options"]
        assert options["memory_limit"] == 32 << 30  # not Dask's default: memory × 1 thread ÷ 16 cores
        assert options["env"]["CUDA_VISIBLE_DEVICES"] == gpu and options["env"][CORES_ENV] == "8"
    assert not caplog.records
    monkeypatch.setattr(distributed.system, "MEMORY_LIMIT", 16 << 30)
    with caplog.at_level(logging.WARNING, logger="pipeline.executor"):
        gpu_cluster(("0", "1", "2", "3"))
    assert started["workers"]["gpu-0"]["options"]["memory_limit"] == 4 << 30
    assert "4 GPU worker(s) share 16.0 GiB of memory, 4.0 GiB each" in caplog.text and "SHORT_SIDE" in caplog.text


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_cpu_workers_share_the_cores_this_process_may_run_on_not_the_machines():
    """A job's cpuset (SLURM, `taskset`, a container's cpuset) holds fewer cores than the machine: the torch threads
    of a CPU worker, which key a CPU masks run, are a share of those."""
    script = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "from pipeline.executor import ExecOptions; "
              "print(ExecOptions(workers=0).threads_per_worker(), ExecOptions(workers=2).threads_per_worker())")
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["1", "1"]
    assert ExecOptions(workers=0).threads_per_worker() == len(os.sched_getaffinity(0))
