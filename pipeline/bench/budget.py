"""`make bench --minutes`: the bench's time budget. Each source size gets an equal share of what is left when it
starts (less a reserve for the render and loader figures); within it, as many clips as the costs measured on the
first clip say will fit one round (shorter ones where too few would fit for a GPU stage's decoders), and further
rounds while a round as long as the longest so far still fits.
One clip and one round are always measured, so a budget too small for them is overrun, never empty."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class Budget:
    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def share(self, parts: int, reserve: float = 0.0) -> float:
        """Seconds for the next of `parts` equal parts of what is left, `reserve` seconds kept back."""
        return max(0.0, self.left() - reserve) / max(1, parts)


def affordable_clips(*, seconds: float, frames_per_clip: int, make_per_frame: float, round_per_frame: float,
                     most: int) -> int:
    """Clips (at least 1, at most `most`) that can be made and measured once in `seconds`, at these costs per
    frame (seconds)."""
    per_clip = frames_per_clip * (make_per_frame + round_per_frame)
    if per_clip <= 0:
        return most
    return max(1, min(most, int(seconds // per_clip)))


def clip_plan(*, seconds: float, frames_per_clip: int, make_per_frame: float, round_per_frame: float, most: int,
              at_least: int = 1, shortest: int = 1, made: int = 0) -> tuple[int, int]:
    """Clips, and frames a clip past the `made` ones (made already, at `frames_per_clip`), that can be made and
    measured once in `seconds` (`affordable_clips`): clips of `frames_per_clip`, as many as fit; where fewer than
    `at_least` fit (a GPU stage's decoders, each decoding a clip at a time: fewer clips leave decoders idle), the
    rest shorter, never under `shortest` frames, as many as fit beside the made ones' round (`at_least` of all,
    where `shortest` allows). The frames a clip are `frames_per_clip` where no shorter clip is planned."""
    count = affordable_clips(seconds=seconds, frames_per_clip=frames_per_clip, make_per_frame=make_per_frame,
                             round_per_frame=round_per_frame, most=most)
    want = min(at_least, most)
    per_frame = make_per_frame + round_per_frame
    if count >= want or per_frame <= 0 or want <= made:
        return count, frames_per_clip
    left = seconds - made * frames_per_clip * round_per_frame  # the made clips' round
    shortest = max(1, min(shortest, frames_per_clip))
    frames = max(shortest, min(frames_per_clip, int(left // ((want - made) * per_frame))))
    more = min(want - made, int(left // (frames * per_frame))) if left > 0 else 0
    if more <= 0:
        return max(1, min(made, count)), frames_per_clip
    return made + more, frames


def another_round(*, done: list[float], repeat: int, deadline: float) -> bool:
    """Whether to measure another round: fewer than `repeat` done, and the longest so far still fits."""
    if not done:
        return True
    return len(done) < repeat and time.perf_counter() + max(done) <= deadline
