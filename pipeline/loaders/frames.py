"""Chosen frames of one clip composed as a variant, with the render stage's own code: the same regions
(`RegionMasks.around`, the window `stream` uses), the same `compose`, plate, backdrops, noise, swap partner
and alignment. A frame made here is the frame render composes before encoding, pixel for pixel, unless the
sample asks for its own random fills.
"""

from __future__ import annotations

import dataclasses
import zlib
from contextlib import closing
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.decode import DecodeError, DecodeOptions
from pipeline.masks import ClipMasks, StoredClip
from pipeline.render.backdrops import still_index
from pipeline.render.compose import FrameComposer, decoded, partner_frames, plate_step
from pipeline.render.kinds import Fill, Variant
from pipeline.render.regions import RegionMasks

RANDOM_FILLS = (None, "clip", "frame")  # per-sample fills: none (render's), a new draw per sample, or per frame
DECODE_BATCH = 4  # frames decoded at a time: the decoder thread runs little past a window's last frame


@dataclass(frozen=True, kw_only=True)
class ClipSource:
    """One sample's inputs: the clip, its masks, the render key (the clip id, or `<id>__<k>` for static
    background k) and, for swap variants, the partner clip and its masks."""

    clip: StoredClip
    masks: ClipMasks | None
    key: str
    partner: StoredClip | None = None
    partner_masks: ClipMasks | None = None


class ClipComposer:
    """Compose frames of one clip, by position in its decoded frames, as `variant` with `seed`. With
    `random_fill` ("clip" or "frame") colour and static fills are drawn from `seed` (a sample's own) instead
    of being the variant's: a new colour / background per sample, or per frame."""

    def __init__(self, source: ClipSource, variant: Variant, *, decode_fps: float | None, seed: int,
                 random_fill: str | None = None) -> None:
        if random_fill not in RANDOM_FILLS:
            raise ValueError(f"random_fill is one of {RANDOM_FILLS}, not {random_fill!r}")
        if variant.needs_pair and source.partner is None:
            raise ValueError(f"{source.key}: variant {variant.name} pastes onto a partner clip, and none was given")
        self.source, self.variant, self.seed, self.random_fill = source, variant, seed, random_fill
        clip = source.clip
        self.decode = DecodeOptions(fps=decode_fps, batch=DECODE_BATCH)
        self.regions = RegionMasks(source.masks, clip.height, clip.width, variant.masks)
        swap = partner_frames(source.partner, source.partner_masks, clip, options=variant.masks,
                              decode_fps=decode_fps, seed=seed) if source.partner is not None else None
        self._make = FrameComposer(clip.path, self.regions, variant, decode=self.decode, frames=clip.frames, seed=seed,
                                   clip_id=clip.clip_id, key=source.key, swap=swap)

    def frames(self, positions: Sequence[int]) -> np.ndarray:
        """(len(positions), H, W, 3) RGB at source size: the clip decoded up to the last position it needs,
        each asked-for frame composed once (in position order, as swap partners are read forward)."""
        positions = self.used(positions)
        wanted = sorted(set(positions))
        last, chosen = wanted[-1] + self.variant.masks.temporal, set(wanted)
        plate = self._make.holes and self._make._plate is None  # one pass for the frames and the plate's samples
        step, samples = plate_step(self.source.clip.frames), {}
        indices: list[int] = []
        kept: dict[int, np.ndarray] = {}
        with closing(decoded(self.source.clip.path, self.decode, self.source.clip.frames)) as stream:
            for position, (index, frame) in enumerate(stream):
                indices.append(index)
                if position in chosen:
                    kept[position] = frame
                if plate and position % step == 0:
                    samples[position] = frame
                if position >= last and not plate:
                    break
        missing = [p for p in wanted if p not in kept]
        if missing:
            raise DecodeError(f"{self.source.clip.path}: decoded {len(indices)} frames, the masks say "
                              f"{self.source.clip.frames}; the file changed since its masks were made")
        if plate:
            self._make.plate(samples, indices)
        made = {p: self.compose(p, kept[p], indices) for p in wanted}
        return np.stack([made[p] for p in positions])

    def used(self, positions: Sequence[int]) -> list[int]:
        """The positions whose frames a sample shows: `positions`, or for a still variant (SCUFO) its one
        seeded frame as often."""
        if not self.variant.still:
            return [int(p) for p in positions]
        pick = min(still_index(seed=self.seed, key=self.source.key, frames=self.source.clip.frames),
                   self.source.clip.frames - 1)
        return [pick] * len(positions)

    def compose(self, position: int, frame: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Frame `position` of the clip (RGB, source size) composed; `indices` are the source indices of the
        clip's frames in decode order, at least up to `position` + the temporal window."""
        if self._make.unaligned:
            self._make.align(self.regions.around(indices, 0).person)
        variant, key = self._drawn(position)
        frame, _ = self._make(position, indices[position], frame, self.regions.around(indices, position),
                              variant=variant, key=key)
        return frame

    def _drawn(self, position: int) -> tuple[Variant, str]:
        """The variant with this frame's drawn fills, and the key its static backgrounds are seeded by."""
        if self.random_fill is None:
            return self.variant, self.source.key
        key = self.source.key if self.random_fill == "clip" else f"{self.source.key}#{position}"
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        drawn = {region: Fill("color", rgb=tuple(int(v) for v in rng.integers(0, 256, size=3)))
                 for region, fill in self.variant.fills().items() if fill.kind in ("color", "mean")}
        return dataclasses.replace(self.variant, **drawn), key
