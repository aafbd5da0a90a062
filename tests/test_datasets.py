"""Dataset readers on tiny trees in each official format, with the real quirks, through `list_clips`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.datasets import DatasetError, ReaderOptions, list_clips
from tests.test_kinetics import touch


def listing(name: str, root: Path, splits=None, **options):
    return list_clips(name, root, root, splits, ReaderOptions(**options))


def by_id(result) -> dict:
    return {clip.clip_id: clip for clip in result.clips}


# --- Something-Something v2 ---------------------------------------------------------------------------------------

SSV2_LABELS = {"Putting something on a surface": "0", "Holding something next to something": "1",
               "Pretending to pick something up": "2"}


def ssv2_tree(root: Path, *, prefix: str = "", folder: str = "labels") -> Path:
    labels = root / folder
    labels.mkdir(parents=True, exist_ok=True)
    (labels / f"{prefix}labels.json").write_text(json.dumps(SSV2_LABELS, indent=1))
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
             {"id": "42326", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
              "placeholders": ["a cup"]}]
    (labels / f"{prefix}train.json").write_text(json.dumps(train, indent=4))  # pretty-printed, as released
    validation = [{"id": "24746", "label": "pretending to pick a pen up", "template": "Pretending to pick [something] up",
                   "placeholders": ["a pen"]}]
    (labels / f"{prefix}validation.json").write_text(json.dumps(validation))  # one line
    (labels / f"{prefix}test.json").write_text(json.dumps([{"id": "1420"}]))
    for clip_id in ("78687", "24746", "1420"):  # 42326 is missing on disk
        touch(root / "20bn-something-something-v2" / f"{clip_id}.webm")
    return labels


def test_ssv2_labels_splits_placeholders_and_missing_videos(tmp_path):
    ssv2_tree(tmp_path)
    result = listing("ssv2", tmp_path)
    clips = by_id(result)
    assert result.classes == ("Putting something on a surface", "Holding something next to something",
                              "Pretending to pick something up")
    held = clips["78687"]
    assert (held.split, held.label, held.label_index) == ("train", "Holding something next to something", 1)
    assert held.meta == {"template": "Holding [something] next to [something]",
                         "placeholders": ["potato", "vicks vaporub bottle"],
                         "caption": "holding potato next to vicks vaporub bottle"}
    assert held.path == str(tmp_path / "20bn-something-something-v2" / "78687.webm")
    assert clips["42326"].path == str(tmp_path / "20bn-something-something-v2" / "42326.webm")  # status row later
    assert (clips["24746"].split, clips["24746"].label_index) == ("val", 2)
    assert (clips["1420"].split, clips["1420"].label, clips["1420"].label_index) == ("test", None, None)


def test_ssv2_other_copies_file_names_and_video_folder(tmp_path):
    ssv2_tree(tmp_path, prefix="something-something-v2-", folder=".")
    videos = tmp_path / "webm"
    (tmp_path / "20bn-something-something-v2").rename(videos)
    clips = by_id(listing("ssv2", tmp_path, videos=videos))
    assert clips["78687"].path == str(videos / "78687.webm") and len(clips) == 4
    with pytest.raises(DatasetError, match="SSv2 video folder not found; pass VIDEO_DIR"):
        listing("ssv2", tmp_path)


def test_ssv2_errors_name_file_and_line(tmp_path):
    labels = ssv2_tree(tmp_path)
    train = json.loads((labels / "train.json").read_text())
    train[1]["template"] = "Putting [something] onto a surface"
    (labels / "train.json").write_text(json.dumps(train, indent=4))
    with pytest.raises(DatasetError, match=r"train.json:11: template 'Putting \[something\] onto a surface' of clip 42326"):
        listing("ssv2", tmp_path)
    (labels / "train.json").write_text('[\n  {"id": "2",,}\n]')
    with pytest.raises(DatasetError, match=r"train.json:2: not valid JSON"):
        listing("ssv2", tmp_path)
    (labels / "train.json").write_text('[{"label": "no id"}]')
    with pytest.raises(DatasetError, match=r"train.json:1: entry has no id"):
        listing("ssv2", tmp_path)
    (labels / "labels.json").unlink()
    with pytest.raises(DatasetError, match=r"labels/labels.json: SSv2 annotation file not found"):
        listing("ssv2", tmp_path)


# --- Mimetics ---------------------------------------------------------------------------------------------------

K400_SUBSET = ["abseiling", "playing bass guitar", "punching person (boxing)", "reading book", "zumba"]


def mimetics_tree(root: Path) -> Path:
    (root / "mimetics_v1.0.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "mimetics_v1.0.csv").write_text(
        "label,youtube_id,time_start,time_end\n"
        '"punching person (boxing)",-aB3_x,12,22\n'
        "reading book,zz9,0,10\n"
        "playing bass guitar,Qq1,5,15\n")
    touch(root / "punching person (boxing)" / "-aB3_x_000012_000022.mp4")
    touch(root / "reading book" / "zz9_000000_000010.mp4")
    class_list = root.parent / "label_map_k400.txt"
    class_list.write_text("\n".join(K400_SUBSET) + "\n")
    return class_list


def test_mimetics_uses_kinetics_indices_and_keeps_its_own(tmp_path):
    class_list = mimetics_tree(tmp_path / "mimetics")
    result = listing("mimetics", tmp_path / "mimetics", class_list=class_list)
    clips = by_id(result)
    assert result.classes == tuple(K400_SUBSET)  # the label map is the model's, so indices match its outputs
    boxing = clips["-aB3_x_000012_000022"]
    assert (boxing.split, boxing.label, boxing.label_index, boxing.meta) == (
        "test", "punching person (boxing)", 2, {"mimetics_index": 1})
    assert boxing.path == str(tmp_path / "mimetics" / "punching person (boxing)" / "-aB3_x_000012_000022.mp4")
    assert (clips["Qq1_000005_000015"].label_index, clips["Qq1_000005_000015"].meta) == (1, {"mimetics_index": 0})
    assert (clips["zz9_000000_000010"].label_index, clips["zz9_000000_000010"].meta) == (3, {"mimetics_index": 2})
    # a Kinetics annotation CSV works as the class list too (sorted class names)
    csv_list = tmp_path / "train.csv"
    csv_list.write_text("label,youtube_id,time_start,time_end,split\n" +
                        "".join(f'"{name}",id{i},0,10,train\n' for i, name in enumerate(reversed(K400_SUBSET))))
    assert listing("mimetics", tmp_path / "mimetics" / "mimetics_v1.0.csv", class_list=csv_list).classes == tuple(K400_SUBSET)


def test_mimetics_errors(tmp_path):
    class_list = mimetics_tree(tmp_path / "mimetics")
    class_list.write_text("abseiling\nreading book\n")
    with pytest.raises(DatasetError, match=r"mimetics_v1.0.csv:2: label 'punching person \(boxing\)' is not in the class list"):
        listing("mimetics", tmp_path / "mimetics", class_list=class_list)
    class_list.write_text("abseiling\n\nreading book\n")
    with pytest.raises(DatasetError, match=r"label_map_k400.txt:2: blank line"):
        listing("mimetics", tmp_path / "mimetics", class_list=class_list)
    (tmp_path / "mimetics" / "other.csv").write_text("x\n")
    with pytest.raises(DatasetError, match="expected one annotation CSV.*mimetics_v1.0.csv, other.csv"):
        listing("mimetics", tmp_path / "mimetics", class_list=class_list)


# --- UCF101 -----------------------------------------------------------------------------------------------------

def ucf101_tree(root: Path) -> None:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    crlf = lambda lines: "".join(f"{line}\r\n" for line in lines)  # noqa: E731 - the release uses CRLF
    (lists / "classInd.txt").write_text(crlf(["1 ApplyEyeMakeup", "2 HandstandPushups", "3 YoYo"]))
    videos = {"ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g08_c02"],
              "HandstandPushups": ["v_HandStandPushups_g01_c01", "v_HandStandPushups_g09_c03"],  # case differs
              "YoYo": ["v_YoYo_g02_c01", "v_YoYo_g10_c04"]}
    for folder, names in videos.items():
        for name in names:
            touch(root / "UCF-101" / folder / f"{name}.avi")
    first = {folder: names[0] for folder, names in videos.items()}
    second = {folder: names[1] for folder, names in videos.items()}
    index = {"ApplyEyeMakeup": 1, "HandstandPushups": 2, "YoYo": 3}
    for split_id, (train, test) in {1: (second, first), 2: (first, second)}.items():
        (lists / f"trainlist0{split_id}.txt").write_text(crlf(f"{f}/{n}.avi {index[f]}" for f, n in train.items()))
        (lists / f"testlist0{split_id}.txt").write_text(crlf(f"{f}/{n}.avi" for f, n in test.items()))


def test_ucf101_official_splits_zero_based_and_case_quirk(tmp_path):
    ucf101_tree(tmp_path)
    result = listing("ucf101", tmp_path)
    clips = by_id(result)
    assert result.classes == ("ApplyEyeMakeup", "HandstandPushups", "YoYo")
    assert {(c.split, c.label_index) for c in result.clips} == {("train", i) for i in range(3)} | {("test", i) for i in range(3)}
    pushups = clips["v_HandStandPushups_g01_c01"]
    assert (pushups.split, pushups.label, pushups.label_index, pushups.meta) == (
        "test", "HandstandPushups", 1, {"group": 1, "clip": 1})
    assert pushups.path == str(tmp_path / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")
    split2 = by_id(listing("ucf101", tmp_path, split_id=2))
    assert split2["v_HandStandPushups_g01_c01"].split == "train" and split2["v_YoYo_g10_c04"].split == "test"
    assert [c.clip_id for c in listing("ucf101", tmp_path, ("test",), split_id=2).clips] == [
        "v_ApplyEyeMakeup_g08_c02", "v_HandStandPushups_g09_c03", "v_YoYo_g10_c04"]


def test_ucf101_errors_name_file_and_line(tmp_path):
    ucf101_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"trainlist03.txt: UCF101 train list of split 3 not found"):
        listing("ucf101", tmp_path, split_id=3)
    lists = tmp_path / "ucfTrainTestlist"
    lists.joinpath("trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi 1\nYoYo/v_YoYo_g10_c04.avi 2\n")
    with pytest.raises(DatasetError, match=r"trainlist01.txt:2: label '2' does not match folder 'YoYo' \(classInd.txt gives 3\)"):
        listing("ucf101", tmp_path)
    lists.joinpath("classInd.txt").write_text("1 ApplyEyeMakeup\n3 YoYo\n")
    with pytest.raises(DatasetError, match=r"classInd.txt: indices must run 1..2 \(1-based\)"):
        listing("ucf101", tmp_path)
    lists.joinpath("classInd.txt").write_text("1 ApplyEyeMakeup\nHandstandPushups\n")
    with pytest.raises(DatasetError, match=r"classInd.txt:2: expected `<index> <ClassName>`"):
        listing("ucf101", tmp_path)


# --- HMDB51 -----------------------------------------------------------------------------------------------------

HMDB_NAMES = {
    "brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "1"), ("Blonde (hair) brushing_f_nm_np1_le_goo_1.avi", "2"),
                   ("unused_brush_hair_u_nm_np1_fr_med_0.avi", "0")],
    "clap": [("#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", "1"), ("Hand_&_clap!_u_cm_np1_fr_med_2.avi", "2")],
}


def hmdb51_tree(root: Path) -> None:
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for label, entries in HMDB_NAMES.items():
        for name, _ in entries:
            touch(root / label / name)
        for split_id in (1, 2):
            swap = {"1": "2", "2": "1", "0": "0"} if split_id == 2 else {}
            lines = "".join(f"{name} {swap.get(tag, tag)} \n" for name, tag in entries)  # trailing space, as released
            (splits / f"{label}_test_split{split_id}.txt").write_text(lines)


def test_hmdb51_tags_unused_entries_and_safe_ids(tmp_path):
    hmdb51_tree(tmp_path)
    result = listing("hmdb51", tmp_path)
    clips = by_id(result)
    assert result.classes == ("brush_hair", "clap") and result.skipped == {"unused in split 1": 1}
    assert sorted((c.clip_id, c.split, c.label_index) for c in result.clips) == [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0", "train", 0),
        ("Blonde_hair_brushing_f_nm_np1_le_goo_1", "test", 0),
        ("Hand___clap__u_cm_np1_fr_med_2", "test", 1),
        ("_20_Rhythm_clap_u_nm_np1_fr_goo_0", "train", 1),
    ]
    blonde = clips["Blonde_hair_brushing_f_nm_np1_le_goo_1"]
    assert blonde.path == str(tmp_path / "brush_hair" / "Blonde (hair) brushing_f_nm_np1_le_goo_1.avi")
    assert blonde.meta == {"video": "Blonde (hair) brushing_f_nm_np1_le_goo_1.avi"}
    assert by_id(listing("hmdb51", tmp_path, split_id=2))["Blonde_hair_brushing_f_nm_np1_le_goo_1"].split == "train"


def test_hmdb51_errors(tmp_path):
    hmdb51_tree(tmp_path)
    (tmp_path / "testTrainMulti_7030_splits" / "clap_test_split1.txt").write_text("a.avi 1\nb.avi 3\n")
    with pytest.raises(DatasetError, match=r"clap_test_split1.txt:2: expected `<video>.avi <0\|1\|2>`"):
        listing("hmdb51", tmp_path)
    with pytest.raises(DatasetError, match=r"testTrainMulti_7030_splits: no <class>_test_split3.txt files"):
        listing("hmdb51", tmp_path, split_id=3)


def test_hmdb51_names_that_collide_as_ids_are_a_conflict(tmp_path):
    hmdb51_tree(tmp_path)
    split_file = tmp_path / "testTrainMulti_7030_splits" / "clap_test_split1.txt"
    split_file.write_text("a b.avi 1\na(b.avi 1\n")
    clips = by_id(listing("hmdb51", tmp_path))
    clip = clips["a_b"]
    assert (clip.split, clip.label, clip.path, clip.source) == (
        "train", "clap", str(tmp_path / "clap" / "a b.avi"), f"{split_file}:1")
    assert clip.conflict == (
        f"listed twice: {split_file}:1 (split train, label 'clap', meta {{'video': 'a b.avi'}}, "
        f"path {tmp_path}/clap/a b.avi) and {split_file}:2 (split train, label 'clap', "
        f"meta {{'video': 'a(b.avi'}}, path {tmp_path}/clap/a(b.avi)")
    assert clips["April_09_brush_hair_u_nm_np1_ba_goo_0"].conflict is None
