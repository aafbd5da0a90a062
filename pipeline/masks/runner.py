"""Run the masks stage over a dataset: list it whole, lay its clips out in stable shards, run the selected ones
that are not done through the shard engine, and summarise."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from pathlib import Path

from pipeline import __version__
from pipeline.atomic import write_json
from pipeline.bulk import bulk, frozen
from pipeline.datasets import Listing, list_clips
from pipeline.datasets.common import on_disk
from pipeline.engine import ShardTask, StageSummary, load_layout, run_stage, select
from pipeline.engine.claims import claimed_elsewhere
from pipeline.engine.layout import layout_record
from pipeline.engine.record import RecordFile
from pipeline.errors import InputError
from pipeline.executor import GPU, ExecOptions, visible_gpus
from pipeline.masks.config import MasksConfig
from pipeline.masks.stage import MasksStage
from pipeline.masks.threads import machine_warnings, other_thread_runs
from pipeline.records import ClipRecord, listing_digest
from pipeline.segment import SegmenterLoadError, SegmenterSpec, load_segmenter

log = logging.getLogger(__name__)


def run_masks(config: MasksConfig, *, progress: bool = True) -> StageSummary:
    """Segment the selected shards of the dataset into the run folder; safe to rerun (done shards are skipped).

    Everything that can refuse the run (the listing, the weights, the device, the model loading in this
    process) is checked before anything is written. The run's record (run.json, layout.json, plan.json) is
    written when its first shard commits: a start that fails leaves an existing run folder as it was, and a new
    one that never committed a shard is removed again (unless interrupted: its tries are kept for the rerun)."""
    config = config.absolute()  # paths and weights resolved before any task leaves this process
    with bulk():
        listing = list_clips(config.dataset, config.root, config.out, None, config.reader)  # the whole dataset
    for reason, count in listing.skipped.items():
        log.info("%s: %d entries left out (%s)", config.name, count, reason)
    listing.require_splits(config.name, config.splits)
    config = config.with_weights()
    options, resources = placement(config)
    if config.execution.in_process:
        load_segmenter(worker_spec(config))  # in-process: load now, so a bad model fails before anything is written
    run_dir = config.run_dir()
    fresh = not run_dir.exists()
    beside = other_thread_runs(config)
    for line in beside:  # now, not only with the summary: the user may stop the run and pass THREADS
        log.warning("%s: %s", config.name, line)
    with bulk():
        plan, selected, record = plan_masks(config, listing)
    try:
        with frozen():
            summary = run_stage(f"masks {config.name}", run_dir, plan, selected, options=options, record=record,
                                progress=progress, resources=resources, fatal=(SegmenterLoadError,),
                                key_prefix=f"masks-{config.name}")
        summary.left_out = dict(listing.skipped)
    except Exception:  # a start that failed (an interrupted one keeps its tries: it resumes)
        if fresh and not (run_dir / "run.json").exists() and not any(run_dir.glob("*_stats.json")) \
                and not claimed_elsewhere(run_dir):  # nothing was committed there, and no other run is at it
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    mixed = machine_warnings(config.name, config.segmenter.torch_network, summary.made_with)
    summary.warnings += [f"{config.name}: {line}" for line in beside] + mixed  # printed with it
    if summary.computed:
        write_json(run_dir / "summary.json", summary.record())
    return summary


def plan_masks(config: MasksConfig, listing: Listing) -> tuple[list[ShardTask], list[ShardTask], list[RecordFile]]:
    """The whole dataset's shards (laid out as the run folder's layout says), those this run selects, and the
    run's record files."""
    run_dir = config.run_dir()
    clips = [clip if clip.path.startswith(os.sep) else dataclasses.replace(clip, path=Path(clip.path).absolute())
             for clip in listing.clips]
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
    record = [layout_record(run_dir, layout),
              RecordFile.json(run_dir / "run.json", {
                  "config": config.provenance(), "fingerprint": fingerprint, "classes": list(listing.classes),
                  "listing": {"clips": len(clips), "skipped": listing.skipped}})]
    return plan, [task for task in plan if task.name in chosen], record


def placement(config: MasksConfig) -> tuple[ExecOptions, dict[str, float] | None]:
    """Where the shards run, and the worker resources they need: a GPU run's workers own one GPU each."""
    if config.segmenter.device.startswith("cuda") and not config.execution.in_process:
        return gpu_options(config), {GPU: 1}
    return config.execution, None


def _counts(clips: list[ClipRecord]) -> dict[str, int]:
    return dict(Counter(map(attrgetter("split"), clips)))


def clip_identities(clips: list[ClipRecord]) -> dict[str, str]:
    """Clip id → what its masks are made from: the listing (split, label, index, meta, conflict), the file's
    absolute path, and its size and modification time (a file replaced or arriving later is redone). In bulk:
    the listing digest once per distinct listing (most clips share split, label and index), the files' stat
    calls in chunks on threads (on a network filesystem they are latency-bound)."""
    digests: dict[tuple, str] = {}
    identities = {}
    for clip, signature in zip(clips, file_signatures([clip.path for clip in clips])):
        fields = (clip.split, clip.label, clip.label_index, clip.meta_json(), clip.conflict)
        digest = digests.get(fields) or digests.setdefault(fields, listing_digest(*fields))
        identities[clip.clip_id] = f"{digest}:{signature}:{clip.path}"
    return identities


def file_signatures(paths: list, chunk: int = 2048) -> list[str]:
    """`size:mtime_ns` of each file, or `absent`. Each folder is listed once, so absent files cost no stat; the
    present ones are stat'ed in chunks, on threads where a stat is slow (a network filesystem)."""
    present = on_disk(paths)
    found = [path for path, there in zip(paths, present) if there]

    def signatures(part: list) -> list[str]:
        out = []
        for path in part:
            try:
                stat = os.stat(path)
                out.append(f"{stat.st_size}:{stat.st_mtime_ns}")
            except OSError:
                out.append("absent")
        return out

    started = time.perf_counter()
    stats = signatures(found[:chunk])
    rest = [found[i:i + chunk] for i in range(chunk, len(found), chunk)]
    if rest and (time.perf_counter() - started) / chunk > 50e-6:  # latency-bound: overlap the calls
        with ThreadPoolExecutor(max_workers=16) as pool:
            stats += [signature for part in pool.map(signatures, rest) for signature in part]
    else:
        stats += [signature for part in rest for signature in signatures(part)]
    found_stats = iter(stats)
    return [next(found_stats) if there else "absent" for there in present]


def worker_spec(config: MasksConfig) -> SegmenterSpec:
    """The segmenter as workers load it: each GPU worker sees only its own GPU, as `cuda`; on a CPU, the thread
    count the run is keyed by (the workers' share of the cores)."""
    spec, options = config.segmenter, config.execution
    if spec.device.startswith("cuda"):
        return spec if options.scheduler or options.in_process else dataclasses.replace(spec, device="cuda")
    return dataclasses.replace(spec, threads=config.model_threads())


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
