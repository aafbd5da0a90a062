"""The masks stage for one shard: decode each clip, segment its frames, write the shard, then its stats."""

from __future__ import annotations

import logging
import time
from collections import Counter

from pipeline import __version__
from pipeline.atomic import write_json
from pipeline.claims import Tries, claim, peak_rss_mb, tries_path, worker_name
from pipeline.config import MasksConfig
from pipeline.decode import DecodeError, DecodeOptions, VideoDecoder
from pipeline.maskstore import ClipRows, ShardWriter, shard_paths
from pipeline.prefetch import Behind, prefetched
from pipeline.records import DECODE_ERROR, EMPTY, FAILED, MISSING, OK, ClipRecord, ClipStatus
from pipeline.segment import Segmenter, load_segmenter
from pipeline.shards import ShardTask, is_done, read_stats
from pipeline.tracking import IouTracker

log = logging.getLogger(__name__)


def run_shard(task: ShardTask) -> dict:
    """Process every clip of a shard and commit it; returns the stats also written as the done marker.

    The shard is claimed first (ShardBusy if another process holds it); one that another run finished in the
    meantime is not recomputed. Data problems (a missing or undecodable clip) become status rows; a clip that
    raises is tried again, and after `max_tries` (counting tries cut short by a dead worker) becomes a `failed`
    row with its error. Anything else (the model not loading, a full disk) aborts the shard, leaves nothing
    visible, and propagates so the run reports it.
    """
    with claim(task.stats_path, outputs=shard_paths(task.run_dir, task.name)[:2]):
        if not task.config.overwrite and is_done(task):
            log.info("%s: finished by another run meanwhile", task.name)
            return read_stats(task)
        return _run_claimed(task)


def _run_claimed(task: ShardTask) -> dict:
    started = time.perf_counter()
    config = task.config
    segmenter = load_segmenter(config.segmenter)
    writer = ShardWriter(task.run_dir, task.name, shard_metadata(task, segmenter))
    tries = Tries(tries_path(task.stats_path), config.execution.max_tries)
    statuses: list[ClipStatus] = []
    try:
        for clip in task.clips:
            status, rows = tries.run(clip.clip_id, lambda: _segment_new(clip, segmenter, config),
                                     lambda error: (ClipStatus(clip=clip, status=FAILED, error=error), None))
            if status.status == OK:
                writer.write(rows)
            statuses.append(status)
        writer.commit(statuses)
    except BaseException:
        writer.abort()
        raise
    stats = {
        "shard": task.name,
        "fingerprint": config.fingerprint(),
        "clip_ids": [clip.clip_id for clip in task.clips],
        "listing": {clip.clip_id: clip.listing_digest() for clip in task.clips},
        "clips": len(statuses),
        "by_status": dict(sorted(Counter(s.status for s in statuses).items())),
        "retried": tries.retried(),
        "frames": sum(s.frames for s in statuses),
        "instances": sum(s.instances for s in statuses),
        "seconds": round(time.perf_counter() - started, 3),
        "worker": worker_name(),
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(task.stats_path, stats)  # last: its presence marks the shard done
    tries.clear()
    log.info("%s: %d clips, %d frames in %.1fs", task.name, stats["clips"], stats["frames"], stats["seconds"])
    return stats


def _segment_new(clip: ClipRecord, segmenter: Segmenter, config: MasksConfig) -> tuple[ClipStatus, ClipRows]:
    """One try at a clip: fresh rows (nothing from an earlier try), then decode and segment into them."""
    rows = ClipRows(clip.clip_id, dict(segmenter.names), IouTracker(config.track))
    status = segment_clip(clip, segmenter, config.decode, rows, overlap=config.segmenter.device.startswith("cuda"))
    return status, rows


def segment_clip(clip: ClipRecord, segmenter: Segmenter, options: DecodeOptions, rows: ClipRows, *,
                 overlap: bool = False) -> ClipStatus:
    """Decode and segment one clip into `rows`; the returned status says whether the rows are usable.

    With `overlap` (a GPU model, whose thread mostly waits), RLE and tracking run on a thread of their own; on
    CPU they run inline, since there they only compete with the model for the cores (measured 5–8% slower).
    """
    if not clip.path.is_file():
        return ClipStatus(clip=clip, status=MISSING, error=f"{clip.path}: file not found")
    decoder = VideoDecoder(clip.path, options)
    try:
        with Behind(depth=2 if overlap else 0) as after:  # RLE and tracking while the model runs the next batch
            for batch in prefetched(decoder):  # the next batch decodes while the model runs on this one
                after.submit(rows.add, batch, segmenter.segment(batch))
    except DecodeError as exc:
        log.warning("decode error: %s", exc)
        return ClipStatus(clip=clip, status=DECODE_ERROR, error=str(exc))
    info = decoder.info
    if info is None:
        return ClipStatus(clip=clip, status=EMPTY, error=f"{clip.path}: no decodable video frames")
    return ClipStatus(
        clip=clip,
        status=OK,
        frames=info.frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        duration=info.duration,
        rotation=info.rotation,
        instances=len(rows),
    )


def shard_metadata(task: ShardTask, segmenter: Segmenter) -> dict[str, str]:
    """Provenance stored in both Parquet files of a shard."""
    config = task.config
    return {
        "pipeline_version": __version__,
        "dataset": config.dataset,
        "run_tag": config.run_tag(),
        "fingerprint": config.fingerprint(),
        "segmenter": config.segmenter.backend,
        "decode_fps": str(config.decode.fps or "native"),
        "short_side": str(config.decode.short_side or "native"),
        "instance_ids": f"iou-track min_iou={config.track.min_iou} max_gap={config.track.max_gap}",
        **{f"segmenter.{key}": value for key, value in segmenter.provenance().items()},
    }
