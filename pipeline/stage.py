"""The masks stage for one shard: decode each clip, segment its frames, write the shard, then its stats."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter

from pipeline import __version__
from pipeline.atomic import write_json
from pipeline.decode import DecodeError, DecodeOptions, VideoDecoder
from pipeline.maskstore import ClipRows, ShardWriter
from pipeline.prefetch import Behind, prefetched
from pipeline.records import DECODE_ERROR, EMPTY, MISSING, OK, ClipRecord, ClipStatus
from pipeline.segment import Segmenter, load_segmenter
from pipeline.shards import ShardTask
from pipeline.tracking import IouTracker

log = logging.getLogger(__name__)


def run_shard(task: ShardTask) -> dict:
    """Process every clip of a shard and commit it; returns the stats also written as the done marker.

    Data problems (a missing or undecodable clip) become status rows. Anything else (the model failing,
    a full disk) aborts the shard, leaves nothing visible, and propagates so the run reports it.
    """
    started = time.perf_counter()
    config = task.config
    segmenter = load_segmenter(config.segmenter)
    writer = ShardWriter(task.run_dir, task.name, shard_metadata(task, segmenter))
    statuses: list[ClipStatus] = []
    try:
        for clip in task.clips:
            rows = ClipRows(clip.clip_id, dict(segmenter.names), IouTracker(config.track))
            status = segment_clip(clip, segmenter, config.decode, rows,
                                  overlap=config.segmenter.device.startswith("cuda"))
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
        "frames": sum(s.frames for s in statuses),
        "instances": sum(s.instances for s in statuses),
        "seconds": round(time.perf_counter() - started, 3),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    write_json(task.stats_path, stats)  # last: its presence marks the shard done
    log.info("%s: %d clips, %d frames in %.1fs", task.name, stats["clips"], stats["frames"], stats["seconds"])
    return stats


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
