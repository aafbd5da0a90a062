"""A single self-contained HTML page (images inlined) to look at a dataset's masks and variants offline.

Per variant: the same frames of the same few clips side by side (a contact sheet), status counts and the
settings; above them the source frames with the masks overlaid, a histogram of person/object coverage,
the masks run's status counts and provenance.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path
from pipeline.decode import DecodeOptions
from pipeline.errors import InputError
from pipeline.html import HEAD, counts_table, img, img_png, png, pyplot, table
from pipeline.masks import MasksRun, StoredClip, find_run
from pipeline.records import USABLE
from pipeline.render.compose import decoded
from pipeline.render.regions import RegionMasks
from pipeline.render.tars import WEBDATASET, read_sample
from pipeline.render.variants import MaskOptions

TILE_HEIGHT = 120
PERSON_TINT, OBJECT_TINT = (255, 40, 40), (40, 120, 255)


def write_report(*, dataset: str, out: Path = Path("."), masks_tag: str | None = None, make_args: str | None = None,
                 clips: int = 4, frames: int = 4) -> Path:
    """Build `<out>/reports/<dataset>/<masks run>/index.html` from the manifests; returns its path."""
    masks = find_run(out, dataset, masks_tag, make_args=make_args)
    manifests_dir = Path(out) / "manifests" / dataset / masks.tag
    variants = sorted(p.parent.name for p in manifests_dir.glob("*/manifest.parquet")) if manifests_dir.is_dir() else []
    if not variants:
        raise InputError(f"{manifests_dir}: no manifests; run `make manifests {make_args or f'DATASET={dataset}'}` first")
    summaries = {v: json.loads((manifests_dir / v / "manifest.json").read_text()) for v in variants}
    tables = {v: pq.read_table(manifests_dir / v / "manifest.parquet").to_pylist() for v in variants}
    chosen = choose_clips(tables, clips)
    masks_clips = {c.clip_id: c for c in masks.clips()}

    parts = [f"<h1>{html.escape(dataset)}: masks and variants</h1>",
             f"<p>masks run <code>{html.escape(str(masks.folder))}</code></p>",
             "<h2>Masks</h2>", counts_table({"masks": Counter(c.status for c in masks_clips.values())})]
    if (masks.folder / "summary.json").exists():
        parts.append(_run_section(json.loads((masks.folder / "summary.json").read_text())))
    if chosen:
        sheet = contact_sheet([overlay_frames(masks, masks_clips[c], frames) for c in chosen], chosen)
        parts += ["<p>Source frames with people (red) and objects (blue) overlaid, rows are clips.</p>", img(sheet)]
    parts += ["<h3>Coverage per clip</h3>", img_png(histogram(tables[variants[0]]))]
    provenance = {**masks.info, "shard_provenance": masks.provenance(next(iter(masks.shards))) if masks.shards else {}}
    parts += ["<h3>Provenance</h3>", f"<pre>{html.escape(json.dumps(provenance, indent=2, sort_keys=True))}</pre>"]
    evaluations = (Path(out) / "reports" / dataset / masks.tag / "evaluations").glob("*/metrics.json")
    for metrics_path in sorted(evaluations, key=lambda p: (-p.stat().st_mtime, p.parent.name)):  # newest first
        from pipeline.evaluate.section import evaluation_section

        parts.append(evaluation_section(json.loads(metrics_path.read_text()), manifests_dir,
                                        Path(out) / "renders" / dataset / masks.tag))
    for variant in variants:
        rows = {}
        for row in tables[variant]:  # a clip's first background stands for it (scuba: `<id>__0`)
            rows.setdefault(row.get("source_clip_id") or row["clip_id"], row)
        renders = Path(out) / "renders" / dataset / masks.tag / variant
        parts += [f"<h2>{html.escape(variant)}</h2>",
                  f"<p>{html.escape(_describe(summaries[variant]))}</p>",
                  counts_table(summaries[variant]["counts"])]
        if chosen:
            strips = [rendered_frames(renders, rows.get(c), frames) for c in chosen]
            parts.append(img(contact_sheet(strips, [_caption(rows.get(c), c) for c in chosen])))
    page = "\n".join([HEAD.format(title=html.escape(f"{dataset} masks report")), *parts, "</body></html>"])
    path = Path(out) / "reports" / dataset / masks.tag / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def choose_clips(tables: dict[str, list[dict]], count: int) -> list[str]:
    """Up to `count` clips ok in the first variant, one label after another, in clip-id order."""
    ok = sorted((r for r in next(iter(tables.values())) if r["status"] in USABLE and r.get("background") in (None, 0)),
                key=lambda r: r["clip_id"])
    for row in ok:  # manifests written before static backgrounds have no source_clip_id
        row["clip_id"] = row.get("source_clip_id") or row["clip_id"]
    by_label: dict[str, list[str]] = {}
    for row in ok:
        by_label.setdefault(row["label"] or "", []).append(row["clip_id"])
    chosen: list[str] = []
    while len(chosen) < count and any(by_label.values()):
        for ids in by_label.values():
            if ids and len(chosen) < count:
                chosen.append(ids.pop(0))
    return chosen


def positions(total: int, count: int) -> list[int]:
    """`count` evenly spread frame positions of a clip of `total` frames."""
    return sorted({min(total - 1, round((i + 0.5) * total / count)) for i in range(count)}) if total else []


def overlay_frames(masks: MasksRun, clip: StoredClip, count: int) -> list[np.ndarray]:
    regions = RegionMasks(masks.clip_masks(clip), clip.height, clip.width, MaskOptions())
    wanted, out = set(positions(clip.frames, count)), []
    for position, (index, frame) in enumerate(decoded(clip.path, DecodeOptions(fps=masks.decode_fps), clip.frames)):
        if position in wanted:
            person, objects = regions.raw(index)
            tinted = frame.astype(np.float32)
            tinted[person] = 0.5 * tinted[person] + 0.5 * np.array(PERSON_TINT)
            tinted[objects & ~person] = 0.5 * tinted[objects & ~person] + 0.5 * np.array(OBJECT_TINT)
            out.append(tinted.astype(np.uint8))
    return out


def rendered_frames(variant_dir: Path, row: dict | None, count: int) -> list[np.ndarray]:
    """The rendered frames of a clip at the sheet's positions (nothing when the clip was not rendered)."""
    if row is None or not row["path"]:
        return []
    wanted = positions(row["frames"], count)
    path = variant_dir / row["path"]
    if row["format"] == "rawframes":
        return [cv2.cvtColor(cv2.imread(str(path / f"img_{p + 1:05d}.jpg")), cv2.COLOR_BGR2RGB) for p in wanted]
    if row["format"] == WEBDATASET:  # the clip's mp4 out of its shard's tar, by its render key
        key = row["source_clip_id"] + ("" if row["background"] is None else f"__{row['background']}")
        with tempfile.NamedTemporaryFile(suffix=".mp4") as mp4:
            mp4.write(read_sample(path, key)["mp4"])
            mp4.flush()
            return [frame for position, (_, frame) in enumerate(decoded(Path(mp4.name), DecodeOptions()))
                    if position in wanted]
    return [frame for position, (_, frame) in enumerate(decoded(path, DecodeOptions())) if position in wanted]


def contact_sheet(strips: list[list[np.ndarray]], captions: list[str]) -> np.ndarray:
    """Rows of tiles (one row per clip) scaled to one height, with a caption bar above each row."""
    rows = []
    for frames, caption in zip(strips, captions):
        tiles = [cv2.resize(f, (max(1, round(f.shape[1] * TILE_HEIGHT / f.shape[0])), TILE_HEIGHT)) for f in frames]
        row = np.hstack(tiles) if tiles else np.full((TILE_HEIGHT, 4 * TILE_HEIGHT, 3), 64, np.uint8)
        bar = np.full((18, row.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, caption[:120], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.vstack([bar, row]))
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def histogram(rows: list[dict]) -> bytes:
    """PNG: histogram of per-clip mean person and object coverage."""
    plt = pyplot()

    ok = [r for r in rows if r["path"]]  # rendered: usable or filtered
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    bins = np.linspace(0, 1, 21)
    ax.hist([[r["person_coverage"] for r in ok], [r["object_coverage"] for r in ok]], bins=bins,
            label=["person", "objects"], color=["#e33", "#37f"])
    ax.set_xlabel("mean fraction of the frame covered")
    ax.set_ylabel("clips")
    ax.legend()
    return png(fig)


def _caption(row: dict | None, clip_id: str) -> str:
    if row is None:
        return f"{clip_id}: not in this variant"
    text = f"{clip_id} [{row['label']}] {row['status']}"
    return text + (f" <- background of {row['pair_clip_id']} [{row['pair_label']}]" if row["pair_clip_id"] else "")


def _describe(summary: dict) -> str:
    settings = next(iter(summary["settings"].values()))
    variant = settings["variant"]
    fills = ", ".join(f"{r}={variant[r]}" for r in ("background", "person", "objects"))
    return f"{variant['description']} ({fills}; masks {variant['masks']}; filter {summary['filter']})"


def _run_section(summary: dict) -> str:
    """The last masks run: wall time, shards, clips given up and retried, and each worker's throughput."""
    lines = [f"<h3>Last masks run</h3><p>{summary['seconds']:.0f} s wall time; shards: {summary['shards']} of "
             f"{summary['planned']} selected, {summary['computed']} computed, {summary['skipped']} already done, "
             f"{len(summary['failed_shards'])} failed; {len(summary['retried'])} clips needed more than one try.</p>"]
    rows = [(name, str(w["shards"]), str(w["frames"]), f"{w['frames_per_s']:.1f}", f"{w['peak_rss_mb']:.0f}")
            for name, w in sorted(summary["workers"].items())]
    if rows:
        lines.append(table(("worker", "shards", "frames", "frames/s", "peak MiB"), rows))
    failed = list(summary["failed_shards"].items()) + list(summary["failed_items"].items())
    if failed:
        lines.append(table(("failed shard or clip", "error"), failed[:50]))
    return "\n".join(lines)
