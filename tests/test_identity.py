"""Every output is keyed by what it was made from: ordinary workflows, driven through the CLI, never lose, mix
or reuse stale data (selections, dataset edits, weights rewritten in place, recomputed masks, two masks runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.datasets.sample import shape_clip, write_video
from pipeline.errors import InputError
from pipeline.masks import read_clips
from tests.conftest import LUMA
from tests.test_masks_stage import shard_bytes


def masks(root: Path, out: Path, *extra: str) -> int:
    return main(["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(out), "--segmenter", LUMA,
                 "--workers", "0", "--shard-size", "2", *extra])


def later(out: Path, command: str, *extra: str) -> int:
    return main([command, "--dataset", "kinetics400", "--out", str(out), *extra]
                + (["--workers", "0"] if command == "render" else []))


def only_run(out: Path) -> Path:
    (run_dir,) = (out / "masks" / "kinetics400").iterdir()
    return run_dir


def test_val_then_train_keeps_both(shapes_dataset, tmp_path, capsys):
    root, truth = shapes_dataset
    out = tmp_path / "out"
    assert masks(root, out, "--splits", "val") == 0
    assert "masks kinetics400: 1 clips (ok 1)" in capsys.readouterr().out
    run_dir = only_run(out)
    val = shard_bytes(run_dir)
    assert masks(root, out, "--splits", "train") == 0
    assert "shards: 2 of 3 selected, 2 computed" in capsys.readouterr().out
    assert only_run(out) == run_dir, "the split selection does not change the run folder"
    assert {name: data for name, data in shard_bytes(run_dir).items() if name in val} == val, "val untouched"
    assert sorted(read_clips(run_dir).column("clip_id").to_pylist()) == sorted(truth)


def test_a_limit_then_the_full_run_reuses_whole_shards(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    assert masks(root, tmp_path / "full") == 0
    assert masks(root, tmp_path / "out", "--limit", "1") == 0
    assert "masks kinetics400: 2 clips (ok 2)" in capsys.readouterr().out  # train-00000, whole
    assert masks(root, tmp_path / "out") == 0
    assert "shards: 3 of 3 selected, 2 computed, 1 already done" in capsys.readouterr().out
    assert shard_bytes(only_run(tmp_path / "out")) == shard_bytes(only_run(tmp_path / "full"))


def test_a_file_removed_from_a_folder_dataset_redoes_only_its_shard(tmp_path, capsys):
    root = tmp_path / "videos"
    for i, name in enumerate(("a", "b", "c", "d", "e", "f")):
        frames, _, _ = shape_clip(6, 48, 32, seed=i)
        write_video(root / ("jump" if i % 2 else "run") / f"{name}.mp4", frames, 12, lossless=True)
    argv = ["masks", "--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "out"), "--segmenter", LUMA,
            "--workers", "0", "--shard-size", "2"]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "out" / "masks" / "folder").iterdir()
    before = {row["clip_id"]: row["shard"] for row in read_clips(run_dir).to_pylist()}
    files = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("all-*")}
    (root / "jump" / "b.mp4").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "shards: 3 of 3 selected, 1 computed, 2 already done" in capsys.readouterr().out
    after = {row["clip_id"]: row["shard"] for row in read_clips(run_dir).to_pylist()}
    assert after == {clip: shard for clip, shard in before.items() if clip != "jump__b"}, "no clip moved shard"
    redone = before["jump__b"]
    assert {n: t for n, t in files.items() if not n.startswith(redone)} == \
           {p.name: p.stat().st_mtime_ns for p in run_dir.glob("all-*") if not p.name.startswith(redone)}


def test_weights_rewritten_in_place_make_a_new_run_folder(shapes_dataset, selfie_model, tmp_path, capsys):
    root, _ = shapes_dataset
    model = tmp_path / "weights" / "selfie.tflite"
    model.parent.mkdir()
    shutil.copy(selfie_model, model)
    argv = ["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(tmp_path / "out"),
            "--segmenter", "selfie", "--selfie-model", str(model), "--workers", "0", "--splits", "val"]
    assert main(argv) == 0
    first = only_run(tmp_path / "out")
    model.touch()  # a newer date, the same content: the same run, nothing recomputed
    assert main(argv) == 0 and "0 computed, 1 already done" in capsys.readouterr().out
    model.write_bytes(model.read_bytes() + b"\0" * 64)  # new content at the same path
    assert main(argv) == 0
    runs = sorted((tmp_path / "out" / "masks" / "kinetics400").iterdir())
    assert len(runs) == 2 and first in runs
    (second,) = set(runs) - {first}
    sha = {run: pq.read_schema(run / "val-00000.clips.parquet").metadata[b"segmenter.weights_sha256"] for run in runs}
    assert sha[first] != sha[second]


def test_masks_recomputed_then_render_and_manifests_follow(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert masks(root, out) == 0 and later(out, "render", "--variants", "bg") == 0
    assert later(out, "manifests") == 0
    run_dir = only_run(out)
    manifest = out / "manifests" / "kinetics400" / run_dir.name / "bg" / "manifest.parquet"
    coverage = {r["clip_id"]: r["person_coverage"] for r in pq.read_table(manifest).to_pylist()}
    capsys.readouterr()

    assert masks(root, out, "--overwrite") == 0  # the same bytes again: renders stay
    assert later(out, "render", "--variants", "bg") == 0
    assert "0 computed, 3 already done" in capsys.readouterr().out

    clip = "-clip1_x_000001_000011"  # its video is replaced: only its shard is redone, in both stages
    frames, _, _ = shape_clip(13, 96, 64, seed=7)
    write_video(root / "train" / f"{clip}.mp4", frames, 12, lossless=True)
    assert masks(root, out) == 0 and "1 computed, 2 already done" in capsys.readouterr().out
    assert later(out, "manifests") == 0  # before render: the render made from the old masks is not served
    summary = json.loads((manifest.parent / "manifest.json").read_text())
    assert summary["left_out"] == {"mp4": ["train-00001"]}
    assert clip not in (manifest.parent / "train_list_videos.txt").read_text()
    assert later(out, "render", "--variants", "bg") == 0 and "1 computed, 2 already done" in capsys.readouterr().out
    assert later(out, "manifests") == 0
    rows = {r["clip_id"]: r for r in pq.read_table(manifest).to_pylist()}
    assert rows[clip]["person_coverage"] != coverage[clip]
    assert {k: r["person_coverage"] for k, r in rows.items() if k != clip} == \
           {k: v for k, v in coverage.items() if k != clip}
    stats = json.loads((run_dir / f"{rows[clip]['masks_shard']}_stats.json").read_text())
    assert rows[clip]["masks_digest"] == stats["digest"], "each row names the masks it was rendered from"


def test_two_masks_runs_render_into_their_own_folders(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert masks(root, out) == 0
    first = only_run(out)
    assert later(out, "render", "--variants", "bg") == 0
    renders = out / "renders" / "kinetics400"
    first_files = {p: p.stat().st_mtime_ns for p in (renders / first.name).rglob("*.mp4")}
    assert masks(root, out, "--track-iou", "0.9", "--limit", "1") == 0  # a quick try with other settings
    (second,) = set((out / "masks" / "kinetics400").iterdir()) - {first}
    assert later(out, "render", "--variants", "bg") == 0  # the run started last
    assert sorted(p.name for p in renders.iterdir()) == sorted([first.name, second.name])
    assert len(list((renders / second.name).rglob("*.mp4"))) == 2
    assert {p: p.stat().st_mtime_ns for p in (renders / first.name).rglob("*.mp4")} == first_files
    assert later(out, "manifests", "--masks", first.name) == 0
    lines = (out / "manifests" / "kinetics400" / first.name / "bg" / "train_list_videos.txt").read_text()
    assert len(lines.splitlines()) == 4


def test_duplicate_and_conflicting_rows_never_stop_the_run(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    train = (root / "annotations" / "train.csv").read_text().splitlines()
    (root / "annotations" / "train.csv").write_text("\n".join(train + [train[1]]) + "\n")  # a row repeated
    assert train[2] == "\"juggling balls\",-clip1_x,1,11,train"
    with open(root / "annotations" / "val.csv", "a") as f:  # and listed again, in val, with another label
        f.write("\"passing American football (in game)\",-clip1_x,1,11,val\n")
    out = tmp_path / "out"
    assert masks(root, out) == 0
    printed = capsys.readouterr().out
    assert "masks kinetics400: 5 clips (conflict 1, ok 4)" in printed and "listing: 1 duplicate entries merged" in printed
    rows = {r["clip_id"]: r for r in read_clips(only_run(out)).to_pylist()}
    conflict = rows["-clip1_x_000001_000011"]
    assert conflict["status"] == "conflict" and conflict["split"] == "train" and conflict["label"] == "juggling balls"
    assert conflict["error"] == (f"listed twice: {root}/annotations/train.csv:3 (split train, label 'juggling balls') "
                                 f"and {root}/annotations/val.csv:3 (split val, label 'passing American football (in game)')")
    assert later(out, "render", "--variants", "bg") == 0 and later(out, "manifests") == 0
    folder = out / "manifests" / "kinetics400" / only_run(out).name / "bg"
    table = {r["clip_id"]: r for r in pq.read_table(folder / "manifest.parquet").to_pylist()}
    assert (table["-clip1_x_000001_000011"]["status"], table["-clip1_x_000001_000011"]["in_lists"]) == ("conflict", False)
    listed = (folder / "train_list_videos.txt").read_text() + (folder / "val_list_videos.txt").read_text()
    assert "-clip1_x" not in listed and len(listed.splitlines()) == 4


def truncated_mp4(path: Path, frames: np.ndarray, keep: float) -> None:
    """An mp4 with its index first (as downloaders write them), cut off part way: a truncated download."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=12, options={"qp": "0", "preset": "fast"})
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_clip_keeps_the_frames_that_decoded(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    frames, person, _ = shape_clip(40, 96, 64, seed=9)
    truncated_mp4(root / "val" / "-clip4_x_000004_000014.mp4", frames, 0.8)
    out = tmp_path / "out"
    assert masks(root, out, "--splits", "val") == 0
    (row,) = read_clips(only_run(out)).to_pylist()
    assert row["status"] == "partial" and 0 < row["frames"] < 40
    assert row["error"].startswith(f"decoded {row['frames']} frames, then: ") and "-clip4_x" in row["error"]
    assert later(out, "render", "--variants", "bg") == 0 and later(out, "manifests") == 0
    folder = out / "manifests" / "kinetics400" / only_run(out).name / "bg"
    (manifest,) = pq.read_table(folder / "manifest.parquet").to_pylist()
    assert (manifest["status"], manifest["in_lists"], manifest["frames"]) == ("partial", True, row["frames"])
    assert manifest["error"] == row["error"]
    assert (folder / "val_list_videos.txt").read_text().split() == [manifest["path"], str(manifest["label_index"])]


def test_reading_a_run_refuses_a_clip_in_two_shards(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    assert masks(root, tmp_path / "out") == 0
    run_dir = only_run(tmp_path / "out")
    for suffix in (".parquet", ".clips.parquet", "_stats.json"):  # a shard copied by hand under another name
        shutil.copy(run_dir / f"train-00000{suffix}", run_dir / f"train-00099{suffix}")
    plan = json.loads((run_dir / "plan.json").read_text())
    (run_dir / "plan.json").write_text(json.dumps(plan | {"train-00099": plan["train-00000"]}))
    with pytest.raises(InputError, match="is in two shards .train-00000 and train-00099."):
        read_clips(run_dir)


def test_lists_never_outlive_their_renders(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert masks(root, out) == 0 and later(out, "render", "--variants", "bg") == 0 and later(out, "manifests") == 0
    folder = out / "manifests" / "kinetics400" / only_run(out).name / "bg"
    assert len((folder / "val_list_videos.txt").read_text().splitlines()) == 1
    # other encoder settings, tried on the first shard only: the rest are no longer current
    assert later(out, "render", "--variants", "bg", "--crf", "30", "--limit", "1") == 0
    assert later(out, "manifests") == 0
    assert not (folder / "val_list_videos.txt").exists() and not (folder / "val.csv").exists(), "a trainer fails loudly"
    assert len((folder / "train_list_videos.txt").read_text().splitlines()) == 2  # train-00000's clips
    assert json.loads((folder / "manifest.json").read_text())["left_out"] == {"mp4": ["train-00001", "val-00000"]}
    (folder / "mine.csv").write_text("a file of the user's\n")
    assert later(out, "render", "--variants", "bg", "--crf", "30") == 0 and later(out, "manifests") == 0
    assert len((folder / "val_list_videos.txt").read_text().splitlines()) == 1 and (folder / "mine.csv").exists()


def test_weights_count_by_content_not_path(shapes_dataset, tmp_path):
    from pipeline.segment import RefineSpec, SegmenterSpec
    from tests.test_masks_stage import config

    root, _ = shapes_dataset
    weights, sam = tmp_path / "a" / "yolo-seg.pt", tmp_path / "sam.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"weights v1")
    sam.write_bytes(b"sam v1")
    spec = SegmenterSpec(backend="yolo", model=str(weights), refine=RefineSpec(checkpoint=str(sam)))
    first = config(root, tmp_path, segmenter=spec).fingerprint()
    moved = tmp_path / "b" / "yolo-seg.pt"
    moved.parent.mkdir()
    moved.write_bytes(b"weights v1")
    assert config(root, tmp_path, segmenter=SegmenterSpec(backend="yolo", model=str(moved), refine=spec.refine)
                  ).fingerprint() == first, "the same weights elsewhere"
    weights.write_bytes(b"weights v2.0")  # (a process hashes a file once per path, size and mtime)
    assert config(root, tmp_path, segmenter=spec).fingerprint() != first, "YOLO weights rewritten in place"
    weights.write_bytes(b"weights v1")
    sam.write_bytes(b"sam v2.0")
    assert config(root, tmp_path, segmenter=spec).fingerprint() != first, "SAM checkpoint rewritten in place"
