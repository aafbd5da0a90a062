"""Run independent tasks in this process or on Dask, collecting each task's result or error.

Every stage (masks, coverage, render) hands this a function and a list of named tasks. A task that raises
is reported by name and the others go on, except for the exception types the caller calls fatal (a model
that cannot load fails every task the same way), which cancel the rest and propagate.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from pipeline.cluster import ClusterSpec, nanny_environ_config, nanny_environ_export, scheduler_http

log = logging.getLogger(__name__)


GPU = "GPU"  # the Dask worker resource a GPU worker declares (dask worker --resources GPU=1)
LOCAL_WORKER = "PIPELINE_LOCAL_WORKER"  # set in the workers of a cluster started here: Ctrl-C is for the driver


@dataclass(frozen=True, kw_only=True)
class ExecOptions:
    workers: int = 2  # local Dask worker processes; 0 runs in this process
    scheduler: str | None = None  # address of an existing Dask scheduler
    gpus: tuple[str, ...] = ()  # local GPU workers instead: one per GPU id, pinned by CUDA_VISIBLE_DEVICES
    cluster: ClusterSpec | None = None  # batch-system jobs instead (SLURM, PBS, SGE through dask-jobqueue)
    dashboard: str | None = None  # serve the Dask dashboard of a cluster started here, e.g. ":8787"
    max_tries: int = 3  # a clip that raises or kills its worker this often is recorded as failed

    @property
    def in_process(self) -> bool:
        return self.workers == 0 and not self.scheduler and not self.gpus and not self.cluster

    def threads_per_worker(self) -> int:
        """An equal share of the cores per worker (of those this process may run on: a job's cpuset, not the
        whole machine; or of a batch job); 0 (library default) on a remote cluster."""
        from pipeline.gpu_workers import available_cores

        if self.cluster:
            return self.cluster.threads_per_worker()
        if self.scheduler:
            return 0
        return max(1, available_cores() // max(1, self.workers))


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    names: Sequence[str],
    options: ExecOptions,
    on_done: Callable[[Any, Any], None],
    fatal: tuple[type[BaseException], ...] = (),
    stop_on: tuple[type[BaseException], ...] = (),
    key_prefix: str = "task",
    keys: Sequence[str] | None = None,
    resources: dict[str, float] | None = None,
    client: "distributed.Client | None" = None,  # noqa: F821
    plugins: Sequence["distributed.WorkerPlugin"] = (),  # noqa: F821
) -> dict[str, str]:
    """Call `fn(task)` for every task; `on_done(task, result)` as each finishes. Returns failed name → error.

    `fatal` errors cancel the rest and propagate. In this process, a `stop_on` error (the machine failing)
    reports the rest as not run: they would meet the same machine. `keys` name the tasks on Dask: tasks of
    two clients with the same key share one task while it runs, so a key must stand for everything the result
    depends on (default: unique to this call); each result is let go once handled, so that a run that comes
    later, when the files it made may have changed, is not handed it. `resources`: each task runs only on a
    worker that declares them, one task per unit at a time. `client`: a session's client (see `session`), one
    cluster for all of an invocation.
    `plugins`: registered with the scheduler first, for its workers now and to come (a plugin that declares
    itself `idempotent` is registered once: another client of a shared scheduler does not replace it).
    """
    failed: dict[str, str] = {}
    if not tasks:
        return failed
    if options.in_process:
        for i, (task, name) in enumerate(zip(tasks, names)):
            try:
                result = fn(task)
            except fatal:
                raise
            except Exception as exc:
                failed[name] = _failure(name, exc)
                if isinstance(exc, stop_on):
                    log.error("the machine failed; %d task(s) left for the next run", len(names) - i - 1)
                    failed |= {rest: f"not run: the machine failed on {name} first" for rest in names[i + 1:]}
                    break
                continue
            on_done(task, result)
        return failed
    if client is None:
        with dask_client(options) as client:
            return run_tasks(fn, tasks, names=names, options=options, on_done=on_done, fatal=fatal,
                             key_prefix=key_prefix, keys=keys, resources=resources, client=client, plugins=plugins)
    from distributed import as_completed

    if resources and not options.cluster:  # batch jobs start later; runner checks their spec declares GPUs
        require_resources(client, resources)
    for plugin in plugins:
        client.register_plugin(plugin)
    if keys is None:
        run = uuid.uuid4().hex[:8]
        keys = [f"{name}-{run}" for name in names]
    futures = client.map(fn, tasks, key=[f"{key_prefix}-{key}" for key in keys], pure=False, resources=resources)
    by_key = {future.key: (task, name) for future, task, name in zip(futures, tasks, names)}
    try:
        for future in as_completed(futures):
            task, name = by_key[future.key]
            if future.status == "finished":
                result = future.result()
                future.release()  # let Dask forget it: a later run of the same key computes it again
                on_done(task, result)
                continue
            exc = future.exception()
            if isinstance(exc, fatal):
                client.cancel(futures)
                raise exc
            future.release()
            failed[name] = _failure(name, exc)
    except BaseException as exc:
        if not isinstance(exc, Exception) and not options.scheduler:  # Ctrl-C, SIGTERM: the workers of the cluster
            _quiet(client)  # started here stop their tasks without a fuss (a shared scheduler's are left alone)
        raise
    return failed


def _quiet(client: "distributed.Client") -> None:  # noqa: F821
    """Stopping on purpose: the workers' and this process's Dask loggers keep the cancelled tasks to themselves
    (the workers still take their tries back)."""
    def quiet() -> None:
        for name in ("distributed", "pipeline.engine.worker_plugin"):
            logging.getLogger(name).setLevel(logging.ERROR)

    quiet()
    try:
        client.run(quiet, wait=True)
    except Exception:  # noqa: BLE001 - best effort while stopping
        log.debug("could not quiet the workers", exc_info=True)


@contextmanager
def session(options: ExecOptions) -> Iterator["distributed.Client | None"]:  # noqa: F821
    """One Dask client for all the steps of an invocation (None when it runs in this process)."""
    if options.in_process:
        yield None
        return
    with dask_client(options) as client:
        yield client


@contextmanager
def dask_client(options: ExecOptions) -> Iterator["distributed.Client"]:  # noqa: F821
    """A client of the given scheduler, or of a cluster started here: batch jobs (dask-jobqueue), one worker
    per local GPU, or a LocalCluster of single-threaded worker processes."""
    import dask
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines drown the progress bar
    if options.scheduler:
        with Client(options.scheduler) as client:
            warn_fixed_malloc(client)
            yield client
        return
    # A task whose worker dies is rerun elsewhere; let that happen more often than a clip is tried, so the
    # clip that kills workers is given up (claims.Tries) before Dask gives up its whole shard (KilledWorker):
    # with several clips in flight a death is first uncounted (a shared try), then max_tries alone, and room
    # for a second such clip in the shard.
    # Workers started here get NANNY_ENVIRON (glibc's own memory thresholds: pipeline.cluster).
    with dask.config.set({"distributed.scheduler.allowed-failures": 2 * (options.max_tries + 1),
                          **nanny_environ_config()}):
        if options.cluster:
            from pipeline.cluster import job_cluster

            cluster = job_cluster(options.cluster, dashboard=options.dashboard)
        elif options.gpus:
            with sigint_ignored():
                cluster = gpu_cluster(options.gpus, dashboard=options.dashboard)
        else:
            http = scheduler_http(options.dashboard)
            with sigint_ignored():
                cluster = LocalCluster(n_workers=options.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=http["dashboard_address"],
                                       scheduler_kwargs={"dashboard": http["dashboard"]}, silence_logs=logging.WARNING,
                                       env={LOCAL_WORKER: "1"})
        with cluster, Client(cluster) as client:
            if not options.cluster:  # local workers share this terminal: their warnings print here, above the bar
                client.forward_logging("pipeline", level=logging.WARNING)
            if options.dashboard:
                log.warning("Dask dashboard: %s", client.dashboard_link)  # a warning, so it shows above the bar
            yield client


def warn_fixed_malloc(client: "distributed.Client") -> None:  # noqa: F821
    """Warn where workers started elsewhere (those there now; not those that join later) run with
    MALLOC_TRIM_THRESHOLD_ set, as Dask's nanny sets it unless told otherwise (pipeline.cluster.NANNY_ENVIRON):
    their models and frames run slower. Advice only: a worker that cannot answer is left out, and nothing is said
    where the answers take more than 10 s."""
    try:  # os.getenv, not os.environ.get: that would carry this process's environment to the workers and read it
        found = client.run(os.getenv, "MALLOC_TRIM_THRESHOLD_", on_error="return", callback_timeout=10)
    except Exception:  # noqa: BLE001 - a scheduler that cannot answer in time is not the run's failure
        log.debug("could not ask the workers for their environment", exc_info=True)
        return
    answered = {address: value for address, value in found.items() if not isinstance(value, BaseException)}
    fixed = sum(value is not None for value in answered.values())
    if fixed:
        log.warning("%d of the %d workers of %s run with MALLOC_TRIM_THRESHOLD_ set (Dask's nanny sets it to 65536, "
                    "with which a CPU network ran at 0.64-0.67x its speed in a worker); start them with %s",
                    fixed, len(answered), client.scheduler.address, nanny_environ_export().removeprefix("export "))


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Start local worker processes with Ctrl-C ignored (a terminal sends it to the whole process group): the
    driver alone handles it, and closes the cluster, whose workers then take their tries back. Workers a nanny
    restarts later ignore it too (engine.worker_plugin, through LOCAL_WORKER)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def gpu_cluster(gpus: tuple[str, ...], *, dashboard: str | None = None) -> "distributed.SpecCluster":  # noqa: F821
    """A local cluster of one single-threaded worker process per GPU: each sees only its GPU (as cuda:0)
    through CUDA_VISIBLE_DEVICES and declares the resource GPU=1, so a GPU task owns the whole device. Each
    is told its share of this process's cores (pipeline.gpu_workers) and gets an equal share of the memory."""
    from distributed import Nanny, Scheduler, SpecCluster

    env, memory = gpu_worker_shares(len(gpus))
    workers = {
        f"gpu-{gpu}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}, "memory_limit": memory,
                                                "env": {"CUDA_VISIBLE_DEVICES": gpu, LOCAL_WORKER: "1", **env}}}
        for gpu in gpus
    }
    scheduler = {"cls": Scheduler, "options": scheduler_http(dashboard)}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING)


def gpu_worker_shares(workers: int) -> tuple[dict[str, str], int]:
    """What each of `workers` local GPU workers gets: its share of the cores (as the environment tells it) and
    of this machine's memory (its Dask memory limit, instead of Dask's default, memory × 1 thread ÷ cores),
    warning when that cannot hold a GPU worker with 1080p frames at the default BATCH."""
    from distributed.system import MEMORY_LIMIT

    from pipeline.gpu_workers import CORES_ENV, CoreShare, available_cores, gib, memory_need

    share = CoreShare(cores=max(1, available_cores() // workers), source="local")
    memory = MEMORY_LIMIT // workers
    need = memory_need(decoders=share.decoders)
    if memory < need.limit():
        log.warning("%d GPU worker(s) share %s of memory, %s each, and a GPU worker needs %s; workers may be "
                    "paused or restarted by Dask (smaller frames need less: SHORT_SIDE, or BATCH)", workers,
                    gib(MEMORY_LIMIT), gib(memory), need.describe())
    return {CORES_ENV: str(share.cores)}, memory


def require_resources(client: "distributed.Client", resources: dict[str, float]) -> None:  # noqa: F821
    """Fail at once, rather than wait forever, when no worker of the cluster declares `resources`."""
    from pipeline.errors import InputError

    workers = client.scheduler_info()["workers"]
    if not any(all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items()) for w in workers.values()):
        wanted = " ".join(f"{k}={v:g}" for k, v in resources.items())
        raise InputError(f"none of the {len(workers)} workers of {client.scheduler.address} declares the resources "
                         f"{wanted} this stage needs; start GPU workers with `dask worker ADDRESS --nthreads 1 "
                         f"--resources {wanted}` (one per GPU, with CUDA_VISIBLE_DEVICES set)")


def visible_gpus(device: str) -> tuple[str, ...]:
    """The GPU ids (as CUDA_VISIBLE_DEVICES spells them) a device means: `cuda` every visible GPU, `cuda:N` the Nth."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [item.strip() for item in listed.split(",")][:count] if listed else [str(i) for i in range(count)]
    if device == "cuda":
        return tuple(ids)
    index = int(device.partition(":")[2])
    return (ids[index],) if index < len(ids) else ()


def _failure(name: str, exc: BaseException) -> str:
    log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
    return f"{type(exc).__name__}: {exc}"
