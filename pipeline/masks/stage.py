"""What the masks stage does per shard and per clip: decode each clip, segment its frames, and write the
shard's mask rows and status rows (the engine claims, retries, commits and marks the shard done)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.decode import DecodeError, DecodeOptions, VideoDecoder
from pipeline.engine import Commit, ShardTask
from pipeline.masks.tables import ClipRows, ShardFiles, ShardWriter
from pipeline.prefetch import Behind, prefetched
from pipeline.records import CONFLICT, DECODE_ERROR, EMPTY, FAILED, MISSING, OK, PARTIAL, USABLE, ClipRecord, ClipStatus
from pipeline.segment import Segmenter, SegmenterSpec, load_segmenter
from pipeline.tracking import IouTracker, TrackOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MasksStage:
    """The masks stage's settings, as each worker needs them (the engine's ShardStage)."""

    segmenter: SegmenterSpec
    decode: DecodeOptions
    track: TrackOptions
    metadata: dict[str, str]  # provenance every shard file carries (run tag, fingerprint, settings)

    def open(self, task: ShardTask, commit: Commit) -> "MasksWork":
        segmenter = load_segmenter(self.segmenter)
        provenance = {f"segmenter.{key}": value for key, value in segmenter.provenance().items()}
        writer = ShardWriter(ShardFiles(task.folder, task.name), commit, {**self.metadata, **provenance})
        return MasksWork(self, segmenter, writer)


class MasksWork:
    """One shard's clips, one at a time; a clip's mask rows reach the shard only once the clip is complete."""

    def __init__(self, stage: MasksStage, segmenter: Segmenter, writer: ShardWriter) -> None:
        self.stage, self.segmenter, self.writer = stage, segmenter, writer
        self._rows: ClipRows | None = None  # the rows of the clip just processed, until kept

    def process(self, clip: ClipRecord) -> ClipStatus:
        """One try at a clip: fresh rows (nothing from an earlier try), then decode and segment into them."""
        self._rows = None
        if clip.conflict:
            return ClipStatus(clip=clip, status=CONFLICT, error=clip.conflict)
        rows = ClipRows(clip.clip_id, dict(self.segmenter.names), IouTracker(self.stage.track))
        status = segment_clip(clip, self.segmenter, self.stage.decode, rows,
                              overlap=self.stage.segmenter.device.startswith("cuda"))
        self._rows = rows if status.status in USABLE else None
        return status

    def give_up(self, clip: ClipRecord, error: str) -> ClipStatus:
        self._rows = None
        return ClipStatus(clip=clip, status=FAILED, error=error)

    def keep(self, status: ClipStatus) -> None:
        if self._rows is not None:
            self.writer.write(self._rows)
            self._rows = None

    def finish(self, outcomes: list[ClipStatus], commit: Commit) -> dict[str, Any]:
        self.writer.finish(outcomes)
        return {"instances": sum(status.instances for status in outcomes)}

    def abort(self) -> None:
        self.writer.abort()


def segment_clip(clip: ClipRecord, segmenter: Segmenter, options: DecodeOptions, rows: ClipRows, *,
                 overlap: bool = False) -> ClipStatus:
    """Decode and segment one clip into `rows`; the returned status says whether the rows are usable.

    A clip that stops decoding part way (a truncated download) keeps the masks of the frames before the
    error: status `partial`, with the error and the frame count. With `overlap` (a GPU model, whose thread
    mostly waits), RLE and tracking run on a thread of their own; on CPU they run inline, since there they
    only compete with the model for the cores (measured 5–8% slower).
    """
    if not clip.path.is_file():
        return ClipStatus(clip=clip, status=MISSING, error=f"{clip.path}: file not found")
    decoder = VideoDecoder(clip.path, options)
    frames, error = 0, None
    with Behind(depth=2 if overlap else 0) as after:  # RLE and tracking while the model runs the next batch
        try:
            for batch in prefetched(decoder):  # the next batch decodes while the model runs on this one
                after.submit(rows.add, batch, segmenter.segment(batch))
                frames += len(batch)
        except DecodeError as exc:
            log.warning("decode error after %d frames: %s", frames, exc)
            error = str(exc)
    info = decoder.info
    if error is not None and not frames:
        return ClipStatus(clip=clip, status=DECODE_ERROR, error=error)
    if info is None:
        return ClipStatus(clip=clip, status=EMPTY, error=f"{clip.path}: no decodable video frames")
    return ClipStatus(
        clip=clip,
        status=PARTIAL if error else OK,
        error=error and f"decoded {frames} frames, then: {error}",
        frames=frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        duration=info.duration,
        rotation=info.rotation,
        instances=len(rows),
    )
