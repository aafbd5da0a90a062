"""Run the predict stage: score the listed rows of every variant's manifest with a zero-shot classifier, through
the shard engine (one shard per variant and masks shard), and write what `evaluate` reads:

`<out>/predictions/<dataset>/<masks run>/<scorer>-<fingerprint>/<split>/<variant>.csv` (`clip_id,score_0,…`)
and `scorer.json` beside them; the shards under `…/_shards/<split>/<variant>/`.

A shard is made from the scorer (backend, name, the content hash of its weights, precision), the prompts, the
frames per clip, the batch (every model call has its shape, the last padded: a clip's scores are the same
whichever clips it is batched with, or alone, but another shape gives other low bits), the variant's settings, each row's manifest entry, and the committed digest of the render
shard the rows came from: a rerun does nothing, and a variant rendered again, or a manifest with other rows,
redoes only its shards.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.engine import ShardStats, ShardTask, StageSummary, current_shards, run_stage
from pipeline.engine.record import RecordFile, write_if_changed
from pipeline.errors import InputError
from pipeline.executor import ExecOptions, session
from pipeline.manifests.read import LIST_FORMATS, VariantRows, choose_split, manifest_digest, variant_rows
from pipeline.masks import MasksRun, StoredClip, find_run
from pipeline.predict.inputs import PredictItem
from pipeline.predict.labels import label_space
from pipeline.predict.load import load_scorer
from pipeline.predict.prompts import make_prompts
from pipeline.predict.scorers import SCORER_FILE, ScorerSpec
from pipeline.predict.stage import PredictStage
from pipeline.records import OK
from pipeline.render.backdrops import folder_digest

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 8


@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    dataset: str  # the output name (`ucf101-split1`)
    scorer: ScorerSpec
    out: Path = Path(".")
    masks_tag: str | None = None
    make_args: str | None = None
    variants: tuple[str, ...] | None = None  # None: every variant with a manifest
    split: str | None = None  # None: val, or the only split listed
    frames: int | None = None  # per clip; None: the model's own (X-CLIP), else 8
    prompts: Path | None = None  # TOML: templates, [names]
    label_space: str | None = None  # None: the dataset's own (Mimetics: its 50 classes); kinetics400
    batch: int = 4  # clips per model call
    readers: int = 2  # clips read ahead at once
    execution: ExecOptions = field(default_factory=lambda: ExecOptions(workers=0))
    overwrite: bool = False
    retry_failed: bool = False


@dataclass(kw_only=True)
class PredictSummary:
    folder: str  # what `make evaluate PREDICTIONS=` takes
    masks_tag: str
    split: str
    scorer: dict
    variants: list[StageSummary]
    incomplete: dict[str, str] = field(default_factory=dict)  # variant → why its CSV lacks rows
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.incomplete) or any(v.failed_shards for v in self.variants)

    def lines(self) -> list[str]:
        out = [f"predict {self.scorer['scorer']} (weights {self.scorer['weights']}, sha256 "
               f"{self.scorer['weights_sha256'][:12]}) on split {self.split} in {self.seconds:.1f}s"]
        for summary in self.variants:
            out += summary.lines()
        out += [f"INCOMPLETE {name}: {why}" for name, why in self.incomplete.items()]
        out.append(f"predictions: {self.folder}")
        return out


def run_predict(config: PredictConfig, *, progress: bool = True) -> PredictSummary:
    started = time.perf_counter()
    masks = find_run(config.out, config.dataset, config.masks_tag, make_args=config.make_args)
    manifests = Path(config.out).absolute() / "manifests" / config.dataset / masks.tag
    names = variant_names(manifests, config)
    split = choose_split(manifests, names, config.split)
    clips = {clip.clip_id: clip for clip in masks.clips()}
    space = label_space(config.label_space, dataset=config.dataset, clips=clips.values(),
                        label_map=(manifests / names[0] / "label_map.txt").read_text().splitlines())
    classes = space.classes
    prompts = make_prompts(list(classes), config.prompts)
    scorer = load_scorer(config.scorer)  # here first: weights that do not load stop the run (exit 2)
    scorer.classes(prompts)
    frames = config.frames or scorer.frames or DEFAULT_FRAMES
    if scorer.frames and frames != scorer.frames:
        raise InputError(f"{config.scorer.label} takes {scorer.frames} frames per clip; FRAMES={frames} does not fit")
    made_of = {"scorer": config.scorer.label, "weights_sha256": scorer.weights_sha256,
               "device": config.scorer.device.split(":")[0],  # a CPU and a GPU give other low bits
               "precision": config.scorer.precision, "label_space": space.name, "prompts": prompts.digest(),
               "frames": frames, "batch": config.batch}  # a batch's shape shapes bits too
    fingerprint = digest(made_of)  # the weights by their content: where they came from does not key them
    made_of["weights"] = config.scorer.weights or "its own"
    root = Path(config.out).absolute() / "predictions" / config.dataset / masks.tag / f"{slug(config.scorer)}-{fingerprint}"
    summaries, incomplete = [], {}
    execution = config.execution  # CPU workers share the cores between their models
    threads = execution.threads_per_worker() if not execution.in_process and config.scorer.device == "cpu" else 0
    record = root / split / SCORER_FILE
    described = {**made_of, "classes": list(classes), "templates": list(prompts.templates),
                 "class_prompts": list(prompts.names), "manifests": recorded_manifests(record)}
    with session(config.execution) as client:  # one cluster for every variant
        for name in names:
            read_from = manifest_digest(manifests / name)  # before the rows: a manifest rewritten meanwhile is caught
            rows = variant_rows(manifests / name, split)
            stage = PredictStage(scorer=config.scorer, prompts=prompts, frames=frames, batch=config.batch,
                                 readers=config.readers, variant=rows.spec, seed=rows.made_of.get("seed", 0),
                                 decode_fps=masks.decode_fps, masks_dir=masks.folder,
                                 folder=root / "_shards" / split / name, threads=threads)
            plan = variant_plan(stage, rows, clips, masks, config, fingerprint=digest([fingerprint, rows.made_of])) \
                if rows.rows else []
            if plan:
                summaries.append(run_stage(
                    f"predict {name}", stage.folder, plan, plan, options=config.execution, client=client,
                    record=[RecordFile.json(stage.folder / "variant.json", {**made_of, "variant": rows.made_of})],
                    progress=progress, key_prefix=f"predict-{config.dataset}-{name}"))
            elif rows.listed:
                raise InputError(f"{manifests / name}: predict reads {', '.join(LIST_FORMATS)} rows; the {split} clips of "
                                 f"{name} are listed as {', '.join(rows.listed)} only (render it with FORMAT=lazy too)")
            else:  # nothing to score: an empty list, as the variant's list of the split is
                log.warning("predict %s: no clip listed in split %s", name, split)
            missing = write_csv(root / split / f"{name}.csv", plan, rows, len(classes))
            if missing:
                incomplete[name] = missing
                described["manifests"].pop(name, None)  # evaluate refuses the CSV until a rerun completes it
            else:
                described["manifests"][name] = read_from  # the CSV is made from this manifest (evaluate checks it)
            write_if_changed(record, json.dumps(described, indent=1, sort_keys=True) + "\n")
    return PredictSummary(folder=str(root / split), masks_tag=masks.tag, split=split, scorer=made_of, variants=summaries,
                          incomplete=incomplete, seconds=round(time.perf_counter() - started, 2))


def recorded_manifests(record: Path) -> dict[str, str]:
    """Variant → the digest of the manifest its CSV in this folder was made from, as `scorer.json` says."""
    try:
        return dict(json.loads(record.read_text()).get("manifests", {}))
    except FileNotFoundError:
        return {}


def variant_names(manifests: Path, config: PredictConfig) -> list[str]:
    known = sorted(p.parent.name for p in manifests.glob("*/manifest.parquet")) if manifests.is_dir() else []
    names = list(config.variants or known)
    missing = [name for name in names if name not in known]
    if not names or missing:
        hint = config.make_args or f"DATASET={config.dataset}"
        raise InputError(f"{manifests}: no manifest for {', '.join(missing) or 'any variant'}; render first (no pixels "
                         f"needed: `make render {hint} FORMAT=lazy VARIANTS=...`, then `make manifests {hint}`)")
    return names


def variant_plan(stage: PredictStage, rows: VariantRows, clips: dict[str, StoredClip], masks: MasksRun,
                 config: PredictConfig, *, fingerprint: str) -> list[ShardTask]:
    """One task per masks shard the variant's listed rows come from. Upstream: the digests of the render shard
    the rows came from and of the masks shards of each clip and its swap partner, as they are now (a lazy row
    is composed from them when scored; a partner recomputed redoes the clips pasted onto its background). A
    row listed from masks that have changed since, or a render that is not current, is refused."""
    by_shard: dict[str, list[dict]] = {}
    for row in rows.rows:
        by_shard.setdefault(row["masks_shard"], []).append(row)
    renders = Path(config.out).absolute() / "renders" / config.dataset / masks.tag / rows.name
    masks_now = {name: stats.digest for name, stats in masks.shards.items()}
    committed = {}
    for fmt in {row["format"] for row in rows.rows}:
        current, _ = current_shards(renders / "_status" / fmt, upstream=masks_now)
        committed |= {(fmt, name): stats.digest for name, stats in current.items()}
    check_images(rows)
    plan = []
    for shard, shard_rows in sorted(by_shard.items()):
        items, identity, upstream = [], {}, {}
        for row in shard_rows:
            clip = clips.get(row["source_clip_id"])
            partner = clips.get(row["pair_clip_id"]) if row["pair_clip_id"] else None
            if (clip is None or (row["pair_clip_id"] and partner is None) or (row["format"], shard) not in committed
                    or masks_now.get(shard) != row["masks_digest"]):
                raise InputError(f"{renders}: clip {row['clip_id']} is listed from masks or renders that have changed "
                                 "since; run `make render` and `make manifests` again")
            path = str(renders / row["path"]) if row["path"] else None
            items.append(PredictItem(key=row["clip_id"], clip=clip, format=row["format"], path=path, partner=partner))
            identity[row["clip_id"]] = digest({k: row[k] for k in ("clip_id", "label_index", "format", "path", "frames",
                                                                   "pair_clip_id", "masks_digest", "background")})
            upstream[f"{row['format']}/{shard}"] = committed[row["format"], shard]
            for used in (clip, partner) if partner else (clip,):
                upstream[f"masks/{used.shard}"] = masks_now[used.shard]
        plan.append(ShardTask(stage=stage, name=shard, folder=stage.folder, items=tuple(items), identity=identity,
                              upstream=upstream, fingerprint=fingerprint, max_tries=config.execution.max_tries,
                              overwrite=config.overwrite, retry_failed=config.retry_failed))
    return plan


def check_images(rows: VariantRows) -> None:
    """A variant with image fills (SCUBA's backgrounds) reads its folders when composed: they must hold what
    they held when it was rendered."""
    for folder, recorded in rows.made_of.get("images", {}).items():
        if folder_digest(folder) != recorded:
            raise InputError(f"{folder}: its images changed since variant {rows.name} was rendered; run `make render` "
                             "and `make manifests` again")


def write_csv(path: Path, plan: list[ShardTask], rows: VariantRows, classes: int) -> str | None:
    """`<variant>.csv` from the variant's shards that are done as planned now, in the list's order; returns why
    rows are left out (clips not ok, shards not done), or None."""
    found: dict[str, list[float]] = {}
    problems: dict[str, str] = {}
    for task in plan:
        stats = ShardStats.read(task.marker)
        if stats is None or stats.plan != task.plan_digest():
            continue
        table = pq.read_table(task.folder / f"{task.name}.parquet").to_pydict()
        for clip_id, status, error, scores in zip(table["clip_id"], table["status"], table["error"], table["scores"]):
            if status == OK:
                found[clip_id] = scores
            else:
                problems[clip_id] = f"{status}: {error}"
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(["clip_id", *(f"score_{c}" for c in range(classes))])
    left = []
    for row in rows.rows:
        scores = found.get(row["clip_id"])
        if scores is None:
            left.append(row["clip_id"])
            continue
        out.writerow([row["clip_id"], *(f"{v:.9g}" for v in scores)])
    write_if_changed(path, text.getvalue())
    if not left:
        return None
    first = left[0]
    return f"{len(left)} of {len(rows.rows)} clips not scored (first {first}: {problems.get(first, 'not done')})"


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def slug(spec: ScorerSpec) -> str:
    """The scorer's name as a folder name (`open_clip-ViT-B-32`)."""
    return f"{spec.backend}-" + re.sub(r"[^\w.-]+", "-", Path(spec.name).name if "/" in spec.name else spec.name).strip("-")
