"""Official class lists without a download: Kinetics-400's from torchvision, for Mimetics and Kinetics-400 subsets."""

from __future__ import annotations

import logging
import socket

import pytest

from pipeline.cli import main
from pipeline.datasets import DatasetError
from pipeline.datasets.classes import _kinetics400, official_classes
from tests.conftest import LUMA, write_kinetics_csv
from tests.test_datasets import by_id, listing, mimetics_tree, ucf101_tree
from tests.test_kinetics import touch


@pytest.fixture(scope="module")
def k400() -> list[str]:
    from torchvision.models.video import R3D_18_Weights

    return list(R3D_18_Weights.DEFAULT.meta["categories"])


def test_kinetics400_list_comes_from_torchvision_without_the_network(k400, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the official class list must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    _kinetics400.cache_clear()
    classes = official_classes("kinetics400")
    assert classes == tuple(k400) and len(classes) == 400 and list(classes) == sorted(classes)
    assert official_classes("kinetics600") is None and official_classes("kinetics700") is None


def test_mimetics_without_a_class_list_takes_official_kinetics400_indices(tmp_path, k400, caplog):
    mimetics_tree(tmp_path / "mimetics")
    with caplog.at_level(logging.INFO, logger="pipeline.datasets.mimetics"):
        result = listing("mimetics", tmp_path / "mimetics")
    assert "official Kinetics-400 class list" in caplog.text
    clips = by_id(result)
    assert result.classes == tuple(k400)
    assert clips["-aB3_x_000012_000022"].label_index == k400.index("punching person (boxing)")
    assert clips["zz9_000000_000010"].label_index == k400.index("reading book")
    assert clips["Qq1_000005_000015"].meta == {"mimetics_index": 0}  # the local index is unchanged
    (tmp_path / "mimetics" / "mimetics_v1.0.csv").write_text("label,youtube_id,time_start,time_end\nmiming,a,0,1\n")
    with pytest.raises(DatasetError, match=r"mimetics_v1.0.csv:2: label 'miming' is not in the official Kinetics-400 "
                                           r"class list \(torchvision\); pass the model's class list as CLASS_LIST"):
        listing("mimetics", tmp_path / "mimetics")


def test_kinetics400_subset_keeps_official_indices_and_all_classes(tmp_path, k400):
    write_kinetics_csv(tmp_path, "train", [("zumba", "z1", 5, 15), ("juggling balls", "j1", 0, 10)])
    write_kinetics_csv(tmp_path, "val", [("abseiling", "a1", 30, 40)])
    write_kinetics_csv(tmp_path, "test", [(None, "t1", 1, 11)])
    assert {c.clip_id: c.label_index for c in listing("kinetics400", tmp_path).clips} == {
        "a1_000030_000040": 0, "j1_000000_000010": 1, "z1_000005_000015": 2, "t1_000001_000011": None}
    official = listing("kinetics400", tmp_path, official_indices=True)
    assert official.classes == tuple(k400)
    assert {c.clip_id: c.label_index for c in official.clips} == {
        "a1_000030_000040": k400.index("abseiling"), "j1_000000_000010": k400.index("juggling balls"),
        "z1_000005_000015": k400.index("zumba"), "t1_000001_000011": None}
    assert k400.index("abseiling") == 0 and k400.index("zumba") == 399  # the sorted order the list carries


def test_kinetics400_class_folders_with_official_indices(tmp_path, k400):
    touch(tmp_path / "train" / "playing bass guitar" / "v1.mp4")
    touch(tmp_path / "val" / "reading book" / "v2.mp4")
    clips = by_id(listing("kinetics400", tmp_path, official_indices=True))
    assert clips["v1"].label_index == k400.index("playing bass guitar")
    assert clips["v2"].label_index == k400.index("reading book")
    touch(tmp_path / "val" / "reading books" / "v3.mp4")
    with pytest.raises(DatasetError, match=r"val/reading books/v3.mp4: label 'reading books' is not in the official"):
        listing("kinetics400", tmp_path, official_indices=True)


def test_unknown_label_with_official_indices_names_file_and_line(tmp_path):
    write_kinetics_csv(tmp_path, "train", [("zumba", "z1", 5, 15), ("Zumba dancing", "z2", 0, 10)])
    with pytest.raises(DatasetError, match=r"annotations/train.csv:3: label 'Zumba dancing' is not in the official "
                                           r"kinetics400 class list \(torchvision\); correct the label, or drop "
                                           r"OFFICIAL_INDICES=1"):
        listing("kinetics400", tmp_path, official_indices=True)


@pytest.mark.parametrize("name, hint", [("ucf101", "drop it for ucf101$"),
                                        ("kinetics600", "sorted labels listed"),
                                        ("mimetics", "Kinetics-400's official indices already"),
                                        ("sample", "drop it for sample$")])
def test_official_indices_elsewhere_is_a_clear_error(name, hint, tmp_path):
    ucf101_tree(tmp_path / "ucf101")
    with pytest.raises(DatasetError, match=rf"^{name}: OFFICIAL_INDICES=1 \(--official-indices\) needs an official "
                                           rf"class list available offline, which only kinetics400 has; .*{hint}"):
        listing(name, tmp_path / name, official_indices=True)


def test_cli_official_indices_error_is_one_line(tmp_path, capsys):
    ucf101_tree(tmp_path / "ucf101")
    argv = ["masks", "--dataset", "ucf101", "--root", str(tmp_path / "ucf101"), "--official-indices",
            "--out", str(tmp_path / "out"), "--workers", "0", "--segmenter", LUMA]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "ucf101: OFFICIAL_INDICES=1 (--official-indices) needs an official class list" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out" / "masks").exists()


def test_cli_official_indices_redo_the_masks_and_give_a_400_line_label_map(shapes_dataset, tmp_path, capsys, k400):
    """Label indices are part of each clip's identity: switching OFFICIAL_INDICES on redoes every shard whose
    clips change index (here all), in the same run folder, and the later stages see the new indices."""
    root, _ = shapes_dataset
    out = tmp_path / "out"
    masks = ["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(out), "--workers", "0",
             "--segmenter", LUMA]
    assert main(masks) == 0
    capsys.readouterr()
    assert main([*masks, "--official-indices"]) == 0
    assert "shards: 2 of 2 selected, 2 computed, 0 already done" in capsys.readouterr().out
    assert main([*masks, "--official-indices"]) == 0
    assert "shards: 2 of 2 selected, 0 computed, 2 already done" in capsys.readouterr().out
    assert len(list((out / "masks" / "kinetics400").iterdir())) == 1  # one run folder: indices are per clip
    common = ["--dataset", "kinetics400", "--out", str(out)]
    assert main(["render", *common, "--variants", "bg", "--workers", "0"]) == 0
    assert main(["manifests", *common]) == 0
    (manifests,) = (out / "manifests" / "kinetics400").glob("*/bg")
    assert (manifests / "label_map.txt").read_text().splitlines() == k400
    (val_line,) = (manifests / "val_list_videos.txt").read_text().splitlines()
    assert val_line.split()[-1] == str(k400.index("passing American football (in game)"))
