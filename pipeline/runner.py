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
from pipeline.errors import InputError
from pipeline.executor import GPU, ShardProgress, run_tasks, visible_gpus
from pipeline.maskstore import shard_paths
from pipeline.records import FAILED
from pipeline.segment import SegmenterLoadError, check_segmenter, load_segmenter
from pipeline.shards import ShardTask, is_done, plan_shards, read_stats
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
    failed_clips: dict[str, str] = field(default_factory=dict)  # clip → error, for clips given up after max_tries
    retried: dict[str, int] = field(default_factory=dict)  # clip → tries, where more than one was needed
    workers: dict[str, dict] = field(default_factory=dict)  # host:pid → shards, frames, seconds, frames/s, peak MiB
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
        if self.retried:
            out.append(f"retried: {len(self.retried)} clips needed more than one try")
        out += worker_lines(self.workers)
        out += [f"FAILED {name}: {error}" for name, error in self.failed_shards.items()]
        out += [f"FAILED clip {clip}: {error}" for clip, error in list(self.failed_clips.items())[:20]]
        if len(self.failed_clips) > 20:
            out.append(f"... and {len(self.failed_clips) - 20} more failed clips (see the clips tables)")
        return out


def worker_lines(workers: dict[str, dict]) -> list[str]:
    """One line per worker of this run: its shards, frames/s while busy, and peak memory."""
    return [f"worker {name}: {w['shards']} shards, {w['frames']} frames, {w['frames_per_s']:.1f} frames/s, "
            f"peak {w['peak_rss_mb']:.0f} MiB" for name, w in sorted(workers.items())]


def worker_totals(stats: list[dict]) -> dict[str, dict]:
    """Per-worker totals over the stats files of the shards computed in this run."""
    workers: dict[str, dict] = {}
    for item in stats:
        w = workers.setdefault(item["worker"], {"shards": 0, "frames": 0, "seconds": 0.0, "peak_rss_mb": 0.0})
        w["shards"] += 1
        w["frames"] += item["frames"]
        w["seconds"] = round(w["seconds"] + item["seconds"], 3)
        w["peak_rss_mb"] = max(w["peak_rss_mb"], item.get("peak_rss_mb", 0.0))
    for w in workers.values():
        w["frames_per_s"] = round(w["frames"] / w["seconds"], 2) if w["seconds"] else 0.0
    return workers


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
    if config.execution.in_process:
        load_segmenter(config.segmenter)  # in-process: load now, so a bad model fails before anything is written
    tasks = plan_shards(clips, config)
    todo = tasks if config.overwrite else [task for task in tasks if not is_done(task)]
    log.info("%s: %d clips in %d shards, %d to compute -> %s", config.name, len(clips), len(tasks), len(todo), config.run_dir())
    config.run_dir().mkdir(parents=True, exist_ok=True)
    write_json(config.run_dir() / "run.json", {"config": dataclasses.asdict(config), "fingerprint": config.fingerprint(),
                                               "classes": list(listing.classes)})

    computed: list[dict] = []
    with ShardProgress(tasks, todo, enabled=progress) as progress_bar:
        def on_done(task: ShardTask, stats: dict) -> None:
            computed.append(stats)
            progress_bar(task, stats)

        failed = execute(todo, config, on_done)
    summary = summarize(config, tasks, failed, computed=computed, seconds=time.perf_counter() - started)
    write_json(config.run_dir() / "summary.json", dataclasses.asdict(summary))
    return summary


def execute(tasks: list[ShardTask], config: MasksConfig, on_done: Callable[[ShardTask, dict], None]) -> dict[str, str]:
    """Run shard tasks in this process or on Dask; returns failed shard → error.

    A segmenter that cannot load fails every shard the same way, so it stops the run at once.
    """
    options = config.execution
    segmenter, resources = config.segmenter, None
    if not options.in_process and segmenter.device.startswith("cuda"):  # a GPU worker owns one GPU
        resources = {GPU: 1}
        if options.cluster and not options.cluster.gpus:
            raise InputError(f"DEVICE={segmenter.device} on a {options.cluster.kind} cluster needs GPU jobs: set "
                             "`gpus:` in the cluster file")
        if not options.scheduler and not options.cluster:
            gpus = visible_gpus(segmenter.device)
            if not gpus:
                raise SegmenterLoadError(f"device {segmenter.device!r} asked for, but no such CUDA device is visible; use DEVICE=cpu")
            log.info("one worker per GPU: %s (WORKERS is for CPU runs)", ", ".join(gpus))
            options = dataclasses.replace(options, workers=0, gpus=gpus)
        if not options.scheduler:
            segmenter = dataclasses.replace(segmenter, device="cuda")  # each worker sees only its own GPU
    elif not options.in_process and not segmenter.threads:  # share the cores between the workers' models
        segmenter = dataclasses.replace(segmenter, threads=options.threads_per_worker())
    if segmenter != config.segmenter:
        tasks = [dataclasses.replace(t, config=dataclasses.replace(t.config, segmenter=segmenter)) for t in tasks]
    return run_tasks(run_shard, tasks, names=[t.name for t in tasks], options=options, on_done=on_done,
                     fatal=(SegmenterLoadError,), key_prefix=f"masks-{config.fingerprint()}", resources=resources)


def summarize(config: MasksConfig, tasks: list[ShardTask], failed: dict[str, str], *, computed: list[dict],
              seconds: float) -> RunSummary:
    """Totals over the planned clips, read back from the committed shards' status tables and stats files."""
    statuses: Counter[str] = Counter()
    frames = instances = 0
    failed_clips: dict[str, str] = {}
    retried: dict[str, int] = {}
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
                if row["status"] == FAILED:
                    failed_clips[row["clip_id"]] = row["error"]
        retried |= {clip: n for clip, n in (read_stats(task) or {}).get("retried", {}).items() if clip in wanted}
    return RunSummary(
        dataset=config.name,
        run_dir=str(config.run_dir()),
        clips=sum(len(task.clips) for task in tasks),
        by_status=dict(sorted(statuses.items())),
        frames=frames,
        instances=instances,
        shards=len(tasks),
        shards_skipped=len(tasks) - len(computed) - len(failed),
        shards_computed=len(computed),
        failed_shards=failed,
        failed_clips=failed_clips,
        retried=retried,
        workers=worker_totals(computed),
        seconds=round(seconds, 2),
    )
