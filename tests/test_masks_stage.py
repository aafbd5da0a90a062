"""The masks stage end to end on generated clips, through the public run_masks entry point."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.datasets import ReaderOptions, list_clips
from pipeline.decode import DecodeOptions
from pipeline.executor import ExecOptions
from pipeline.masks import MASK_SCHEMA, ClipRows, MasksConfig, iter_shard, load_clip_masks, read_clips, run_masks
from pipeline.masks.stage import segment_clip
from pipeline.segment import SegmenterSpec, load_segmenter
from pipeline.tracking import IouTracker, TrackOptions
from tests.conftest import LUMA


def config(root: Path, out: Path, **overrides) -> MasksConfig:
    fields = dict(dataset="kinetics400", root=root, out=out, segmenter=SegmenterSpec(backend=LUMA),
                  execution=ExecOptions(workers=0), shard_size=2)
    return MasksConfig(**{**fields, **overrides})


def shard_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(run_dir).glob("*.parquet"))}


def committed(run_dir: Path) -> list[str]:
    """Names of the shards whose done marker is there."""
    return sorted(p.name.removesuffix("_stats.json") for p in Path(run_dir).glob("*_stats.json"))


def shard_of(run_dir: Path, clip_id: str) -> str:
    (shard,) = {row["shard"] for row in read_clips(run_dir).to_pylist() if row["clip_id"] == clip_id}
    return shard


def test_stored_masks_decode_to_the_exact_truth(shapes_dataset, tmp_path):
    root, truth = shapes_dataset
    summary = run_masks(config(root, tmp_path / "out"), progress=False)
    assert summary.by_status == {"ok": 5}
    assert summary.frames == sum(len(p) for p, _ in truth.values())
    run_dir = Path(summary.output)
    # 4 train clips in 2 shards, 1 val clip in 1; which shard a clip lands in is its id's hash
    assert committed(run_dir) == ["train-00000", "train-00001", "val-00000"]
    for clip_id, (person, box) in truth.items():
        clip = load_clip_masks(run_dir, clip_id)
        assert (clip.height, clip.width) == person.shape[1:]
        for frame in range(len(person)):
            np.testing.assert_array_equal(clip.frame_mask(frame, {0}), person[frame])
            np.testing.assert_array_equal(clip.frame_mask(frame, {1}), box[frame])
        assert set(clip.cls.tolist()) == {0, 1}
        masks = clip.masks()
        # boxes are the tight bounds of the masks they describe
        for mask, (x1, y1, x2, y2) in zip(masks, clip.xyxy):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert (x1, y1, x2, y2) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


def test_shard_tables_carry_schema_status_and_provenance(shapes_dataset, tmp_path):
    root, truth = shapes_dataset
    summary = run_masks(config(root, tmp_path / "out"), progress=False)
    run_dir = Path(summary.output)
    masks_file = run_dir / "train-00000.parquet"
    assert pq.read_schema(masks_file).remove_metadata() == MASK_SCHEMA
    meta = pq.read_schema(masks_file).metadata
    assert meta[b"segmenter"] == LUMA.encode() and meta[b"dataset"] == b"kinetics400"
    assert pq.ParquetFile(masks_file).metadata.row_group(0).column(0).compression == "ZSTD"
    clips = read_clips(run_dir).to_pylist()
    assert sorted(c["clip_id"] for c in clips) == sorted(truth)
    labels = {c["label"]: c["label_index"] for c in clips}
    assert labels == {"juggling balls": 0, "passing American football (in game)": 1}
    assert all(c["status"] == "ok" and c["fps"] == 12.0 and (c["width"], c["height"]) == (96, 64) for c in clips)
    seen = [clip.clip_id for shard in committed(run_dir) for clip in iter_shard(run_dir / f"{shard}.parquet")]
    assert sorted(seen) == sorted(truth)


def test_rerun_skips_done_shards_and_overwrite_redoes_them(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    first = run_masks(config(root, tmp_path / "out"), progress=False)
    run_dir = Path(first.output)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*-0000*")}
    second = run_masks(config(root, tmp_path / "out"), progress=False)
    assert (second.computed, second.skipped) == (0, 3)
    assert second.by_status == first.by_status and second.frames == first.frames
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*-0000*")} == before
    third = run_masks(config(root, tmp_path / "out", overwrite=True), progress=False)
    assert (third.computed, third.skipped) == (3, 0)
    assert shard_bytes(run_dir) == shard_bytes(Path(first.output)), "recomputed, byte for byte the same"


def test_same_inputs_give_byte_identical_shards(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    a = run_masks(config(root, tmp_path / "a"), progress=False)
    b = run_masks(config(root, tmp_path / "b"), progress=False)
    assert shard_bytes(Path(a.output)) == shard_bytes(Path(b.output)) != {}


def test_settings_change_the_run_folder(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    base = config(root, tmp_path)

    assert base.run_dir() != config(root, tmp_path, decode=DecodeOptions(fps=5)).run_dir()
    assert base.run_dir() == config(root, tmp_path, decode=DecodeOptions(batch=3)).run_dir()  # batch shapes nothing
    assert base.run_dir() == config(root, tmp_path, splits=("val",), limit=1).run_dir()  # selection shapes nothing


def add_bright_clip(root: Path) -> Path:
    """A bright clip (the failing test segmenters' trigger) in the shapes dataset's train split."""
    from pipeline.datasets.sample import write_video
    from tests.conftest import write_kinetics_csv

    bright = root / "train" / "zzbright_000000_000010.mp4"
    write_video(bright, np.full((4, 64, 96, 3), 250, np.uint8), 12)
    rows = [("juggling balls", f"-clip{i}_x", i, i + 10) for i in (1, 3)]
    rows += [("passing American football (in game)", f"-clip{i}_x", i, i + 10) for i in (0, 2)]
    write_kinetics_csv(root, "train", rows + [("juggling balls", "zzbright", 0, 10)])
    return bright


@pytest.mark.parametrize("decoders", [1, 3])
def test_model_crash_leaves_no_partial_shard_and_rerun_completes(shapes_dataset, tmp_path, decoders):
    """With several decoders the bright clip shares its batches with others: the batch is run again clip by
    clip, so only the bright clip fails, and its retries run alone."""
    root, _ = shapes_dataset
    from pipeline.datasets.sample import write_video

    bright = add_bright_clip(root)
    failing = config(root, tmp_path / "out", segmenter=SegmenterSpec(backend="tests.segmenters:FailingSegmenter"),
                     decoders=decoders, shard_size=6)

    summary = run_masks(failing, progress=False)
    run_dir = Path(summary.output)
    assert not summary.failed_shards and summary.by_status == {"failed": 1, "ok": 5}
    assert summary.failed_items == {"zzbright_000000_000010": "gave up after 3 tries: RuntimeError: injected model failure"}
    assert summary.retried == {"zzbright_000000_000010": 3}
    shard = shard_of(run_dir, "zzbright_000000_000010")
    rows = {row["clip_id"]: row for row in pq.read_table(run_dir / f"{shard}.clips.parquet").to_pylist()}
    assert rows["zzbright_000000_000010"]["status"] == "failed" and len(rows) > 1
    assert all(row["status"] == "ok" for clip_id, row in rows.items() if clip_id != "zzbright_000000_000010")
    assert not list(run_dir.glob(".*tmp*")) and not list(run_dir.glob(".*_tries.json")), "nothing left behind"

    again = run_masks(failing, progress=False)
    assert again.computed == 0, "a given-up clip is not retried by default, and its file has not changed"
    write_video(bright, np.full((4, 64, 96, 3), 40, np.uint8), 12)  # the input is fixed; same settings
    fixed = run_masks(dataclasses.replace(failing, retry_failed=True), progress=False)
    assert (fixed.computed, fixed.skipped, fixed.by_status) == (1, len(committed(run_dir)) - 1, {"ok": 6})


def test_a_shard_that_cannot_be_written_leaves_nothing_visible(shapes_dataset, tmp_path, monkeypatch):
    root, _ = shapes_dataset
    from pipeline.masks.tables import ShardWriter

    def disk_full(self, statuses):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "finish", disk_full)
    summary = run_masks(config(root, tmp_path / "out"), progress=False)
    assert sorted(summary.failed_shards) == ["train-00000", "train-00001", "val-00000"]
    assert "No space left on device" in summary.failed_shards["train-00000"]
    assert summary.by_status == {"shard_failed": 5} and summary.items == 5
    left = [p.name for p in Path(summary.output).iterdir()]
    assert not [name for name in left if "-0000" in name and not name.startswith(".") or ".tmp" in name], left
    monkeypatch.undo()
    assert run_masks(config(root, tmp_path / "out"), progress=False).by_status == {"ok": 5}


def test_missing_and_corrupt_clips_become_status_rows(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    from tests.conftest import write_kinetics_csv

    (root / "val" / "corrupt_000000_000010.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    write_kinetics_csv(root, "val", [
        ("juggling balls", "-clip4_x", 4, 14),
        ("juggling balls", "corrupt", 0, 10),
        ("passing American football (in game)", "gone", 5, 15),
    ])
    summary = run_masks(config(root, tmp_path / "out"), progress=False)
    assert summary.by_status == {"decode_error": 1, "missing": 1, "ok": 5}
    rows = {r["clip_id"]: r for r in read_clips(Path(summary.output)).to_pylist()}
    assert rows["gone_000005_000015"]["status"] == "missing"
    assert "gone_000005_000015.mp4" in rows["gone_000005_000015"]["error"]
    assert rows["corrupt_000000_000010"]["status"] == "decode_error"
    assert "corrupt_000000_000010.mp4" in rows["corrupt_000000_000010"]["error"]
    with pytest.raises(KeyError):
        load_clip_masks(Path(summary.output), "not-a-clip")


def test_find_run_takes_the_named_run_or_the_latest_started_with_committed_shards(tmp_path, caplog):
    import os

    from pipeline.errors import InputError
    from pipeline.masks import find_run

    base = tmp_path / "masks" / "ds"
    for i, tag in enumerate(("zzz-old", "aaa-new", "bbb-empty")):  # bbb-empty: a run whose start failed
        (base / tag).mkdir(parents=True)
        (base / tag / "run.json").write_text("{}")
        (base / tag / "plan.json").write_text("{}")
        if tag != "bbb-empty":
            (base / tag / "train-00000_stats.json").write_text("{}")
        os.utime(base / tag / "plan.json", ns=(10**18 + i, 10**18 + i))
    assert find_run(tmp_path, "ds", "zzz-old").folder == base / "zzz-old"
    assert find_run(tmp_path, "ds").folder == base / "aaa-new"
    assert "using the latest, aaa-new" in caplog.text and "zzz-old" in caplog.text
    with pytest.raises(InputError, match="no masks yet; run `make masks DATASET=other` first"):
        find_run(tmp_path, "other")
    with pytest.raises(InputError, match="run `make masks DATASET=ucf101 SPLIT_ID=1`"):
        find_run(tmp_path, "ucf101-split1", make_args="DATASET=ucf101 SPLIT_ID=1")


def test_rle_on_its_own_thread_gives_the_same_rows(shapes_dataset):
    root, _ = shapes_dataset
    segmenter = load_segmenter(SegmenterSpec(backend=LUMA))
    clip = list_clips("kinetics400", root, root, None, ReaderOptions()).clips[0]
    tables = []
    for overlap in (False, True):  # True is what a GPU run does
        rows = ClipRows(clip.clip_id, dict(segmenter.names), IouTracker(TrackOptions()))
        status = segment_clip(clip, segmenter, DecodeOptions(batch=3), rows, overlap=overlap)
        assert status.status == "ok" and len(rows) == 2 * status.frames
        tables.append(rows.table())
    assert tables[0].equals(tables[1])
