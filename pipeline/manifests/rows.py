"""One manifest row per clip and format: the render status row, its coverage summary, the quality filter's
verdict, whether trainers get it, and the provenance of the very masks shard it was rendered from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.records import USABLE, RenderRow

if TYPE_CHECKING:
    from pipeline.masks import MasksRun

FILTERED = "filtered"  # rendered, but below the quality filter: in the Parquet, not in the lists

MANIFEST_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("split", pa.string()), ("label", pa.string()), ("label_index", pa.int32()),
    ("meta", pa.string()),  # JSON of dataset extras: SSv2 template/placeholders/caption, Mimetics index, UCF group
    ("variant", pa.string()), ("format", pa.string()), ("path", pa.string()), ("frames", pa.int32()),
    ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
    ("person_coverage", pa.float32()),  # mean over frames of the fraction of the frame in people
    ("object_coverage", pa.float32()),
    ("covered_frames", pa.float32()),  # fraction of frames with person coverage ≥ --min-coverage
    ("status", pa.string()), ("error", pa.string()), ("in_lists", pa.bool_()),
    ("pair_clip_id", pa.string()), ("pair_label", pa.string()), ("pair_label_index", pa.int32()),
    ("masks_run", pa.string()), ("masks_shard", pa.string()), ("masks_digest", pa.string()),
    ("segmenter", pa.string()), ("model", pa.string()), ("weights_sha256", pa.string()),
    ("source_clip_id", pa.string()),  # the dataset's clip id; clip_id is `<id>__<k>` for static background k
    ("background", pa.int32()),
])


@dataclass(kw_only=True)
class ManifestRow:
    clip_id: str
    split: str
    label: str | None
    label_index: int  # -1 when unlabelled
    meta: str | None
    variant: str
    format: str
    path: str | None
    frames: int
    fps: float
    width: int
    height: int
    person_coverage: float
    object_coverage: float
    covered_frames: float
    status: str  # ok, partial (decoded in part: the frames before the error), filtered, no_pair, or why not
    error: str | None
    in_lists: bool
    pair_clip_id: str | None
    pair_label: str | None
    pair_label_index: int | None
    masks_run: str
    masks_shard: str
    masks_digest: str
    segmenter: str
    model: str
    weights_sha256: str
    source_clip_id: str
    background: int | None


def manifest_row(row: dict, provenance: dict[str, str], min_coverage: float, min_frames_frac: float) -> ManifestRow:
    """A render status row (RENDER_SCHEMA) as it goes into the manifest. Trainers get `ok` and `partial` clips
    that pass the filter."""
    render = RenderRow(**row)
    person = np.asarray(render.person_coverage, dtype=np.float32)
    objects = np.asarray(render.object_coverage, dtype=np.float32)
    covered = float((person >= min_coverage).mean()) if len(person) else 0.0
    status = render.status
    if status in USABLE and covered < min_frames_frac:
        status = FILTERED
    return ManifestRow(
        clip_id=render.clip_id, split=render.split, label=render.label,
        label_index=-1 if render.label_index is None else render.label_index, meta=render.meta,
        variant=render.variant, format=render.format, path=render.path, frames=render.frames, fps=render.fps,
        width=render.width, height=render.height,
        person_coverage=float(person.mean()) if len(person) else 0.0,
        object_coverage=float(objects.mean()) if len(objects) else 0.0,
        covered_frames=covered, status=status, error=render.error, in_lists=status in USABLE,
        pair_clip_id=render.pair_clip_id, pair_label=render.pair_label, pair_label_index=render.pair_label_index,
        **{key: provenance.get(key, "") for key in ("masks_run", "masks_shard", "masks_digest", "segmenter", "model",
                                                    "weights_sha256")},
        source_clip_id=render.source_clip_id or render.clip_id, background=render.background,
    )


def masks_provenance(masks: "MasksRun", shard: str, digest: str) -> dict[str, str]:
    """The provenance of the masks one render shard was made from: the masks run, the masks shard and the
    digest of its files as read (`digest`), and the segmenter recorded in that shard."""
    recorded = masks.provenance(shard) if shard in masks.shards else {}
    return {"masks_run": masks.tag, "masks_shard": shard, "masks_digest": digest,
            "segmenter": recorded.get("segmenter", ""), "model": recorded.get("segmenter.model", ""),
            "weights_sha256": recorded.get("segmenter.weights_sha256", "")}
