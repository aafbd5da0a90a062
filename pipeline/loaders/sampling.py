"""Which frames of a clip a training or test sample takes: `num_clips` windows of `clip_len` frames,
`frame_interval` apart (mmaction2's SampleFrames convention: random window starts for training, evenly
spaced centred ones for testing; positions past the end wrap round)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Sampling:
    clip_len: int = 16
    frame_interval: int = 4
    num_clips: int = 1
    test_mode: bool = False  # evenly spaced windows, no randomness

    def __post_init__(self) -> None:
        if min(self.clip_len, self.frame_interval, self.num_clips) < 1:
            raise ValueError(f"{self}: clip_len, frame_interval and num_clips must be at least 1")

    @property
    def span(self) -> int:
        """Frames one window spans."""
        return self.clip_len * self.frame_interval

    def positions(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        """(num_clips × clip_len,) positions in [0, frames), window after window."""
        if frames < 1:
            raise ValueError("a clip with no frames has nothing to sample")
        starts = self._starts(frames, rng)
        inside = starts[:, None] + np.arange(self.clip_len) * self.frame_interval
        return (inside % frames).reshape(-1).astype(np.int64)

    def _starts(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        room = frames - self.span + 1  # window starts that keep it inside the clip
        if self.test_mode:
            if room <= 0:
                return np.zeros(self.num_clips, dtype=np.int64)
            step = room / self.num_clips
            return (np.arange(self.num_clips) * step + step / 2).astype(np.int64)
        step = room // self.num_clips
        if step > 0:  # one window per equal part, at a random place in it
            return np.arange(self.num_clips) * step + rng.integers(step, size=self.num_clips)
        if room > 0:
            return np.sort(rng.integers(room, size=self.num_clips))
        return np.zeros(self.num_clips, dtype=np.int64)
