"""Cross-clip feeding: frames of several clips share model batches, packed the same way every time, each result
back at its clip; the shards come out byte-identical to one clip at a time, and a clip's failure stays its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.datasets.sample import shape_clip, write_video
from pipeline.decode import DecodeOptions, FrameBatch, VideoDecoder
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
    """The luma key, remembering each batch it was given: each frame's position in its clip and its pixel sum
    (which tells the clips apart)."""

    def __init__(self) -> None:
        super().__init__(SegmenterSpec(backend="luma"))
        self.batches: list[tuple[int, ...]] = []
        self.contents: list[tuple[int, ...]] = []

    def segment(self, batch: FrameBatch):
        self.batches.append(tuple(batch.positions.tolist()))
        self.contents.append(tuple(batch.frames.reshape(len(batch), -1).sum(axis=1).tolist()))
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
    for seed in range(3):  # decoders slowed at random: the same batches, whichever decoder is ready first
        random = np.random.default_rng(seed)
        decode = VideoDecoder._to_array
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(VideoDecoder, "_to_array",
                          lambda self, frame: (time.sleep(random.uniform(0, 0.004)), decode(self, frame))[1])
            again, _, _ = feed(records, decoders=3, batch=8)
        assert (again.batches, again.contents) == (segmenter.batches, segmenter.contents)

    alone = Recording()
    for record in records:  # each clip's rows: the same as decoding and segmenting it on its own
        rows = ClipRows(record.clip_id, dict(alone.names))
        status = segment_clip(record, alone, DecodeOptions(batch=8), rows)
        assert status.frames == fed[record].frames and fed[record].error is None
        assert fed[record].rows.table().equals(rows.table()), record.clip_id


def test_frames_of_other_sizes_are_packed_apart_in_full_batches(tmp_path):
    sizes = [(96, 64), (128, 64), (96, 64), (128, 64), (96, 64)]
    for i, (width, height) in enumerate(sizes):
        write_video(tmp_path / "train" / f"c{i}.mp4", shape_clip(20, width, height, seed=i)[0], 12, lossless=True)
    records = clips(tmp_path)
    segmenter, fed, _ = feed(records, decoders=2, batch=8)
    sizes = [len(positions) for positions in segmenter.batches]
    assert sum(sizes) == 100 and sizes.count(8) >= len(sizes) - 3, sizes  # the last of each size, at the end
    for record in records:
        rows = ClipRows(record.clip_id, dict(segmenter.names))
        segment_clip(record, LumaKeySegmenter(SegmenterSpec()), DecodeOptions(batch=8), rows)
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


class Counting:
    """Counts the decoded frames alive (yielded by a decoder, not yet in a clip's rows) and their peak."""

    def __init__(self, monkeypatch) -> None:
        import threading

        import pipeline.masks.feed as feed

        self.lock, self.alive, self.peak = threading.Lock(), 0, 0
        counting = self

        class Decoder(feed.VideoDecoder):
            def __iter__(self):
                for batch in super().__iter__():
                    counting.change(len(batch))
                    yield batch

        monkeypatch.setattr(feed, "VideoDecoder", Decoder)

    def change(self, frames: int) -> None:
        with self.lock:
            self.alive += frames
            self.peak = max(self.peak, self.alive)

    def rows(self, names):
        counting = self

        class Rows(ClipRows):
            def add(self, batch, results):
                super().add(batch, results)
                counting.change(-len(batch))

        return lambda clip: Rows(clip.clip_id, names)


@pytest.mark.parametrize("decoders, overlap", [(2, False), (3, True), (5, True)])
def test_decoded_frames_held_at_once_stay_within_the_reported_bound(tmp_path, monkeypatch, decoders, overlap):
    for i in range(4):  # long enough for the decoders to run ahead as far as they may
        write_video(tmp_path / "train" / f"long{i}.mp4", shape_clip(48, 96, 64, seed=i)[0], 12, lossless=True)
    counting = Counting(monkeypatch)

    class Slow(Recording):
        def segment(self, batch):
            time.sleep(0.01)  # the decoders run ahead as far as they may
            return super().segment(batch)

    segmenter = Slow()
    feeder = Feeder(segmenter, DecodeOptions(batch=6), decoders=decoders, rows=counting.rows(dict(segmenter.names)),
                    overlap=overlap)
    fed = dict(feeder.run(clips(tmp_path), lambda clip: None))
    assert sum(outcome.frames for outcome in fed.values()) == 4 * 48 and counting.alive == 0
    assert 6 <= counting.peak <= feeder.frames_in_flight, (counting.peak, feeder.frames_in_flight)


def test_the_bound_is_reported_per_shard_and_as_the_largest(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    summary = run_masks(config(root, tmp_path / "out", shard_size=2, decoders=3, decode=DecodeOptions(batch=10)),
                        progress=False)
    bound = Feeder(LumaKeySegmenter(SegmenterSpec()), DecodeOptions(batch=10), decoders=3, rows=None).frames_in_flight
    shards = [json.loads(p.read_text())["totals"] for p in Path(summary.output).glob("*_stats.json")]
    assert len(shards) > 1 and all(t["frames_in_flight_max"] == bound for t in shards)
    assert summary.totals["frames_in_flight_max"] == bound  # the largest, not the sum over shards
