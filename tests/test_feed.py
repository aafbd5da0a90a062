"""Cross-clip feeding: frames of several clips share model batches, packed the same way every time, each result
back at its clip; the shards come out byte-identical to one clip at a time, and a clip's failure stays its own."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.datasets.sample import shape_clip
from pipeline.decode import DecodeOptions, FrameBatch
from pipeline.masks import run_masks
from pipeline.masks.feed import Feeder
from pipeline.masks.stage import segment_clip
from pipeline.masks.tables import ClipRows
from pipeline.records import ClipRecord
from pipeline.segment import SegmenterSpec
from tests.segmenters import LumaKeySegmenter
from tests.test_identity import truncated_mp4
from tests.test_masks_stage import config, shard_bytes


class Recording(LumaKeySegmenter):
    """The luma key, remembering each batch it was given: (positions in their clips, display height)."""

    def __init__(self) -> None:
        super().__init__(SegmenterSpec(backend="luma"))
        self.batches: list[tuple[int, ...]] = []

    def segment(self, batch: FrameBatch):
        self.batches.append(tuple(batch.positions.tolist()))
        return super().segment(batch)


def clips(root: Path) -> list[ClipRecord]:
    paths = sorted(root.glob("*/*.mp4"))
    return [ClipRecord(clip_id=p.stem, path=p, split=p.parent.name, label=None, label_index=None) for p in paths]


def feed(records: list[ClipRecord], decoders: int, batch: int) -> tuple[Recording, dict[str, object], list[str]]:
    segmenter, begun = Recording(), []
    feeder = Feeder(segmenter, DecodeOptions(batch=batch), decoders=decoders,
                    rows=lambda clip: ClipRows(clip.clip_id, dict(segmenter.names)))
    return segmenter, dict(feeder.run(records, begun.append)), begun


def test_frames_of_several_clips_share_full_batches_packed_the_same_way_each_time(shapes_dataset):
    root, _ = shapes_dataset
    records = clips(root)  # 5 clips of 12 to 16 frames
    segmenter, fed, begun = feed(records, decoders=3, batch=8)
    assert [clip.clip_id for clip in begun] == [clip.clip_id for clip in records]  # opened in order
    sizes = [len(positions) for positions in segmenter.batches]
    assert sum(sizes) == sum(outcome.frames for outcome in fed.values()) == 12 + 13 + 14 + 15 + 16
    assert all(size == 8 for size in sizes[:-1]), sizes  # full batches, but the last
    mixed = [p for p in segmenter.batches if list(p) != sorted(p)]  # positions restart: another clip's frames
    assert len(mixed) >= len(sizes) // 2
    again, _, _ = feed(records, decoders=3, batch=8)
    assert again.batches == segmenter.batches  # the packing does not depend on thread timing

    alone = Recording()
    for record in records:  # each clip's rows: the same as decoding and segmenting it on its own
        rows = ClipRows(record.clip_id, dict(alone.names))
        status = segment_clip(record, alone, DecodeOptions(batch=8), rows)
        assert status.frames == fed[record].frames and fed[record].error is None
        assert fed[record].rows.table().equals(rows.table()), record.clip_id


def test_shards_are_byte_identical_to_one_clip_at_a_time(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    alone = run_masks(config(root, tmp_path / "alone", shard_size=6), progress=False)
    together = run_masks(config(root, tmp_path / "together", shard_size=6, decoders=4,
                                decode=DecodeOptions(batch=6)), progress=False)
    assert together.by_status == alone.by_status == {"ok": 5}
    assert shard_bytes(Path(together.output)) == shard_bytes(Path(alone.output)) != {}


def test_a_clip_that_fails_to_decode_stays_its_own(shapes_dataset, tmp_path):
    """A file that is not a video and a truncated download between good clips: the same statuses, errors and
    masks as one clip at a time."""
    root, _ = shapes_dataset
    (root / "train" / "-clip1_x_000001_000011.mp4").write_bytes(b"not a video at all")
    frames, _, _ = shape_clip(40, 96, 64, seed=9)
    truncated_mp4(root / "train" / "-clip2_x_000002_000012.mp4", frames, 0.8)

    def run(out: str, decoders: int):
        summary = run_masks(config(root, tmp_path / out, shard_size=6, decoders=decoders), progress=False)
        rows = [pq.read_table(p).to_pylist() for p in sorted(Path(summary.output).glob("*.clips.parquet"))]
        return summary, sorted((r["clip_id"], r["status"], r["frames"], r["error"] and r["error"].replace(str(root), ""))
                               for table in rows for r in table)

    alone, statuses_alone = run("alone", 1)
    together, statuses_together = run("together", 3)
    assert together.by_status == alone.by_status == {"decode_error": 1, "partial": 1, "ok": 3}
    assert statuses_together == statuses_alone
    assert not together.retried, "a decoding problem is the clip's status, not a failed try"
    mask_tables = lambda s: {k: v for k, v in shard_bytes(Path(s.output)).items() if not k.endswith(".clips.parquet")}
    assert mask_tables(together) == mask_tables(alone)


@pytest.mark.parametrize("decoders", [2, 5])
def test_the_bound_on_frames_in_flight_is_reported(shapes_dataset, tmp_path, decoders):
    root, _ = shapes_dataset
    summary = run_masks(config(root, tmp_path / "out", shard_size=2, decoders=decoders,
                               decode=DecodeOptions(batch=10)), progress=False)
    bound = decoders * 3 * (10 // decoders) + 10  # each decoder 2 pieces ahead plus the one taken, and the batch
    shards = [json.loads(p.read_text())["totals"] for p in Path(summary.output).glob("*_stats.json")]
    assert len(shards) > 1 and all(t["frames_in_flight_max"] == bound for t in shards)
    assert summary.totals["frames_in_flight_max"] == bound  # the largest, not the sum over shards
