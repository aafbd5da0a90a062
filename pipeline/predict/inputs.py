"""The frames `predict` scores for one manifest row: N positions spread evenly over the clip (the same for
every variant of a clip: they come from the source clip's frame count in the masks), read from the rendered
file (mp4, rawframes), from the source itself (`original`), or composed on the fly from the mask cache (rows
rendered with FORMAT=lazy) by the loaders' `ClipComposer`, the render's own code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.decode import DecodeError, DecodeOptions
from pipeline.loaders.frames import ClipComposer, ClipSource
from pipeline.masks import ClipMasks, StoredClip
from pipeline.render.compose import decoded, picked
from pipeline.render.encode import LAZY
from pipeline.render.kinds import Variant


def positions(frames: int, count: int) -> list[int]:
    """`count` positions of a clip of `frames` frames, the centre of each of `count` equal segments (a clip
    shorter than `count` repeats frames)."""
    if frames < 1:
        raise DecodeError("the clip has no frames to score")
    return [min(frames - 1, int((k + 0.5) * frames / count)) for k in range(count)]


@dataclass(frozen=True, kw_only=True)
class PredictItem:
    """One listed row of a variant's manifest to score: its render key, the clip (and swap partner) as the masks
    have them, and where its pixels are (`path`: the rendered file or folder, the source link; None: composed)."""

    key: str
    clip: StoredClip
    format: str
    path: str | None = None
    partner: StoredClip | None = None

    @property
    def split(self) -> str:
        return self.clip.split

    @property
    def source(self) -> str:
        """What it is read from (named in problems)."""
        return self.path or str(self.clip.path)


def read_frames(item: PredictItem, wanted: list[int], *, variant: Variant, seed: int, decode_fps: float | None,
                masks: ClipMasks | None, partner_masks: ClipMasks | None) -> np.ndarray:
    """(len(wanted), H, W, 3) uint8 RGB: the item's frames at the `wanted` positions of its clip. DecodeError
    when the file has fewer frames than its clip, or cannot be read."""
    if item.format == LAZY:
        source = ClipSource(clip=item.clip, masks=masks, key=item.key, partner=item.partner,
                            partner_masks=partner_masks)
        return ClipComposer(source, variant, decode_fps=decode_fps, seed=seed).frames(list(wanted))
    if item.format == "rawframes":
        found = {}
        for p in set(wanted):
            image = cv2.imread(str(Path(item.path) / f"img_{p + 1:05d}.jpg"))
            if image is None:
                raise DecodeError(f"{item.path}: no readable img_{p + 1:05d}.jpg")
            found[p] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:  # a render is read at its own rate; the source (`original`) as the masks stage decoded it
        options = DecodeOptions(fps=decode_fps) if item.format == "source" else DecodeOptions()
        found = {p: frame for p, (_, frame) in picked(decoded(Path(item.path), options, item.clip.frames),
                                                      wanted).items()}
    missing = [p for p in wanted if p not in found]
    if missing:
        raise DecodeError(f"{item.path}: no frame {missing[0]} (the masks say {item.clip.frames} frames); render it "
                          "again")
    return np.stack([found[p] for p in wanted])
