"""What the render stage does per shard and per clip: one variant over the clips of one masks shard, each clip
composed and encoded to `<variant dir>/<split>/<label>/<clip_id>.mp4` (or a rawframes folder; with
FORMAT=webdataset, into the shard's `<variant dir>/<shard>.tar`), and the shard's status rows to
`<variant dir>/_status/<format>/<shard>.parquet` (RENDER_SCHEMA); the engine claims, retries, commits and
marks the shard done."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.decode import DecodeError, DecodeOptions
from pipeline.engine import Commit, ShardTask
from pipeline.engine.claims import remove_stale_temps, temps_of
from pipeline.engine.problems import stored_statuses
from pipeline.masks import ClipMasks, MasksRun, StoredClip
from pipeline.records import DECODE_ERROR, FAILED, MISSING, RenderRow, path_name
from pipeline.render.backdrops import still_index
from pipeline.render.compose import composed, partner_frames
from pipeline.render.encode import LAZY, ClipWriter, EncodeOptions
from pipeline.render.kinds import Variant
from pipeline.render.planes import planar
from pipeline.render.regions import RegionMasks
from pipeline.render.tars import WEBDATASET, SampleTar, sample_rows, shard_tar_name

log = logging.getLogger(__name__)

RENDER_BATCH = 4  # frames decoded at a time: the encoder gets a clip's first frame sooner than with 16
NO_PAIR = "no_pair"  # a swap variant found no partner for the clip (coverage outside the range, or alone)

RENDER_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("label_index", pa.int32()),
    pa.field("meta", pa.string()),  # the clip's dataset extras, JSON (from the masks clips table)
    pa.field("variant", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("path", pa.string()),  # relative to the variant folder; null unless rendered
    pa.field("status", pa.string(), nullable=False),  # ok, partial, no_pair, failed, or the masks status
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
    pa.field("source_clip_id", pa.string()),  # the dataset's clip id (clip_id is `<id>__<k>` for background k)
    pa.field("background", pa.int32()),  # static-background variants: which of the clip's backgrounds
])
SOURCE = "source"  # the `original` variant's format: rows that point at the source videos


@dataclass(frozen=True, kw_only=True)
class RenderItem:
    """One clip to render, its swap partner (whose background it is pasted onto), if any, and which of its
    static backgrounds (SCUBA), if the variant has them."""

    clip: StoredClip
    partner: StoredClip | None = None
    background: int | None = None

    @property
    def key(self) -> str:
        """The render's id: the clip's, or `<clip id>__<k>` for its k-th background (StillMix's naming)."""
        return self.clip.clip_id if self.background is None else f"{self.clip.clip_id}__{self.background}"

    @property
    def split(self) -> str:
        return self.clip.split

    @property
    def source(self) -> str:
        """The video it is made from (named in problems)."""
        return str(self.clip.path)


@dataclass(frozen=True, kw_only=True)
class RenderStage:
    """The render stage's settings for one variant, as each worker needs them (the engine's ShardStage)."""

    variant: Variant
    encode: EncodeOptions
    masks_dir: Path
    variant_dir: Path
    decode_fps: float | None  # the masks run's --fps, so frames line up with the stored masks
    seed: int

    @property
    def status_dir(self) -> Path:
        """Where the shards' status tables, stats and plan live."""
        return self.variant_dir / "_status" / self.encode.format

    def status_path(self, shard: str) -> Path:
        return self.status_dir / f"{shard}.parquet"

    @property
    def webdataset(self) -> bool:
        return self.encode.format == WEBDATASET

    def clip_path(self, item: RenderItem) -> Path:
        """Where a render goes: `<variant dir>/<split>/<label>/<key>.mp4` (or a rawframes folder); the
        `original` variant's is a link to the source video, with the source's suffix. A webdataset sample's mp4
        is only staged, beside its shard's status (`_status/webdataset/<shard>.<key>.mp4`, under a temporary
        name the shard's claim clears), until it goes into the shard's tar."""
        clip = item.clip
        if self.webdataset:  # a render item's shard is its clip's masks shard
            return self.status_dir / f"{clip.shard}.{item.key}{self.encode.suffix()}"
        suffix = os.path.splitext(clip.path)[1] if self.variant.original else self.encode.suffix()
        return self.variant_dir / clip.split / path_name(clip.label) / f"{item.key}{suffix}"

    def row_path(self, item: RenderItem) -> str:
        """A rendered clip's `path` in its row, relative to the variant folder: its file, or its shard's tar."""
        if self.webdataset:
            return self.tar_path(item.clip.shard).relative_to(self.variant_dir).as_posix()
        return self.clip_path(item).relative_to(self.variant_dir).as_posix()

    def tar_path(self, shard: str) -> Path:
        """FORMAT=webdataset: the shard's tar of samples."""
        return self.variant_dir / shard_tar_name(shard)

    def stored_outcomes(self, task: ShardTask) -> dict[str, tuple[str, str | None]]:
        """Render key → (status, error) from a committed shard's status table."""
        return stored_statuses(self.status_path(task.name))

    def open(self, task: ShardTask, commit: Commit) -> "RenderWork":
        if commit.cut_short:  # under the shard's claim: what a killed writer left (only where one was: a search
            for item in task.items:  # per clip of folders of thousands costs much)
                remove_stale_temps(temps_of(self.clip_path(item)))
            if self.webdataset:
                remove_stale_temps(temps_of(self.tar_path(task.name)))
        masks = MasksRun(self.masks_dir)
        return RenderWork(self, task, masks, masks.shard_masks(task.name), commit)


class RenderWork:
    """One variant over one masks shard's clips; each clip's file is staged in the shard's commit. With
    FORMAT=webdataset each clip's mp4 is staged on its own, then appended to the shard's staged tar as its item
    is kept (in item order) and dropped from the commit: the tar is the shard's one render file."""

    def __init__(self, stage: RenderStage, task: ShardTask, masks: MasksRun, stored: dict[str, ClipMasks],
                 commit: Commit) -> None:
        self.stage, self.task, self.masks, self.stored, self.commit = stage, task, masks, stored, commit
        self._samples: dict[str, tuple[Path, Path]] = {}  # webdataset: render key → (staged name, temporary file)
        self._tar: SampleTar | None = None
        self._sample_row: Callable[[RenderRow], dict] | None = None

    def process(self, item: RenderItem) -> RenderRow:
        final = self.stage.clip_path(item)
        render = source_row if self.stage.variant.original else lazy_row if self.stage.encode.format == LAZY \
            else render_clip

        def out() -> Path:
            self._samples[item.key] = (final, tmp := self.commit.stage(final))
            return tmp

        try:
            row = render(item, self.stored.get(item.clip.clip_id), self.stage, self.masks, shard=self.task.name,
                         out=out)
        except BaseException:
            self.commit.unstage(final)
            raise
        if not row.path:
            self.commit.unstage(final)
        return row

    def give_up(self, item: RenderItem, error: str) -> RenderRow:
        return not_rendered(item, self.stage, self.task.name, FAILED, error)

    def keep(self, row: RenderRow) -> None:
        """FORMAT=webdataset: a rendered clip's sample goes into the shard's tar, in item order; its own mp4
        leaves the commit. Other formats' files stay staged where they go."""
        staged = self._samples.pop(row.clip_id, None)
        if not self.stage.webdataset or staged is None or not row.path:
            return
        final, tmp = staged
        if self._sample_row is None:
            self._sample_row = sample_rows(self.masks, self.task.name, self.task.upstream.get(self.task.name, ""),
                                           self.stage.variant.keep_if)
        self.tar().add(row.clip_id, tmp.read_bytes(), self._sample_row(row))
        self.commit.unstage(final)

    def tar(self) -> SampleTar:
        """The shard's tar, staged at its first sample (or at `finish`: a shard with none has an empty tar)."""
        if self._tar is None:
            self._tar = SampleTar(self.commit.stage(self.stage.tar_path(self.task.name)))
        return self._tar

    def finish(self, rows: list[RenderRow], commit: Commit) -> dict[str, Any]:
        totals = {}
        if self.stage.webdataset:
            self.tar().close()
            totals = {"samples": self._tar.samples}
        metadata = {"variant": self.stage.variant.spec_json(), "fingerprint": self.task.fingerprint,
                    "masks_dir": str(self.stage.masks_dir)}
        table = pa.Table.from_pylist([asdict(row) for row in rows], schema=RENDER_SCHEMA.with_metadata(metadata))
        pq.write_table(table, commit.stage(self.stage.status_path(self.task.name)), compression="zstd")
        return totals

    def abort(self) -> None:
        """Close the tar, if one was begun; the Commit removes it and every staged mp4."""
        if self._tar is not None:
            try:
                self._tar.close()
            except Exception:  # noqa: BLE001 - the shard is given up anyway; its error is the one reported
                log.debug("%s: closing the aborted tar failed", self.task.name, exc_info=True)


def not_rendered(item: RenderItem, stage: RenderStage, shard: str, status: str, error: str | None) -> RenderRow:
    clip = item.clip
    return RenderRow(clip_id=item.key, split=clip.split, label=clip.label, label_index=clip.label_index,
                     meta=clip.meta, variant=stage.variant.name, format=stage.encode.format, status=status,
                     error=error, masks_shard=shard, source_clip_id=clip.clip_id, background=item.background)


def source_row(item: RenderItem, masks: ClipMasks | None, stage: RenderStage, run: MasksRun, *, shard: str,
               out: Callable[[], Path]) -> RenderRow:
    """The `original` variant: a symbolic link to the source video where a render would go (so its lists read
    like every variant's, relative to the variant folder, with the same safe names), and the clip's person and
    object coverage from the stored masks. Nothing is decoded or re-encoded."""
    clip = item.clip
    row = not_rendered(item, stage, shard, clip.status, clip.error)
    if not clip.usable:
        return row
    if not Path(clip.path).is_file():
        return not_rendered(item, stage, shard, MISSING, f"{clip.path}: gone since its masks were made; put it back "
                            "or rerun the masks stage")
    os.symlink(Path(clip.path).absolute(), out())
    row = as_stored(item, masks, stage, shard)
    row.path = stage.row_path(item)
    return row


def as_stored(item: RenderItem, masks: ClipMasks | None, stage: RenderStage, shard: str) -> RenderRow:
    """A usable clip's row with the source's frames, rate and size, and its person and object coverage from the
    stored RLEs (before the temporal OR and dilation; frames without any instance count 0)."""
    clip = item.clip
    row = not_rendered(item, stage, shard, clip.status, clip.error)
    regions = RegionMasks(masks, clip.height, clip.width, stage.variant.masks)
    seen = sorted(set(masks.frame_index.tolist())) if masks is not None and len(masks) else []
    unseen = [0.0] * max(0, clip.frames - len(seen))
    row.person_coverage = [float(v) for v in regions.person_coverage(seen)] + unseen
    row.object_coverage = [float(v) for v in regions.object_coverage(seen)] + unseen
    row.frames, row.fps, row.width, row.height = clip.frames, stage.decode_fps or clip.fps, clip.width, clip.height
    return row


def lazy_row(item: RenderItem, masks: ClipMasks | None, stage: RenderStage, run: MasksRun, *, shard: str,
             out: Callable[[], Path]) -> RenderRow:
    """FORMAT=lazy: the row a render would have, with no pixels (`path` null): the clip's status, its swap
    partner and its coverage from the stored RLEs (`as_stored`, as `original`'s rows).
    The loaders (`MaskedClips`) and `predict` compose its frames from the mask cache when they read it."""
    clip, partner = item.clip, item.partner
    refused = not_composable(item, stage, shard)
    if refused:
        return refused
    gone = next((c.path for c in (clip, partner) if c is not None and not Path(c.path).is_file()), None)
    if gone:
        return not_rendered(item, stage, shard, MISSING, f"{gone}: gone since its masks were made; put it back or "
                            "rerun the masks stage")
    return with_partner(as_stored(item, masks, stage, shard), partner)


def not_composable(item: RenderItem, stage: RenderStage, shard: str) -> RenderRow | None:
    """The row of a clip that cannot be composed as the variant (its masks' status: missing, decode_error,
    empty, …; or a swap without a partner), or None."""
    if not item.clip.usable:
        return not_rendered(item, stage, shard, item.clip.status, item.clip.error)
    if stage.variant.needs_pair and item.partner is None:
        return not_rendered(item, stage, shard, NO_PAIR, f"no partner clip with person coverage in range "
                            f"(swap mode {stage.variant.pairing.mode})")
    return None


def with_partner(row: RenderRow, partner: StoredClip | None) -> RenderRow:
    """The row naming the swap partner whose background it was put on, if any."""
    if partner:
        row.pair_clip_id, row.pair_label, row.pair_label_index = partner.clip_id, partner.label, partner.label_index
    return row


def render_clip(item: RenderItem, masks: ClipMasks | None, stage: RenderStage, run: MasksRun, *, shard: str,
                out: Callable[[], Path]) -> RenderRow:
    """Render one clip (or say why not) to the path `out()` gives. A clip the masks stage decoded only in part
    renders the frames it segmented, and keeps its status (`partial`) and error. A `still` variant (SCUFO)
    repeats one seeded frame of the composed clip for as many frames as the clip has."""
    clip, partner, variant = item.clip, item.partner, stage.variant
    refused = not_composable(item, stage, shard)
    if refused:
        return refused
    relative = stage.row_path(item)
    decode = DecodeOptions(fps=stage.decode_fps, batch=RENDER_BATCH)
    regions = RegionMasks(masks, clip.height, clip.width, variant.masks)
    fps = stage.decode_fps or clip.fps
    planes = planar(variant, stage.encode.format) and clip.width % 2 == 0 and clip.height % 2 == 0 and partner is None
    writer = ClipWriter(out(), fps=fps, width=clip.width, height=clip.height, options=stage.encode)
    person, objects = [], []
    pick = still_index(seed=stage.seed, key=item.key, frames=clip.frames) if variant.still else None
    still = None
    try:
        swap = partner_frames(partner, run.clip_masks(partner), clip, options=variant.masks,
                              decode_fps=stage.decode_fps, seed=stage.seed) if partner else None
        for i, (frame, found) in enumerate(composed(clip.path, regions, variant, decode=decode, frames=clip.frames,
                                                    seed=stage.seed, clip_id=clip.clip_id, key=item.key, swap=swap,
                                                    planes=planes)):
            if pick is None:
                writer.write(frame)
            elif i <= pick:  # the picked frame, or the last there is if the clip decoded fewer
                still = frame
            person.append(np.count_nonzero(found.person) / found.person.size)
            objects.append(np.count_nonzero(found.objects) / found.objects.size)
        for _ in range(len(person) if still is not None else 0):
            writer.write(still)
        writer.close()
    except DecodeError as exc:
        writer.abort()
        log.warning("render %s: %s", variant.name, exc)
        return not_rendered(item, stage, shard, DECODE_ERROR, str(exc))
    except BaseException:
        writer.abort()
        raise
    width, height = writer.size
    row = not_rendered(item, stage, shard, clip.status, clip.error)  # ok, or partial with its error
    row.path, row.frames, row.fps, row.width, row.height = relative, writer.frames, fps, width, height
    row.person_coverage, row.object_coverage = person, objects
    return with_partner(row, partner)
