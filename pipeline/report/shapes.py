"""DATASET=sample: the shape clips are generated with their true masks, so the report shows the known masks
beside the found ones and scores them (mean IoU over the clip's frames, for the person and for the box)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from pipeline.datasets.sample import shape_truth
from pipeline.html import figure, grid, img
from pipeline.masks import MasksRun, StoredClip
from pipeline.report.frames import found_regions, outlined, source_frames


@dataclass(frozen=True)
class ShapeScore:
    """One shape clip's found masks against its truth; an IoU is None where no frame has either mask (the box:
    where the run found no objects at all, as a people-only segmenter)."""

    clip_id: str
    person_iou: float | None
    box_iou: float | None
    found: np.ndarray  # the middle frame with the found masks outlined
    known: np.ndarray  # the same frame with the true masks outlined


def iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else None


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def shape_scores(masks: MasksRun, clips: list[StoredClip]) -> list[ShapeScore]:
    """The scores of the usable clips that are the sample's shape clips (with the sample's size), in clip order."""
    scores = []
    for clip in sorted(clips, key=lambda c: c.clip_id):
        truth = shape_truth(clip.clip_id) if clip.usable else None
        if truth is None or truth[0].shape[1:] != (clip.height, clip.width):
            continue
        person, box = truth
        regions = found_regions(masks, clip)
        frames = source_frames(masks, clip, range(clip.frames))
        if not frames:
            continue
        person_ious, box_ious, any_objects = [], [], False
        for index, _ in frames.values():
            found_person, found_objects = regions.raw(index)
            found_objects = found_objects & ~found_person
            any_objects |= bool(found_objects.any())
            person_ious.append(iou(found_person, person[index]))
            box_ious.append(iou(found_objects, box[index]))
        index, frame = frames[len(frames) // 2]
        scores.append(ShapeScore(clip_id=clip.clip_id, person_iou=mean(person_ious),
                                 box_iou=mean(box_ious) if any_objects else None,
                                 found=outlined(frame, *regions.raw(index)),
                                 known=outlined(frame, person[index], box[index])))
    return scores


def shapes_section(masks: MasksRun, clips: list[StoredClip]) -> str:
    scores = shape_scores(masks, clips)
    if not scores:
        return ""
    rows = [[html.escape(s.clip_id), figure(img(s.found), "found"), figure(img(s.known), "known"),
             _iou(s.person_iou, "no person in any frame"), _iou(s.box_iou, "no objects found")] for s in scores]
    return "\n".join(["<h3>Known masks of the shape clips</h3>",
                      "<p>The sample's shape clips are generated with their true masks: the found masks beside the "
                      "known ones on the middle frame, and the IoU of the two, the mean over the clip's frames.</p>",
                      grid(("clip", "found", "known", "person IoU", "box IoU"), rows)])


def _iou(value: float | None, why: str) -> str:
    return f"n/a ({why})" if value is None else f"{value:.3f}"
