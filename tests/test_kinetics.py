from pathlib import Path

import pytest

from pipeline.datasets import DatasetError, list_clips
from tests.conftest import write_kinetics_csv


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def kinetics(root: Path, splits=None, name="kinetics400"):
    return list_clips(name, root, root, splits)


def test_cvdf_layout_labels_splits_and_missing_files(tmp_path):
    write_kinetics_csv(tmp_path, "train", [("zumba", "-abc_def", 5, 15), ("abseiling", "xyz", 0, 10)])
    write_kinetics_csv(tmp_path, "val", [("passing American football (in game)", "q1", 30, 40)])
    write_kinetics_csv(tmp_path, "test", [(None, "t1", 1, 11)])
    touch(tmp_path / "train" / "-abc_def_000005_000015.mp4")
    touch(tmp_path / "train" / "nested" / "xyz_000000_000010.mkv")  # other containers, nested folders
    listing = kinetics(tmp_path)
    clips = {c.clip_id: c for c in listing.clips}
    assert set(clips) == {"-abc_def_000005_000015", "xyz_000000_000010", "q1_000030_000040", "t1_000001_000011"}
    assert clips["xyz_000000_000010"].path == str(tmp_path / "train" / "nested" / "xyz_000000_000010.mkv")
    assert clips["q1_000030_000040"].path == str(tmp_path / "val" / "q1_000030_000040.mp4")  # listed, not on disk
    # label index = position in the sorted class names
    assert {c.label: c.label_index for c in clips.values()} == {
        "abseiling": 0, "passing American football (in game)": 1, "zumba": 2, None: None,
    }
    assert listing.classes == ("abseiling", "passing American football (in game)", "zumba")
    assert clips["t1_000001_000011"].split == "test"
    assert [c.split for c in kinetics(tmp_path, ("val",)).clips] == ["val"]
    with pytest.raises(DatasetError, match="no clips in split.*validation.*has: test, train, val"):
        kinetics(tmp_path, ("validation",))


def test_kinetics700_validate_csv_and_unlabelled_test_csv(tmp_path):
    """K600/700 copies name the val file validate.csv, and their test CSV has no label column."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n\"tying necktie\",v1,3,13,validate\n")
    (tmp_path / "annotations" / "test.csv").write_text("youtube_id,time_start,time_end,split\nt9,0,10,test\n")
    clips = kinetics(tmp_path, name="kinetics700").clips
    assert [(c.clip_id, c.split, c.label, c.label_index) for c in clips] == [
        ("t9_000000_000010", "test", None, None), ("v1_000003_000013", "val", "tying necktie", 0)]


def test_class_folder_layout(tmp_path):
    touch(tmp_path / "train" / "riding a bike" / "b.mp4")
    touch(tmp_path / "train" / "abseiling" / "a.mp4")
    touch(tmp_path / "val" / "abseiling" / "c.webm")
    touch(tmp_path / "val" / "abseiling" / "notes.txt")
    clips = kinetics(tmp_path).clips
    assert [(c.clip_id, c.split, c.label, c.label_index) for c in clips] == [
        ("a", "train", "abseiling", 0), ("b", "train", "riding a bike", 1), ("c", "val", "abseiling", 0),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("label,youtube_id,time_end\nx,a,1\n", r"train.csv:1: header lacks \['time_start'\]"),
        ("label,youtube_id,time_start,time_end,split\nx,a,0,10,train\ny,b,zero,10,train\n", r"train.csv:3: time_start"),
        ("label,youtube_id,time_start,time_end,split\nx,../up,0,10,train\n", r"train.csv:2: bad youtube_id"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, content, message):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        kinetics(tmp_path)


def test_bad_roots_and_names(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        kinetics(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no clips found"):
        kinetics(tmp_path)
    with pytest.raises(DatasetError, match="needs DATA_ROOT"):
        list_clips("kinetics400", None, tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'k401'"):
        list_clips("k401", tmp_path, tmp_path)


def test_a_clip_in_two_splits_is_kept_once_as_a_conflict(tmp_path):
    write_kinetics_csv(tmp_path, "train", [("a", "dup", 0, 10)])
    write_kinetics_csv(tmp_path, "val", [("a", "dup", 0, 10)])
    listing = kinetics(tmp_path)
    [clip] = listing.clips
    annotations = tmp_path / "annotations"
    assert (clip.clip_id, clip.split, clip.label, clip.source) == (
        "dup_000000_000010", "train", "a", f"{annotations}/train.csv:2")
    assert clip.conflict == (f"listed twice: {annotations}/train.csv:2 (split train, label 'a') and "
                             f"{annotations}/val.csv:2 (split val, label 'a')")
    assert listing.skipped == {}
    assert kinetics(tmp_path, ("train",)).clips == [clip]
    with pytest.raises(DatasetError, match="no clips in split.*val.*has: train, val"):
        kinetics(tmp_path, ("val",))  # the kept entry's split decides
