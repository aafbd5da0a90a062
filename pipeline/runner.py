"""Run the masks stage over a dataset: plan shards, skip done ones, run the rest on Dask, summarise."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow.parquet as pq

from pipeline.atomic import write_json
from pipeline.config import MasksConfig
from pipeline.datasets import list_clips
from pipeline.executor import GPU, ExecOptions, ShardProgress, run_tasks, visible_gpus
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
    listing = list_clips(config.dataset, config.root, config.out, config.splits, config.reader)
    for reason, count in listing.skipped.items():
        log.info("%s: %d entries left out (%s)", config.name, count, reason)
    clips = listing.clips
    if config.limit:
        clips = clips[: config.limit]
    check_segmenter(config.segmenter)
    if config.workers == 0 and not config.scheduler:
        load_segmenter(config.segmenter)  # in-process: load now, so a bad model fails before anything is written
    tasks = plan_shards(clips, config)
    todo = tasks if config.overwrite else [task for task in tasks if not is_done(task)]
    log.info("%s: %d clips in %d shards, %d to compute -> %s", config.name, len(clips), len(tasks), len(todo), config.run_dir())
    config.run_dir().mkdir(parents=True, exist_ok=True)
    write_json(config.run_dir() / "run.json", {"config": dataclasses.asdict(config), "fingerprint": config.fingerprint(),
                                               "classes": list(listing.classes)})

    with ShardProgress(tasks, todo, enabled=progress) as on_done:
        failed = execute(todo, config, on_done)
    summary = summarize(config, tasks, failed, computed=len(todo) - len(failed), seconds=time.perf_counter() - started)
    write_json(config.run_dir() / "summary.json", dataclasses.asdict(summary))
    return summary


def execute(tasks: list[ShardTask], config: MasksConfig, on_done: Callable[[ShardTask, dict], None]) -> dict[str, str]:
    """Run shard tasks in this process or on Dask; returns failed shard → error.

    A segmenter that cannot load fails every shard the same way, so it stops the run at once.
    """
    options = ExecOptions(workers=config.workers, scheduler=config.scheduler)
    segmenter, resources = config.segmenter, None
    if not options.in_process and segmenter.device.startswith("cuda"):  # a GPU worker owns one GPU
        resources = {GPU: 1}
        if not options.scheduler:
            gpus = visible_gpus(segmenter.device)
            if not gpus:
                raise SegmenterLoadError(f"device {segmenter.device!r} asked for, but no such CUDA device is visible; use DEVICE=cpu")
            log.info("one worker per GPU: %s (WORKERS is for CPU runs)", ", ".join(gpus))
            options = ExecOptions(gpus=gpus)
            segmenter = dataclasses.replace(segmenter, device="cuda")  # each worker sees only its own GPU
    elif not options.in_process and not segmenter.threads:  # share the cores between the workers' models
        segmenter = dataclasses.replace(segmenter, threads=options.threads_per_worker())
    if segmenter != config.segmenter:
        tasks = [dataclasses.replace(t, config=dataclasses.replace(t.config, segmenter=segmenter)) for t in tasks]
    return run_tasks(run_shard, tasks, names=[t.name for t in tasks], options=options, on_done=on_done,
                     fatal=(SegmenterLoadError,), key_prefix=f"masks-{config.fingerprint()}", resources=resources)


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
        dataset=config.name,
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
