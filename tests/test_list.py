"""`list`: the masks stage's listing as a dry run. It says what a run would process and writes nothing."""

import json
import os
from pathlib import Path

from pipeline.cli import main
from pipeline.datasets.sample import DONE_MARKER
from tests.conftest import LUMA, write_kinetics_csv


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folders`: path → (size, mtime in ns)."""
    seen = {}
    for folder in folders:
        for directory, subdirs, files in os.walk(folder):
            for name in [*subdirs, *files]:
                stat = os.stat(os.path.join(directory, name))
                seen[os.path.join(directory, name)] = (stat.st_size, stat.st_mtime_ns)
    return seen


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")


def test_list_prints_counts_classes_repeats_conflicts_missing_and_shards_and_writes_nothing(tmp_path, capsys):
    root, out = tmp_path / "k400", tmp_path / "out"
    train = [("zumba" if i % 2 else "abseiling", f"t{i}", i, i + 10) for i in range(40)]
    train += [train[3], ("juggling balls", "t5", 5, 15)]  # a word-for-word repeat (merged), a conflict (line 43)
    write_kinetics_csv(root, "train", train)
    write_kinetics_csv(root, "val", [("abseiling", f"v{i}", i, i + 10) for i in range(9)])
    write_kinetics_csv(root, "test", [(None, "u1", 0, 10)])
    for i in range(40):
        if i not in (7, 8):  # two missing train clips (and every val and test clip)
            touch(root / "train" / f"t{i}_{i:06d}_{i + 10:06d}.mp4")
    out.mkdir()
    before = snapshot(root, out)
    argv = ["list", "--dataset", "kinetics400", "--root", str(root), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    annotations = root / "annotations"
    assert printed[:8] == [
        f"list kinetics400 ({root}): 50 clips in 3 splits",
        "  test: 1 clip (1 unlabelled), 1 shard",
        "  train: 40 clips, 2 shards",  # 32 clips per shard: ceil(40 / 32)
        "  val: 9 clips, 1 shard",
        "  classes: 3 (0 abseiling … 2 zumba)",
        "  duplicate entries merged: 1",
        "  conflicts (listed twice; not processed): 1",
        f"    t5_000005_000015: listed twice: {annotations}/train.csv:7 (split train, label 'zumba') and "
        f"{annotations}/train.csv:43 (split train, label 'juggling balls')",
    ]
    assert printed[8:] == [
        "  missing files (listed, not on disk; recorded as `missing`): 12",
        f"    t7_000007_000017: {root}/train/t7_000007_000017.mp4 (listed at {annotations}/train.csv:9)",
        f"    t8_000008_000018: {root}/train/t8_000008_000018.mp4 (listed at {annotations}/train.csv:10)",
        f"    u1_000000_000010: {root}/test/u1_000000_000010.mp4 (listed at {annotations}/test.csv:2)",
        f"    v0_000000_000010: {root}/val/v0_000000_000010.mp4 (listed at {annotations}/val.csv:2)",
        f"    v1_000001_000011: {root}/val/v1_000001_000011.mp4 (listed at {annotations}/val.csv:3)",
        "    … and 7 more",
        "  shards: 4 in a new run folder (32 clips per shard)",
    ]
    assert main(argv + ["--splits", "val,test", "--shard-size", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  shards: 14 in a new run folder (4 clips per shard); " \
                                                       "SPLITS=val,test runs 4 of them"
    assert snapshot(root, out) == before  # nothing written, not even in the output folder


def test_list_plans_the_shards_masks_lays_out(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    flags = ["--dataset", "kinetics400", "--root", str(root), "--out", str(tmp_path), "--shard-size", "2"]
    assert main(["list", *flags]) == 0
    printed = capsys.readouterr().out
    assert "  train: 4 clips, 2 shards\n  val: 1 clip, 1 shard\n" in printed
    assert "  missing files (listed, not on disk; recorded as `missing`): 0\n" in printed
    assert not (tmp_path / "masks").exists()
    assert main(["masks", *flags, "--segmenter", LUMA, "--workers", "0"]) == 0
    (layout,) = (tmp_path / "masks" / "kinetics400").glob("*/layout.json")
    assert json.loads(layout.read_text())["buckets"] == {"train": 2, "val": 1}


def test_list_does_not_generate_the_sample_but_lists_one_that_is_there(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["list", "--dataset", "sample", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out}/data/sample: no sample dataset there yet; `make masks DATASET=sample` generates it"
    assert not out.exists()
    sample = out / "data" / "sample"  # a stand-in: the reader is Kinetics', the marker says it is complete
    write_kinetics_csv(sample, "train", [("waving", "s1", 0, 10), ("waving", "s2", 0, 10)])
    touch(sample / "train" / "s1_000000_000010.mp4")
    assert main(["list", "--dataset", "sample", "--out", str(out)]) == 2  # incomplete: masks would remake it
    capsys.readouterr()
    (sample / DONE_MARKER).touch()
    before = snapshot(out)
    assert main(["list", "--dataset", "sample", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"list sample ({sample}): 2 clips in 1 split\n  train: 2 clips, 1 shard\n" in printed
    assert "  classes: 1 (0 waving)\n" in printed and "shards: 1 in a new run folder (4 clips per shard)" in printed
    assert snapshot(out) == before


def test_a_list_file_of_label_indices(tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 3\nb.mp4 7 val\n")
    assert main(["list", "--dataset", "list", "--root", str(listing), "--out", str(tmp_path)]) == 0
    assert "  classes: no names; the labels are indices 3 … 7\n" in capsys.readouterr().out


def test_list_refuses_bad_input_in_one_line(tmp_path, capsys):
    root = tmp_path / "k"
    write_kinetics_csv(root, "train", [("a", "x", 0, 10)])
    for argv, message in [
        (["--dataset", "kinetcs400"], "argument --dataset: unknown dataset 'kinetcs400'; known: sample, kinetics400"),
        (["--dataset", "kinetics400"], "needs DATA_ROOT=/path/to/kinetics400 (--root)"),
        (["--dataset", "kinetics400", "--root", str(root), "--splits", "train,vall"],
         "kinetics400: no split(s) vall; the dataset has train (--splits)"),
        (["--dataset", "kinetics400", "--root", str(root), "--shard-size", "0"], "--shard-size: must be at least 1"),
    ]:
        assert main(["list", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
