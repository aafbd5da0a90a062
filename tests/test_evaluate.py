"""`evaluate`: hand-made predictions whose metrics are known, every file format, the grid, and the errors."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.evaluate.metrics import Scored, accuracy, ratio, stillmix, swap_shares
from pipeline.evaluate.run import EvaluateConfig, run_evaluate, stillmix_pairs
from pipeline.manifests.read import VariantRows
from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.masks import run_masks
from pipeline.render import run_render
from pipeline.render.variants import ProtocolOptions, resolve
from tests.test_masks_stage import config as masks_config
from tests.test_render import render_config

VARIANTS = ["original", "background_only", "human_only", "swap", "scuba", "scufo"]
CLASSES = 2


@pytest.fixture
def benchmark(shapes_dataset, tmp_path):
    """Masks, the protocol variants (two swap seeds) and their manifests (no filter) of the shape clips."""
    root, _ = shapes_dataset
    out = tmp_path / "out"
    tag = Path(run_masks(masks_config(root, out), progress=False).output).name
    variants = resolve(VARIANTS, protocol=ProtocolOptions(swap_seeds=(0, 1)))
    run_render(render_config(out, [], variants=variants), progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, min_coverage=0.0, min_frames_frac=0.0))
    return out, out / "manifests" / "kinetics400" / tag


def listed(manifests: Path, variant: str, split: str = "train") -> list[dict]:
    """The rows of the variant's trainer list, in its order (checked against the list file itself)."""
    rows = [r for r in pq.read_table(manifests / variant / "manifest.parquet").to_pylist()
            if r["split"] == split and r["in_lists"]]
    lines = (manifests / variant / f"{split}_list_videos.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == [r["path"] for r in rows]
    return rows


def write_labels(folder: Path, variant: str, rows: list[dict], answer) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{variant}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "pred"])
        for row in reversed(rows):  # matched by id, not by order
            writer.writerow([row["clip_id"], answer(row)])


def scores_for(rows: list[dict], answer, seed: int = 0) -> np.ndarray:
    """Scores whose top class is `answer(row)`, the rest random below it."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 0.4, size=(len(rows), CLASSES))
    for i, row in enumerate(rows):
        scores[i, answer(row)] = 0.9
    return scores


def evaluate(out: Path, predictions: Path, **kwargs) -> dict:
    return run_evaluate(EvaluateConfig(dataset="kinetics400", out=out, predictions=predictions, split="train",
                                       report=False, **kwargs))[1]


def other(row: dict) -> int:
    return 1 - row["label_index"]


def test_background_answers_give_sberr_one_and_people_answers_give_hor_one(benchmark, tmp_path):
    out, manifests = benchmark
    swaps = [v for v in (p.name for p in manifests.iterdir()) if v.startswith("swap-")]
    assert swaps == sorted(swaps) and sorted(swaps) == ["swap-s0", "swap-s1"]
    predictions = tmp_path / "predictions"
    for variant in swaps:  # always the background clip's label
        rows = listed(manifests, variant)
        assert rows and all(r["pair_label_index"] is not None for r in rows)
        write_labels(predictions, variant, rows, lambda r: r["pair_label_index"])
    # right only where people are visible: on the originals and human-only, wrong on background-only
    write_labels(predictions, "original", listed(manifests, "original"), lambda r: r["label_index"])
    write_labels(predictions, "human_only", listed(manifests, "human_only"), lambda r: r["label_index"])
    write_labels(predictions, "background_only", listed(manifests, "background_only"), other)
    metrics = evaluate(out, predictions)
    assert metrics["SBErr"]["rand"]["value"] == 1.0 and metrics["SHAcc"]["rand"]["value"] == 0.0
    assert metrics["SBErr"]["rand"]["variants"] == ["swap-s0", "swap-s1"]
    assert metrics["SBErr"]["rand"]["clips"] == sum(len(listed(manifests, v)) for v in swaps)
    assert metrics["HOR"]["value"] == 1.0 and metrics["BOR"]["value"] == 0.0
    assert metrics["HOR"]["clips"] == 4 and metrics["HOR"]["ci95"] == [1.0, 1.0]
    wins = metrics["swap_background_wins"]
    assert len(wins) == metrics["SBErr"]["rand"]["clips"] and all(w["pair_label"] != w["label"] for w in wins)


def test_contrasted_accuracy_counts_right_on_scuba_and_wrong_on_scufo(benchmark, tmp_path):
    out, manifests = benchmark
    predictions = tmp_path / "predictions"
    scuba, scufo = listed(manifests, "scuba"), listed(manifests, "scufo")
    assert [r["clip_id"] for r in scuba] == [r["clip_id"] for r in scufo] and scuba[0]["clip_id"].endswith("__0")
    wrong_on_scufo = {r["clip_id"] for r in scufo[:3]}
    write_labels(predictions, "scuba", scuba, lambda r: r["label_index"])
    write_labels(predictions, "scufo", scufo, lambda r: other(r) if r["clip_id"] in wrong_on_scufo else r["label_index"])
    metrics = evaluate(out, predictions)
    n = len(scuba)
    assert metrics["SCUBA"]["value"] == 1.0
    assert metrics["SCUFO"]["value"] == pytest.approx(1 - 3 / n)
    assert metrics["contrasted"]["value"] == pytest.approx(3 / n)
    assert metrics["stillmix"]["scuba"]["scufo"] == "scufo"


def test_mmaction2_pickles_and_score_csv_give_the_same_metrics(benchmark, tmp_path):
    out, manifests = benchmark
    answers = {"original": lambda r: r["label_index"], "background_only": other,
               "swap-s0": lambda r: r["pair_label_index"], "swap-s1": lambda r: r["label_index"]}
    formats = {}
    for name in ("v1", "v0", "csv"):
        folder = tmp_path / name
        folder.mkdir()
        for variant, answer in answers.items():
            rows = listed(manifests, variant)
            scores = scores_for(rows, answer)
            if name == "v1":  # mmaction2 1.x tools/test.py --dump: dicts of tensors, in list order
                dump = [{"pred_score": torch.tensor(s, dtype=torch.float32), "pred_label": torch.tensor([int(s.argmax())]),
                         "gt_label": torch.tensor([r["label_index"]])} for s, r in zip(scores, rows)]
                (folder / f"{variant}.pkl").write_bytes(pickle.dumps(dump))
            elif name == "v0":  # mmaction2 0.x --out: score arrays, in list order
                (folder / f"{variant}.pkl").write_bytes(pickle.dumps([s.astype(np.float32) for s in scores]))
            else:
                with open(folder / f"{variant}.csv", "w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["clip_id", *(f"score_{c}" for c in range(CLASSES))])
                    writer.writerows([r["clip_id"], *s] for r, s in zip(rows, scores))
        metrics = evaluate(out, folder)
        formats[name] = {k: v for k, v in metrics.items() if k not in ("predictions", "files", "name")}
    assert formats["v1"] == formats["v0"] == formats["csv"]
    metrics = formats["v1"]
    assert metrics["BOR"]["value"] == 0.0 and metrics["variants"]["original"]["top5"] == 1.0
    assert metrics["SHAcc"]["rand"]["value"] == pytest.approx(len(listed(manifests, "swap-s1")) /
                                                              metrics["SHAcc"]["rand"]["clips"])


def test_training_variants_in_subfolders_make_a_grid(benchmark, tmp_path):
    out, manifests = benchmark
    predictions = tmp_path / "predictions"
    write_labels(predictions / "original", "original", listed(manifests, "original"), lambda r: r["label_index"])
    write_labels(predictions / "original", "human_only", listed(manifests, "human_only"), other)
    write_labels(predictions / "human_only", "original", listed(manifests, "original"), other)
    metrics = evaluate(out, predictions)
    assert metrics["grid"] == {"human_only": {"original": 0.0}, "original": {"original": 1.0, "human_only": 0.0}}
    assert metrics["trained_on"]["original"]["HOR"]["value"] == 0.0
    assert "variants" not in metrics


def test_ratio_and_intervals_on_known_numbers():
    ids = tuple(f"c{i}" for i in range(8))
    labels = np.zeros(8, dtype=np.int64)
    original = Scored("original", ids, labels, -np.ones(8, np.int64), np.array([0, 0, 0, 0, 0, 0, 1, 1]), None)
    background = Scored("background_only", ids[::-1], labels, -np.ones(8, np.int64),
                        np.array([0, 0, 0, 1, 1, 1, 1, 1]), None)  # right on c7, c6, c5
    result = ratio(background, original, resamples=2000)
    assert result["value"] == pytest.approx((3 / 8) / (6 / 8)) and result["clips"] == 8
    low, high = result["ci95"]
    assert low < result["value"] < high and result == ratio(background, original, resamples=2000)
    top = accuracy(original, ["a", "b"], resamples=500)
    assert top["top1"] == 0.75 and top["per_class_top1"] == {"a": 0.75} and top["top5"] is None
    assert top["top1_ci95"][0] < 0.75 < top["top1_ci95"][1]


def test_swap_shares_and_contrasted_on_three_classes():
    ids = tuple(f"c{i}" for i in range(6))
    own = np.array([0, 0, 1, 1, 2, 2])
    background = np.array([1, 2, 2, 0, 0, 1])
    predicted = np.array([0, 2, 0, 0, 1, 2])  # own, background, neither, background, neither, own
    shares = swap_shares([Scored("swap-s0", ids, own, background, predicted, None)], resamples=200)
    assert shares["SHAcc"]["value"] == pytest.approx(2 / 6) and shares["SBErr"]["value"] == pytest.approx(2 / 6)
    scuba = Scored("scuba", ids, own, -np.ones(6, np.int64), np.array([0, 0, 1, 0, 2, 0]), None)  # wrong on c3, c5
    # in the other order (c5 … c0): right on c3 and c2 only
    scufo = Scored("scufo", ids[::-1], own[::-1], -np.ones(6, np.int64), np.array([0, 0, 1, 1, 2, 2]), None)
    on_scufo = {"c5": False, "c4": False, "c3": True, "c2": True, "c1": False, "c0": False}
    result = stillmix(scuba, scufo, resamples=200)
    right_on_scuba = {"c0": True, "c1": True, "c2": True, "c3": False, "c4": True, "c5": False}
    contrasted = sum(right_on_scuba[c] and not on_scufo[c] for c in ids) / 6
    assert result["contrasted"]["value"] == pytest.approx(contrasted) == pytest.approx(3 / 6)
    assert result["SCUBA"]["value"] == pytest.approx(4 / 6) and result["SCUFO"]["value"] == pytest.approx(2 / 6)


def test_a_pickle_from_another_list_is_caught_by_its_gt_labels_and_old_dumps_read(benchmark, tmp_path, capsys):
    out, manifests = benchmark
    rows = listed(manifests, "original")
    scores = scores_for(rows, lambda r: r["label_index"])
    folder = tmp_path / "old"
    folder.mkdir()
    # mmaction2 1.0 / 1.1 wrote pred_scores / gt_labels as {'item': tensor}
    dump = [{"pred_scores": {"item": torch.tensor(s)}, "gt_labels": {"item": torch.tensor([r["label_index"]])}}
            for s, r in zip(scores, rows)]
    (folder / "original.pkl").write_bytes(pickle.dumps(dump))
    assert evaluate(out, folder)["variants"]["original"]["top1"] == 1.0
    shuffled = [{"pred_score": torch.tensor(s), "gt_label": torch.tensor([r["label_index"]])}
                for s, r in zip(scores, rows[1:] + rows[:1])]
    (folder / "original.pkl").write_bytes(pickle.dumps(shuffled))
    assert [r["label_index"] for r in rows] != [r["label_index"] for r in rows[1:] + rows[:1]]
    with pytest.raises(InputError, match="has gt_label .* the predictions were made from another list"):
        evaluate(out, folder)
    one_hot = [{"pred_score": torch.tensor(s), "gt_label": torch.eye(CLASSES)[r["label_index"]]}  # multi-label
               for s, r in zip(scores, rows[1:] + rows[:1])]
    (folder / "original.pkl").write_bytes(pickle.dumps(one_hot))
    assert evaluate(out, folder)["variants"]["original"]["clips"] == len(rows)  # not checked, not rejected
    (folder / "original.pkl").write_bytes(pickle.dumps([[0.1, "x"]] * len(rows)))
    with pytest.raises(InputError, match="row 0 is not an array of class scores"):
        evaluate(out, folder)


@pytest.mark.parametrize("case, message", [
    ("extra_row", "5 predictions for a list of 4 clips"),
    ("unknown_clip", "clip 'nobody' is not in the manifest's list"),
    ("classes", "row 0 has 3 class scores; the label map has 2 classes"),
    ("no_manifest", "no manifest for variant 'bg'"),
    ("missing_clip", "3 predictions for a list of 4 clips (first missing"),
    ("twice", "is predicted twice"),
    ("bad_label", "pred '7' is not a label index in 0..1"),
])
def test_mismatches_are_one_line_errors_naming_the_file(benchmark, tmp_path, capsys, case, message):
    out, manifests = benchmark
    rows = listed(manifests, "original")
    folder = tmp_path / case
    folder.mkdir()
    right = [[r["clip_id"], r["label_index"]] for r in rows]
    body = {"extra_row": None, "unknown_clip": right[:3] + [["nobody", 0]], "missing_clip": right[:3],
            "twice": right + right[:1], "bad_label": right[:3] + [[rows[3]["clip_id"], 7]]}
    if case in ("extra_row", "classes"):
        scores = [np.zeros(3 if case == "classes" else CLASSES) for _ in range(len(rows) + (case == "extra_row"))]
        (folder / "original.pkl").write_bytes(pickle.dumps(scores))
    elif case == "no_manifest":
        (folder / "bg.csv").write_text("clip_id,pred\n")
    else:
        with open(folder / "original.csv", "w", newline="") as f:
            csv.writer(f).writerows([["clip_id", "pred"], *body[case]])
    code = main(["evaluate", "--dataset", "kinetics400", "--out", str(out), "--predictions", str(folder),
                 "--split", "train"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(folder) in err and len(err.strip().splitlines()) == 1, err


def test_cli_writes_metrics_and_the_report_section(benchmark, tmp_path, capsys):
    out, manifests = benchmark
    predictions = tmp_path / "predictions"
    write_labels(predictions, "original", listed(manifests, "original"), lambda r: r["label_index"])
    write_labels(predictions, "background_only", listed(manifests, "background_only"), other)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, min_coverage=0.0, min_frames_frac=0.0))
    args = ["evaluate", "--dataset", "kinetics400", "--out", str(out), "--predictions", str(predictions)]
    assert main(args) == 2 and "is not in the manifest's list" in capsys.readouterr().err  # val, by default
    assert main([*args, "--split", "test"]) == 2
    assert "no clips listed in split 'test' (listed: train, val)" in capsys.readouterr().err
    assert main([*args, "--split", "train"]) == 0
    printed = capsys.readouterr().out
    assert "BOR: 0.000" in printed and "original: top-1 1.000" in printed
    report = out / "reports" / "kinetics400" / manifests.name
    (first,) = (report / "evaluations").glob("train-*/metrics.json")
    assert f"metrics: {first}" in printed
    metrics = json.loads(first.read_text())
    assert metrics["BOR"]["value"] == 0.0 and metrics["split"] == "train"
    page = (report / "index.html").read_text()
    assert "<h2>Evaluation: predictions/ on train, " in page and "BOR" in page and "Stale" not in page
    # another model's predictions: a second evaluation beside the first; the report shows the newest of the folder
    write_labels(predictions, "background_only", listed(manifests, "background_only"), lambda r: r["label_index"])
    assert main([*args, "--split", "train"]) == 0 and "BOR: 1.000" in capsys.readouterr().out
    assert len(list((report / "evaluations").glob("train-*/metrics.json"))) == 2
    assert json.loads(first.read_text())["BOR"]["value"] == 0.0
    page = (report / "index.html").read_text()
    assert page.count("<h2>Evaluation: ") == 1 and first.parent.name not in page
    assert f"1 older evaluation of <code>{predictions}</code> on train not shown" in page
    assert main(["report", "--dataset", "kinetics400", "--out", str(out), "--all-evaluations"]) == 0
    page = (report / "index.html").read_text()
    assert page.count("<h2>Evaluation: predictions/ on train, ") == 2 and first.parent.name in page
    assert "<b>Stale:</b> the predictions files background_only.csv changed" in page  # the first one's file
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, min_coverage=0.5, min_frames_frac=1.0))
    assert main(["report", "--dataset", "kinetics400", "--out", str(out)]) == 0
    assert "<b>Stale:</b> the manifests of background_only, original changed" in (report / "index.html").read_text()


def test_scufo_pairs_only_with_the_scuba_made_from_the_same_settings():
    def variant(name: str, seed: int, still: bool) -> VariantRows:
        spec = {"name": name, "background": "stripes", "backgrounds": 1, **({"still": True} if still else {})}
        return VariantRows(name=name, spec=spec, made_of={"variant": spec, "seed": seed}, rows=[])

    variants = {"scuba": variant("scuba", 0, False), "scuba_b": variant("scuba_b", 1, False),
                "scufo": variant("scufo", 1, True), "scufo_x": variant("scufo_x", 7, True)}
    roles = {name: v.role for name, v in variants.items()}
    assert roles == {"scuba": "scuba", "scuba_b": "scuba", "scufo": "scufo", "scufo_x": "scufo"}
    assert stillmix_pairs(variants, roles) == [("scuba_b", "scufo")]  # the other seed's backgrounds differ


def test_predictions_behind_links_are_named_by_their_content(benchmark, tmp_path):
    out, manifests = benchmark
    rows = listed(manifests, "original")
    names = []
    for run, answer in (("a", lambda r: r["label_index"]), ("b", other)):
        write_labels(tmp_path / run, "results", rows, answer)
        (tmp_path / run / "preds").mkdir()
        (tmp_path / run / "preds" / "original.csv").symlink_to(Path("..") / "results.csv")  # the same link text
        path, metrics = run_evaluate(EvaluateConfig(dataset="kinetics400", out=out, predictions=tmp_path / run / "preds",
                                                    split="train", report=False))
        names.append(path.parent.name)
    assert names[0] != names[1]  # two evaluations, neither overwriting the other
