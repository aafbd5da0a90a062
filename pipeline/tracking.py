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
        cls = np.asarray(cls, dtype=np.int64)
        ious = self._ious(cls, counts, height, width)
        ids = [-1] * len(counts)
        pairs = np.flatnonzero(ious >= self.options.min_iou)
        for flat in pairs[np.argsort(-ious.flat[pairs], kind="stable")]:  # greedy, best pair first
            i, t = divmod(int(flat), ious.shape[1])
            track = self.tracks[t]
            if ids[i] < 0 and track.seen < self.frame:  # each track continues at most once per frame
                ids[i] = track.id
                track.counts, track.seen = counts[i], self.frame
        for i in (i for i, track_id in enumerate(ids) if track_id < 0):
            ids[i], self.next_id = self.next_id, self.next_id + 1
            self.tracks.append(Track(id=ids[i], cls=int(cls[i]), counts=counts[i], seen=self.frame))
        self.tracks = [track for track in self.tracks if self.frame - track.seen <= self.options.max_gap]
        self.frame += 1
        return ids

    def _ious(self, cls: np.ndarray, counts: list[bytes], height: int, width: int) -> np.ndarray:
        """(instances, tracks) mask IoU; -inf where the classes differ (never measured there, never a match, even
        at a `min_iou` of 0)."""
        ious = np.full((len(counts), len(self.tracks)), -np.inf)
        tracked = np.array([track.cls for track in self.tracks], dtype=np.int64)
        for c in sorted(set(cls.tolist()) & set(tracked.tolist())):
            mine, theirs = np.flatnonzero(cls == c), np.flatnonzero(tracked == c)
            ious[np.ix_(mine, theirs)] = rle.iou([counts[i] for i in mine],
                                                 [self.tracks[t].counts for t in theirs], height, width)
        return ious
