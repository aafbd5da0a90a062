"""The render stage for one (variant, masks shard): compose and encode each clip, then write its status rows
and, last, its stats file (the done marker).

Outputs: `<variant dir>/<split>/<label>/<clip_id>.mp4` (or a rawframes folder), and per shard
`<variant dir>/_status/<format>/shard-NNNNN.parquet` (RENDER_SCHEMA) and `shard-NNNNN_stats.json`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path, write_json
from pipeline.claims import Tries, claim, peak_rss_mb, remove_stale_temps, tries_path, worker_name
from pipeline.compose import PartnerFrames, composed
from pipeline.decode import DecodeError, DecodeOptions
from pipeline.encode import ClipWriter, EncodeOptions
from pipeline.maskstore import ClipMasks, iter_shard, read_clip_masks, shard_paths
from pipeline.records import DECODE_ERROR, FAILED, OK, listing_digest, path_name
from pipeline.regions import RegionMasks
from pipeline.variants import PRESETS, Variant

log = logging.getLogger(__name__)

NO_PAIR = "no_pair"  # a swap variant found no partner for the clip (coverage outside the range, or alone)

RENDER_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("label_index", pa.int32()),
    pa.field("meta", pa.string()),  # the clip's dataset extras, JSON (from the masks clips table)
    pa.field("variant", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("path", pa.string()),  # relative to the variant folder; null unless ok
    pa.field("status", pa.string(), nullable=False),  # ok, no_pair, or the masks/decode status
    pa.field("error", pa.string()),
    pa.field("frames", pa.int32(), nullable=False),
    pa.field("fps", pa.float64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # output size
    pa.field("height", pa.int32(), nullable=False),
    pa.field("person_coverage", pa.list_(pa.float32()), nullable=False),  # per frame, of the masks used
    pa.field("object_coverage", pa.list_(pa.float32()), nullable=False),
    pa.field("pair_clip_id", pa.string()),  # swap: the clip whose background was used
    pa.field("pair_label", pa.string()),
    pa.field("pair_label_index", pa.int32()),
    pa.field("masks_shard", pa.string(), nullable=False),
])


@dataclass(frozen=True, kw_only=True)
class RenderTask:
    """One variant over the clips of one masks shard."""

    shard: str
    variant: Variant
    clips: tuple[dict, ...]  # rows of the masks clips table
    masks_dir: Path
    variant_dir: Path
    encode: EncodeOptions
    decode_fps: float | None  # the masks run's --fps, so frames line up with the stored masks
    seed: int
    fingerprint: str
    pairs: dict[str, dict] = field(default_factory=dict)  # clip id → partner's clips-table row (swap only)
    max_tries: int = 3  # tries per clip before it is recorded as failed
    overwrite: bool = False  # recompute even when done
    retry_failed: bool = False  # a done shard holding failed clips is not done

    @property
    def name(self) -> str:
        return f"{self.variant.name}/{self.shard}"

    def status_paths(self) -> tuple[Path, Path]:
        folder = self.variant_dir / "_status" / self.encode.format
        return folder / f"{self.shard}.parquet", folder / f"{self.shard}_stats.json"

    def listing(self) -> dict[str, str]:
        """Clip id → digest of its listing (split, label, index, meta): renders are filed by split and label."""
        return {clip["clip_id"]: listing_digest(clip["split"], clip["label"], clip["label_index"], clip.get("meta"))
                for clip in self.clips}

    def expected(self) -> dict[str, str]:
        """Clip id → partner id ('' without one): what a finished shard must have rendered."""
        return {clip["clip_id"]: self.pairs.get(clip["clip_id"], {}).get("clip_id", "") for clip in self.clips}


def render_shard(task: RenderTask) -> dict:
    """Render every clip of the task; returns the stats also written (last) as the done marker.

    Claimed first, like a masks shard (claims.claim); a clip that raises is tried again, and after `max_tries`
    becomes a `failed` row with its error."""
    status_path, stats_path = task.status_paths()
    with claim(stats_path, outputs=(status_path,)):
        if not task.overwrite and is_done(task):
            log.info("%s: finished by another run meanwhile", task.name)
            return json.loads(stats_path.read_text())
        return _render_claimed(task)


def _render_claimed(task: RenderTask) -> dict:
    started = time.perf_counter()
    masks_file = shard_paths(task.masks_dir, task.shard)[0]
    stored = {clip.clip_id: clip for clip in iter_shard(masks_file)} if masks_file.exists() else {}
    status_path, stats_path = task.status_paths()
    tries = Tries(tries_path(stats_path), task.max_tries)
    rows = [tries.run(clip["clip_id"], lambda: render_clip(clip, stored.get(clip["clip_id"]), task),
                      lambda error: failed_row(clip, task, error)) for clip in task.clips]
    with atomic_path(status_path) as tmp:
        metadata = {"variant": task.variant.spec_json(), "fingerprint": task.fingerprint, "masks_dir": str(task.masks_dir)}
        pq.write_table(pa.Table.from_pylist(rows, schema=RENDER_SCHEMA.with_metadata(metadata)), tmp, compression="zstd")
    stats = {
        "shard": task.shard,
        "variant": task.variant.name,
        "fingerprint": task.fingerprint,
        "clips": task.expected(),
        "listing": task.listing(),
        "by_status": dict(sorted(Counter(row["status"] for row in rows).items())),
        "retried": tries.retried(),
        "frames": sum(row["frames"] for row in rows),
        "seconds": round(time.perf_counter() - started, 3),
        "worker": worker_name(),
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(stats_path, stats)
    tries.clear()
    log.info("%s: %d clips, %d frames in %.1fs", task.name, len(rows), stats["frames"], stats["seconds"])
    return stats


def status_row(clip: dict, task: RenderTask) -> dict:
    """The status row of a clip not rendered (yet): the masks stage's status and error."""
    row = {name: clip.get(name) for name in ("clip_id", "split", "label", "label_index", "meta")}
    return row | {"variant": task.variant.name, "format": task.encode.format, "path": None, "status": clip["status"],
                  "error": clip["error"], "frames": 0, "fps": 0.0, "width": 0, "height": 0, "person_coverage": [],
                  "object_coverage": [], "pair_clip_id": None, "pair_label": None, "pair_label_index": None,
                  "masks_shard": task.shard}


def failed_row(clip: dict, task: RenderTask, error: str) -> dict:
    return status_row(clip, task) | {"status": FAILED, "error": error}


def render_clip(clip: dict, masks: ClipMasks | None, task: RenderTask) -> dict:
    """Render one clip (or say why not) and return its status row."""
    row = status_row(clip, task)
    if clip["status"] != OK:
        return row  # the masks stage already said why (missing, decode_error, empty)
    partner = task.pairs.get(clip["clip_id"])
    if task.variant.needs_pair and partner is None:
        return row | {"status": NO_PAIR, "error": "no partner clip with person coverage in range and another label"}
    relative = Path(clip["split"]) / path_name(clip["label"]) / f"{clip['clip_id']}{task.encode.suffix()}"
    decode = DecodeOptions(fps=task.decode_fps)
    regions = RegionMasks(masks, clip["height"], clip["width"], task.variant.masks)
    fps = task.decode_fps or clip["fps"]
    remove_stale_temps((task.variant_dir / relative,))  # left by a killed try; the shard's claim is held
    writer = ClipWriter(task.variant_dir / relative, fps=fps, width=clip["width"], height=clip["height"], options=task.encode)
    person, objects = [], []
    try:
        swap = partner_frames(partner, task, clip) if partner else None
        for frame, found in composed(Path(clip["path"]), regions, task.variant, decode=decode, frames=clip["frames"],
                                     seed=task.seed, clip_id=clip["clip_id"], swap=swap):
            writer.write(frame)
            person.append(np.count_nonzero(found.person) / found.person.size)
            objects.append(np.count_nonzero(found.objects) / found.objects.size)
        writer.commit()
    except DecodeError as exc:
        writer.abort()
        log.warning("render %s: %s", task.variant.name, exc)
        return row | {"status": DECODE_ERROR, "error": str(exc)}
    except BaseException:
        writer.abort()
        raise
    width, height = writer.size
    row |= {"path": relative.as_posix(), "status": OK, "error": None, "frames": writer.frames, "fps": fps,
            "width": width, "height": height, "person_coverage": person, "object_coverage": objects}
    if partner:
        row |= {"pair_clip_id": partner["clip_id"], "pair_label": partner["label"], "pair_label_index": partner["label_index"]}
    return row


def partner_frames(partner: dict, task: RenderTask, clip: dict) -> PartnerFrames:
    """The partner clip's background_only frames (people inpainted), timed to this clip's frames."""
    masks = read_clip_masks(task.masks_dir, partner["shard"], partner["clip_id"], partner["height"], partner["width"])
    background_only = Variant(name="background_only", person=PRESETS["background_only"].person, masks=task.variant.masks)
    regions = RegionMasks(masks, partner["height"], partner["width"], task.variant.masks)
    frames = (frame for frame, _ in composed(Path(partner["path"]), regions, background_only,
                                            decode=DecodeOptions(fps=task.decode_fps), frames=partner["frames"],
                                            seed=task.seed, clip_id=partner["clip_id"]))
    return PartnerFrames(frames, partner["frames"], clip["frames"], (clip["width"], clip["height"]))


def is_done(task: RenderTask) -> bool:
    """The shard's stats exist, under the same settings, and cover these clips with the same partners."""
    try:
        stats = json.loads(task.status_paths()[1].read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if stats.get("fingerprint") != task.fingerprint:
        return False
    if task.retry_failed and stats.get("by_status", {}).get(FAILED):
        return False
    done, listed = stats.get("clips", {}), stats.get("listing")
    if listed is not None and any(listed.get(clip_id) != digest for clip_id, digest in task.listing().items()):
        return False  # relabelled in the masks run since
    return all(done.get(clip_id) == partner for clip_id, partner in task.expected().items())

