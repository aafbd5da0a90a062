"""A single self-contained HTML page (images inlined) to look at a dataset's masks and variants offline.

First the variants side by side (a row per sampled clip, `original` first); then the masks: status counts,
the problem clips, the last run, the source frames with the masks outlined (and, for the sample, the shape
clips' known masks and their IoU), a histogram of person/object coverage and the provenance; then the
evaluations; then per variant its settings, status counts, problem clips and frame strips.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.engine.record import write_if_changed
from pipeline.errors import InputError
from pipeline.evaluate.section import evaluation_section, evaluations
from pipeline.html import HEAD, counts_table, img_png, png, pyplot, table
from pipeline.masks import find_run
from pipeline.report.frames import RowFrames
from pipeline.report.problems import masks_problems, render_problems
from pipeline.report.shapes import shapes_section
from pipeline.report.sheets import (
    Picture,
    VariantView,
    choose_clips,
    has_pixels,
    overlay_sheet,
    side_by_side,
    strips,
    variant_order,
)

__all__ = ["write_report"]

SAMPLE = "sample"  # the generated dataset, whose shape clips come with their true masks


def write_report(*, dataset: str, out: Path = Path("."), masks_tag: str | None = None, make_args: str | None = None,
                 clips: int = 4, frames: int = 4, all_evaluations: bool = False) -> Path:
    """Build `<out>/reports/<dataset>/<masks run>/index.html` from the manifests; returns its path. Only the
    newest evaluation of each predictions folder and split is shown, unless `all_evaluations`."""
    masks = find_run(out, dataset, masks_tag, make_args=make_args)
    manifests_dir = Path(out) / "manifests" / dataset / masks.tag
    renders = Path(out) / "renders" / dataset / masks.tag
    names = [p.parent.name for p in manifests_dir.glob("*/manifest.parquet")] if manifests_dir.is_dir() else []
    if not names:
        raise InputError(f"{manifests_dir}: no manifests; run `make manifests {make_args or f'DATASET={dataset}'}` first")
    variants = variant_order(names)
    summaries = {v: json.loads((manifests_dir / v / "manifest.json").read_text()) for v in variants}
    tables = {v: pq.read_table(manifests_dir / v / "manifest.parquet").to_pylist() for v in variants}
    stored = masks.clips()
    reader = RowFrames(masks, stored)
    views = [VariantView.of(v, renders / v, tables[v], summaries[v]["settings"], reader) for v in variants]
    chosen = choose_clips(stored, clips)
    pictures = {(view.name, clip.clip_id): Picture.of(view, clip.clip_id, frames) for view in views for clip in chosen}

    parts = [f"<h1>{html.escape(dataset)}: masks and variants</h1>",
             f"<p>masks run <code>{html.escape(str(masks.folder))}</code></p>"]
    if chosen:
        parts += ["<h2>Variants side by side</h2>",
                  "<p>The middle frame of each sampled clip in every variant; a clip a variant has no picture of "
                  "says why.</p>", side_by_side(views, chosen, pictures)]
    parts += ["<h2>Masks</h2>", counts_table({"masks": Counter(c.status for c in stored)}),
              masks_problems(masks.folder)]
    if (masks.folder / "summary.json").exists():
        parts.append(_run_section(json.loads((masks.folder / "summary.json").read_text())))
    if chosen:
        parts += ["<p>Source frames with people (magenta) and objects (cyan) outlined and lightly tinted.</p>",
                  overlay_sheet(masks, chosen, frames)]
    if dataset == SAMPLE:
        parts.append(shapes_section(masks, stored))
    parts += ["<h3>Coverage per clip</h3>", img_png(histogram(tables[variants[0]]))]
    provenance = {**masks.info, "shard_provenance": masks.provenance(next(iter(masks.shards))) if masks.shards else {}}
    parts += ["<h3>Provenance</h3>", f"<pre>{html.escape(json.dumps(provenance, indent=2, sort_keys=True))}</pre>"]
    shown, notes = evaluations(Path(out) / "reports" / dataset / masks.tag / "evaluations", everything=all_evaluations)
    by_name = {view.name: view for view in views}
    parts += [evaluation_section(evaluation, manifests_dir, renders, frame_of=middle_of(by_name)) for evaluation in shown]
    parts += notes
    for view in views:
        parts += [f"<h2>{html.escape(view.name)}</h2>",
                  f"<p>{html.escape(_describe(summaries[view.name]))}</p>",
                  counts_table(summaries[view.name]["counts"]), render_problems(view.folder)]
        if chosen:
            parts.append(strips(view, chosen, pictures))
    page = "\n".join([HEAD.format(title=html.escape(f"{dataset} masks report")), *filter(None, parts), "</body></html>"])
    path = Path(out) / "reports" / dataset / masks.tag / "index.html"
    write_if_changed(path, page)  # the same page is not rewritten (a read-only OUT whose report is up to date)
    return path


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


def _describe(summary: dict) -> str:
    settings = next(iter(summary["settings"].values()))
    variant = settings["variant"]
    fills = ", ".join(f"{r}={variant[r]}" for r in ("background", "person", "objects"))
    return f"{variant['description']} ({fills}; masks {variant['masks']}; filter {summary['filter']})"


def _run_section(summary: dict) -> str:
    """The last masks run: wall time, shards, clips given up and retried, its warnings (thread counts: another
    folder of these settings, shards that ran on different counts), and each worker's throughput."""
    lines = [f"<h3>Last masks run</h3><p>{summary['seconds']:.0f} s wall time; shards: {summary['shards']} of "
             f"{summary['planned']} selected, {summary['computed']} computed, {summary['skipped']} already done, "
             f"{len(summary['failed_shards'])} failed; {len(summary['retried'])} clips needed more than one try.</p>"]
    lines += [f"<p><b>WARNING:</b> {html.escape(warning)}</p>" for warning in summary.get("warnings", [])]
    rows = [(name, str(w["shards"]), str(w["frames"]), f"{w['frames_per_s']:.1f}", f"{w['peak_rss_mb']:.0f}")
            for name, w in sorted(summary["workers"].items())]
    if rows:
        lines.append(table(("worker", "shards", "frames", "frames/s", "peak MiB"), rows))
    failed = list(summary["failed_shards"].items()) + list(summary["failed_items"].items())
    if failed:
        lines.append(table(("failed shard or clip", "error"), failed[:50]))
    return "\n".join(lines)


def middle_of(views: dict[str, VariantView]):
    """The middle frame of a variant's clip (its row with pixels: a render, or composed for lazy rows)."""
    def frame(variant: str, clip_id: str) -> np.ndarray | None:
        view = views.get(variant)
        row = view.rows.get(clip_id) if view else None
        if row is None or not has_pixels(row):
            return None
        return view.frames(row, {row["frames"] // 2}).get(row["frames"] // 2)

    return frame

