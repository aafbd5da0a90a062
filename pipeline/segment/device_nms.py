"""Class-aware greedy NMS for a batch of frames, on the device at fixed shapes, so that the host need not wait.

torchvision's NMS returns as many indices as it keeps, and the candidates above the score threshold are as many
as there are: each size is a wait for the device before anything else can be queued. Here each frame's
candidates are its `capacity` best-scoring anchors (a stable sort: ties go by anchor), those under the
threshold marked invalid, and greedy NMS is solved as a fixed point on a (capacity × capacity) matrix of which
candidate suppresses which. Nothing is sized by the data; what the host must know (a frame with more candidates
than the capacity, NMS not yet settled) travels in the batch's one copy to the host, and the rare batch that
needs it is run again, exactly.

Greedy NMS keeps candidate i (in falling score) unless a kept candidate before it, of its class, overlaps it
with IoU above the threshold. That equation has exactly one solution (keep[i] follows from keep[:i]), and
iterating it from "all valid" reaches it in as many rounds as its longest chain of suppressions, a handful on
real frames: the result is the same whatever the capacity (≥ the candidates), the rounds or the batch, and it
is torchvision's NMS class by class (tested). IoU is computed in float64 from the boxes themselves, so no class
offset costs precision, as one does in float32 predict().

Memory: the suppression matrix is frames × room² booleans, and each round makes one more; the overlaps are
computed in float64 blocks of PAIR_BUDGET pairs. The caller bounds the room (yolo_device.MAX_ROOM) and runs
frames with more candidates again in groups (ROUND_BUDGET).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision

ROUNDS = 4  # rounds of the fixed point before the check (real frames settle in 1-4)
PAIR_BUDGET = 1 << 23  # candidate pairs whose overlap is computed at once (a few float64 temporaries of 64 MiB)
ROUND_BUDGET = 1 << 28  # frames × room² of one suppression matrix (256 MiB of booleans, and as much per round)


@dataclass(frozen=True, kw_only=True)
class Candidates:
    """Each frame's best-scoring anchors, by falling score (ties by anchor), and which of them are candidates."""

    anchor: torch.Tensor  # (N, C) int64
    score: torch.Tensor  # (N, C) float32
    valid: torch.Tensor  # (N, C) bool: above the threshold, of a kept class, with a finite box
    count: torch.Tensor  # (N,) int64: the frame's candidates, also those past the capacity


def candidates(score: torch.Tensor, usable: torch.Tensor, capacity: int) -> Candidates:
    """(N, A) scores and which anchors are candidates → the `capacity` best of each frame (capacity ≤ A)."""
    ranked = torch.where(usable, score, -torch.inf)
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :capacity]
    return Candidates(anchor=order, score=score.gather(1, order), valid=usable.gather(1, order),
                      count=usable.sum(1))


def suppression(xyxy: torch.Tensor, cls: torch.Tensor, valid: torch.Tensor, iou: float) -> torch.Tensor:
    """(N, C, C) bool: [n, j, i] where candidate j comes before i in frame n, both valid, of one class, and
    their IoU is above `iou`: torchvision's test (inter / union > iou) in float64, with its arithmetic in its
    order, so that the kept are those of `frame_by_frame`. Computed in blocks of at most PAIR_BUDGET pairs
    (frames at a time, or rows of one frame)."""
    count, capacity = valid.shape
    out = torch.zeros((count, capacity, capacity), dtype=torch.bool, device=xyxy.device)
    frames = max(1, PAIR_BUDGET // max(1, capacity * capacity))
    rows = capacity if frames > 1 else max(1, PAIR_BUDGET // max(1, capacity))
    box = xyxy.double()
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    later = torch.arange(capacity, device=xyxy.device)
    for n in range(0, count, frames):
        f = slice(n, n + frames)
        for j in range(0, capacity, rows):
            r = slice(j, j + rows)
            one, other = box[f, r, None, :], box[f, None, :, :]
            width = torch.minimum(one[..., 2], other[..., 2]).sub_(torch.maximum(one[..., 0], other[..., 0]))
            height = torch.minimum(one[..., 3], other[..., 3]).sub_(torch.maximum(one[..., 1], other[..., 1]))
            inter = width.clamp_(min=0).mul_(height.clamp_(min=0))
            union = (area[f, r, None] + area[f, None, :]).sub_(inter)
            block = inter.div_(union) > iou
            block &= valid[f, r, None] & valid[f, None, :] & (cls[f, r, None] == cls[f, None, :])
            block &= later[r, None] < later[None, :]  # j before i
            out[f, r] = block
    return out


def frame_by_frame(xyxy: torch.Tensor, cls: torch.Tensor, found: Candidates, iou: float
                   ) -> tuple[torch.Tensor, int]:
    """The same kept set with torchvision's NMS, one call per frame and class over the candidates it has (a CPU's
    way: its NMS skips what is suppressed, and a wait for the counts costs nothing there). The boxes go in float64
    as they are (no class offsets), and the scores handed over are the candidates' order itself, so that ties
    fall as here. (N, C) kept, and the points where the host waits for the device (each result's size), which
    on a CPU cost nothing."""
    keep = torch.zeros_like(found.valid)
    counts = found.count.clamp(max=found.valid.shape[1]).tolist()
    waits = 1
    for n, count in enumerate(counts):
        if not count:
            continue
        order = -torch.arange(count, dtype=torch.float64, device=xyxy.device)
        boxes, kinds = xyxy[n, :count].double(), cls[n, :count]
        present = torch.unique(kinds).tolist()
        for kind in present:
            members = torch.nonzero(kinds == kind)[:, 0]
            keep[n, members[torchvision.ops.nms(boxes[members], order[members], iou)]] = True
        waits += 1 + 2 * len(present)  # the classes, then each class's members and what NMS keeps
    return keep, waits


def greedy(suppress: torch.Tensor, valid: torch.Tensor, rounds: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """`rounds` (ROUNDS) rounds of the fixed point from "all valid kept", then one more to check: (N, C) kept, and (N,)
    whether a frame has not settled yet (its kept set is then not final; `settle` finishes it)."""
    keep = valid
    for _ in range(ROUNDS if rounds is None else rounds):
        keep = _round(suppress, valid, keep)
    after = _round(suppress, valid, keep)
    return after, (after != keep).any(1)


def settle(suppress: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The fixed point itself: rounds in runs of 1, 2, 4, … each run checked once at its end (a wait for the
    device each). A round at the fixed point leaves it as it is, so a run past it changes nothing, and a chain
    of L suppressions takes about log2(L) + 2 checks, not L + 1. Kept, and the checks."""
    keep, checks, run = valid, 0, 1
    while True:
        for _ in range(run - 1):
            keep = _round(suppress, valid, keep)
        after = _round(suppress, valid, keep)
        checks += 1
        if torch.equal(after, keep):
            return keep, checks
        keep, run = after, 2 * run


def _round(suppress: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Kept: valid, and no kept candidate suppresses it."""
    return valid & ~(suppress & keep[:, :, None]).any(1)
