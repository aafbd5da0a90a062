"""Manifests parsed the way mmaction2 and PySlowFast parse them; quality filter; failed clips; the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.masks import run_masks
from pipeline.render import run_render
from pipeline.render.encode import EncodeOptions
from pipeline.report import write_report
from tests.conftest import write_kinetics_csv
from tests.test_masks_stage import config as masks_config
from tests.test_render import render_config


@pytest.fixture
def rendered(shapes_dataset, tmp_path):
    """Masks and `bg` + `swap` renders (mp4) and `person` (rawframes) of the shape clips plus one missing clip."""
    root, truth = shapes_dataset
    write_kinetics_csv(root, "val", [("juggling balls", "-clip4_x", 4, 14), ("juggling balls", "gone", 0, 10)])
    out = tmp_path / "out"
    tag = Path(run_masks(masks_config(root, out), progress=False).output).name
    run_render(render_config(out, ["bg", "swap"]), progress=False)
    run_render(render_config(out, ["person"], encode=EncodeOptions(format="rawframes")), progress=False)
    return out, truth, tag


def mmaction_list(path: Path) -> list[list[str]]:
    """mmaction2's VideoDataset/RawframeDataset: `line.strip().split()`; label is the last field."""
    return [line.strip().split() for line in path.read_text().splitlines() if line.strip()]


def test_lists_parse_like_the_trainers_and_every_path_decodes(rendered):
    out, truth, tag = rendered
    write_manifests(ManifestConfig(dataset="kinetics400", out=out))
    manifests = out / "manifests" / "kinetics400" / tag
    labels = (manifests / "bg" / "label_map.txt").read_text().splitlines()
    assert labels == ["juggling balls", "passing American football (in game)"]
    table = {r["clip_id"]: r for r in pq.read_table(manifests / "bg" / "manifest.parquet").to_pylist()}
    prefix = out / "renders" / "kinetics400" / tag / "bg"
    listed = 0
    for split in ("train", "val"):
        video_list = mmaction_list(manifests / "bg" / f"{split}_list_videos.txt")
        slowfast = [line.split(" ") for line in (manifests / "bg" / f"{split}.csv").read_text().splitlines()]
        assert [fields for fields in slowfast] == video_list  # PySlowFast: exactly `path label`, one space
        for path, label in video_list:
            clip_id = Path(path).stem
            row = table[clip_id]
            assert labels[int(label)] == row["label"] and row["split"] == split
            with av.open(str(prefix / path)) as container:
                assert sum(1 for _ in container.decode(video=0)) == row["frames"] == len(truth[clip_id][0])
            listed += 1
    assert listed == 5
    gone = table["gone_000000_000010"]
    assert (gone["status"], gone["in_lists"], gone["path"]) == ("missing", False, None)
    assert 0.05 < table["-clip0_x_000000_000010"]["person_coverage"] < 0.2

    frame_lists = mmaction_list(manifests / "person" / "train_list_rawframes.txt")
    assert len(frame_lists) == 4
    for frame_dir, total, label in frame_lists:
        images = sorted((out / "renders" / "kinetics400" / tag / "person" / frame_dir).glob("img_*.jpg"))
        assert len(images) == int(total) and images[0].name == "img_00001.jpg" and int(label) in (0, 1)


def test_swap_manifest_records_the_background_clip(rendered):
    out, _, tag = rendered
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, variants=("swap",)))
    rows = pq.read_table(out / "manifests" / "kinetics400" / tag / "swap" / "manifest.parquet").to_pylist()
    paired = [r for r in rows if r["status"] == "ok"]
    assert paired and all(r["pair_clip_id"] and r["pair_label"] != r["label"] for r in paired)
    assert {r["status"] for r in rows} <= {"ok", "no_pair", "missing"}


def test_quality_filter_keeps_clips_out_of_lists_and_records_itself(rendered):
    out, _, tag = rendered
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, variants=("bg",), min_coverage=0.5, min_frames_frac=0.9))
    folder = out / "manifests" / "kinetics400" / tag / "bg"
    assert (folder / "train_list_videos.txt").read_text() == ""  # people cover ~10% of the frame: all filtered
    table = pq.read_table(folder / "manifest.parquet")
    assert set(table.column("status").to_pylist()) == {"filtered", "missing"}
    assert json.loads(table.schema.metadata[b"filter"]) == {"min_coverage": 0.5, "min_frames_frac": 0.9}
    assert json.loads((folder / "manifest.json").read_text())["filter"]["min_coverage"] == 0.5

    write_manifests(ManifestConfig(dataset="kinetics400", out=out, variants=("bg",), min_coverage=0.05, min_frames_frac=0.9))
    assert len((folder / "train_list_videos.txt").read_text().splitlines()) == 4


def test_manifests_without_masks_or_renders_say_what_to_run(shapes_dataset, tmp_path):
    with pytest.raises(InputError, match="make masks DATASET=kinetics400"):
        write_manifests(ManifestConfig(dataset="kinetics400", out=tmp_path))
    run_masks(masks_config(shapes_dataset[0], tmp_path), progress=False)
    with pytest.raises(InputError, match="make render DATASET=kinetics400"):
        write_manifests(ManifestConfig(dataset="kinetics400", out=tmp_path))


def test_report_is_one_offline_html_page_with_a_sheet_per_variant(rendered):
    out, _, _ = rendered
    write_manifests(ManifestConfig(dataset="kinetics400", out=out))
    page = write_report(dataset="kinetics400", out=out, clips=3, frames=3).read_text()
    images = re.findall(r'<img src="data:image/(jpeg|png);base64,', page)
    # per clip: its variants side by side (swap, bg, person in protocol order), its masks outlined, its strips
    # per variant (a picture, or a box saying why there is none); and the coverage histogram
    assert len(images) + page.count('<div class="placeholder">') == 3 * 3 + 3 + 3 * 3 + 1
    assert "<tr><th>clip</th><th>swap</th><th>bg</th><th>person</th></tr>" in page
    assert not re.search(r'(src|href)="(?!data:)', page), "everything is inlined"
    assert "Known masks" not in page  # only the sample's shapes have them
    for variant in ("bg", "swap", "person"):
        assert f"<h2>{variant}</h2>" in page
    assert "missing" in page and "luma key (tests)" in page
