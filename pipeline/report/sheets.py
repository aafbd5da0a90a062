"""The report's pictures: the variants side by side (one row per sampled clip, `original` first, then the
protocol's presets, then the user's own variants), each variant's frame strips, and the source frames with the
masks outlined. Captions are HTML, whole; a clip without a picture in a variant says why (`no_pair`, `missing`,
not in this variant)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pipeline.html import figure, grid, img, placeholder
from pipeline.masks import MasksRun, StoredClip
from pipeline.records import USABLE
from pipeline.render import NO_PAIR
from pipeline.render.encode import LAZY
from pipeline.render.variants import PRESETS
from pipeline.report.frames import RowFrames, overlays, positions, strip, tile

# HAT, then StillMix, then the paper-1 variants; a swap's `-s<seed>` copies follow it
PROTOCOL_ORDER = ("original", "human_only", "background_only", "swap", "swap_same", "swap_close", "swap_far",
                  "scuba", "scufo", "bg", "bg_obj", "bg_obj2", "person", "obj")
SEED_COPY = re.compile(r"(.+)-s(\d+)")


def variant_order(names: Iterable[str]) -> list[str]:
    """`original`, the presets in protocol order (each with its seed copies), then the user's variants by name."""
    def key(name: str) -> tuple:
        match = SEED_COPY.fullmatch(name)
        base, seed = (match[1], int(match[2])) if match and match[1] in PRESETS else (name, -1)
        if base not in PRESETS:
            return (1, 0, -1, name)
        return (0, PROTOCOL_ORDER.index(base) if base in PROTOCOL_ORDER else len(PROTOCOL_ORDER), seed, name)

    return sorted(names, key=key)


@dataclass(frozen=True)
class VariantView:
    """A variant as the report shows it: its renders folder, its settings by format (the manifest's), each
    clip's manifest row, and what reads a row's frames."""

    name: str
    folder: Path  # renders/<dataset>/<masks run>/<variant>
    rows: dict[str, dict]  # source clip id → its row (static backgrounds: the first; one with pixels first)
    settings: dict[str, dict]  # format → what its renders were made from (manifest.json's settings)
    reader: RowFrames

    @classmethod
    def of(cls, name: str, folder: Path, manifest: list[dict], settings: dict[str, dict],
           reader: RowFrames) -> "VariantView":
        rows: dict[str, dict] = {}
        for row in sorted(manifest, key=lambda r: not has_pixels(r)):  # stable: keeps the manifest's order
            if row.get("background") in (None, 0):  # manifests before static backgrounds have no source_clip_id
                rows.setdefault(row.get("source_clip_id") or row["clip_id"], row)
        return cls(name=name, folder=Path(folder), rows=rows, settings=settings, reader=reader)

    def frames(self, row: dict, wanted: Iterable[int]) -> dict[int, np.ndarray]:
        """{position: frame} of a row with pixels (rendered, or composed for lazy rows)."""
        return self.reader(self.folder, self.settings.get(row["format"], {}), row, wanted)


def has_pixels(row: dict) -> bool:
    """Whether a manifest row has frames to show: a render's file, or a lazy row of a usable clip."""
    return bool(row["path"]) or (row["format"] == LAZY and row["status"] in USABLE and bool(row["frames"]))


@dataclass(frozen=True)
class Picture:
    """One clip in one variant: its middle frame and the strip's frames (none where it was not rendered)."""

    middle: np.ndarray | None
    strip: list[np.ndarray]

    @classmethod
    def of(cls, view: VariantView, clip_id: str, count: int) -> "Picture":
        row = view.rows.get(clip_id)
        if row is None or not has_pixels(row) or not row["frames"]:
            return cls(middle=None, strip=[])
        spread, middle = positions(row["frames"], count), row["frames"] // 2
        frames = view.frames(row, {middle, *spread})
        return cls(middle=frames.get(middle), strip=[frames[p] for p in spread if p in frames])


def choose_clips(clips: list[StoredClip], count: int) -> list[StoredClip]:
    """Up to `count` usable clips, one label after another, in clip-id order."""
    by_label: dict[str, list[StoredClip]] = {}
    for clip in sorted((c for c in clips if c.usable), key=lambda c: c.clip_id):
        by_label.setdefault(clip.label or "", []).append(clip)
    chosen: list[StoredClip] = []
    while len(chosen) < count and any(by_label.values()):
        for group in by_label.values():
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return chosen


def side_by_side(views: list[VariantView], clips: list[StoredClip], pictures: dict[tuple[str, str], Picture]) -> str:
    rows = [[clip_cell(clip), *(cell(view.rows.get(clip.clip_id), pictures[view.name, clip.clip_id].middle, tile)
                                for view in views)] for clip in clips]
    return grid(("clip", *(view.name for view in views)), rows)


def strips(view: VariantView, clips: list[StoredClip], pictures: dict[tuple[str, str], Picture]) -> str:
    rows = [[clip_cell(clip), cell(view.rows.get(clip.clip_id), pictures[view.name, clip.clip_id].strip or None, strip)]
            for clip in clips]
    return grid(("clip", "frames"), rows)


def overlay_sheet(masks: MasksRun, clips: list[StoredClip], count: int) -> str:
    rows = [[clip_cell(clip), img(strip(list(overlays(masks, clip, count))))] for clip in clips]
    return grid(("clip", "source frames, masks outlined"), rows)


def clip_cell(clip: StoredClip) -> str:
    return "<br>".join(html.escape(text) for text in (clip.clip_id, f"[{clip.label or 'no label'}]", clip.split))


def cell(row: dict | None, frames: np.ndarray | list[np.ndarray] | None,
         draw: Callable[..., np.ndarray]) -> str:
    """A figure of `draw(frames)` captioned with the row's status, or a box saying why there is no picture."""
    if frames is not None:
        return figure(img(draw(frames)), caption(row))
    if row is None:
        why = "not in this variant"
    elif row["status"] == NO_PAIR:
        why = "no_pair: no partner clip"
    else:
        why = row["status"] if not row["path"] else f"{row['status']}: no frames"
    return figure(placeholder(why), caption(row))


def caption(row: dict | None) -> str:
    if row is None:
        return "not in this variant"
    parts = [row["status"], *([row["error"]] if row["error"] else [])]
    if row["pair_clip_id"]:
        parts.append(f"on the background of {row['pair_clip_id']} [{row['pair_label']}]")
    return "; ".join(parts)
