"""What one GPU worker may use of its job or machine: its share of the cores (which sets how many clips it
decodes at once) and the host memory it needs (a CUDA context, the runtime and model, the decoded frames in
flight). Workers of a batch job or of a local GPU cluster are told their share (CORES_ENV); a worker started
by hand finds it in the batch system's environment, or divides the cores it may run on by the GPUs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

log = logging.getLogger(__name__)

CORES_ENV = "PIPELINE_CORES_PER_GPU"  # set for every worker of a GPU job (cluster.py) or local GPU cluster
GPUS_PER_JOB_ENV = "PIPELINE_GPUS_PER_JOB"  # set for every worker of a GPU job; read by pipeline.gpu_preload
MAX_DECODERS = 8  # PyAV decodes 340×256 at ~800 frames/s a core: 8 feed ~6,400 frames/s; more only hold frames

# Host memory of one GPU worker, besides its frames. A CUDA context with cuBLAS and cuDNN loaded takes 1.5-3 GiB
# of host RSS (the review of issue 25); Python, torch, ultralytics, Dask and a yolo11x-seg model took 2.0 GiB at
# peak on a CPU (a batch of 16 at 340×256, whose activations a GPU keeps on the device instead).
CUDA_CONTEXT_BYTES = 3 << 30
RUNTIME_BYTES = 2 << 30
WORST_FRAME = (1080, 1920)  # the frame size the figures are stated for: 1080p RGB, 6.2 MB a frame


@dataclass(frozen=True, kw_only=True)
class CoreShare:
    cores: int  # the cores one GPU worker may use
    source: str  # where the figure came from, for the log

    @property
    def decoders(self) -> int:
        """Clips decoded at once: one per core of the share, at most MAX_DECODERS, at least one."""
        return max(1, min(MAX_DECODERS, self.cores))


def core_share(environ: Mapping[str, str] | None = None, *, affinity: Callable[[], int] | None = None,
               machine_gpus: Callable[[], int] | None = None) -> CoreShare:
    """The cores one GPU worker may use, from the first of:
    1. CORES_ENV, set by this project for the workers of a GPU job (cluster.yaml `cores` ÷ the job's workers)
       and of a local GPU cluster (the cores this process may use ÷ the GPU workers it starts);
    2. SLURM_CPUS_PER_GPU (sbatch --cpus-per-gpu);
    3. the batch system's cores for the job, ÷ the job's GPUs: SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE;
       PBS's NCPUS; SGE's NSLOTS (OMP_NUM_THREADS is not used: PBS sets it to 1 unless ompthreads is asked for);
    4. the cores this process may run on (sched_getaffinity: a job's cpuset where the batch system sets one),
       ÷ the job's GPUs.
    The job's GPUs: SLURM_GPUS_ON_NODE, else the ids in SLURM_JOB_GPUS, else GPUS_PER_JOB_ENV, else the GPUs of
    the machine (`machine_gpus`), never the one a pinned worker sees: inside a worker pinned by
    CUDA_VISIBLE_DEVICES, torch counts one GPU whatever the machine has."""
    env = os.environ if environ is None else environ
    explicit = _count(env, CORES_ENV)
    if explicit:
        return CoreShare(cores=explicit, source=CORES_ENV)
    per_gpu = _count(env, "SLURM_CPUS_PER_GPU")
    if per_gpu:
        return CoreShare(cores=per_gpu, source="SLURM_CPUS_PER_GPU")
    gpus, gpus_from = job_gpus(env, machine_gpus or count_machine_gpus)
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "NCPUS", "NSLOTS"):
        cores = _count(env, name)
        if cores:
            return CoreShare(cores=cores // gpus, source=f"{name}={cores} / {gpus} GPUs ({gpus_from})")
    cores = (affinity or available_cores)()
    return CoreShare(cores=cores // gpus, source=f"{cores} cores of this process / {gpus} GPUs ({gpus_from})")


@dataclass(frozen=True, kw_only=True)
class MemoryNeed:
    """The host memory one GPU worker needs at its peak."""

    frames: int  # decoded frames held at once, at most (`in_flight.frames_in_flight`)
    frame_bytes: int  # each, at the size the figure is stated for

    @property
    def bytes(self) -> int:
        return CUDA_CONTEXT_BYTES + RUNTIME_BYTES + self.frames * self.frame_bytes

    def limit(self) -> int:
        """The Dask memory limit that holds it: Dask pauses a worker past a fraction of its limit (then it takes
        no new shard, and its CUDA context never leaves) and restarts it past another."""
        return int(self.bytes / limit_fraction())

    def describe(self) -> str:
        frames = self.frames * self.frame_bytes
        return (f"a memory limit of {gib(self.limit())}: {gib(self.bytes)} at its peak (a CUDA context "
                f"{gib(CUDA_CONTEXT_BYTES)}, the runtime and model {gib(RUNTIME_BYTES)}, {self.frames} decoded frames "
                f"in flight at {WORST_FRAME[1]}x{WORST_FRAME[0]} {gib(frames)}) under Dask's pause line, "
                f"{limit_fraction():g} of the limit")


def memory_need(*, decoders: int, batch: int | None = None, frame: tuple[int, int] = WORST_FRAME) -> MemoryNeed:
    """What a GPU worker with `decoders` and `batch` (default: the masks stage's) needs for RGB frames of
    `frame` (height, width). Frames decoded at a smaller size (SHORT_SIDE, smaller sources) need less."""
    from pipeline.decode import DecodeOptions  # PyAV: not for every command that plans a cluster
    from pipeline.in_flight import frames_in_flight

    options = DecodeOptions() if batch is None else DecodeOptions(batch=batch)
    frame_bytes = frame[0] * frame[1] * 3
    frames = frames_in_flight(options, decoders=max(1, decoders), overlap=True, frame_bytes=frame_bytes)
    return MemoryNeed(frames=frames, frame_bytes=frame_bytes)


def limit_fraction() -> float:
    """The share of its memory limit a worker may use before Dask pauses it (or, with no pause, restarts it)."""
    import dask
    import distributed  # noqa: F401 - registers the worker memory defaults with dask.config

    for key in ("distributed.worker.memory.pause", "distributed.worker.memory.terminate"):
        fraction = dask.config.get(key, default=False)
        if fraction:
            return float(fraction)
    return 1.0


def gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def job_gpus(env: Mapping[str, str], machine_gpus: Callable[[], int]) -> tuple[int, str]:
    """The GPUs of the job this worker belongs to (at least 1), and where that came from."""
    on_node = _count(env, "SLURM_GPUS_ON_NODE")
    if on_node:
        return on_node, "SLURM_GPUS_ON_NODE"
    listed = [item for item in env.get("SLURM_JOB_GPUS", "").split(",") if item.strip()]
    if listed:
        return len(listed), "SLURM_JOB_GPUS"
    per_job = _count(env, GPUS_PER_JOB_ENV)
    if per_job:
        return per_job, GPUS_PER_JOB_ENV
    return max(1, machine_gpus()), "the machine's"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def count_machine_gpus() -> int:
    """The machine's NVIDIA GPUs as the driver lists them (/proc/driver/nvidia/gpus: whatever
    CUDA_VISIBLE_DEVICES says, and without starting CUDA), else those torch sees."""
    listed = Path("/proc/driver/nvidia/gpus")
    if listed.is_dir():
        found = sum(1 for _ in listed.iterdir())
        if found:
            return found
    import torch

    return torch.cuda.device_count()


def _count(env: Mapping[str, str], name: str) -> int:
    """A positive count from the environment, or 0 when unset or not a number."""
    try:
        return max(0, int(env.get(name, "").strip() or 0))
    except ValueError:
        log.warning("%s=%r is not a number of cores or GPUs; ignored", name, env.get(name))
        return 0
