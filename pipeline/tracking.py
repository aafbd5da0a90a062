"""Stable instance ids across a clip's frames: greedy mask-IoU matching of each frame's instances to live tracks.

Each frame's instances are matched, same class only, to the tracks seen in the last `max_gap` frames, pair by
pair in order of falling IoU (ties by position, so ids are deterministic); a pair needs IoU ≥ `min_iou`.
Unmatched instances start new tracks, numbered 0, 1, 2 … in order of first appearance. IoU comes straight from
the RLEs (pycocotools), so nothing is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import rle


@dataclass(frozen=True, kw_only=True)
class TrackOptions:
    min_iou: float = 0.3  # least mask IoU to continue a track
    max_gap: int = 5  # frames a track may go unseen (a missed detection, an occlusion) and still continue


class IouTracker:
    """Assigns track ids frame by frame within one clip."""

    def __init__(self, options: TrackOptions = TrackOptions()) -> None:
        self.options = options
        self.tracks: list[dict] = []  # live tracks: id, cls, counts (last RLE), seen (frame last seen)
        self.frame = 0
        self.next_id = 0

    def assign(self, cls: np.ndarray, counts: list[bytes], height: int, width: int) -> list[int]:
        """Track ids of one frame's instances (given as class ids and RLEs); call once per frame, in order."""
        ious = rle.iou(counts, [track["counts"] for track in self.tracks], height, width)
        if ious.size:
            same = np.asarray(cls)[:, None] == np.array([track["cls"] for track in self.tracks])[None, :]
            ious = np.where(same, ious, 0.0)
        ids = [-1] * len(counts)
        for flat in np.argsort(-ious, axis=None, kind="stable"):  # greedy, best pair first
            i, t = divmod(int(flat), ious.shape[1])
            if ious[i, t] < self.options.min_iou:
                break
            track = self.tracks[t]
            if ids[i] < 0 and track["seen"] < self.frame:  # each track continues at most once per frame
                ids[i] = track["id"]
                track.update(counts=counts[i], seen=self.frame)
        for i in (i for i, track_id in enumerate(ids) if track_id < 0):
            ids[i], self.next_id = self.next_id, self.next_id + 1
            self.tracks.append({"id": ids[i], "cls": int(cls[i]), "counts": counts[i], "seen": self.frame})
        self.tracks = [track for track in self.tracks if self.frame - track["seen"] <= self.options.max_gap]
        self.frame += 1
        return ids
