"""Apply a variant's fills to decoded frames: one clip in, composed RGB frames out, in decode order; the
inpainting plate, static backgrounds, partner frames for swap and HAT's centroid alignment of the pasted people."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from pipeline.decode import DecodeOptions, VideoDecoder
from pipeline.masks import ClipMasks, StoredClip
from pipeline.prefetch import prefetched
from pipeline.render.backdrops import backdrop
from pipeline.render.kinds import STATIC_FILLS, Fill, MaskOptions, Variant
from pipeline.render.planes import compose_planes
from pipeline.render.regions import RegionMasks, Regions

PLATE_SAMPLES = 24  # frames the inpainting median is taken over, evenly spread through the clip


def compose(frame: np.ndarray, regions: Regions, variant: Variant, *, rng: np.random.Generator | None = None,
            plate: np.ndarray | None = None, swap: np.ndarray | None = None,
            backdrops: dict[Fill, np.ndarray] | None = None) -> np.ndarray:
    """The frame with each region filled as the variant says; every fill reads the original frame."""
    out = frame
    for region, fill in variant.fills().items():
        if fill.kind == "keep":
            continue
        mask = regions.get(region)
        if not mask.any():
            continue
        if out is frame:
            out = frame.copy()
        if fill.kind in ("color", "mean"):
            source = _solid(frame.shape, fill.rgb)
        elif fill.kind == "blur":
            source = cv2.GaussianBlur(frame, (0, 0), fill.sigma)
        elif fill.kind == "noise":
            source = rng.integers(0, 256, size=frame.shape, dtype=np.uint8)
        elif fill.kind == "inpaint":
            source = plate
        elif fill.kind == "swap":
            source = swap
        elif fill.kind in STATIC_FILLS:
            source = backdrops[fill]
        else:
            raise ValueError(f"variant {variant.name}: unknown fill {fill.kind!r}")
        cv2.copyTo(source, mask.view(np.uint8), out)  # ~20x faster than out[mask] = source[mask]
    return out


@lru_cache(maxsize=16)
def _solid(shape: tuple[int, ...], rgb: tuple[int, int, int]) -> np.ndarray:
    solid = np.empty(shape, dtype=np.uint8)
    solid[...] = rgb
    solid.flags.writeable = False
    return solid


def decoded(path: Path, options: DecodeOptions, limit: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(source frame index, frame) pairs of a clip, upright, at display size, decoded on a thread of their own;
    with `limit`, its first `limit` frames only (a clip the masks stage decoded in part: the frames it
    segmented, not the error after). Frames are RGB, or yuv420p planes if `options.pixels` says so."""
    batches = prefetched(VideoDecoder(path, options))
    frames = (pair for batch in batches for pair in zip(batch.indices.tolist(), batch.frames))
    yield from itertools.islice(frames, limit)


def picked(frames: Iterable[tuple[int, np.ndarray]], wanted: Iterable[int]) -> dict[int, tuple[int, np.ndarray]]:
    """{position: (frame index, frame)} of the wanted positions, read no further than the last one."""
    wanted, out = set(wanted), {}
    for position, pair in enumerate(frames):
        if not wanted:
            break
        if position in wanted:
            out[position] = pair
            wanted.discard(position)
    return out


def composed(path: Path, regions: RegionMasks, variant: Variant, *, decode: DecodeOptions, frames: int,
             seed: int, clip_id: str, key: str | None = None, swap: "PartnerFrames | None" = None,
             planes: bool = False) -> Iterator[tuple[np.ndarray, Regions]]:
    """Every frame of one clip rendered as `variant` (with the regions it was rendered with).

    `frames` is the clip's frame count (to spread the inpainting samples); `key` names the render (the clip
    id, or `<clip id>__<k>` for the k-th static background); `swap(i)` gives the partner frame for output frame
    i when the variant pastes onto another clip. With `planes` (colour fills only, a source of even size)
    frames are composited and handed out as yuv420p planes, never converted to RGB.
    """
    if planes:
        yuv = dataclasses.replace(decode, pixels="yuv420p")
        for _, frame, found in regions.stream(decoded(path, yuv, frames)):
            yield compose_planes(frame, found, variant), found
        return
    make = FrameComposer(path, regions, variant, decode=decode, frames=frames, seed=seed, clip_id=clip_id, key=key,
                         swap=swap)
    for i, (index, frame, found) in enumerate(regions.stream(decoded(path, decode, frames))):
        if i == 0:
            make.align(found.person)
        yield make(i, index, frame, found)


class FrameComposer:
    """What `composed` does to each frame of one clip, for frames taken one at a time in any order (a data
    loader's samples): the inpainting plate (made at first need), the static backgrounds (one per key), noise
    seeded by the frame's source index, the swap partner's frame and HAT's alignment of the pasted people."""

    def __init__(self, path: Path, regions: RegionMasks, variant: Variant, *, decode: DecodeOptions, frames: int,
                 seed: int, clip_id: str, key: str | None = None, swap: "PartnerFrames | None" = None) -> None:
        self.path, self.regions, self.variant, self.decode, self.frames = path, regions, variant, decode, frames
        self.seed, self.clip_id, self.key, self.swap = seed, clip_id, key or clip_id, swap
        self.noisy = any(fill.kind == "noise" for fill in variant.fills().values())
        self.offset: tuple[int, int] | None = None
        self._plate: np.ndarray | None = None
        self._backdrops: dict[tuple[Fill, str], np.ndarray] = {}

    @property
    def unaligned(self) -> bool:
        """Whether the people still wait for their shift onto the partner (`align`)."""
        return self.swap is not None and self.variant.pairing.align == "centroid" and self.offset is None

    def align(self, first_person: np.ndarray) -> None:
        """Given the person mask of the clip's first frame, fix the shift of a centroid-aligned swap."""
        if self.unaligned:
            self.offset = centroid_offset(first_person, self.swap.first_person())

    def __call__(self, i: int, index: int, frame: np.ndarray, found: Regions, *, variant: Variant | None = None,
                 key: str | None = None) -> tuple[np.ndarray, Regions]:
        """Output frame `i` (source index `index`) composed, with the regions used; `variant` and `key` stand in
        for the clip's (fills drawn per sample, and the key their backgrounds are seeded by)."""
        variant, key = variant or self.variant, key or self.key
        if self.offset is not None:
            frame, found = shifted_frame(frame, found, self.offset)
        return compose(frame, found, variant, rng=noise_rng(self.seed, self.clip_id, index) if self.noisy else None,
                       plate=self.plate(), swap=self.swap(i) if self.swap is not None else None,
                       backdrops={fill: self.backdrop(fill, key) for fill in variant.fills().values()
                                  if fill.kind in STATIC_FILLS}), found

    @property
    def holes(self) -> list[str]:
        """The regions the variant inpaints (from the plate)."""
        return [region for region, fill in self.variant.fills().items() if fill.kind == "inpaint"]

    def plate(self, samples: dict[int, np.ndarray] | None = None, indices: list[int] | None = None) -> np.ndarray | None:
        """The inpainting plate, made at first need: from the clip decoded again, or from the `samples` (every
        `plate_step`-th frame) and `indices` of a pass that decoded the whole clip already."""
        if self.holes and self._plate is None:
            self._plate = plate_of(samples, indices, self.regions, self.holes) if samples is not None else \
                background_plate(self.path, self.regions, self.holes, self.decode, self.frames)
        return self._plate

    def backdrop(self, fill: Fill, key: str) -> np.ndarray:
        if (fill, key) not in self._backdrops:
            self._backdrops[(fill, key)] = backdrop(fill, seed=self.seed, key=key, width=self.regions.width,
                                                    height=self.regions.height)
        return self._backdrops[(fill, key)]


def noise_rng(seed: int, clip_id: str, index: int) -> np.random.Generator:
    """The generator of a frame's noise fill: seeded by the frame's source index, so any one frame can be made
    alone (a data loader's sampled frames) and comes out as the render made it."""
    return np.random.default_rng([seed, zlib.crc32(clip_id.encode()), index])


def centroid_offset(person: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """(dx, dy) that moves the centre of mass of `person` onto that of `target` (HAT's alignment, on the
    first frames); an empty mask counts as the image centre."""
    def centre(mask: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(mask)
        return np.array([xs.mean(), ys.mean()]) if len(xs) else np.array([(mask.shape[1] - 1) / 2, (mask.shape[0] - 1) / 2])

    dx, dy = np.round(centre(target) - centre(person)).astype(int)
    return int(dx), int(dy)


def shifted_frame(frame: np.ndarray, regions: Regions, offset: tuple[int, int]) -> tuple[np.ndarray, Regions]:
    """The frame and its regions moved by (dx, dy); what moves in from outside is background (black)."""
    person = shift(regions.person, offset)
    return shift(frame, offset), Regions(person=person, objects=shift(regions.objects, offset) & ~person)


def shift(array: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """`array` translated by whole pixels (dx right, dy down), zeros where nothing moved in."""
    dx, dy = offset
    height, width = array.shape[:2]
    out = np.zeros_like(array)
    if abs(dx) >= width or abs(dy) >= height:
        return out
    out[max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)] = \
        array[max(0, -dy) : height + min(0, -dy), max(0, -dx) : width + min(0, -dx)]
    return out


def background_plate(path: Path, regions: RegionMasks, holes: list[str], decode: DecodeOptions, frames: int) -> np.ndarray:
    """A clean plate: per pixel, the lower median over sampled frames where the pixel is in no hole region;
    pixels inside a hole in every sample are filled by cv2.inpaint (Telea)."""
    step = plate_step(frames)
    samples, indices = {}, []
    for i, (index, frame) in enumerate(decoded(path, decode, frames)):
        indices.append(index)
        if i % step == 0:
            samples[i] = frame
    return plate_of(samples, indices, regions, holes)


def plate_step(frames: int) -> int:
    """Every how many frames of a clip of `frames` the plate samples one (PLATE_SAMPLES in all)."""
    return max(1, -(-frames // PLATE_SAMPLES))


def plate_of(samples: dict[int, np.ndarray], indices: list[int], regions: RegionMasks, holes: list[str]) -> np.ndarray:
    """The plate from its sampled frames (position → frame, every `plate_step`-th of the clip) and the source
    indices of all the clip's frames: the regions of the sampled frames only (what `stream` gives them)."""
    hidden = np.stack([np.logical_or.reduce([regions.around(indices, position).get(region) for region in holes])
                       for position in sorted(samples)])
    samples = [samples[position] for position in sorted(samples)]
    stack = np.stack(samples)  # (S, H, W, 3) uint8
    fill = np.repeat(hidden.view(np.uint8), 3, axis=-1).reshape(stack.shape) * np.uint8(255)  # contiguous: fast
    np.maximum(stack, fill, out=stack)  # hidden → 255: sorts last (a true 255 ranked there is the right statistic)
    sort_network(stack)
    valid = (~hidden).sum(axis=0)  # (H, W)
    pick = (np.maximum(valid, 1) - 1) // 2
    plate = np.take_along_axis(stack, pick[None, :, :, None].repeat(3, axis=3), axis=0)[0]
    never = valid == 0
    if never.any():
        plate = cv2.inpaint(plate, never.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    return plate


class PartnerFrames:
    """Frame i of a clip of `length` frames → the partner's frame at the same relative time, at `size`; and
    the partner's first person mask at that size (for the centroid alignment)."""

    def __init__(self, frames: Iterator[tuple[np.ndarray, Regions]], partner_length: int, length: int,
                 size: tuple[int, int]) -> None:
        self._frames, self._partner_length, self._length = frames, max(1, partner_length), max(1, length)
        self._size = size  # (width, height)
        self._position, self._current, self._first_person = -1, None, None

    def __call__(self, i: int) -> np.ndarray:
        target = min(self._partner_length - 1, i * self._partner_length // self._length)
        while self._position < target and self._advance():
            pass
        frame = self._current
        if frame is None:  # the partner gave no frame at all
            raise ValueError(f"swap partner decoded no frames; its status row says {self._partner_length}")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        return frame

    def first_person(self) -> np.ndarray:
        if self._position < 0:
            self._advance()
        person = self._first_person
        if person is None:  # the partner gave no frame at all: its mask counts as empty (the image centre)
            return np.zeros(self._size[::-1], dtype=bool)
        if (person.shape[1], person.shape[0]) != self._size:
            person = cv2.resize(person.view(np.uint8), self._size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return person

    def _advance(self) -> bool:
        """The partner's next frame; False when it decoded fewer frames than its status row says (the last one
        is held)."""
        pair = next(self._frames, None)
        if pair is None:
            return False
        self._position, (self._current, found) = self._position + 1, pair
        if self._first_person is None:
            self._first_person = found.person
        return True


def partner_frames(partner: StoredClip, masks: ClipMasks | None, clip: StoredClip, *, options: MaskOptions,
                   decode_fps: float | None, seed: int) -> PartnerFrames:
    """The partner clip's background_only frames (people inpainted), timed to `clip`'s frames, for a swap
    variant whose masks options are `options`."""
    background_only = Variant(name="background_only", person=Fill("inpaint"), masks=options)
    regions = RegionMasks(masks, partner.height, partner.width, options)
    frames = composed(partner.path, regions, background_only, decode=DecodeOptions(fps=decode_fps),
                      frames=partner.frames, seed=seed, clip_id=partner.clip_id)
    return PartnerFrames(frames, partner.frames, clip.frames, (clip.width, clip.height))


@functools.cache
def network(n: int) -> tuple[tuple[int, int], ...]:
    """The compare-exchange pairs of Batcher's odd-even merge sort for `n` elements."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_network(stack: np.ndarray) -> None:
    """Sort `stack` along its first axis in place, as `stack.sort(axis=0)` does, by a sorting network of
    element-wise minima and maxima over whole frames (several times faster for the plate's 24 samples)."""
    low = np.empty_like(stack[0])
    for i, j in network(len(stack)):
        np.minimum(stack[i], stack[j], out=low)
        np.maximum(stack[i], stack[j], out=stack[j])
        stack[i] = low
