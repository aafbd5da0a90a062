"""The evaluation's section of the HTML report: top-1 per variant, the protocol metrics with their intervals,
bar plots of both (n/a values left out), the train × eval grid, and the swap clips the model read by their
background. Evaluations are titled by predictions folder, split and date, newest first; only the newest of each
predictions folder and split is shown unless all are asked for."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.decode import DecodeOptions
from pipeline.engine.commit import file_digest
from pipeline.html import img, img_png, png, pyplot, table
from pipeline.manifests.read import manifest_digest
from pipeline.render.compose import decoded

SHOWN_WINS = 8  # swap clips shown as frames (all are listed in metrics.json)


def manifest_digests(manifests: Path, variants: list[str]) -> dict[str, str]:
    """The content of each variant's manifest, so the report can tell when metrics were made from older ones."""
    return {v: manifest_digest(manifests / v) for v in variants}


@dataclass(frozen=True)
class Evaluation:
    """One `evaluations/<split>-<digest>/metrics.json`: its content and when it was written."""

    path: Path
    metrics: dict
    when: datetime  # the file's modification time, UTC

    @classmethod
    def read(cls, path: Path) -> "Evaluation":
        when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        return cls(path=path, metrics=json.loads(path.read_text()), when=when)

    @property
    def folder(self) -> str:
        """The predictions folder's name, as the title shows it; `predict`'s by the scorer and its weights."""
        scorer = self.metrics.get("scorer")
        if scorer:
            return f"{scorer['scorer']} ({scorer['weights']} weights)"
        return Path(self.metrics["predictions"]).name + "/"

    @property
    def title(self) -> str:
        return f"{self.folder} on {self.metrics['split']}, {self.when:%Y-%m-%d %H:%M} UTC"


def evaluations(folder: Path, *, everything: bool = False) -> tuple[list[Evaluation], list[str]]:
    """The evaluations under `folder` to show, newest first: the newest of each predictions folder and split, or
    `everything`; and a line (HTML) for each predictions folder whose older evaluations are left out."""
    found = sorted((Evaluation.read(p) for p in Path(folder).glob("*/metrics.json")),
                   key=lambda e: (-e.when.timestamp(), e.path.parent.name))
    shown, older = [], {}
    for evaluation in found:
        key = (evaluation.metrics["predictions"], evaluation.metrics["split"])
        if everything or key not in older:
            shown.append(evaluation)
            older.setdefault(key, [])
        else:
            older[key].append(evaluation)
    notes = [f"<p>{len(left)} older evaluation{'s' if len(left) > 1 else ''} of <code>{html.escape(path)}</code> "
             f"on {html.escape(split)} not shown; <code>--all-evaluations</code> (<code>ALL_EVALUATIONS=1</code>) "
             "shows every one.</p>" for (path, split), left in older.items() if left]
    return shown, notes


def evaluation_section(evaluation: Evaluation, manifests: Path, renders: Path,
                       frame_of: Callable[[str, str], np.ndarray | None] | None = None) -> str:
    """The section of one evaluation. `frame_of(variant, clip id)`: a clip's middle frame (default: from its
    render's file)."""
    metrics = evaluation.metrics
    parts = [f"<h2>Evaluation: {html.escape(evaluation.title)}</h2>",
             f"<p><small>{html.escape(metrics.get('name', evaluation.path.parent.name))}</small></p>",
             f"<p>predictions <code>{html.escape(metrics['predictions'])}</code>, split "
             f"<code>{html.escape(metrics['split'])}</code>; 95% intervals from {metrics['bootstrap_resamples']} "
             "bootstrap resamples of the clips.</p>"]
    scorer = metrics.get("scorer")
    if scorer:
        parts.append(f"<p>zero-shot scorer <code>{html.escape(scorer['scorer'])}</code>, weights "
                     f"<code>{html.escape(str(scorer['weights']))}</code> (sha256 "
                     f"<code>{html.escape(scorer['weights_sha256'][:16])}</code>), {scorer['frames']} frames per "
                     f"clip, {len(scorer.get('templates', []))} prompt templates, {html.escape(scorer['precision'])}."
                     "</p>")
    recorded = metrics.get("manifests", {})
    now = manifest_digests(manifests, [v for v in recorded if (manifests / v / "manifest.parquet").exists()])
    changed = sorted(v for v in recorded if now.get(v) != recorded[v])
    if changed:
        parts.append(f"<p><b>Stale:</b> the manifests of {html.escape(', '.join(changed))} changed since these metrics "
                     "were computed; run <code>make evaluate</code> again.</p>")
    folder = Path(metrics["predictions"])
    moved = sorted(name for name, state in metrics.get("files", {}).items() if changed_file(folder / name, state))
    if moved:
        parts.append(f"<p><b>Stale:</b> the predictions files {html.escape(', '.join(moved))} changed or are gone "
                     "since these metrics were computed.</p>")
    variants = metrics.get("variants", {})
    if variants:
        parts.append(table(("variant", "clips", "top-1", "95% interval", "top-5"),
                           [(name, str(m["clips"]), _num(m["top1"]), _ci(m["top1_ci95"]), _num(m["top5"]))
                            for name, m in variants.items()]))
        parts.append(bars({n: (m["top1"], m["top1_ci95"]) for n, m in variants.items()}, "top-1"))
    protocol = protocol_rows(metrics)
    if protocol:
        parts.append("<h3>Static-bias metrics</h3>")
        parts.append(table(("metric", "value", "95% interval", "clips"),
                           [(name, _num(m["value"]), _ci(m["ci95"]), str(m["clips"])) for name, m in protocol]))
        parts.append(bars({name: (m["value"], m["ci95"]) for name, m in protocol}, "value"))
    grid = metrics.get("grid")
    if grid:
        evals = sorted({v for row in grid.values() for v in row})
        parts += ["<h3>Trained on (rows) × evaluated on (columns), top-1</h3>",
                  table(("trained on", *evals), [(t, *(_num(row.get(v)) for v in evals)) for t, row in grid.items()])]
    wins = metrics.get("swap_background_wins", [])
    if wins:
        parts.append(f"<h3>Swap clips predicted as their background's label ({len(wins)})</h3>")
        parts.append(table(("variant", "clip", "its label", "background of", "background label"),
                           [(w["variant"], w["clip_id"], w["label"], w["pair_clip_id"], w["pair_label"]) for w in wins]))
        for win in wins[:SHOWN_WINS]:
            frame = frame_of(win["variant"], win["clip_id"]) if frame_of else \
                middle_frame(renders / win["variant"] / win["path"]) if win["path"] else None
            if frame is not None:
                parts += [f"<p>{html.escape(win['variant'])}: {html.escape(win['clip_id'])} "
                          f"[{html.escape(win['label'])}] on the background of [{html.escape(win['pair_label'])}]</p>",
                          img(frame)]
    return "\n".join(parts)


def changed_file(path: Path, state: dict) -> bool:
    """Whether a predictions file is gone or no longer what was scored (read again only if size or mtime moved)."""
    if not path.is_file():
        return True
    stat = path.resolve().stat()
    if (stat.st_size, stat.st_mtime_ns) == (state["bytes"], state["mtime_ns"]):
        return False
    return file_digest(path.resolve())["sha256"] != state["sha256"]


def protocol_rows(metrics: dict) -> list[tuple[str, dict]]:
    rows = [(key, metrics[key]) for key in ("BOR", "HOR") if key in metrics]
    for key in ("SHAcc", "SBErr"):
        rows += [(f"{key} ({mode})", entry) for mode, entry in metrics.get(key, {}).items()]
    for scuba, result in metrics.get("stillmix", {}).items():
        rows += [(f"{key} ({scuba} / {result['scufo']})", result[key]) for key in ("SCUBA", "SCUFO", "contrasted")]
    return rows


def bars(values: dict[str, tuple[float | None, list[float] | None]], ylabel: str) -> str:
    """An inlined plot of a bar per name with its 95% interval as an error bar; n/a values (None) get no bar,
    and where every value is n/a there is no plot."""
    values = {name: entry for name, entry in values.items() if entry[0] is not None}
    if not values:
        return ""
    plt = pyplot()
    names = list(values)
    heights = np.array([values[n][0] for n in names])
    low = np.array([h - values[n][1][0] if values[n][1] else 0.0 for n, h in zip(names, heights)])
    high = np.array([values[n][1][1] - h if values[n][1] else 0.0 for n, h in zip(names, heights)])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) + 1), 2.8), dpi=100)
    ax.bar(range(len(names)), heights, yerr=np.clip([low, high], 0, None), color="#48c", capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    return img_png(png(fig))


def middle_frame(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    frames = [frame for _, frame in decoded(path, DecodeOptions())]
    return frames[len(frames) // 2] if frames else None


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(interval: list[float] | None) -> str:
    return "" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
