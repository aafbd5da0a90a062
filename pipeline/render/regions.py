"""From stored instances to per-frame region masks: filter, OR over neighbouring frames, dilate.

`person` is the union of the person instances; `objects` the union of every other instance outside the people
(people win where the two overlap); `background` is every pixel in neither.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import cv2
import numpy as np

from pipeline import rle
from pipeline.masks import ClipMasks
from pipeline.render.kinds import MaskOptions
from pipeline.segment.base import PERSON

T = TypeVar("T")


@dataclass(frozen=True)
class Regions:
    person: np.ndarray  # (H, W) bool
    objects: np.ndarray  # (H, W) bool, never overlapping `person`

    @property
    def background(self) -> np.ndarray:
        return ~(self.person | self.objects)

    def get(self, region: str) -> np.ndarray:
        return self.background if region == "background" else getattr(self, region)


class RegionMasks:
    """One clip's instances, filtered by score and area and grouped by frame, ready to become Regions."""

    def __init__(self, clip: ClipMasks | None, height: int, width: int, options: MaskOptions) -> None:
        self.height, self.width, self.options = height, width, options
        self._rows: dict[int, list[tuple[bytes, bool]]] = defaultdict(list)  # frame → (rle, is person)
        if clip is None or len(clip) == 0:
            return
        counts = clip.table.column("rle").to_pylist()
        for row, (frame, cls, score) in enumerate(zip(clip.frame_index.tolist(), clip.cls.tolist(), clip.conf.tolist())):
            if score < options.min_score:
                continue
            if options.min_area and rle.area(counts[row], height, width) < options.min_area:
                continue
            self._rows[frame].append((counts[row], cls == PERSON))

    def raw(self, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(person, objects) unions of one frame's kept instances, before the temporal OR and dilation."""
        rows = self._rows.get(frame_index, ())
        person = rle.decode_union([c for c, is_person in rows if is_person], self.height, self.width)
        objects = rle.decode_union([c for c, is_person in rows if not is_person], self.height, self.width)
        return person, objects

    def person_coverage(self, frame_indices: Iterable[int]) -> list[float]:
        """Fraction of each frame covered by people, from the RLEs alone (no decoding, no dilation)."""
        pixels = self.height * self.width
        return [rle.union_area([c for c, p in self._rows.get(f, ()) if p], self.height, self.width) / pixels
                for f in frame_indices]

    def object_coverage(self, frame_indices: Iterable[int]) -> list[float]:
        """Fraction of each frame covered by objects outside people, from the RLEs alone."""
        pixels, h, w = self.height * self.width, self.height, self.width
        return [(rle.union_area([c for c, _ in self._rows.get(f, ())], h, w)
                 - rle.union_area([c for c, p in self._rows.get(f, ()) if p], h, w)) / pixels for f in frame_indices]

    def stream(self, items: Iterable[tuple[int, T]]) -> Iterator[tuple[int, T, Regions]]:
        """Attach Regions to each (frame index, payload) in decode order; holds at most 2k+1 items for ±k."""
        k = self.options.temporal
        buffer: list[tuple[int, T, np.ndarray, np.ndarray]] = []
        emitted = 0  # position in `buffer` of the next item to emit
        for index, payload in items:
            buffer.append((index, payload, *self.raw(index)))
            while len(buffer) - emitted > k:
                yield self._emit(buffer, emitted)
                emitted += 1
            if emitted > k:  # drop what no later window needs
                del buffer[: emitted - k]
                emitted = k
        while emitted < len(buffer):
            yield self._emit(buffer, emitted)
            emitted += 1

    def around(self, indices: Sequence[int], position: int) -> Regions:
        """The Regions of the frame at `position` of a clip whose frames, in decode order, have the source
        indices `indices` (at least up to `position` + k): what `stream` gives that frame, made alone (a data
        loader's sampled frames)."""
        k = self.options.temporal
        window = [self.raw(index) for index in indices[max(0, position - k) : position + k + 1]]
        return self._combine(window, min(position, k))

    def _emit(self, buffer: list, position: int) -> tuple[int, T, Regions]:
        k = self.options.temporal
        window = [(entry[2], entry[3]) for entry in buffer[max(0, position - k) : position + k + 1]]
        index, payload = buffer[position][:2]
        return index, payload, self._combine(window, min(position, k))

    def _combine(self, window: list[tuple[np.ndarray, np.ndarray]], centre: int) -> Regions:
        """One frame's Regions from the raw (person, objects) of its window of ±k frames (`centre` is its place
        there): the temporal OR, then dilation; objects never overlap people."""
        person, objects = window[centre]
        if self.options.temporal:
            person = np.logical_or.reduce([raw[0] for raw in window])
            objects = np.logical_or.reduce([raw[1] for raw in window])
        if self.options.dilate:
            person, objects = dilate(person, self.options.dilate), dilate(objects, self.options.dilate)
        return Regions(person=person, objects=objects & ~person)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a mask by `pixels` with an elliptical (disc) kernel."""
    if not mask.any():
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.view(np.uint8), kernel).astype(bool)
