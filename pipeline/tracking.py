"""Stable instance ids across a clip's frames: greedy mask-IoU matching of each frame's instances to live tracks.

Each frame's instances are matched, same class only, to the tracks seen in the last `max_gap` frames, pair by
pair in order of falling IoU (ties by position, so ids are deterministic); a pair needs IoU ≥ `min_iou`.
Unmatched instances start new tracks, numbered 0, 1, 2 … in order of first appearance. IoU comes straight from
the RLEs (pycocotools), so nothing is decoded, and only for pairs of the same class: a crowded frame of many
classes costs the pairs that can match, not every instance against every track.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import rle


@dataclass(frozen=True, kw_only=True)
class TrackOptions:
    min_iou: float = 0.3  # least mask IoU to continue a track
    max_gap: int = 5  # frames a track may go unseen (a missed detection, an occlusion) and still continue


@dataclass(slots=True, kw_only=True)
class Track:
    """One live track: its id, class, last mask (RLE) and the frame it was last seen in."""

    id: int
    cls: int
    counts: bytes
    seen: int


class IouTracker:
    """Assigns track ids frame by frame within one clip."""

    def __init__(self, options: TrackOptions = TrackOptions()) -> None:
        self.options = options
        self.tracks: list[Track] = []
        self.frame = 0
        self.next_id = 0

    def assign(self, cls: np.ndarray, counts: list[bytes], height: int, width: int) -> list[int]:
        """Track ids of one frame's instances (given as class ids and RLEs); call once per frame, in order."""
        classes = np.asarray(cls, dtype=np.int64).tolist()
        ids = [-1] * len(counts)
        for _, i, t in sorted(self._pairs(classes, counts, height, width)):  # greedy, best pair first
            track = self.tracks[t]
            if ids[i] < 0 and track.seen < self.frame:  # each track continues at most once per frame
                ids[i] = track.id
                track.counts, track.seen = counts[i], self.frame
        for i in (i for i, track_id in enumerate(ids) if track_id < 0):
            ids[i], self.next_id = self.next_id, self.next_id + 1
            self.tracks.append(Track(id=ids[i], cls=classes[i], counts=counts[i], seen=self.frame))
        self.tracks = [track for track in self.tracks if self.frame - track.seen <= self.options.max_gap]
        self.frame += 1
        return ids

    def _pairs(self, classes: list[int], counts: list[bytes], height: int, width: int
               ) -> list[tuple[float, int, int]]:
        """(-IoU, instance, track) of every pair of one class whose mask IoU is at least `min_iou`, in no order:
        sorted, they are best first, ties by instance then track (the order of the whole matrix's entries). Pairs
        of other classes are never measured and never match, even at a `min_iou` of 0."""
        mine: dict[int, list[int]] = {}
        for i, c in enumerate(classes):
            mine.setdefault(c, []).append(i)
        theirs: dict[int, list[int]] = {}
        for t, track in enumerate(self.tracks):
            if track.cls in mine:
                theirs.setdefault(track.cls, []).append(t)
        pairs = []
        for c, tracked in theirs.items():
            found = mine[c]
            ious = rle.iou([counts[i] for i in found], [self.tracks[t].counts for t in tracked], height, width)
            rows, cols = np.nonzero(ious >= self.options.min_iou)
            pairs += [(-iou, found[r], tracked[k])
                      for iou, r, k in zip(ious[rows, cols].tolist(), rows.tolist(), cols.tolist())]
        return pairs
