"""New dataset formats through every stage: real (tiny) videos in the official layouts, masks → render → manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.cli import main
from pipeline.datasets.sample import shape_clip, write_video
from tests.conftest import LUMA
from tests.test_datasets import ssv2_tree, ucf101_tree


def replace_with_videos(root: Path, suffix: str, **codec) -> int:
    """Turn every empty placeholder video under `root` into a real lossless shape clip; returns how many."""
    placeholders = sorted(p for p in root.rglob(f"*{suffix}") if p.stat().st_size == 0)
    for seed, path in enumerate(placeholders):
        frames, _, _ = shape_clip(8 + seed, 96, 64, seed=seed)
        path.unlink()
        write_video(path, frames, 12, lossless=True, **codec)
    return len(placeholders)


def run_stages(argv_dataset: list[str], out: Path, masks_extra: list[str]) -> None:
    common = ["--out", str(out), "--workers", "0"]
    assert main(["masks", *argv_dataset, *masks_extra, "--segmenter", LUMA, *common]) == 0
    assert main(["render", *argv_dataset, "--variants", "bg", *common]) == 0
    assert main(["manifests", *argv_dataset, "--out", str(out)]) == 0


def test_ucf101_split2_lands_in_its_own_folders_with_classind_label_map(tmp_path, capsys):
    root = tmp_path / "ucf101"
    ucf101_tree(root)
    assert replace_with_videos(root / "UCF-101", ".avi") == 6
    out = tmp_path / "out"
    run_stages(["--dataset", "ucf101", "--split-id", "2"], out, ["--root", str(root)])
    assert "masks ucf101-split2: 6 clips (ok 6)" in capsys.readouterr().out
    assert [p.name for p in (out / "masks").iterdir()] == ["ucf101-split2"]
    (tag,) = [p.name for p in (out / "masks" / "ucf101-split2").iterdir()]
    manifests = out / "manifests" / "ucf101-split2" / tag / "bg"
    assert (manifests / "label_map.txt").read_text().splitlines() == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    test_list = [line.split() for line in (manifests / "test_list_videos.txt").read_text().splitlines()]
    assert test_list == [["test/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.mp4", "0"],
                         ["test/HandstandPushups/v_HandStandPushups_g09_c03.mp4", "1"],
                         ["test/YoYo/v_YoYo_g10_c04.mp4", "2"]]
    renders = out / "renders" / "ucf101-split2" / tag / "bg"
    assert all((renders / path).stat().st_size > 0 for path, _ in test_list)
    rows = {r["clip_id"]: r for r in pq.read_table(manifests / "manifest.parquet").to_pylist()}
    assert json.loads(rows["v_YoYo_g10_c04"]["meta"]) == {"group": 10, "clip": 4}
    # the other stages find the split's folders from the same flags; split 1 has no masks yet
    assert main(["render", "--dataset", "ucf101", "--out", str(out), "--workers", "0"]) == 2
    assert "masks/ucf101-split1: no masks yet; run `make masks DATASET=ucf101 SPLIT_ID=1` first" in capsys.readouterr().err


def test_ssv2_webm_keeps_template_placeholders_and_label_text(tmp_path):
    root = tmp_path / "ssv2"
    ssv2_tree(root)
    assert replace_with_videos(root, ".webm", codec="libvpx-vp9") == 3  # VP9 webm, as SSv2 ships
    shutil.copy(root / "20bn-something-something-v2" / "78687.webm", root / "20bn-something-something-v2" / "42326.webm")
    out = tmp_path / "out"
    run_stages(["--dataset", "ssv2"], out, ["--root", str(root)])
    (manifests,) = (out / "manifests" / "ssv2").glob("*/bg")
    rows = {r["clip_id"]: r for r in pq.read_table(manifests / "manifest.parquet").to_pylist()}
    assert {k: (r["split"], r["status"]) for k, r in rows.items()} == {
        "78687": ("train", "ok"), "42326": ("train", "ok"), "24746": ("val", "ok"), "1420": ("test", "ok")}
    held = rows["78687"]
    assert held["label"] == "Holding something next to something" and held["label_index"] == 1
    assert held["path"] == "train/Holding_something_next_to_something/78687.mp4"  # sanitised in paths only
    assert json.loads(held["meta"])["placeholders"] == ["potato", "vicks vaporub bottle"]
    assert (manifests / "label_map.txt").read_text().splitlines()[1] == "Holding something next to something"
    assert (manifests / "test_list_videos.txt").read_text() == "test/_unlabelled/1420.mp4 -1\n"


def test_relabelled_clips_are_recomputed_and_rerendered_the_rest_skipped(tmp_path, capsys):
    """Annotations change (a fixed label, another class list): shards holding a changed clip are not done."""
    videos = tmp_path / "videos"
    for name in ("a", "b", "c", "d"):
        (videos / f"{name}.mp4").parent.mkdir(parents=True, exist_ok=True)
        (videos / f"{name}.mp4").touch()
    replace_with_videos(videos, ".mp4")
    listed = videos / "clips.txt"
    listed.write_text("a.mp4 jump train\nb.mp4 jump train\nc.mp4 run train\nd.mp4 run val\n")
    out, masks_flags = tmp_path / "out", ["--root", str(listed), "--shard-size", "2"]
    run_stages(["--dataset", "list"], out, masks_flags)
    capsys.readouterr()
    listed.write_text("a.mp4 jump train\nb.mp4 jump train\nc.mp4 run train\nd.mp4 walk val\n")  # d relabelled
    run_stages(["--dataset", "list"], out, masks_flags)
    printed = capsys.readouterr().out
    # a, b, c hash into one of train's 2 shards (the other is empty), d into val's one; only d's shard is
    # redone, in masks and in render
    assert "masks list: 4 clips (ok 4)" in printed and "render bg: 4 clips (ok 4)" in printed
    assert printed.count("shards: 2 of 2 selected, 1 computed, 1 already done") == 2, printed
    (manifests,) = (out / "manifests" / "list").glob("*/bg")
    assert (manifests / "val_list_videos.txt").read_text() == "val/walk/d.mp4 2\n"
    assert (manifests / "label_map.txt").read_text().splitlines() == ["jump", "run", "walk"]
    assert (manifests / "train_list_videos.txt").read_text().splitlines() == ["train/jump/a.mp4 0", "train/jump/b.mp4 0",
                                                                               "train/run/c.mp4 1"]
