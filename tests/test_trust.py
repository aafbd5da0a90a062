"""Issue 23: variant names are owned (a preset's name is the preset's), a changed definition is said, and nothing
degrades in silence (object variants over masks without objects, a swap nothing was paired for, a filter that
leaves out every clip, a Kinetics-400 subset indexed 0..N-1)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.masks import MasksRun, run_masks
from pipeline.render.guards import segmenter_finds_objects, with_objects
from pipeline.render.kinds import VariantError
from pipeline.render.pairing import unpaired_reason
from pipeline.render.variants import DEFAULT_VARIANTS, PRESETS, resolve
from pipeline.segment.base import SegmenterSpec
from tests.conftest import LUMA, write_kinetics_csv
from tests.test_datasets import listing
from tests.test_masks_stage import config as masks_config
from tests.test_variants import clips


@pytest.fixture
def luma_run(shapes_dataset, tmp_path):
    """Masks of the shape clips from the luma-key segmenter (a segmenter of the tests': finds objects or not is
    not known): (out, CLI arguments naming the dataset and out)."""
    out = tmp_path / "out"
    run_masks(masks_config(shapes_dataset[0], out), progress=False)
    return out, ["--dataset", "kinetics400", "--out", str(out)]


def mp4_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.mp4"))}


def test_a_user_variant_may_not_take_a_preset_name_unless_defined_as_the_preset(tmp_path):
    with pytest.raises(VariantError) as error:
        resolve(["human_only"], defines=["human_only:background=color(0,0,255);objects=color(0,0,255)"])
    assert str(error.value) == ("--define: variant 'human_only' is a preset (everything but people in the ImageNet "
                                "mean (HAT)); name yours differently, e.g. 'human_only_custom'")
    with pytest.raises(VariantError, match="variant 'swap' is a preset"):  # not asked for: still not yours
        resolve(["bg"], defines=["swap:background=swap"])
    same = "human_only:background=mean;objects=mean;description=everything but people in the ImageNet mean (HAT)"
    assert resolve(["human_only"], defines=[same]) == resolve(["human_only"])  # the preset's own definition
    path = tmp_path / "variants.toml"
    path.write_text('[variants.bg]\nbackground = "black"\ndescription = "background filled; people and objects kept"\n'
                    '[variants.bg2]\nbackground = "black"\n')
    assert resolve(["bg", "bg2"], file=path)[0] == resolve(["bg"])[0]
    path.write_text('[variants.bg]\nbackground = "black"\n')  # the same pixels, another spec (no description)
    with pytest.raises(VariantError, match=rf"^{path}: variant 'bg' is a preset \(background filled"):
        resolve(["bg"], file=path)


def test_a_preset_name_is_refused_through_the_cli_and_the_preset_renders_stay(luma_run, tmp_path, capsys):
    out, argv = luma_run
    assert main(["render", *argv, "--variants", "human_only", "--workers", "0"]) == 0
    (folder,) = (out / "renders" / "kinetics400").glob("*/human_only")
    before = mp4_hashes(folder)
    assert len(before) == 5
    mine = tmp_path / "variants.toml"
    mine.write_text('[variants.human_only]\nbackground = "color(0,0,255)"\nobjects = "color(0,0,255)"\n')
    capsys.readouterr()
    assert main(["render", *argv, "--variants", "human_only", "--variants-file", str(mine), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {mine}: variant 'human_only' is a preset (everything but people in the ImageNet mean "
                   "(HAT)); name yours differently, e.g. 'human_only_custom'")
    assert mp4_hashes(folder) == before
    assert json.loads((folder / "variant.mp4.json").read_text())["variant"]["background"] == "mean"


def test_a_changed_definition_is_rerendered_and_said_in_one_line(luma_run, caplog, capsys):
    out, argv = luma_run

    def render(fill: str) -> dict[str, str]:
        caplog.clear()
        capsys.readouterr()
        with caplog.at_level(logging.WARNING):
            assert main(["render", *argv, "--variants", "blue", "--define", f"blue:background={fill}",
                         "--workers", "0"]) == 0
        (folder,) = (out / "renders" / "kinetics400").glob("*/blue")
        return mp4_hashes(folder)

    first = render("color(0,0,255)")
    assert "changed since it was rendered" not in caplog.text  # a new variant: nothing to say
    second = render("color(0,0,200)")
    said = [r.getMessage() for r in caplog.records if "changed since it was rendered" in r.getMessage()]
    assert said == ["render blue: definition changed since it was rendered (background: color(0,0,255) -> "
                    "color(0,0,200)); re-rendering"]
    assert "3 computed, 0 already done" in capsys.readouterr().out
    assert first.keys() == second.keys() and all(first[k] != second[k] for k in first)  # every render redone
    assert render("color(0,0,200)") == second and "changed since" not in caplog.text  # unchanged: silent


def test_which_variants_need_objects_and_which_segmenters_find_them(tmp_path):
    assert {name for name, variant in PRESETS.items() if variant.needs_objects} == {"bg", "bg_obj", "bg_obj2", "obj"}
    assert "objects_matter" not in PRESETS["bg_obj"].spec()  # shapes no pixel: the fingerprint is as it was
    path = tmp_path / "v.toml"
    path.write_text('[variants.dark]\nbackground = "black"\nobjects = "black"\nneeds_objects = true\n'
                    '[variants.blur]\nbackground = "blur(3)"\nneeds_objects = false\n')
    dark, blur = resolve(["dark", "blur"], file=path)
    assert dark.needs_objects and not blur.needs_objects and "needs_objects" not in json.dumps(dark.spec())
    assert (SegmenterSpec(backend="selfie").finds_objects, SegmenterSpec(backend="yolo").finds_objects,
            SegmenterSpec(backend="yolo", object_classes=()).finds_objects,
            SegmenterSpec(backend="yolo", object_classes=("cup",)).finds_objects,
            SegmenterSpec(backend=LUMA).finds_objects) == (False, True, False, True, None)
    for recorded, finds in (({"backend": "yolo", "object_classes": []}, False), ({"backend": "yolo"}, True),
                            ({"backend": "selfie"}, False), ({"backend": LUMA}, None), ({}, None), (None, None)):
        (tmp_path / "run.json").write_text(json.dumps({"config": {"segmenter": recorded}}))
        assert segmenter_finds_objects(MasksRun(tmp_path))[0] is finds, recorded  # run.json read defensively


def test_object_variants_are_refused_for_a_selfie_run(shapes_dataset, selfie_model, tmp_path, capsys, caplog):
    root, _ = shapes_dataset
    argv = ["--dataset", "kinetics400", "--out", str(tmp_path)]
    assert main(["masks", *argv, "--root", str(root), "--segmenter", "selfie", "--selfie-model", str(selfie_model),
                 "--splits", "val", "--workers", "0"]) == 0
    (run,) = (tmp_path / "masks" / "kinetics400").iterdir()
    capsys.readouterr()
    assert main(["render", *argv, "--variants", "human_only,obj", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: variant 'obj' tells objects from the background, but masks run {run.name} was made with "
                   "the selfie segmenter, which finds no objects (people only); render it from a YOLO run, or leave "
                   "it out (a variant of your own that means what it says without objects: `needs_objects = false` "
                   "in its definition)")
    assert main(["render", *argv, "--variants", "bg,bg_obj", "--workers", "0"]) == 2
    assert "variants 'bg', 'bg_obj' tell objects from the background" in capsys.readouterr().err
    assert not (tmp_path / "renders").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.render"):  # the default set: left out, in one line
        kept = with_objects(resolve(list(DEFAULT_VARIANTS)), MasksRun(run), default_set=True)
    assert [v.name for v in kept] == [n for n in DEFAULT_VARIANTS if n not in ("bg", "bg_obj", "bg_obj2", "obj")]
    assert [r.getMessage() for r in caplog.records] == [
        f"left out bg, bg_obj, bg_obj2, obj: they need objects, and masks run {run.name} was made with the selfie "
        "segmenter, which finds no objects (people only)"]
    assert main(["render", *argv, "--variants", "human_only", "--workers", "0"]) == 0


def test_a_swap_with_nothing_paired_and_a_filter_that_keeps_nothing_fail(luma_run, capsys):
    out, argv = luma_run
    assert main(["render", *argv, "--variants", "bg,swap", "--pair-coverage", "0.99,1", "--workers", "0"]) == 1
    printed = capsys.readouterr().out
    assert "render bg: 5 clips (ok 5)" in printed  # the other variants are rendered
    failed = [line for line in printed.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith(
        "FAILED swap: no clip paired: person coverage of the 5 clips is outside 99–100% (median ")
    assert failed[0].endswith("%); widen it with PAIR_COVERAGE=LOW,HIGH (--pair-coverage)")
    renders = next((out / "renders" / "kinetics400").iterdir())
    assert not (renders / "swap").exists()  # not rendered: no shard of all `no_pair` rows
    assert main(["render", *argv, "--variants", "bg,swap", "--workers", "0"]) == 0  # the default range pairs

    assert main(["manifests", *argv, "--variants", "bg", "--min-coverage", "0.9", "--min-frames-frac", "0.5"]) == 1
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == (
        "FAILED bg: the filter (people on >= 0.9 of the frame in >= 0.5 of the frames: MIN_COVERAGE / "
        "MIN_FRAMES_FRAC) leaves out all 5 rendered clips; lower it with MIN_COVERAGE=F MIN_FRAMES_FRAC=G "
        "(--min-coverage, --min-frames-frac)")
    manifest = json.loads(next((out / "manifests").rglob("bg/manifest.json")).read_text())
    assert manifest["failed"].startswith("the filter (people on >= 0.9")
    assert main(["manifests", *argv]) == 0 and "FAILED" not in capsys.readouterr().out


def test_why_no_clip_was_paired_names_the_mode_and_the_flag():
    rows = clips(6)  # labels L0, L1, L2 by i % 3: one clip of each class per split at most
    one_each = [row for row in rows if row.split == "train"][:3]
    coverage = {row.clip_id: 0.2 for row in one_each}
    assert unpaired_reason(one_each, coverage, mode="same") == (
        "none of the 3 clips with person coverage in 5–50% has another clip of its class in its split within that "
        "range; widen it with PAIR_COVERAGE=LOW,HIGH (--pair-coverage)")
    assert "a related class (SWAP_RELATIONS" in unpaired_reason(one_each, coverage, mode="close")
    assert unpaired_reason(one_each, {}, mode="rand") is None  # nothing usable: not the swap's own failure


def test_a_kinetics400_subset_without_official_indices_warns_once(tmp_path, caplog):
    write_kinetics_csv(tmp_path, "train", [("zumba", "z1", 5, 15), ("juggling balls", "j1", 0, 10)])
    write_kinetics_csv(tmp_path, "val", [("abseiling", "a1", 30, 40)])
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets"):
        listing("kinetics400", tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        "kinetics400: 3 of the 400 classes listed; label indices are 0..2 in sorted order. For a model trained on "
        "all 400 classes, set OFFICIAL_INDICES=1 (--official-indices)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets"):
        listing("kinetics400", tmp_path, official_indices=True)
        listing("kinetics600", tmp_path)
    assert not caplog.records
