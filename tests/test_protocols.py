"""The benchmark protocols' variants: SCUBA / SCUFO static backgrounds, `original`, HAT's swap modes, seeds and
centroid alignment, and each variant's own manifest filter."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.masks import run_masks
from pipeline.render import run_render
from pipeline.render.backdrops import backdrop, still_index
from pipeline.render.compose import PartnerFrames, centroid_offset, shifted_frame
from pipeline.render.encode import EncodeOptions
from pipeline.render.kinds import Fill, Pairing, VariantError
from pipeline.render.pairing import pair_clips, read_relations
from pipeline.render.regions import Regions
from pipeline.render.variants import PRESETS, ProtocolOptions, resolve
from tests.test_masks_stage import config as masks_config
from tests.test_render import render_config, render_frames
from tests.test_variants import clips


@pytest.fixture
def masked(shapes_dataset, tmp_path):
    """The shape clips with masks from the luma-key segmenter (exactly the truth): (root, truth, out, run_dir)."""
    root, truth = shapes_dataset
    out = tmp_path / "out"
    return root, truth, out, Path(run_masks(masks_config(root, out), progress=False).output)


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def neighbours_or(person: np.ndarray, k: int = 1) -> np.ndarray:
    return np.stack([person[max(0, i - k): i + k + 1].any(axis=0) for i in range(len(person))])


def test_scuba_pastes_the_people_on_one_still_background_per_clip_and_number(masked):
    root, truth, _, run_dir = masked
    (scuba,) = resolve(["scuba"])
    assert scuba.masks.temporal == 1 and scuba.keep_if == (0.10, 0.90)  # StillMix's ±1 OR and validity rule
    clip_id = sorted(truth)[0]
    person = neighbours_or(truth[clip_id][0])
    source, first = render_frames(root, run_dir, clip_id, scuba, key=f"{clip_id}__0")
    _, second = render_frames(root, run_dir, clip_id, scuba, key=f"{clip_id}__1")
    still = backdrop(scuba.background, seed=0, key=f"{clip_id}__0", width=96, height=64)
    np.testing.assert_array_equal(first[person], source[person])  # the people as they are
    for i in range(len(first)):  # everything else is the same still image in every frame
        np.testing.assert_array_equal(first[i][~person[i]], still[~person[i]])
    assert np.abs(first[~person].astype(int) - second[~person]).mean() > 10  # background 1 is another image
    again = backdrop(scuba.background, seed=0, key=f"{clip_id}__0", width=96, height=64)
    np.testing.assert_array_equal(still, again)


def test_image_backgrounds_are_a_seeded_pick_from_the_folder_resized_to_the_frame(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, rgb in enumerate(colours):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((30, 50, 3), rgb[::-1], np.uint8))  # BGR on disk
    (tmp_path / "notes.txt").write_text("not an image")
    fill = Fill("image", path=str(tmp_path))
    picked = set()
    for k in range(30):
        image = backdrop(fill, seed=5, key=f"clip__{k}", width=96, height=64)
        assert image.shape == (64, 96, 3)
        picked.add(tuple(image[0, 0]))
        np.testing.assert_array_equal(image, backdrop(fill, seed=5, key=f"clip__{k}", width=96, height=64))
    assert picked == set(colours)  # RGB, every image drawn over enough keys


def test_a_folder_changed_between_runs_of_one_process_is_read_again(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (scuba,) = resolve(["scuba"], protocol=ProtocolOptions(scuba_images=tmp_path))
    assert {backdrop(scuba.background, seed=0, key=f"c__{k}", width=8, height=8).max() for k in range(20)} == {0}
    (tmp_path / "a.png").unlink()
    cv2.imwrite(str(tmp_path / "b.png"), np.full((8, 8, 3), 255, np.uint8))
    (scuba,) = resolve(["scuba"], protocol=ProtocolOptions(scuba_images=tmp_path))  # the next run reads it again
    assert {backdrop(scuba.background, seed=0, key=f"c__{k}", width=8, height=8).min() for k in range(20)} == {255}


def test_a_changed_backgrounds_folder_changes_the_fingerprint_and_an_empty_one_is_an_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((8, 8, 3), np.uint8))
    protocol = ProtocolOptions(scuba_images=images, backgrounds=3)
    variants = resolve(["scuba", "scufo", "bg"], protocol=protocol)
    scuba, scufo, bg = variants
    assert str(scuba.background) == f"image({images})" and scuba.backgrounds == scufo.backgrounds == 3
    config = render_config(tmp_path, ["bg"], variants=variants)
    before = [config.fingerprint(v) for v in variants]
    cv2.imwrite(str(images / "b.png"), np.zeros((8, 8, 3), np.uint8))
    after = [config.fingerprint(v) for v in resolve(["scuba", "scufo", "bg"], protocol=protocol)]
    assert after[0] != before[0] and after[1] != before[1] and after[2] == before[2]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no background images"):
        render_config(tmp_path, ["bg"], variants=resolve(["scuba"], protocol=ProtocolOptions(scuba_images=empty))
                      ).fingerprint(resolve(["scuba"], protocol=ProtocolOptions(scuba_images=empty))[0])
    with pytest.raises(VariantError, match="no such folder"):
        resolve(["scuba"], protocol=ProtocolOptions(scuba_images=tmp_path / "nowhere"))


def test_render_scuba_and_scufo_end_to_end_with_k_backgrounds_and_the_original(masked):
    _, truth, out, run_dir = masked
    variants = resolve(["scuba", "scufo", "original"], protocol=ProtocolOptions(backgrounds=2))
    lossless = EncodeOptions(crf=0)  # so the frames compare up to colour conversion alone
    summary = run_render(render_config(out, [], variants=variants, encode=lossless), progress=False)
    assert [s.by_status for s in summary.variants] == [{"ok": 10}, {"ok": 10}, {"ok": 5}]
    renders = out / "renders" / "kinetics400" / run_dir.name
    names = sorted(p.stem for p in (renders / "scufo").rglob("*.mp4"))
    assert names == sorted(f"{c}__{k}" for c in truth for k in (0, 1))
    for clip_id in truth:
        scufo = decode_all(next((renders / "scufo").rglob(f"{clip_id}__1.mp4")))
        scuba = decode_all(next((renders / "scuba").rglob(f"{clip_id}__1.mp4")))
        assert len(scufo) == len(scuba) == len(truth[clip_id][0])
        assert np.abs(scufo - scufo[0]).mean() < 0.5  # one frame, repeated
        pick = still_index(seed=0, key=f"{clip_id}__1", frames=len(scuba))
        distance = [np.abs(scufo[0] - frame).mean() for frame in scuba]
        assert distance[pick] < 0.5 and distance[pick] == min(distance)  # …the seeded frame of the SCUBA clip
    assert all(p.is_symlink() for p in (renders / "original").rglob("*.mp4"))  # nothing re-encoded
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, min_coverage=0, min_frames_frac=0))
    manifests = out / "manifests" / "kinetics400" / run_dir.name
    original = pq.read_table(manifests / "original" / "manifest.parquet").to_pylist()
    sources = {p.stem: p for p in (out.parent / "k400").rglob("*.mp4")}
    for row in original:  # a link to the source where a render would go
        link = renders / "original" / row["path"]
        assert link.is_symlink() and link.resolve() == sources[row["clip_id"]].resolve()
        assert row["format"] == "source" and row["frames"] == len(truth[row["clip_id"]][0])
        expected = truth[row["clip_id"]][0].mean()  # the luma key's masks are the truth
        assert row["person_coverage"] == pytest.approx(expected, abs=1e-6)
    listed = [line.split() for line in (manifests / "original" / "train_list_videos.txt").read_text().splitlines()]
    assert len(listed) == 4 and all((renders / "original" / path).is_file() for path, _ in listed)
    # the links are outputs like any render: a second run redoes nothing, a lost link is noticed and remade
    again = run_render(render_config(out, [], variants=variants[2:], encode=EncodeOptions(format="rawframes")),
                       progress=False)
    assert again.variants[0].computed == 0  # FORMAT does not touch the original's links
    next((renders / "original").rglob("*.mp4")).unlink()
    assert run_render(render_config(out, [], variants=variants[2:]), progress=False).variants[0].computed == 1
    moved = next((out.parent / "k400").rglob("*.mp4"))  # a source gone: its link dangles, its shard is redone
    moved.rename(moved.with_suffix(".moved"))
    redone = run_render(render_config(out, [], variants=variants[2:]), progress=False).variants[0]
    assert redone.computed == 1 and redone.by_status == {"ok": 4, "missing": 1}
    scuba = pq.read_table(manifests / "scuba" / "manifest.parquet").to_pylist()
    assert {(r["source_clip_id"], r["background"]) for r in scuba} == {(c, k) for c in truth for k in (0, 1)}


def test_scuba_and_scufo_default_to_stillmix_validity_and_the_flags_override_it(masked):
    _, truth, out, run_dir = masked
    run_render(render_config(out, ["scuba", "bg"]), progress=False)
    # StillMix's rule on the masks the render used (±1 OR): people on ≥ 10% of the frame in ≥ 90% of the frames
    valid = {c: (neighbours_or(person).mean(axis=(1, 2)) >= 0.10).mean() >= 0.90 for c, (person, _) in truth.items()}
    assert set(valid.values()) == {True, False}  # the shape clips sit either side of the rule
    write_manifests(ManifestConfig(dataset="kinetics400", out=out))
    manifests = out / "manifests" / "kinetics400" / run_dir.name
    rows = pq.read_table(manifests / "scuba" / "manifest.parquet").to_pylist()
    assert {r["source_clip_id"]: r["status"] for r in rows} == {c: "ok" if v else "filtered" for c, v in valid.items()}
    assert {r["status"] for r in pq.read_table(manifests / "bg" / "manifest.parquet").to_pylist()} == {"ok"}
    summary = write_manifests(ManifestConfig(dataset="kinetics400", out=out, min_coverage=0.0, min_frames_frac=0.0))
    assert {s["variant"]: s["filter"]["min_coverage"] for s in summary} == {"bg": 0.0, "scuba": 0.0}
    rows = pq.read_table(manifests / "scuba" / "manifest.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"ok"}


def test_swap_modes_pick_partners_of_the_right_kind():
    rows = clips(60)
    coverage = {r.clip_id: 0.2 for r in rows}
    relations = {"L0": frozenset({"L1"}), "L1": frozenset({"L0"}), "L2": frozenset()}
    by_id = {r.clip_id: r for r in rows}
    for mode, accept in (("same", lambda a, b: a.label == b.label and a.clip_id != b.clip_id),
                         ("rand", lambda a, b: a.label != b.label),
                         ("close", lambda a, b: b.label in relations[a.label]),
                         ("far", lambda a, b: b.label != a.label and b.label not in relations[a.label])):
        pairs = pair_clips(rows, coverage, seed=1, mode=mode, relations=relations)
        assert pairs, mode
        for a, b in pairs.items():
            assert accept(by_id[a], b) and by_id[a].split == b.split, (mode, a, b.clip_id)
        if mode == "close":  # L2 has no related class: no partner
            assert all(by_id[a].label != "L2" for a in pairs)
    assert pair_clips(rows, coverage, seed=1) == pair_clips(rows, coverage, seed=1, mode="rand")


def test_relations_file_errors_name_the_file_and_line(tmp_path, caplog):
    path = tmp_path / "relations.csv"
    path.write_text('class,related\nL0,L1;L2\n"L1","L0"\nL9,L0\n')
    with caplog.at_level(logging.WARNING):
        relations = read_relations(path, {"L0", "L1", "L2"})
    assert relations["L0"] == {"L1", "L2"} and relations["L1"] == {"L0"}
    assert "relations.csv:4: 'L9'" in caplog.text
    path.write_text("L0,L1\nL1\n")
    with pytest.raises(InputError, match=r"relations.csv:2: expected"):
        read_relations(path)
    path.write_text("X,Y\n")
    with pytest.raises(InputError, match="names none of the dataset's classes"):
        read_relations(path, {"L0"})
    with pytest.raises(InputError, match="not found"):
        read_relations(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="needs a class relations file"):
        render_config(tmp_path, ["swap_far"]).fingerprint(resolve(["swap_far"])[0])
    path.write_text("L0,L1\n")
    far = resolve(["swap_far"])[0]
    before = render_config(tmp_path, ["bg"], relations=path).fingerprint(far)
    path.write_text("L0,L2\n")
    assert render_config(tmp_path, ["bg"], relations=path).fingerprint(far) != before  # the file's content


def test_swap_seeds_become_variants_and_the_plain_swap_keeps_its_fingerprint(tmp_path):
    variants = resolve(["swap", "swap_same", "bg"], protocol=ProtocolOptions(swap_seeds=(0, 1, 2), swap_align="centroid"))
    assert [v.name for v in variants] == ["swap-s0", "swap-s1", "swap-s2", "swap_same-s0", "swap_same-s1",
                                          "swap_same-s2", "bg"]
    assert {v.pairing.seed for v in variants[:3]} == {0, 1, 2} and variants[3].pairing.mode == "same"
    assert all(v.pairing.align == "centroid" for v in variants[:6]) and variants[6].spec() == PRESETS["bg"].spec()
    config = render_config(tmp_path, ["bg"])
    (plain,) = resolve(["swap"])
    kinds = [replace(plain, pairing=Pairing(seed=1)), replace(plain, pairing=Pairing(align="centroid")),
             replace(plain, pairing=Pairing(mode="same")), plain]
    assert len({config.fingerprint(v) for v in kinds}) == 4  # one name, four pairings: four fingerprints
    # the swap preset as it was before the modes came: its renders are not redone
    assert "pairing" not in PRESETS["swap"].spec()
    assert render_config(Path("."), ["swap"]).fingerprint(resolve(["swap"])[0]) == "79d40c4784"
    with pytest.raises(VariantError, match="swap_mode is one of"):
        resolve(["x"], defines=["x:background=swap;swap_mode=nearby"])


def test_centroid_alignment_moves_the_people_onto_the_partner_person():
    person = np.zeros((40, 60), bool)
    person[5:15, 5:15] = True  # centre (9.5, 9.5)
    target = np.zeros((40, 60), bool)
    target[20:30, 40:50] = True  # centre (44.5, 24.5)
    assert centroid_offset(person, target) == (35, 15)
    assert centroid_offset(np.zeros_like(person), target) == (15, 5)  # empty: the image centre (29.5, 19.5)
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[person] = 200
    moved, regions = shifted_frame(frame, Regions(person=person, objects=np.zeros_like(person)), (35, 15))
    np.testing.assert_array_equal(regions.person, target)
    assert (moved[target] == 200).all() and moved[~target].max() == 0


def test_aligned_swap_pastes_the_people_where_the_partner_person_was(masked):
    root, truth, _, run_dir = masked
    a, b = sorted(truth)[:2]
    (swap,) = resolve(["swap"], protocol=ProtocolOptions(swap_align="centroid"))
    (background_only,) = resolve(["background_only"])
    _, background_b = render_frames(root, run_dir, b, background_only)
    person_b = truth[b][0]
    nobody = np.zeros((64, 96), bool)
    pairs = [(frame, Regions(person=person_b[i], objects=nobody)) for i, frame in enumerate(background_b)]
    partner = PartnerFrames(iter(pairs), len(background_b), len(truth[a][0]), (96, 64))
    source, frames = render_frames(root, run_dir, a, swap, swap=partner)
    offset = centroid_offset(truth[a][0][0], person_b[0])
    assert offset != (0, 0)
    for i in range(len(frames)):
        moved, regions = shifted_frame(source[i], Regions(person=truth[a][0][i], objects=nobody), offset)
        np.testing.assert_array_equal(frames[i][regions.person], moved[regions.person])
