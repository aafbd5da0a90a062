"""The generic readers (class folders, list files), safe clip ids, and dataset output names."""

from __future__ import annotations

import pytest

from pipeline.datasets import DatasetError, output_name
from pipeline.datasets.common import safe_id
from tests.test_datasets import by_id, listing
from tests.test_kinetics import touch


@pytest.mark.parametrize("text, want", [
    ("-abc_def_000005_000015", "-abc_def_000005_000015"),  # Kinetics ids stay as they are
    ("v_HandStandPushups_g01_c01", "v_HandStandPushups_g01_c01"),
    ("Blonde (hair) brushing", "Blonde_hair_brushing"),
    ("a/b\\c:d", "a_b_c_d"),
    ("..", "_"), ("a..b", "a_b"), (".hidden", "_hidden"), ("", "_"),
    ("CON", "CON_"), ("nul.tar", "nul.tar_"), ("console", "console"),
])
def test_safe_id(text, want):
    assert safe_id(text) == want


def test_folder_with_split_folders_any_container_and_nested_names(tmp_path):
    touch(tmp_path / "train" / "riding a bike" / "001.mp4")
    touch(tmp_path / "train" / "abseiling" / "001.mkv")  # same stem, other class: ids stay unique
    touch(tmp_path / "train" / "abseiling" / "cliff" / "x (2).MOV")
    touch(tmp_path / "validation" / "abseiling" / "v.webm")
    touch(tmp_path / "validation" / "abseiling" / "readme.txt")
    result = listing("folder", tmp_path)
    assert result.classes == ("abseiling", "riding a bike")
    assert [(c.clip_id, c.split, c.label, c.label_index) for c in result.clips] == [
        ("abseiling__001", "train", "abseiling", 0),
        ("abseiling__cliff__x_2_", "train", "abseiling", 0),
        ("abseiling__v", "validation", "abseiling", 0),
        ("riding_a_bike__001", "train", "riding a bike", 1),
    ]
    assert by_id(result)["abseiling__cliff__x_2_"].path == str(tmp_path / "train" / "abseiling" / "cliff" / "x (2).MOV")


def test_folder_of_class_folders_and_its_errors(tmp_path):
    touch(tmp_path / "jump" / "a.avi")
    touch(tmp_path / "run" / "b.mp4")
    touch(tmp_path / "loose.mp4")
    result = listing("folder", tmp_path)
    assert [(c.clip_id, c.split, c.label_index) for c in result.clips] == [("jump__a", "all", 0), ("run__b", "all", 1)]
    assert result.skipped == {"videos outside class folders": 1}
    touch(tmp_path / "test" / "jump" / "c.mp4")
    with pytest.raises(DatasetError, match=r"mixes split folders \(test\) with class folders \(jump, run\)"):
        listing("folder", tmp_path)
    with pytest.raises(DatasetError, match="video folder not found"):
        listing("folder", tmp_path / "nope")


def test_list_file_space_separated_with_quotes_comments_and_splits(tmp_path):
    (tmp_path / "lists").mkdir()
    videos = tmp_path / "lists"
    listed = videos / "clips.txt"
    listed.write_text(
        "# path label [split]\n"
        'a/one.mp4 "riding a bike" train\n'
        "\n"
        "a/two.mp4 abseiling val  # trailing comment\n"
        f"{tmp_path}/elsewhere/three.mp4 abseiling\n")
    result = listing("list", listed)
    assert result.classes == ("abseiling", "riding a bike")
    got = [(c.clip_id, c.split, c.label, c.label_index, c.path) for c in result.clips]
    assert got == [
        ("a__one", "train", "riding a bike", 1, str(videos / "a" / "one.mp4")),
        ("a__two", "val", "abseiling", 0, str(videos / "a" / "two.mp4")),
        (f"{'__'.join(tmp_path.parts[1:])}__elsewhere__three", "all", "abseiling", 0,
         str(tmp_path / "elsewhere" / "three.mp4")),
    ]
    base = tmp_path / "media"
    assert listing("list", listed, videos=base).clips[0].path == str(base / "a" / "one.mp4")


def test_list_csv_with_header_and_mmaction_integer_labels(tmp_path):
    listed = tmp_path / "clips.csv"
    listed.write_text('path,label,split\nx.mp4,"pushing, then pulling",train\ny.mp4,waving,test\n')
    assert [(c.clip_id, c.label, c.label_index) for c in listing("list", listed).clips] == [
        ("x", "pushing, then pulling", 0), ("y", "waving", 1)]
    mmaction = tmp_path / "train_list_videos.txt"
    mmaction.write_text("x.mp4 7\ny.mp4 0\n")
    result = listing("list", mmaction)
    assert [(c.clip_id, c.label_index) for c in result.clips] == [("x", 7), ("y", 0)] and result.classes == ()


@pytest.mark.parametrize("content, message", [
    ("a.mp4 x\nb.mp4\n", r"clips.txt:2: expected `path label \[split\]`, got 1 field"),
    ("a.mp4 x train extra\n", r"clips.txt:1: expected `path label \[split\]`, got 4 field"),
    ('a.mp4 "unclosed\n', r"clips.txt:1: No closing quotation"),
    ("../up.mp4 x\n", r"clips.txt:1: '../up.mp4' climbs out of the base folder"),
    ("a.mp4 x ../../etc\n", r"split name '../../etc' is not safe"),
    ("a b.mp4 x\n", r"clips.txt:1: label 'b.mp4' looks like a video file; quote paths"),
    ("# nothing\n", r"the list is empty"),
])
def test_list_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / "clips.txt").write_text(content)
    with pytest.raises(DatasetError, match=message):
        listing("list", tmp_path / "clips.txt")


def test_list_ids_that_differ_only_in_case_are_a_conflict(tmp_path):
    listed = tmp_path / "clips.txt"
    listed.write_text("a.mp4 x\nb.mkv z\nA.mp4 y\n")
    result = listing("list", listed)
    assert [(c.clip_id, c.label, c.source) for c in result.clips] == [
        ("a", "x", f"{listed}:1"), ("b", "z", f"{listed}:2")]
    assert result.clips[0].conflict == (f"listed twice: {listed}:1 (id 'a', split all, label 'x') and "
                                        f"{listed}:3 (id 'A', split all, label 'y')")
    assert result.clips[1].conflict is None and result.skipped == {}


def test_output_names_carry_the_split_id():
    assert output_name("ucf101") == "ucf101-split1" and output_name("hmdb51", 3) == "hmdb51-split3"
    assert output_name("kinetics400") == "kinetics400" and output_name("my-renamed-copy") == "my-renamed-copy"
    with pytest.raises(DatasetError, match="kinetics400 has no official alternative splits"):
        output_name("kinetics400", 2)
