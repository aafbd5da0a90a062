"""Frames for the report: picked positions of a source clip or of a render (mp4, rawframes, webdataset tar),
small tiles of them, and mask outlines drawn so they show on any background."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from pipeline.decode import DecodeOptions
from pipeline.masks import MasksRun, StoredClip
from pipeline.render.compose import decoded, picked
from pipeline.render.definitions import from_spec
from pipeline.render.encode import LAZY
from pipeline.render.kinds import MaskOptions
from pipeline.render.regions import RegionMasks
from pipeline.render.tars import WEBDATASET, read_sample

TILE_HEIGHT = 120
PERSON_COLOUR, OBJECT_COLOUR = (255, 70, 220), (40, 230, 255)  # magenta people, cyan objects
TINT = 0.25  # the share of the colour in a region's fill
DARK = (0, 0, 0)


def positions(total: int, count: int) -> list[int]:
    """`count` evenly spread frame positions of a clip of `total` frames."""
    return sorted({min(total - 1, round((i + 0.5) * total / count)) for i in range(count)}) if total else []


def source_frames(masks: MasksRun, clip: StoredClip, wanted: Iterable[int]) -> dict[int, tuple[int, np.ndarray]]:
    """The clip's frames at `wanted` positions as the masks stage decoded them (source size, same fps)."""
    return picked(decoded(clip.path, DecodeOptions(fps=masks.decode_fps), clip.frames), wanted)


def rendered_frames(variant_dir: Path, row: dict, wanted: Iterable[int]) -> dict[int, np.ndarray]:
    """{position: frame} of a clip's render (its manifest row) at `wanted` positions."""
    path = variant_dir / row["path"]
    if row["format"] == "rawframes":
        return {p: cv2.cvtColor(cv2.imread(str(path / f"img_{p + 1:05d}.jpg")), cv2.COLOR_BGR2RGB) for p in wanted}
    if row["format"] == WEBDATASET:  # the clip's mp4 out of its shard's tar, by its render key
        key = row["source_clip_id"] + ("" if row["background"] is None else f"__{row['background']}")
        with tempfile.NamedTemporaryFile(suffix=".mp4") as mp4:
            mp4.write(read_sample(path, key)["mp4"])
            mp4.flush()
            return {p: frame for p, (_, frame) in picked(decoded(Path(mp4.name), DecodeOptions()), wanted).items()}
    return {p: frame for p, (_, frame) in picked(decoded(path, DecodeOptions()), wanted).items()}


class RowFrames:
    """Frames of manifest rows at picked positions: read from a render's files, or, for rows rendered with
    FORMAT=lazy, composed from the mask cache as the loaders and `predict` compose them."""

    def __init__(self, masks: MasksRun, clips: Iterable[StoredClip]) -> None:
        self.masks, self.clips = masks, {clip.clip_id: clip for clip in clips}

    def __call__(self, variant_dir: Path, settings: dict, row: dict, wanted: Iterable[int]) -> dict[int, np.ndarray]:
        wanted = sorted(set(wanted))
        if row["format"] != LAZY:
            return rendered_frames(variant_dir, row, wanted)
        clip = self.clips.get(row["source_clip_id"])
        partner = self.clips.get(row["pair_clip_id"]) if row["pair_clip_id"] else None
        if clip is None or not wanted:
            return {}
        from pipeline.predict.inputs import PredictItem, read_frames  # the loaders import torch: only when needed

        item = PredictItem(key=row["clip_id"], clip=clip, format=LAZY, partner=partner)
        frames = read_frames(item, [min(p, clip.frames - 1) for p in wanted], variant=from_spec(settings["variant"]),
                             seed=settings.get("seed", 0), decode_fps=self.masks.decode_fps,
                             masks=self.masks.clip_masks(clip),
                             partner_masks=self.masks.clip_masks(partner) if partner else None)
        return dict(zip(wanted, frames))


def tile(frame: np.ndarray, height: int = TILE_HEIGHT) -> np.ndarray:
    return cv2.resize(frame, (max(1, round(frame.shape[1] * height / frame.shape[0])), height),
                      interpolation=cv2.INTER_AREA)


def strip(frames: list[np.ndarray]) -> np.ndarray:
    """Tiles side by side, 2 white pixels apart."""
    gap = np.full((TILE_HEIGHT, 2, 3), 255, np.uint8)
    parts = [part for frame in frames for part in (tile(frame), gap)][:-1]
    return np.hstack(parts)


def outlined(frame: np.ndarray, person: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """A tile of `frame` with people and objects lightly tinted and outlined twice (dark outside, their colour
    inside), so either shows on light, dark and coloured backgrounds alike; people win where both cover."""
    out = tile(frame).astype(np.float32)
    size = (out.shape[1], out.shape[0])

    def small(mask: np.ndarray) -> np.ndarray:
        return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)

    masks = [(small(objects & ~person), OBJECT_COLOUR), (small(person), PERSON_COLOUR)]
    for mask, colour in masks:
        inside = mask.astype(bool)
        out[inside] = (1 - TINT) * out[inside] + TINT * np.array(colour, np.float32)
    out = out.round().astype(np.uint8)
    for mask, colour in masks:
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, DARK, 3)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def found_regions(masks: MasksRun, clip: StoredClip) -> RegionMasks:
    """The clip's stored people and objects, unfiltered, as the overlays show them."""
    return RegionMasks(masks.clip_masks(clip), clip.height, clip.width, MaskOptions())


def overlays(masks: MasksRun, clip: StoredClip, count: int) -> Iterator[np.ndarray]:
    """`count` evenly spread source frames of the clip with the found masks outlined."""
    regions = found_regions(masks, clip)
    for _, (index, frame) in sorted(source_frames(masks, clip, positions(clip.frames, count)).items()):
        yield outlined(frame, *regions.raw(index))
