"""Run the masks stage over a dataset: plan shards, skip done ones, run the rest on Dask, summarise."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.config import MasksConfig
from pipeline.datasets import list_clips
from pipeline.maskstore import shard_paths
from pipeline.segment import SegmenterLoadError, check_segmenter, load_segmenter
from pipeline.shards import ShardTask, is_done, plan_shards
from pipeline.stage import run_shard

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunSummary:
    dataset: str
    run_dir: str
    clips: int
    by_status: dict[str, int]
    frames: int
    instances: int
    shards: int
    shards_skipped: int  # done by an earlier run, not recomputed
    shards_computed: int
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard → error; rerun to retry them
    seconds: float = 0.0

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{k} {v}" for k, v in self.by_status.items()) or "none"
        out = [
            f"masks {self.dataset}: {self.clips} clips ({statuses}), {self.frames} frames, "
            f"{self.instances} instances in {self.seconds:.1f}s",
            f"shards: {self.shards} planned, {self.shards_computed} computed, {self.shards_skipped} already done, "
            f"{len(self.failed_shards)} failed",
            f"output: {self.run_dir}",
        ]
        out += [f"FAILED {name}: {error}" for name, error in self.failed_shards.items()]
        return out


def run_masks(config: MasksConfig, *, progress: bool = True) -> RunSummary:
    """Segment every clip of the dataset into the run folder; safe to rerun (done shards are skipped)."""
    started = time.perf_counter()
    clips = list_clips(config.dataset, config.root, config.out, config.splits)
    if config.limit:
        clips = clips[: config.limit]
    check_segmenter(config.segmenter)
    if config.workers == 0 and not config.scheduler:
        load_segmenter(config.segmenter)  # in-process: load now, so a bad model fails before anything is written
    tasks = plan_shards(clips, config)
    todo = tasks if config.overwrite else [task for task in tasks if not is_done(task)]
    log.info("%s: %d clips in %d shards, %d to compute -> %s", config.dataset, len(clips), len(tasks), len(todo), config.run_dir())
    config.run_dir().mkdir(parents=True, exist_ok=True)
    write_json(config.run_dir() / "run.json", {"config": dataclasses.asdict(config), "fingerprint": config.fingerprint()})

    bar = tqdm(total=len(clips), initial=len(clips) - sum(len(t.clips) for t in todo), unit="clip",
               disable=not progress, dynamic_ncols=True)
    frames = 0

    def on_done(task: ShardTask, stats: dict) -> None:
        nonlocal frames
        frames += stats["frames"]
        bar.update(len(task.clips))
        bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - started):.1f}")

    try:
        failed = execute(todo, config, on_done)
    finally:
        bar.close()
    summary = summarize(config, tasks, failed, computed=len(todo) - len(failed), seconds=time.perf_counter() - started)
    write_json(config.run_dir() / "summary.json", dataclasses.asdict(summary))
    return summary


def execute(tasks: list[ShardTask], config: MasksConfig, on_done: Callable[[ShardTask, dict], None]) -> dict[str, str]:
    """Run shard tasks (in this process when workers == 0, else on Dask); returns failed shard → error.

    A segmenter that cannot load fails every shard the same way, so it stops the run at once.
    """
    failed: dict[str, str] = {}
    if not tasks:
        return failed
    if config.workers == 0 and not config.scheduler:
        for task in tasks:
            try:
                on_done(task, run_shard(task))
            except SegmenterLoadError:
                raise
            except Exception as exc:
                failed[task.name] = _failure(task, exc)
        return failed
    from distributed import as_completed

    with dask_client(config) as client:
        tasks = [dataclasses.replace(task, config=_with_threads(task.config, client)) for task in tasks]
        futures = client.map(run_shard, tasks, key=[f"masks-{t.name}-{config.fingerprint()}" for t in tasks], pure=False)
        by_key = {future.key: task for future, task in zip(futures, tasks)}
        for future in as_completed(futures):
            task = by_key[future.key]
            if future.status == "finished":
                on_done(task, future.result())
                continue
            exc = future.exception()
            if isinstance(exc, SegmenterLoadError):
                client.cancel(futures)
                raise exc
            failed[task.name] = _failure(task, exc)
    return failed


@contextmanager
def dask_client(config: MasksConfig) -> Iterator["distributed.Client"]:  # noqa: F821
    """A client of the given scheduler, or of a LocalCluster of single-threaded worker processes."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines drown the progress bar
    if config.scheduler:
        with Client(config.scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        yield client


def _with_threads(config: MasksConfig, client) -> MasksConfig:
    """Give each worker's model an equal share of its machine's cores unless threads were set."""
    if config.segmenter.threads:
        return config
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    threads = max(1, (os.cpu_count() or 1) // workers) if not config.scheduler else 0
    return dataclasses.replace(config, segmenter=dataclasses.replace(config.segmenter, threads=threads))


def _failure(task: ShardTask, exc: BaseException) -> str:
    log.error("%s failed: %s: %s", task.name, type(exc).__name__, exc)
    return f"{type(exc).__name__}: {exc}"


def summarize(config: MasksConfig, tasks: list[ShardTask], failed: dict[str, str], *, computed: int, seconds: float) -> RunSummary:
    """Totals over the planned clips, read back from the committed shards' status tables."""
    statuses: Counter[str] = Counter()
    frames = instances = 0
    for task in tasks:
        if task.name in failed:
            statuses["shard_failed"] += len(task.clips)
            continue
        wanted = {clip.clip_id for clip in task.clips}
        for row in pq.read_table(shard_paths(task.run_dir, task.name)[1]).to_pylist():
            if row["clip_id"] in wanted:
                statuses[row["status"]] += 1
                frames += row["frames"]
                instances += row["instances"]
    return RunSummary(
        dataset=config.dataset,
        run_dir=str(config.run_dir()),
        clips=sum(len(task.clips) for task in tasks),
        by_status=dict(sorted(statuses.items())),
        frames=frames,
        instances=instances,
        shards=len(tasks),
        shards_skipped=len(tasks) - computed - len(failed),
        shards_computed=computed,
        failed_shards=failed,
        seconds=round(seconds, 2),
    )
