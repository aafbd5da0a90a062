"""Batch-system clusters (SLURM, PBS, SGE) through dask-jobqueue: the job shape from a small YAML file, workers
that each own one GPU of their job, and adaptive scaling between a minimum and a maximum number of jobs.

The scheduler runs in the process that starts the run (`make masks … CLUSTER=slurm`); each job runs
`dask worker` processes that connect back to it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.gpu_workers import (
    CORES_ENV,
    CUDA_CONTEXT_BYTES,
    GPUS_PER_JOB_ENV,
    RUNTIME_BYTES,
    CoreShare,
    gib,
    memory_need,
)

log = logging.getLogger(__name__)

KINDS = ("slurm", "pbs", "sge")

# What Dask's nanny sets in a worker's environment before it starts the worker's process (its `pre-spawn-environ`),
# changed for the workers a run starts. None unsets Dask's MALLOC_TRIM_THRESHOLD_=65536: any such setting fixes
# glibc's thresholds, so that every block over 128 KiB (a network layer's output, a batch of frames) is mapped
# afresh and its pages faulted in on every use; a CPU network's forward ran at 0.71-0.78x a plain process's, in
# a worker at 0.64-0.67x (docs/PERFORMANCE.md, fifteenth session). Workers keep glibc's own thresholds, as the driver.
NANNY_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": None}


def nanny_environ_config() -> dict:
    """NANNY_ENVIRON as `dask.config.set` takes it, for the nannies of workers started in this process."""
    return {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in NANNY_ENVIRON.items()}


def nanny_environ_export() -> str:
    """NANNY_ENVIRON as a job script's line sets it for the nannies the job starts (Dask reads its config from
    DASK_ variables; a dict's keys keep their case, and None unsets)."""
    return f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={shlex.quote(repr(NANNY_ENVIRON))}"


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """One job's shape; the defaults are those documented in cluster.yaml."""

    kind: str = "slurm"  # slurm, pbs or sge
    queue: str | None = None  # SLURM partition, PBS or SGE queue
    account: str | None = None  # account (SLURM, PBS) or project (SGE) charged
    walltime: str = "04:00:00"  # per job; workers retire 5 minutes (or a tenth) before, and their shards move on
    cores: int = 8  # per job
    memory: str = "32GB"  # per job
    gpus: int = 0  # per job: one worker per GPU, each declaring GPU=1 (SLURM gets --gres=gpu:N itself)
    processes: int | None = None  # workers per job; default: one per GPU, else one single-threaded one per core
    directives: tuple[str, ...] = ()  # extra scheduler lines, e.g. "--constraint=a100" or "-l ngpus=1"
    setup: tuple[str, ...] = ()  # shell lines run before the workers start (module load, source .venv/bin/activate)
    min_jobs: int = 1  # adaptive scaling keeps at least this many jobs while the run lasts
    max_jobs: int = 8  # and at most this many (JOBS=N overrides)
    interface: str | None = None  # network interface the workers and scheduler talk on (e.g. ib0)
    local_directory: str | None = None  # node-local scratch for worker files, e.g. $TMPDIR
    log_directory: str | None = None  # where the job's stdout/stderr go

    def workers_per_job(self) -> int:
        return self.processes or self.gpus or self.cores

    def threads_per_worker(self) -> int:
        return max(1, self.cores // self.workers_per_job())

    def worker_memory(self) -> int:
        """Each worker's Dask memory limit: the job's memory ÷ its workers (dask-jobqueue's rule)."""
        from dask.utils import parse_bytes

        return parse_bytes(self.memory) // self.workers_per_job()


def load_cluster_spec(path: Path, kind: str, *, max_jobs: int | None = None) -> ClusterSpec:
    """The job shape from `path` (every key optional) for a cluster of `kind`; JOBS (`max_jobs`) overrides."""
    import yaml

    if kind not in KINDS:
        raise InputError(f"unknown cluster {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"cluster file {path} not found; copy the project's cluster.yaml and edit it") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected key: value lines, found {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(ClusterSpec)} - {"kind"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {key: tuple(str(v) for v in value) if key in ("directives", "setup") else value
              for key, value in data.items() if value is not None}
    if max_jobs is not None:
        values["max_jobs"] = max_jobs
    spec = ClusterSpec(kind=kind, **values)
    if spec.min_jobs > spec.max_jobs or spec.max_jobs < 1:
        raise InputError(f"{path}: need 0 <= min_jobs <= max_jobs and max_jobs >= 1, got {spec.min_jobs}..{spec.max_jobs}")
    try:
        walltime_seconds(spec.walltime)
        check_gpu_memory(spec, warn=False)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return spec


def check_gpu_memory(spec: ClusterSpec, *, warn: bool = True) -> None:
    """A GPU job's memory per worker against what a GPU worker needs (pipeline.gpu_workers): InputError below a
    CUDA context and the runtime (no worker could run); with `warn`, a warning below that plus the frames in
    flight of 1080p sources at the default BATCH and the worker's share of the cores."""
    if not spec.gpus:
        return
    workers, each = spec.workers_per_job(), spec.worker_memory()
    need = memory_need(decoders=CoreShare(cores=spec.threads_per_worker(), source="cores").decoders)
    advice = (f"memory {spec.memory} over {workers} GPU worker(s) is {gib(each)} each, and a GPU worker needs "
              f"{need.describe()}: set memory to at least {math.ceil(need.limit() * workers / 1e9)}GB, or fewer "
              "gpus (or processes) per job")
    if each < CUDA_CONTEXT_BYTES + RUNTIME_BYTES:
        raise InputError(advice)
    if warn and each < need.limit():
        log.warning("%s (smaller frames need less: SHORT_SIDE, or BATCH)", advice)


def walltime_seconds(walltime: str) -> int:
    """Seconds of a [[D-]HH:]MM:SS walltime."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", walltime.strip())
    if not match:
        raise InputError(f"walltime {walltime!r}: expected HH:MM:SS (or D-HH:MM:SS)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def scheduler_http(dashboard: str | None) -> dict:
    """The scheduler options for its HTTP server. Every Dask scheduler starts one (health, metrics), on port 8787
    unless told otherwise, even with no dashboard; so the dashboard is served at `dashboard` only when asked for,
    and otherwise the server has no dashboard and a free port on the loopback: runs side by side do not compete
    for 8787 (nor warn about it)."""
    if dashboard:
        return {"dashboard_address": dashboard, "dashboard": True}
    return {"dashboard_address": "127.0.0.1:0", "dashboard": False}


def job_cluster(spec: ClusterSpec, *, dashboard: str | None = None, adapt: bool = True):
    """A dask-jobqueue cluster for `spec`, scaling adaptively between its min and max jobs (unless not `adapt`:
    then it submits nothing until scaled). GPU workers are told their GPU count and share of the cores
    (pipeline.gpu_workers); a job whose memory cannot hold them is refused, or warned about."""
    import dask_jobqueue

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster, "sge": dask_jobqueue.SGECluster}[spec.kind]
    check_gpu_memory(spec)
    workers = spec.workers_per_job()
    walltime = walltime_seconds(spec.walltime)  # retire before the batch system kills the job
    worker_args = ["--lifetime", f"{walltime - min(300, walltime // 10)}s", "--lifetime-stagger", f"{min(60, walltime // 20)}s"]
    directives = list(spec.directives)
    setup = [nanny_environ_export(), *spec.setup]  # the file's own lines after: they may set it otherwise
    if spec.gpus:
        worker_args += ["--resources", "GPU=1", "--preload", "pipeline.gpu_preload"]
        setup += [f"export {GPUS_PER_JOB_ENV}={spec.gpus}", f"export {CORES_ENV}={spec.threads_per_worker()}"]
        if spec.kind == "slurm" and not any("gres" in d or "gpus" in d for d in directives):
            directives.append(f"--gres=gpu:{spec.gpus}")
    options = dict(
        queue=spec.queue, cores=spec.cores, memory=spec.memory, processes=workers, walltime=spec.walltime,
        job_extra_directives=directives, job_script_prologue=setup, worker_extra_args=worker_args,
        interface=spec.interface, local_directory=spec.local_directory, log_directory=spec.log_directory,
        job_name="static-bias", scheduler_options=scheduler_http(dashboard),
    )
    if spec.account:
        options["account" if spec.kind != "sge" else "project"] = spec.account
    cluster = cls(**options)
    if adapt:
        cluster.adapt(minimum_jobs=spec.min_jobs, maximum_jobs=spec.max_jobs)
    log.info("%s cluster: %d-%d jobs of %d worker(s), %s cores, %s, %d GPU(s), walltime %s", spec.kind, spec.min_jobs,
             spec.max_jobs, workers, spec.cores, spec.memory, spec.gpus, spec.walltime)
    return cluster
