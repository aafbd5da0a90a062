"""The HTML report: variants side by side in protocol order, whole captions and `no_pair` boxes, mask outlines,
the problem clips, the sample's known masks and their IoU, and which evaluations are shown."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.datasets.sample import CLIPS, read_truth, shape_truth
from pipeline.engine.problems import COLUMNS
from pipeline.evaluate.section import Evaluation, bars, evaluation_section
from pipeline.render.variants import PRESETS
from pipeline.report.frames import DARK, PERSON_COLOUR, outlined
from pipeline.report.shapes import iou
from pipeline.report.sheets import PROTOCOL_ORDER, variant_order
from tests.conftest import LUMA

SHAPES = [c.clip_id for c in CLIPS if c.source == "shapes"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    """The sample's masks (the luma key: exact on the shape clips), `original`, `swap` and a user variant, and
    their manifests; each test gets its own copy of the outputs."""
    out = tmp_path_factory.mktemp("sample")
    flags = ["--dataset", "sample", "--out", str(out), "--workers", "0"]
    assert main(["masks", *flags, "--segmenter", LUMA]) == 0
    assert main(["render", *flags, "--variants", "mine,swap,original", "--define", "mine:background=blur(3)"]) == 0
    assert main(["manifests", "--dataset", "sample", "--out", str(out)]) == 0
    return out


@pytest.fixture
def out(sample_run, tmp_path) -> Path:
    for part in ("masks", "renders", "manifests"):  # links (original, the masks' clip paths) still reach the data
        shutil.copytree(sample_run / part, tmp_path / part, symlinks=True)
    return tmp_path


def report(out: Path, *flags: str, clips: int = 1) -> str:
    """The page `report` writes (one clip shown unless asked: the pictures take the time)."""
    assert main(["report", "--dataset", "sample", "--out", str(out), "--clips", str(clips), "--frames", "2", *flags]) == 0
    (page,) = (out / "reports" / "sample").glob("*/index.html")
    return page.read_text()


def manifest(out: Path, variant: str) -> list[dict]:
    (path,) = (out / "manifests" / "sample").glob(f"*/{variant}/manifest.parquet")
    return pq.read_table(path).to_pylist()


def section(page: str, title: str) -> str:
    """The page from the heading `title` to the next heading of the same or a higher level."""
    level = re.search(rf"<h(\d)>{re.escape(title)}</h\1>", page)
    assert level, title
    rest = page[level.end():]
    end = re.search(rf"<h[1-{level[1]}]>", rest)
    return rest[: end.start() if end else None]


def test_variant_order_is_original_then_the_protocol_then_the_users_by_name():
    names = ["zebra", "obj", "swap-s1", "bg", "scufo", "mine", "swap", "original", "swap_same-s2", "human_only",
             "swap_same", "background_only", "scuba", "bg_obj2", "person", "bg_obj", "swap_far", "swap_close"]
    assert variant_order(names) == [
        "original", "human_only", "background_only", "swap", "swap-s1", "swap_same", "swap_same-s2", "swap_close",
        "swap_far", "scuba", "scufo", "bg", "bg_obj", "bg_obj2", "person", "obj", "mine", "zebra"]
    assert set(PROTOCOL_ORDER) == set(PRESETS)  # a new preset needs its place


def test_sample_report_sets_the_variants_side_by_side_with_whole_captions(out):
    page = report(out, clips=10)
    grid = section(page, "Variants side by side")
    assert "<tr><th>clip</th><th>original</th><th>swap</th><th>mine</th></tr>" in grid
    swap = manifest(out, "swap")
    no_pair = [r for r in swap if r["status"] == "no_pair"]
    assert no_pair and len(no_pair) < len(swap)
    # every clip shown: each no_pair clip says so, in the side-by-side view and in the variant's strips
    assert grid.count('<div class="placeholder">no_pair: no partner clip</div>') == len(no_pair)
    assert section(page, "swap").count('<div class="placeholder">no_pair: no partner clip</div>') == len(no_pair)
    for row in swap:
        text = f"no_pair; {row['error']}" if row["status"] == "no_pair" else (
            f"ok; on the background of {row['pair_clip_id']} [{row['pair_label']}]")
        assert f"<figcaption>{text}</figcaption>" in grid, text  # whole, however long
    assert grid.count("<img ") == 3 * 10 - len(no_pair)
    assert section(page, "mine").count("<img ") == 10  # a strip per clip


def test_sample_report_scores_the_shape_clips_against_their_known_masks(out):
    shapes = section(report(out), "Known masks of the shape clips")
    for clip_id in SHAPES:  # the luma key finds exactly the shapes
        assert re.search(rf"<td>{re.escape(clip_id)}</td>(<td><figure>.*?</figure></td>){{2}}<td>1.000</td>"
                         r"<td>1.000</td>", shapes), clip_id
    assert shapes.count("<tr>") == 1 + len(SHAPES)


def test_shape_truth_is_the_generated_truth_and_iou_counts_pixels(sample_run):
    person, box = shape_truth(SHAPES[0])
    written = read_truth(sample_run / "data" / "sample" / "truth" / f"{SHAPES[0]}.json")
    np.testing.assert_array_equal(person, written[0])
    np.testing.assert_array_equal(box, written[1])
    assert shape_truth("zidane_pan1_000010_000020") is None and shape_truth("nothing") is None
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert iou(a, b) == 4 / 12 and iou(a, a) == 1.0 and iou(b & ~b, b & ~b) is None


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255), (255, 0, 0), PERSON_COLOUR])
def test_mask_outlines_show_on_any_background(background):
    frame = np.full((120, 160, 3), background, np.uint8)
    person = np.zeros((120, 160), bool)
    person[30:90, 40:100] = True
    drawn = outlined(frame, person, np.zeros_like(person)).astype(int)
    ring = drawn[29:32, 60:80].reshape(-1, 3)  # across the top edge
    assert (np.abs(ring - background).sum(axis=1) > 150).any(), "the edge stands out"
    assert (ring == DARK).all(axis=1).any() and (ring == PERSON_COLOUR).all(axis=1).any(), "dark and light lines"
    tint = 0.75 * np.array(background) + 0.25 * np.array(PERSON_COLOUR)
    assert np.abs(drawn[60, 70] - tint).max() <= 1, "a light tint: the frame shows through"
    assert (drawn[5, 5] == background).all()


def write_problems(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_problem_clips_of_the_masks_and_render_runs_are_listed(out):
    assert "No problem clips in this masks run." in report(out)  # the engine's list, header only
    (run,) = (out / "masks" / "sample").iterdir()
    (run / "problems.csv").unlink()  # as in a run from before the lists
    assert "No <code>problems.csv</code> in this masks run" in report(out)
    long_error = "moov atom not found; " * 12
    problems = [{"clip_id": "gone_000000_000010", "split": "train", "status": "missing", "error": "no such file",
                 "shard": "train-00000", "source": "/data/annotations/train.csv:12"},
                {"clip_id": "broken_000001_000011", "split": "val", "status": "decode_error", "error": long_error,
                 "shard": "val-00000", "source": "/data/annotations/val.csv:3"},
                {"clip_id": "twice_000002_000012", "split": "train", "status": "conflict", "error": "listed twice",
                 "shard": "", "source": ""}]
    write_problems(run / "problems.csv", problems)
    swap_csv = out / "renders" / "sample" / run.name / "swap" / "_status" / "mp4" / "problems.csv"
    write_problems(swap_csv, [{"clip_id": "lonely_000003_000013", "split": "train", "status": "no_pair",
                               "error": "no partner clip", "shard": "train-00001", "source": ""}])
    page = report(out)
    masks = section(page, "Masks")
    for p in problems:
        assert (f"<td>{p['status']}</td><td>{p['clip_id']}</td><td>{p['split']}</td><td>{p['error']}</td>"
                f"<td>{p['source']}</td>") in masks
    assert "<h3>Problem clips (3)</h3>" in masks and "more not shown" not in masks
    assert "<td>mp4</td><td>no_pair</td><td>lonely_000003_000013</td>" in section(page, "swap")
    assert "lonely_000003_000013" not in section(page, "mine")

    many = [{**problems[0], "clip_id": f"gone_{i:06d}"} for i in range(205)]
    write_problems(run / "problems.csv", many)
    masks = section(report(out), "Masks")
    assert masks.count("<td>missing</td>") == 200 and "gone_000199" in masks and "gone_000200" not in masks
    assert f"5 more not shown; all are in <code>{run / 'problems.csv'}</code>" in masks


def metrics(predictions: str, split: str, name: str, **entries) -> dict:
    return {"name": name, "predictions": predictions, "split": split, "bootstrap_resamples": 10, "files": {},
            "manifests": {}, "variants": {"original": {"clips": 4, "top1": 0.5, "top1_ci95": [0.2, 0.8], "top5": 1.0}},
            **entries}


def write_evaluation(out: Path, content: dict, mtime: int) -> None:
    (run,) = (out / "masks" / "sample").iterdir()
    path = out / "reports" / "sample" / run.name / "evaluations" / content["name"] / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    os.utime(path, (mtime, mtime))


def test_only_the_newest_evaluation_of_each_predictions_folder_unless_all_are_asked(out, tmp_path):
    day = 1_767_225_600  # 2026-01-01 00:00 UTC
    a, b = str(tmp_path / "model_a" / "preds"), str(tmp_path / "model_b")
    write_evaluation(out, metrics(a, "val", "val-000000000001"), day)
    write_evaluation(out, metrics(a, "val", "val-000000000002"), day + 3600)
    write_evaluation(out, metrics(a, "val", "val-000000000003"), day + 7200)
    write_evaluation(out, metrics(b, "val", "val-000000000004"), day + 60)
    write_evaluation(out, metrics(a, "train", "train-000000000005"), day + 120)
    page = report(out)
    titles = re.findall(r"<h2>Evaluation: ([^<]+)</h2>", page)
    assert titles == ["preds/ on val, 2026-01-01 02:00 UTC", "preds/ on train, 2026-01-01 00:02 UTC",
                      "model_b/ on val, 2026-01-01 00:01 UTC"]
    assert f"<p>2 older evaluations of <code>{a}</code> on val not shown;" in page
    assert "val-000000000001" not in page and "val-000000000002" not in page
    page = report(out, "--all-evaluations")
    assert len(re.findall(r"<h2>Evaluation: ", page)) == 5 and "older evaluation" not in page
    assert page.index("val-000000000002") < page.index("val-000000000001")  # newest first


def test_no_plot_for_a_metric_that_is_not_available(tmp_path):
    def images(content: dict) -> int:
        evaluation = Evaluation(path=tmp_path / "metrics.json", metrics=content, when=datetime(2026, 1, 1))
        return evaluation_section(evaluation, tmp_path, tmp_path).count("data:image/png")

    na = {"value": None, "ci95": None, "clips": 3}
    shacc = {"value": 0.75, "ci95": [0.5, 1.0], "clips": 3}
    assert images(metrics("/p", "val", "val-1", SBErr={"same": na})) == 1  # top-1 only
    assert images(metrics("/p", "val", "val-1", SBErr={"same": na}, SHAcc={"same": shacc})) == 2
    unscored = {"original": {"clips": 0, "top1": None, "top1_ci95": None, "top5": None}}
    assert images(metrics("/p", "val", "val-1", variants=unscored, SBErr={"same": na})) == 0
    assert bars({"a": (None, None)}, "value") == "" and bars({"a": (0.5, None), "b": (None, None)}, "value")
