"""Annotation quirks that must not stop a run: repeated entries are merged, conflicting ones kept once and marked,
and every record says where its reader found it."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.datasets import DatasetError
from pipeline.datasets.repeats import MERGED
from tests.conftest import write_kinetics_csv
from tests.test_datasets import SSV2_LABELS, by_id, hmdb51_tree, listing, mimetics_tree, ucf101_tree
from tests.test_kinetics import touch

MERGE_LOG = "pipeline.datasets.repeats"


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == MERGE_LOG and r.levelno == logging.WARNING]


def test_kinetics_row_repeated_word_for_word_is_merged(tmp_path, caplog):
    write_kinetics_csv(tmp_path, "train", [("abseiling", "xyz", 0, 10), ("zumba", "q1", 5, 15),
                                           ("abseiling", "xyz", 0, 10), ("zumba", "q1", 5, 15)])
    train = tmp_path / "annotations" / "train.csv"
    with caplog.at_level(logging.WARNING, logger=MERGE_LOG):
        result = listing("kinetics400", tmp_path)
    assert [(c.clip_id, c.split, c.label, c.label_index, c.source, c.conflict) for c in result.clips] == [
        ("q1_000005_000015", "train", "zumba", 1, f"{train}:3", None),
        ("xyz_000000_000010", "train", "abseiling", 0, f"{train}:2", None),
    ]
    assert result.skipped == {MERGED: 2} and MERGED == "duplicate entries merged"
    assert warnings(caplog) == [f"{tmp_path}: 2 duplicate entries merged (listed again word for word), "
                                f"e.g. clip xyz_000000_000010 at {train}:2 and {train}:4"]


def test_kinetics_id_in_train_and_val_with_other_labels_is_one_conflict(tmp_path, caplog):
    write_kinetics_csv(tmp_path, "train", [("zumba", "other", 0, 10), ("abseiling", "dup", 0, 10)])
    write_kinetics_csv(tmp_path, "val", [("abseiling", "v1", 0, 10), ("zumba", "dup", 0, 10)])
    annotations = tmp_path / "annotations"
    with caplog.at_level(logging.WARNING, logger=MERGE_LOG):
        result = listing("kinetics400", tmp_path)
    clips = by_id(result)
    assert sorted(clips) == ["dup_000000_000010", "other_000000_000010", "v1_000000_000010"]
    dup = clips["dup_000000_000010"]
    assert (dup.split, dup.label, dup.label_index, dup.path, dup.source) == (
        "train", "abseiling", 0, str(tmp_path / "train" / "dup_000000_000010.mp4"), f"{annotations}/train.csv:3")
    assert dup.conflict == (f"listed twice: {annotations}/train.csv:3 (split train, label 'abseiling') and "
                            f"{annotations}/val.csv:3 (split val, label 'zumba')")
    assert clips["other_000000_000010"].conflict is None and clips["v1_000000_000010"].conflict is None
    assert result.skipped == {}
    assert warnings(caplog) == [f"{tmp_path}: 1 clip id listed again with another split, label or path; each is kept "
                                f"once as a conflict and not processed, e.g. clip dup_000000_000010 {dup.conflict}"]
    # the splits filter applies after merging: the kept entry's split counts
    assert [c.clip_id for c in listing("kinetics400", tmp_path, ("val",)).clips] == ["v1_000000_000010"]
    assert [c.clip_id for c in listing("kinetics400", tmp_path, ("train",)).clips] == [
        "dup_000000_000010", "other_000000_000010"]


def test_exact_repeat_and_later_conflicts_of_one_id(tmp_path):
    write_kinetics_csv(tmp_path, "train", [("a", "dup", 0, 10), ("a", "dup", 0, 10), ("b", "dup", 0, 10)])
    write_kinetics_csv(tmp_path, "val", [("c", "dup", 0, 10)])
    train, val = tmp_path / "annotations" / "train.csv", tmp_path / "annotations" / "val.csv"
    result = listing("kinetics400", tmp_path)
    [clip] = result.clips
    assert (clip.split, clip.label, clip.source) == ("train", "a", f"{train}:2")
    assert clip.conflict == (f"listed 3 times: {train}:2 (split train, label 'a'), {train}:4 (split train, label 'b') "
                             f"and {val}:2 (split val, label 'c')")
    assert result.skipped == {MERGED: 1}


def test_folder_ids_that_differ_only_in_case_are_a_conflict(tmp_path):
    upper = touch(tmp_path / "jump" / "A.mp4")
    lower = touch(tmp_path / "jump" / "a.mp4")
    other = touch(tmp_path / "run" / "b.mp4")
    result = listing("folder", tmp_path)
    assert [(c.clip_id, c.label, c.label_index, c.path, c.source) for c in result.clips] == [
        ("jump__A", "jump", 0, str(upper), str(upper)), ("run__b", "run", 1, str(other), str(other))]
    assert result.clips[0].conflict == (f"listed twice: {upper} (id 'jump__A', split all, label 'jump') and "
                                        f"{lower} (id 'jump__a', split all, label 'jump')")
    assert result.clips[1].conflict is None and result.skipped == {}


def test_list_file_line_repeated(tmp_path):
    listed = tmp_path / "clips.txt"
    listed.write_text("a.mp4 x train\nb.mp4 y train\na.mp4 x train\n")
    result = listing("list", listed)
    assert [(c.clip_id, c.split, c.label, c.path, c.source, c.conflict) for c in result.clips] == [
        ("a", "train", "x", str(tmp_path / "a.mp4"), f"{listed}:1", None),
        ("b", "train", "y", str(tmp_path / "b.mp4"), f"{listed}:2", None)]
    assert result.skipped == {MERGED: 1}


def test_ssv2_entry_repeated(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps(SSV2_LABELS))
    held = {"id": "78687", "label": "holding a cup next to a pen",
            "template": "Holding [something] next to [something]", "placeholders": ["a cup", "a pen"]}
    put = {"id": "42326", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
           "placeholders": ["a cup"]}
    (labels / "train.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in (held, put, held)) + "\n]\n")
    (labels / "validation.json").write_text("[]")
    (tmp_path / "20bn-something-something-v2").mkdir()
    result = listing("ssv2", tmp_path)
    clips = by_id(result)
    assert sorted(clips) == ["42326", "78687"] and result.skipped == {MERGED: 1}
    kept = clips["78687"]
    assert (kept.split, kept.label_index, kept.source, kept.conflict) == ("train", 1, f"{labels}/train.json:2", None)
    assert clips["42326"].source == f"{labels}/train.json:3"


def test_every_reader_says_where_it_found_each_clip(tmp_path):
    ucf = tmp_path / "ucf"
    ucf101_tree(ucf)
    lists = ucf / "ucfTrainTestlist"
    clips = by_id(listing("ucf101", ucf))
    assert clips["v_ApplyEyeMakeup_g08_c02"].source == f"{lists}/trainlist01.txt:1"
    assert clips["v_HandStandPushups_g01_c01"].source == f"{lists}/testlist01.txt:2"

    hmdb = tmp_path / "hmdb"
    hmdb51_tree(hmdb)
    clips = by_id(listing("hmdb51", hmdb))
    assert clips["Hand___clap__u_cm_np1_fr_med_2"].source == f"{hmdb}/testTrainMulti_7030_splits/clap_test_split1.txt:2"

    mimetics = tmp_path / "mimetics"
    clips = by_id(listing("mimetics", mimetics, class_list=mimetics_tree(mimetics)))
    assert clips["zz9_000000_000010"].source == f"{mimetics}/mimetics_v1.0.csv:3"

    kinetics = tmp_path / "k400"
    video = touch(kinetics / "val" / "abseiling" / "c.webm")
    [clip] = listing("kinetics400", kinetics).clips
    assert (clip.clip_id, clip.source) == ("c", str(video))


def test_repeats_do_not_hide_malformed_entries(tmp_path):
    """Merging comes after the checks: an unsafe split in a repeated line still stops the run."""
    listed = tmp_path / "clips.txt"
    listed.write_text("a.mp4 x train\na.mp4 x ..\n")
    with pytest.raises(DatasetError, match=rf"{listed}:2: split name '..' is not safe"):
        listing("list", listed)
