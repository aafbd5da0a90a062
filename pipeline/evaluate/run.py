"""`evaluate`: a model's predictions for each variant, matched to the manifests, turned into the static-bias
metrics and a section of the HTML report. Each evaluation is kept under its own name, made from the split and
the predictions files' content (`reports/<dataset>/<masks run>/evaluations/<split>-<digest>/metrics.json`), so
scoring another model never overwrites the last one.

The predictions folder holds `<variant>.pkl` or `<variant>.csv` per variant. Subfolders, one per training
variant, each holding the same, give the train × eval grid. Which variant plays which part in a protocol
follows from its settings in the manifest: `original` (the sources), swap variants and their pairing mode,
static-background variants (SCUBA) and their still twins (SCUFO, the same settings but `still`); BOR and HOR
read the variants named `background_only` and `human_only`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import write_json
from pipeline.engine.commit import file_digest
from pipeline.errors import InputError
from pipeline.evaluate.metrics import Scored, accuracy, ratio, stillmix, swap_shares
from pipeline.evaluate.predictions import FORMATS, read_predictions
from pipeline.evaluate.section import manifest_digests
from pipeline.manifests.read import VariantRows, choose_split, manifest_digest, variant_rows
from pipeline.masks import find_run
from pipeline.predict.scorers import SCORER_FILE

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    dataset: str  # the output name (`ucf101-split1`)
    predictions: Path  # the folder of `<variant>.<ext>` files (and `<train variant>/` subfolders)
    out: Path = Path(".")
    masks_tag: str | None = None
    make_args: str | None = None
    split: str | None = None  # None: `val`, or the only split listed
    bootstrap: int = 1000  # resamples per interval
    report: bool = True  # rewrite the HTML report with the evaluation section


def run_evaluate(config: EvaluateConfig) -> tuple[Path, dict]:
    """Score every predictions file; returns the metrics file written and its content."""
    masks = find_run(config.out, config.dataset, config.masks_tag, make_args=config.make_args)
    manifests = Path(config.out) / "manifests" / config.dataset / masks.tag
    groups = prediction_files(Path(config.predictions))
    known = sorted(p.parent.name for p in manifests.glob("*/manifest.parquet")) if manifests.is_dir() else []
    for files in groups.values():
        for variant, path in files.items():
            if variant not in known:
                raise InputError(f"{path}: no manifest for variant {variant!r} in {manifests} (known: "
                                 f"{', '.join(known) or 'none; run `make manifests` first'})")
    classes = (manifests / known[0] / "label_map.txt").read_text().splitlines()
    used = sorted({variant for files in groups.values() for variant in files})
    split = choose_split(manifests, used, config.split)
    variants = {name: variant_rows(manifests / name, split) for name in used}
    scorer_file = Path(config.predictions) / SCORER_FILE  # written by `predict`: the model, its label space
    scorer = json.loads(scorer_file.read_text()) if scorer_file.is_file() else None
    stale = sorted(v for v in used if scorer and "manifests" in scorer
                   and scorer["manifests"].get(v) != manifest_digest(manifests / v))
    if stale:
        raise InputError(f"{Path(config.predictions) / (stale[0] + '.csv')}: not predicted from the manifest of "
                         f"{stale[0]} there now (re-rendered, other rows, or not finished); run `make predict` again")
    if scorer and scorer.get("classes"):  # its own classes: each row matched to them by its label's name
        classes = list(scorer["classes"])
        variants = {name: in_label_space(rows, classes, scorer_file) for name, rows in variants.items()}
    files = {path.relative_to(config.predictions).as_posix(): predictions_state(path)
             for group in groups.values() for path in group.values()}
    metrics = {"dataset": config.dataset, "masks_run": masks.tag, "split": split, "classes": len(classes),
               "predictions": str(Path(config.predictions).absolute()), "files": dict(sorted(files.items())),
               "bootstrap_resamples": config.bootstrap, "manifests": manifest_digests(manifests, used)}
    if scorer:
        metrics["scorer"] = {key: value for key, value in scorer.items() if key not in ("classes", "class_prompts", "manifests")}
        metrics["label_space"] = scorer.get("label_space")
    if None in groups:
        metrics |= score(groups[None], variants, classes, config.bootstrap)
    trained = {name: score(files, variants, classes, config.bootstrap) for name, files in groups.items() if name}
    if trained:
        metrics["trained_on"] = trained
        metrics["grid"] = {train: {v: m["top1"] for v, m in result["variants"].items()} for train, result in trained.items()}
    content = {name: state["sha256"] for name, state in metrics["files"].items()}
    name = hashlib.sha256(json.dumps([split, config.bootstrap, content]).encode()).hexdigest()[:12]
    metrics["name"] = f"{split}-{name}"
    path = Path(config.out) / "reports" / config.dataset / masks.tag / "evaluations" / metrics["name"] / "metrics.json"
    write_json(path, metrics)
    if config.report:
        from pipeline.report import write_report

        write_report(dataset=config.dataset, out=config.out, masks_tag=masks.tag, make_args=config.make_args)
    return path, metrics


def in_label_space(variant: VariantRows, classes: list[str], where: Path) -> VariantRows:
    """The variant's rows with their label (and swap background's label) indexed in `classes`, by name."""
    index = {name: i for i, name in enumerate(classes)}
    rows = []
    for row in variant.rows:
        if row["label"] not in index:
            raise InputError(f"{where}: its label space ({len(classes)} classes) has no class {row['label']!r} "
                             f"(clip {row['clip_id']} of {variant.name}); predict with a label space that fits")
        pair = row["pair_label"]
        rows.append(row | {"label_index": index[row["label"]],
                           "pair_label_index": index.get(pair, -1) if pair is not None else None})
    return dataclasses.replace(variant, rows=rows)


def prediction_files(folder: Path) -> dict[str | None, dict[str, Path]]:
    """`{None: top-level files, train variant: its subfolder's files}`, each `{variant: path}`."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such predictions folder; give PREDICTIONS=DIR with <variant>.pkl or .csv")
    groups: dict[str | None, dict[str, Path]] = {}
    for where, name in [(folder, None), *((sub, sub.name) for sub in sorted(folder.iterdir()) if sub.is_dir())]:
        files: dict[str, Path] = {}
        for path in sorted(where.iterdir()):
            if not path.is_file() or path.name == SCORER_FILE:
                continue
            if path.suffix not in FORMATS:
                log.warning("%s: not a predictions file (.pkl or .csv), ignored", path)
                continue
            if path.stem in files:
                raise InputError(f"{path}: variant {path.stem!r} has two predictions files ({files[path.stem].name}); keep one")
            files[path.stem] = path
        if files:
            groups[name] = files
    if not groups:
        raise InputError(f"{folder}: no predictions files (<variant>.pkl or <variant>.csv)")
    return groups


def score(files: dict[str, Path], variants: dict[str, VariantRows], classes: list[str], resamples: int) -> dict:
    """Every metric the predictions in `files` allow."""
    scored: dict[str, Scored] = {}
    for name, path in sorted(files.items()):
        rows = variants[name].rows
        found = read_predictions(path, [r["clip_id"] for r in rows], [r["label_index"] for r in rows], len(classes))
        pair = [-1 if r["pair_label_index"] is None else r["pair_label_index"] for r in rows]
        scored[name] = Scored(variant=name, clip_ids=tuple(r["clip_id"] for r in rows),
                              labels=np.array([r["label_index"] for r in rows], dtype=np.int64),
                              pair_labels=np.array(pair, dtype=np.int64), predicted=found.labels, scores=found.scores)
    out: dict = {"variants": {name: accuracy(s, classes, resamples) for name, s in scored.items()}}
    roles = {name: variants[name].role for name in scored}
    original = next((scored[n] for n, role in roles.items() if role == "original"), None)
    for key, name in (("BOR", "background_only"), ("HOR", "human_only")):
        if original is not None and name in scored:
            out[key] = ratio(scored[name], original, resamples)
    modes: dict[str, list[Scored]] = {}  # seeds of one pairing pooled; aligned and plain swaps kept apart
    for name, role in roles.items():
        if role == "swap":
            pairing = variants[name].spec.get("pairing", {})
            mode = pairing.get("mode", "rand") + ("+centroid" if pairing.get("align") == "centroid" else "")
            modes.setdefault(mode, []).append(scored[name])
    if modes:
        shares = {mode: swap_shares(group, resamples) for mode, group in sorted(modes.items())}
        for mode, result in shares.items():
            if mode.startswith("same"):  # the background clip has the clip's own label: SBErr says nothing
                result["SBErr"] = {"value": None, "clips": result["SBErr"]["clips"], "ci95": None,
                                   "note": "same-class swaps: the background's label is the clip's own"}
        out["SHAcc"] = {mode: s["SHAcc"] | {"variants": s["variants"]} for mode, s in shares.items()}
        out["SBErr"] = {mode: s["SBErr"] | {"variants": s["variants"]} for mode, s in shares.items()}
        out["swap_background_wins"] = background_wins(  # same-class swaps: the background's label is their own
            [(variants[s.variant], s) for mode, group in modes.items() if not mode.startswith("same") for s in group],
            classes)
    pairs = stillmix_pairs(variants, roles)
    if pairs:
        results = {scuba: stillmix(scored[scuba], scored[scufo], resamples) for scuba, scufo in pairs}
        out["stillmix"] = results
        main = results.get("scuba") or next(iter(results.values()))
        out |= {key: main[key] for key in ("SCUBA", "SCUFO", "contrasted")}
    return out


def stillmix_pairs(variants: dict[str, VariantRows], roles: dict[str, str]) -> list[tuple[str, str]]:
    """(SCUBA, SCUFO) variant pairs among the scored ones: a SCUFO is the still twin of the SCUBA made from the
    same everything else (fills, masks, backgrounds and their folder's content, seed, encoder). Each SCUBA takes
    one twin; a SCUFO without one is reported and left out."""
    def made_of(name: str) -> str:
        fields = dict(variants[name].made_of)
        fields["variant"] = {k: v for k, v in fields.get("variant", {}).items() if k not in ("name", "description", "still")}
        return json.dumps(fields, sort_keys=True)

    free = sorted(n for n, role in roles.items() if role == "scuba")
    pairs = []
    for scufo in sorted(n for n, role in roles.items() if role == "scufo"):
        twin = next((scuba for scuba in free if made_of(scuba) == made_of(scufo)), None)
        if twin is None:
            log.warning("%s: no SCUBA predictions made from the same settings (fills, backgrounds, seed); no "
                        "contrasted accuracy for it", scufo)
            continue
        free.remove(twin)
        pairs.append((twin, scufo))
    return pairs


def background_wins(swaps: list[tuple[VariantRows, Scored]], classes: list[str]) -> list[dict]:
    """The swap clips predicted as their background clip's label (HAT's static-bias failures)."""
    wins = []
    for rows, scored in swaps:
        for row, predicted in zip(rows.rows, scored.predicted.tolist()):
            if row["pair_label_index"] is not None and predicted == row["pair_label_index"]:
                wins.append({"variant": rows.name, "clip_id": row["clip_id"], "label": row["label"],
                             "pair_clip_id": row["pair_clip_id"], "pair_label": row["pair_label"],
                             "predicted": classes[predicted], "path": row["path"]})
    return wins


def predictions_state(path: Path) -> dict:
    """A predictions file as read: the content's sha256 (through any link), size and mtime (to spot a change
    without reading it again)."""
    target = Path(path).resolve()
    stat = target.stat()
    return {"sha256": file_digest(target)["sha256"], "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
