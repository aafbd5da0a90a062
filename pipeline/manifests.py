"""Trainer manifests from the render stage's status rows, one folder per dataset and variant.

`<out>/manifests/<dataset>/<variant>/`:
- `<split>_list_videos.txt` — mmaction2 VideoDataset: `path label_index` (mp4 renders)
- `<split>_list_rawframes.txt` — mmaction2 RawframeDataset: `frame_dir total_frames label_index`
- `<split>.csv` — PySlowFast: `path label_index`, space separated (mp4 renders)
- `label_map.txt` — one label per line, in index order
- `manifest.parquet` — every clip (failed and filtered ones too) with status, coverage and provenance
- `manifest.json` — counts, the quality filter and the provenance, for people and the report
Paths are relative to `<out>/renders/<dataset>/<variant>/` (mmaction2's `data_prefix`, PySlowFast's
`PATH_PREFIX`). Unlabelled clips (a test split) get label index -1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import InputError
from pipeline.maskstore import read_clips, run_info
from pipeline.records import OK

FILTERED = "filtered"  # rendered, but below the quality filter: in the Parquet, not in the lists

MANIFEST_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("split", pa.string()), ("label", pa.string()), ("label_index", pa.int32()),
    ("meta", pa.string()),  # JSON of dataset extras: SSv2 template/placeholders/caption, Mimetics index, UCF group
    ("variant", pa.string()), ("format", pa.string()), ("path", pa.string()), ("frames", pa.int32()),
    ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
    ("person_coverage", pa.float32()),  # mean over frames of the fraction of the frame in people
    ("object_coverage", pa.float32()),
    ("covered_frames", pa.float32()),  # fraction of frames with person coverage ≥ --min-coverage
    ("status", pa.string()), ("error", pa.string()), ("in_lists", pa.bool_()),
    ("pair_clip_id", pa.string()), ("pair_label", pa.string()), ("pair_label_index", pa.int32()),
    ("masks_run", pa.string()), ("segmenter", pa.string()), ("model", pa.string()),
])


@dataclass(frozen=True, kw_only=True)
class ManifestConfig:
    dataset: str
    out: Path = Path(".")
    variants: tuple[str, ...] | None = None  # None: every rendered variant
    min_coverage: float = 0.0  # quality filter: keep a clip only if people cover ≥ this fraction of the frame…
    min_frames_frac: float = 0.0  # …in at least this fraction of its frames

    def filter(self) -> dict[str, float]:
        return {"min_coverage": self.min_coverage, "min_frames_frac": self.min_frames_frac}


def write_manifests(config: ManifestConfig) -> list[dict]:
    """Write the manifests of every requested variant; returns each variant's manifest.json content."""
    renders = Path(config.out) / "renders" / config.dataset
    found = sorted(p.parent.name for p in renders.glob("*/_status")) if renders.is_dir() else []
    names = list(config.variants or found)
    missing = [name for name in names if name not in found]
    if not names or missing:
        raise InputError(f"{renders}: no renders for {', '.join(missing) or 'any variant'}; run "
                         f"`make render DATASET={config.dataset}` first")
    return [write_variant(renders / name, Path(config.out) / "manifests" / config.dataset / name, config) for name in names]


def write_variant(variant_dir: Path, dest: Path, config: ManifestConfig) -> dict:
    rows, settings, masks = [], {}, {}
    for status_dir in sorted((variant_dir / "_status").iterdir()):
        fmt = status_dir.name
        settings[fmt] = json.loads((variant_dir / f"variant.{fmt}.json").read_text())
        masks[fmt] = run_info(Path(settings[fmt]["masks_dir"]))
        for shard in sorted(status_dir.glob("shard-*_stats.json")):
            table = pq.read_table(shard.with_name(shard.name.replace("_stats.json", ".parquet")))
            rows += [manifest_row(row, masks[fmt], config) for row in table.to_pylist()]
    rows.sort(key=lambda r: (r["format"], r["split"], r["clip_id"]))
    fmt = next(iter(settings))
    labels = label_map(Path(settings[fmt]["masks_dir"]), masks[fmt])
    dest.mkdir(parents=True, exist_ok=True)
    write_lines(dest / "label_map.txt", labels)
    for split in sorted({r["split"] for r in rows}):
        listed = [r for r in rows if r["split"] == split and r["in_lists"]]
        videos = [f"{r['path']} {r['label_index']}" for r in listed if r["format"] == "mp4"]
        frames = [f"{r['path']} {r['frames']} {r['label_index']}" for r in listed if r["format"] == "rawframes"]
        if "mp4" in settings:
            write_lines(dest / f"{split}_list_videos.txt", videos)
            write_lines(dest / f"{split}.csv", videos)
        if "rawframes" in settings:
            write_lines(dest / f"{split}_list_rawframes.txt", frames)
    metadata = {"variant": json.dumps(settings, sort_keys=True), "filter": json.dumps(config.filter())}
    with atomic_path(dest / "manifest.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA.with_metadata(metadata)), tmp, compression="zstd")
    summary = {
        "variant": variant_dir.name, "settings": settings, "filter": config.filter(), "labels": len(labels),
        "counts": _counts(rows), "masks": masks,
    }
    write_json(dest / "manifest.json", summary)
    return summary


def manifest_row(row: dict, masks: dict, config: ManifestConfig) -> dict:
    person = np.asarray(row["person_coverage"], dtype=np.float32)
    objects = np.asarray(row["object_coverage"], dtype=np.float32)
    covered = float((person >= config.min_coverage).mean()) if len(person) else 0.0
    status = row["status"]
    if status == OK and covered < config.min_frames_frac:
        status = FILTERED
    provenance = masks.get("provenance", {})
    return {
        "meta": row.get("meta"),
        **{k: row[k] for k in ("clip_id", "split", "label", "variant", "format", "path", "frames", "fps", "width",
                               "height", "error", "pair_clip_id", "pair_label", "pair_label_index")},
        "label_index": -1 if row["label_index"] is None else row["label_index"],
        "person_coverage": float(person.mean()) if len(person) else 0.0,
        "object_coverage": float(objects.mean()) if len(objects) else 0.0,
        "covered_frames": covered, "status": status, "in_lists": status == OK,
        "masks_run": provenance.get("run_tag", ""), "segmenter": provenance.get("segmenter", ""),
        "model": provenance.get("segmenter.model", ""),
    }


def label_map(masks_dir: Path, info: dict) -> list[str]:
    """Labels in index order: the dataset's class list when its reader gave one (recorded in run.json),
    else from the masks run's clip rows (every listed clip, whatever its status)."""
    if info.get("classes"):
        return list(info["classes"])
    by_index: dict[int, str] = {}
    for clip in read_clips(masks_dir).select(["label", "label_index"]).to_pylist():
        if clip["label_index"] is not None:
            by_index[clip["label_index"]] = clip["label"]
    return [by_index.get(i, "") for i in range(max(by_index, default=-1) + 1)]


def write_lines(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def _counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        key = f"{row['format']}/{row['split']}"
        counts.setdefault(key, {})
        counts[key][row["status"]] = counts[key].get(row["status"], 0) + 1
    return {key: dict(sorted(value.items())) for key, value in sorted(counts.items())}
