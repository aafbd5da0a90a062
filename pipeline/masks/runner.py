"""Run the masks stage over a dataset: list it whole, lay its clips out in stable shards, run the selected ones
that are not done through the shard engine, and summarise."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from pipeline import __version__
from pipeline.atomic import write_json
from pipeline.datasets import list_clips
from pipeline.engine import ShardTask, StageSummary, load_layout, run_stage, select
from pipeline.errors import InputError
from pipeline.executor import GPU, visible_gpus
from pipeline.masks.config import MasksConfig
from pipeline.masks.stage import MasksStage
from pipeline.records import ClipRecord
from pipeline.segment import SegmenterLoadError, SegmenterSpec, load_segmenter

log = logging.getLogger(__name__)


def run_masks(config: MasksConfig, *, progress: bool = True) -> StageSummary:
    """Segment the selected shards of the dataset into the run folder; safe to rerun (done shards are skipped).

    A start that fails (weights that cannot be had or loaded) leaves nothing behind: the run folder is made
    only once the weights are found, and removed again if no shard of it was ever committed."""
    config = config.absolute()  # paths and weights resolved before any task leaves this process
    listing = list_clips(config.dataset, config.root, config.out, None, config.reader)  # the whole dataset
    for reason, count in listing.skipped.items():
        log.info("%s: %d entries left out (%s)", config.name, count, reason)
    known = {clip.split for clip in listing.clips}
    if config.splits and not set(config.splits) <= known:
        raise InputError(f"{config.name}: no split(s) {', '.join(sorted(set(config.splits) - known))}; the dataset "
                         f"has {', '.join(sorted(known))} (--splits)")
    config = config.with_weights()
    clips = [clip if clip.path.is_absolute() else dataclasses.replace(clip, path=clip.path.absolute())
             for clip in listing.clips]
    if config.execution.in_process:
        load_segmenter(config.segmenter)  # in-process: load now, so a bad model fails before anything is written
    run_dir = config.run_dir()
    fresh = not run_dir.exists()
    try:
        return _run(config, clips, listing.classes, listing.skipped, progress=progress)
    except SegmenterLoadError:
        if fresh and not any(run_dir.glob("*_stats.json")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run(config: MasksConfig, clips: list[ClipRecord], classes: tuple[str, ...], skipped: dict[str, int], *,
         progress: bool) -> StageSummary:
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    layout = load_layout(run_dir, _counts(clips), config.shard_size)
    by_shard = layout.assign(clips, group=lambda clip: clip.split, key=lambda clip: clip.clip_id)
    stage = MasksStage(segmenter=worker_spec(config), decode=config.decode, track=config.track,
                       metadata=shard_metadata(config), decoders=config.decoders)
    identities, fingerprint = clip_identities(clips), config.fingerprint()  # once: it hashes the weights
    plan = [ShardTask(stage=stage, name=name, folder=run_dir, items=tuple(items),
                      identity={clip.clip_id: identities[clip.clip_id] for clip in items},
                      fingerprint=fingerprint, max_tries=config.execution.max_tries,
                      overwrite=config.overwrite, retry_failed=config.retry_failed)
            for name, items in by_shard.items()]
    chosen = set(select(by_shard, groups=config.splits, limit=config.limit))
    write_json(run_dir / "run.json", {"config": dataclasses.asdict(config), "fingerprint": fingerprint,
                                      "classes": list(classes), "listing": {"clips": len(clips), "skipped": skipped}})
    options = config.execution
    resources = None
    if stage.segmenter.device.startswith("cuda") and not options.in_process:
        resources = {GPU: 1}  # a GPU worker owns one GPU
        options = gpu_options(config)
    summary = run_stage(f"masks {config.name}", run_dir, plan, [t for t in plan if t.name in chosen], options=options,
                        progress=progress, resources=resources, fatal=(SegmenterLoadError,),
                        key_prefix=f"masks-{config.name}")
    summary.left_out = dict(skipped)
    write_json(run_dir / "summary.json", dataclasses.asdict(summary))
    return summary


def _counts(clips: list[ClipRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for clip in clips:
        counts[clip.split] = counts.get(clip.split, 0) + 1
    return counts


def clip_identities(clips: list[ClipRecord]) -> dict[str, str]:
    """Clip id → what its masks are made from: the listing (split, label, index, meta, conflict), the file's
    absolute path, and its size and modification time (a file replaced or arriving later is redone). Stat
    calls run on threads: on a network filesystem they are latency-bound."""
    def identity(clip: ClipRecord) -> str:
        try:
            stat = os.stat(clip.path)
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            signature = "absent"
        return f"{clip.listing_digest()}:{signature}:{clip.path}"

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip((clip.clip_id for clip in clips), pool.map(identity, clips)))


def worker_spec(config: MasksConfig) -> SegmenterSpec:
    """The segmenter as workers load it: each GPU worker sees only its own GPU, as `cuda`; CPU workers share
    the cores between their models."""
    spec, options = config.segmenter, config.execution
    if options.in_process:
        return spec
    if spec.device.startswith("cuda"):
        return spec if options.scheduler else dataclasses.replace(spec, device="cuda")
    return spec if spec.threads else dataclasses.replace(spec, threads=options.threads_per_worker())


def gpu_options(config: MasksConfig):
    """Where GPU shards run: batch jobs with GPUs, an existing scheduler, or one local worker per GPU."""
    options, device = config.execution, config.segmenter.device
    if options.cluster and not options.cluster.gpus:
        raise InputError(f"DEVICE={device} on a {options.cluster.kind} cluster needs GPU jobs: set `gpus:` in the "
                         "cluster file")
    if options.scheduler or options.cluster:
        return options
    gpus = visible_gpus(device)
    if not gpus:
        raise SegmenterLoadError(f"device {device!r} asked for, but no such CUDA device is visible; use DEVICE=cpu")
    log.info("one worker per GPU: %s (WORKERS is for CPU runs)", ", ".join(gpus))
    return dataclasses.replace(options, workers=0, gpus=gpus)


def shard_metadata(config: MasksConfig) -> dict[str, str]:
    """Provenance stored in both Parquet files of every shard (the segmenter's own is added on the worker)."""
    return {
        "pipeline_version": __version__,
        "dataset": config.dataset,
        "run_tag": config.run_tag(),
        "fingerprint": config.fingerprint(),
        "segmenter": config.segmenter.backend,
        "decode_fps": str(config.decode.fps or "native"),
        "short_side": str(config.decode.short_side or "native"),
        "instance_ids": f"iou-track min_iou={config.track.min_iou} max_gap={config.track.max_gap}",
    }
