"""Trainer manifests from the render stage's current status shards, one folder per dataset, masks run and variant.

`<out>/manifests/<dataset>/<masks run>/<variant>/`:
- `<split>_list_videos.txt` — mmaction2 VideoDataset: `path label_index` (mp4 renders; the `original` variant's
  links to the sources)
- `<split>_list_rawframes.txt` — mmaction2 RawframeDataset: `frame_dir total_frames label_index`
- `<split>.csv` — PySlowFast: `path label_index`, space separated (mp4 renders)
- `<split>_shards.txt` — WebDataset: the tar of every current render shard of the split, one a line, sorted
  (`webdataset.WebDataset([prefix + line for line in ...])`); a tar holds every rendered clip, filtered ones
  too (each sample's JSON says `in_lists`)
- `label_map.txt` — one label per line, in index order
- `manifest.parquet` — every clip (failed and filtered ones too) with status, coverage and its own provenance
- `manifest.json` — counts, the quality filter, settings, provenance, the shards left out (not current), and
  `failed`: why the variant lists no clip, where its filter left out every rendered one (else null)
Paths are relative to `<out>/renders/<dataset>/<masks run>/<variant>/` (mmaction2's `data_prefix`, PySlowFast's
`PATH_PREFIX`). Unlabelled clips (a test split) get label index -1. Only status shards that the latest render
plan stands behind are read: a shard rendered under other settings or from other masks is left out and named.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.engine import current_shards
from pipeline.engine.record import json_text, write_if_changed
from pipeline.errors import InputError
from pipeline.manifests.rows import FILTERED, MANIFEST_SCHEMA, ManifestRow, manifest_row, masks_provenance
from pipeline.masks import MasksRun, find_run
from pipeline.render.stage import RENDER_SCHEMA, SOURCE
from pipeline.render.tars import WEBDATASET, shard_tar_name
from pipeline.render.variants import PRESETS

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ManifestConfig:
    dataset: str  # the output name (`ucf101-split1`)
    out: Path = Path(".")
    masks_tag: str | None = None  # None: the masks run started last that has committed shards
    make_args: str | None = None  # how the user names the dataset to `make`, for hints
    variants: tuple[str, ...] | None = None  # None: every rendered variant
    min_coverage: float | None = None  # quality filter: keep a clip only if people cover ≥ this fraction of the
    min_frames_frac: float | None = None  # frame in at least this fraction of its frames (None: the variant's own
    # rule, SCUBA's 10% in 90% for scuba / scufo, else 0)

    def filter(self, keep_if: list[float] | None = None) -> dict[str, float]:
        """The filter for a variant whose own rule is `keep_if`: the flags where given, else that rule."""
        own = keep_if or (0.0, 0.0)
        return {"min_coverage": own[0] if self.min_coverage is None else self.min_coverage,
                "min_frames_frac": own[1] if self.min_frames_frac is None else self.min_frames_frac}


def write_manifests(config: ManifestConfig) -> list[dict]:
    """Write the manifests of every requested variant; returns each variant's manifest.json content."""
    masks = find_run(config.out, config.dataset, config.masks_tag, make_args=config.make_args)
    renders = Path(config.out) / "renders" / config.dataset / masks.tag
    found = sorted({p.parents[2].name for p in renders.glob("*/_status/*/plan.json")}) if renders.is_dir() else []
    names = list(config.variants or found)
    missing = [name for name in names if name not in found]
    unknown = [name for name in missing if name not in PRESETS]  # a typo, not a variant left to render
    if unknown:
        raise InputError(f"unknown variant{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; known: "
                         f"rendered {', '.join(found) or 'none yet'}; presets {', '.join(PRESETS)}")
    if not names or missing:
        raise InputError(f"{renders}: no renders for {', '.join(missing) or 'any variant'}; run "
                         f"`make render {config.make_args or f'DATASET={config.dataset}'}` first")
    dest = Path(config.out) / "manifests" / config.dataset / masks.tag
    return [write_variant(renders / name, dest / name, masks, config) for name in names]


def write_variant(variant_dir: Path, dest: Path, masks: MasksRun, config: ManifestConfig) -> dict:
    rows: list[ManifestRow] = []
    settings, left_out = {}, {}
    masks_now = {name: stats.digest for name, stats in masks.shards.items()}
    keep = config.filter()
    for status_dir in sorted(p.parent for p in (variant_dir / "_status").glob("*/plan.json")):  # recorded formats
        fmt = status_dir.name
        settings[fmt] = json.loads((variant_dir / f"variant.{fmt}.json").read_text())
        keep = config.filter(settings[fmt].get("keep_if"))
        shards, stale = current_shards(status_dir, upstream=masks_now)
        if stale:
            log.warning("%s/%s: %d status shard(s) not rendered, or rendered from other settings or from masks since "
                        "recomputed (e.g. %s); left out until `make render` redoes them", variant_dir.name, fmt,
                        len(stale), stale[0])
            left_out[fmt] = stale
        provenance = {name: masks_provenance(masks, name, stats.upstream.get(name, "")) for name, stats in shards.items()}
        columns = read_status_rows([status_dir / f"{name}.parquet" for name in shards])
        rows += [manifest_row(row, provenance[row["masks_shard"]], keep["min_coverage"], keep["min_frames_frac"])
                 for row in (dict(zip(columns, values)) for values in zip(*columns.values()))]
    rows.sort(key=lambda r: (r.format, r.split, r.clip_id))
    labels = label_map(masks)
    write_lines(dest / "label_map.txt", labels)
    lists = {}
    for split in sorted({r.split for r in rows}):
        listed = [r for r in rows if r.split == split and r.in_lists]
        if "mp4" in settings or SOURCE in settings:
            videos = [f"{r.path} {r.label_index}" for r in listed if r.format in ("mp4", SOURCE)]
            lists[f"{split}_list_videos.txt"] = lists[f"{split}.csv"] = videos
        if "rawframes" in settings:
            lists[f"{split}_list_rawframes.txt"] = [f"{r.path} {r.frames} {r.label_index}" for r in listed
                                                    if r.format == "rawframes"]
        if WEBDATASET in settings:  # every current shard has rows (all of one split) and a tar
            lists[f"{split}_shards.txt"] = sorted({shard_tar_name(r.masks_shard) for r in rows
                                                   if r.format == WEBDATASET and r.split == split})
    for name, lines in lists.items():
        write_lines(dest / name, lines)
    remove_outdated_lists(dest, set(lists))
    metadata = {"variant": json.dumps(settings, sort_keys=True), "filter": json.dumps(keep)}
    table = pa.table({name: [getattr(r, name) for r in rows] for name in MANIFEST_SCHEMA.names},  # by column: asdict
                     schema=MANIFEST_SCHEMA.with_metadata(metadata))  # per row deep-copies, seconds at 260k
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    write_if_changed(dest / "manifest.parquet", buffer.getvalue().to_pybytes())
    summary = {
        "variant": variant_dir.name, "masks_run": masks.tag, "renders": str(variant_dir), "settings": settings,
        "filter": keep, "labels": len(labels), "counts": _counts(rows), "left_out": left_out,
        "lists": sorted(lists), "failed": filtered_out(rows, keep, config),
        "masks": masks.info,
    }
    write_if_changed(dest / "manifest.json", json_text(summary))
    return summary


def read_status_rows(paths: list[Path]) -> dict[str, list]:
    """The rows of many render status tables, by column (read together: thousands of small files, one at a time,
    cost twice as long)."""
    if not paths:
        return {name: [] for name in RENDER_SCHEMA.names}
    return ds.dataset(paths, format="parquet", schema=RENDER_SCHEMA).to_table().to_pydict()


def filtered_out(rows: list[ManifestRow], keep: dict[str, float], config: ManifestConfig) -> str | None:
    """Why the variant yields no clip, where its filter left out every rendered clip (None where a clip is
    listed, or none was rendered: the filter's doing only if it removed them all)."""
    filtered = sum(row.status == FILTERED for row in rows)
    if not filtered or any(row.in_lists for row in rows):
        return None
    own = "MIN_COVERAGE / MIN_FRAMES_FRAC" if (config.min_coverage, config.min_frames_frac) != (None, None) else \
        "the variant's own rule"
    return (f"the filter (people on >= {keep['min_coverage']:g} of the frame in >= {keep['min_frames_frac']:g} of "
            f"the frames: {own}) leaves out all {filtered} rendered clips; lower it with MIN_COVERAGE=F "
            "MIN_FRAMES_FRAC=G (--min-coverage, --min-frames-frac)")


def remove_outdated_lists(dest: Path, written: set[str]) -> None:
    """Remove the lists the last manifests wrote that this one does not (a split with nothing current now):
    a trainer pointed at one fails loudly instead of reading renders the plan no longer stands behind."""
    try:
        before = json.loads((dest / "manifest.json").read_text()).get("lists", [])
    except FileNotFoundError:
        return
    for name in sorted(set(before) - written):
        log.warning("%s: removed; no current render of its split is left (see left_out in manifest.json)", dest / name)
        (dest / name).unlink(missing_ok=True)


def label_map(masks: MasksRun) -> list[str]:
    """Labels in index order: the dataset's class list when its reader gave one (recorded in run.json),
    else from the masks run's clip rows (every listed clip, whatever its status)."""
    if masks.classes:
        return masks.classes
    by_index: dict[int, str] = {}
    for clip in masks.clips():
        if clip.label_index is not None:
            by_index[clip.label_index] = clip.label
    return [by_index.get(i, "") for i in range(max(by_index, default=-1) + 1)]


def write_lines(path: Path, lines: list[str]) -> None:
    """A list file; one that already holds these lines is left alone (manifests of unchanged renders write
    nothing)."""
    write_if_changed(path, "".join(f"{line}\n" for line in lines))


def _counts(rows: list[ManifestRow]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        key = f"{row.format}/{row.split}"
        counts.setdefault(key, {})
        counts[key][row.status] = counts[key].get(row.status, 0) + 1
    return {key: dict(sorted(value.items())) for key, value in sorted(counts.items())}
