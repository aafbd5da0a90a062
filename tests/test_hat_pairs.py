"""HAT's swap pairs in and out: a pickle in HAT's format renders exactly its pairs (names matched by stem, the
rest counted in one warning, no_pair rows), keyed by its content; export-pairs writes ours so that they come
back the same; a file that is not HAT's format is one line and exit 2."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.masks import MasksRun, run_masks
from tests.test_masks_stage import config as masks_config


@pytest.fixture
def masked(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    run_dir = Path(run_masks(masks_config(root, out), progress=False).output)
    return out, run_dir, {clip.clip_id: clip for clip in MasksRun(run_dir).clips()}


def render(out: Path, *flags: str) -> int:
    return main(["render", "--dataset", "kinetics400", "--out", str(out), "--format", "lazy", "--workers", "0",
                 *flags])


def manifest_pairs(out: Path, run_dir: Path, variant: str) -> dict[str, str | None]:
    assert main(["manifests", "--dataset", "kinetics400", "--out", str(out), "--variants", variant]) == 0
    rows = pq.read_table(out / "manifests" / "kinetics400" / run_dir.name / variant / "manifest.parquet").to_pylist()
    return {row["clip_id"]: row["pair_clip_id"] for row in rows}


def test_a_hat_pickle_gives_exactly_its_pairs(masked, tmp_path, caplog):
    out, run_dir, clips = masked
    a, b, c = sorted(clips)[:3]
    label = {clip_id: clip.label for clip_id, clip in clips.items()}
    pairs = {f"{label[a]}/{a}": [f"{label[b]}/{b}", clips[b].frames, clips[b].label_index],
             f"{label[b]}/{b}.mp4": [f"{label[a]}/{a}.mp4", clips[a].frames, clips[a].label_index],
             f"{label[c]}/{c}": ["archery/not_in_this_run", 300, 5],
             "archery/gone_000001_000011": [f"{label[a]}/{a}", 10, 0]}
    path = tmp_path / "actionswap_far_2.pickle"
    path.write_bytes(pickle.dumps(pairs))
    with caplog.at_level(logging.WARNING):
        assert render(out, "--variants", "original", "--swap-pairs", str(path)) == 0
    warnings = [r.getMessage() for r in caplog.records if "pairs of" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 4 pairs" in warnings[0]
    found = manifest_pairs(out, run_dir, "actionswap_far_2")
    assert found == {a: b, b: a, **{clip_id: None for clip_id in clips if clip_id not in (a, b)}}
    rows = pq.read_table(out / "manifests" / "kinetics400" / run_dir.name / "actionswap_far_2" /
                         "manifest.parquet").to_pylist()
    assert {r["status"] for r in rows if r["pair_clip_id"] is None} == {"no_pair"}
    import json

    spec = json.loads((out / "manifests" / "kinetics400" / run_dir.name / "actionswap_far_2" /
                       "manifest.json").read_text())["settings"]["lazy"]["variant"]
    assert spec["pairing"]["mode"] == "far" and spec["pairing"]["seed"] == 2 and len(spec["pairing"]["pairs"]) == 64


def test_export_pairs_round_trips_and_pairs_are_keyed_by_content(masked, tmp_path, capsys):
    out, run_dir, clips = masked
    assert render(out, "--variants", "swap") == 0
    ours = {k: v for k, v in manifest_pairs(out, run_dir, "swap").items() if v}
    assert ours
    exported = tmp_path / "hat" / "actionswap_rand_0.pickle"
    assert main(["export-pairs", "--dataset", "kinetics400", "--out", str(out), "--variant", "swap",
                 "--output", str(exported)]) == 0
    with open(exported, "rb") as f:  # what HAT's ActionSwapDataset does with it
        mapping = pickle.load(f)
    for name, (background, frames, label) in mapping.items():
        fg, bg = name.split("/")[-1], background.split("/")[-1]
        assert ours[fg] == bg and frames == clips[bg].frames and label == clips[bg].label_index
        assert name.split("/")[0] == clips[fg].label
    assert len(mapping) == len(ours)
    assert render(out, "--variants", "swap", "--swap-pairs", str(exported)) == 0
    assert {k: v for k, v in manifest_pairs(out, run_dir, "actionswap_rand_0").items() if v} == ours
    moved = tmp_path / "elsewhere" / exported.name  # the same content elsewhere: nothing to redo
    moved.parent.mkdir()
    shutil.copy(exported, moved)
    capsys.readouterr()
    assert render(out, "--variants", "swap", "--swap-pairs", str(moved)) == 0
    assert "render actionswap_rand_0" in (printed := capsys.readouterr().out) and "0 computed" in \
        printed.split("render actionswap_rand_0")[1].splitlines()[1]
    first = next(iter(mapping))  # other content: redone
    mapping.pop(first)
    moved.write_bytes(pickle.dumps(mapping))
    assert render(out, "--variants", "swap", "--swap-pairs", str(moved)) == 0
    assert "0 computed" not in capsys.readouterr().out.split("render actionswap_rand_0")[1].splitlines()[1]
    assert manifest_pairs(out, run_dir, "actionswap_rand_0")[first.split("/")[-1]] is None


class Evil:
    def __reduce__(self):
        return (print, ("ran",))


@pytest.mark.parametrize("content, message", [
    ([1, 2], "not HAT's format"),
    ({"a/b": ["c/d", 3]}, "not HAT's format at 'a/b'"),
    ({"a/b": Evil()}, "not a pairs pickle in HAT's format"),
    ("text", "not HAT's format"),
])
def test_a_pickle_that_is_not_hats_format_is_one_line_and_exit_2(masked, tmp_path, capsys, content, message):
    out, _, _ = masked
    path = tmp_path / "actionswap_same_1.pickle"
    path.write_bytes(pickle.dumps(content))
    assert render(out, "--swap-pairs", str(path)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1
    assert "ran" not in captured.out


def test_a_pairs_file_without_its_mode_in_the_name_needs_the_flag(masked, tmp_path, capsys):
    out, _, clips = masked
    a, b = sorted(clips)[:2]
    path = tmp_path / "my_pairs.pickle"
    path.write_bytes(pickle.dumps({a: [b, 10, 0]}))
    assert render(out, "--variants", "original", "--swap-pairs", str(path)) == 2
    assert "--swap-pairs-mode" in capsys.readouterr().err
    assert render(out, "--variants", "original", "--swap-pairs", str(path), "--swap-pairs-mode", "rand") == 0


def test_partners_without_usable_masks_are_left_out_and_names_are_made_safe(shapes_dataset, tmp_path, caplog):
    import numpy as np

    root, _ = shapes_dataset
    videos = sorted(root.rglob("*.mp4"))
    gone = videos[0]
    gone.unlink()  # its clip is `missing`: no masks to paste from
    out = tmp_path / "out"
    run_dir = Path(run_masks(masks_config(root, out), progress=False).output)
    clips = {clip.clip_id: clip for clip in MasksRun(run_dir).clips()}
    missing = gone.stem
    a, b = sorted(c for c in clips if c != missing)[:2]
    pairs = {f"x/{a}": [f"y/{missing}", np.int64(12), np.int64(0)],  # numpy ints, as protocol 2 writes them
             f"x/{b.replace('_x_', '!x_', 1)}": [f"y/{a}", np.int64(12), np.int64(1)]}  # `!` → `_`, as ids are made
    path = tmp_path / "actionswap_rand_3.pickle"
    path.write_bytes(pickle.dumps(pairs, protocol=2))
    with caplog.at_level(logging.WARNING):
        assert render(out, "--variants", "original", "--swap-pairs", str(path)) == 0
    found = manifest_pairs(out, run_dir, "actionswap_rand_3")
    assert found[a] is None and found[b] == a  # a's partner has no masks; `…!x_…` names b
    assert any("1 of 2 pairs of actionswap_rand_3.pickle left out: 0 name clips this masks run does not have, 1 a "
               "background clip without usable masks" in r.getMessage() for r in caplog.records)


def test_a_pairs_file_naming_one_clip_twice_is_refused(masked, tmp_path, capsys):
    out, _, clips = masked
    a, b = sorted(clips)[:2]
    path = tmp_path / "actionswap_rand_1.pickle"
    path.write_bytes(pickle.dumps({f"x/{a}": [b, 10, 0], f"y/{a}.mp4": [b, 10, 0]}))
    assert render(out, "--swap-pairs", str(path)) == 2
    assert f"names clip {a} twice" in capsys.readouterr().err


def test_export_pairs_never_overwrites_and_a_pairs_file_changed_midway_is_named(masked, tmp_path, capsys):
    from pipeline.render.pairs_file import pairs_variant, read_pairs

    out, _, clips = masked
    assert render(out, "--variants", "swap") == 0
    assert main(["manifests", "--dataset", "kinetics400", "--out", str(out)]) == 0
    dest = tmp_path / "pairs.pickle"
    dest.write_bytes(b"mine")
    argv = ["export-pairs", "--dataset", "kinetics400", "--out", str(out), "--output", str(dest)]
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err and dest.read_bytes() == b"mine"
    dest.unlink()
    assert main(argv) == 0 and list(tmp_path.glob(".pairs.pickle*")) == []
    variant = pairs_variant(dest, mode="rand")
    dest.write_bytes(pickle.dumps({"a": ["b", 1, 0]}))
    with pytest.raises(Exception, match="changed since the run began"):
        read_pairs(dest, variant.pairing.pairs)
