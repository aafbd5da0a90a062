"""Stable instance ids: IoU tracking frame to frame, and the ids the masks stage stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import rle
from pipeline.datasets.sample import shape_clip, write_video
from pipeline.masks import load_clip_masks, read_clips, run_masks
from pipeline.tracking import IouTracker, TrackOptions
from tests.test_masks_stage import config as masks_config

H, W = 40, 60


def box(x: int, y: int, size: int = 10) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y : y + size, x : x + size] = True
    return mask


def frame(tracker: IouTracker, *instances: tuple[int, np.ndarray]) -> list[int]:
    cls = np.array([c for c, _ in instances], dtype=np.int16)
    counts = rle.encode(np.stack([m for _, m in instances])) if instances else []
    return tracker.assign(cls, counts, H, W)


def test_ids_follow_masks_not_score_order_and_survive_short_gaps():
    tracker = IouTracker(TrackOptions(min_iou=0.3, max_gap=2))
    assert frame(tracker, (0, box(0, 0)), (0, box(40, 20))) == [0, 1]
    assert frame(tracker, (0, box(42, 20)), (0, box(2, 0))) == [1, 0]  # listed in the other order: same people
    assert frame(tracker, (0, box(4, 1))) == [0]  # person 1 missed for a frame …
    assert frame(tracker, (0, box(5, 1)), (0, box(44, 21))) == [0, 1]  # … and continues
    assert frame(tracker, (0, box(6, 2)), (1, box(44, 21))) == [0, 2]  # another class never continues a track
    assert frame(tracker, (0, box(40, 28))) == [3]  # moved too far (IoU < 0.3): a new track
    for _ in range(3):
        frame(tracker)
    assert frame(tracker, (0, box(6, 2))) == [4]  # unseen longer than max_gap: ended


def test_another_class_never_continues_a_track_even_at_an_iou_threshold_of_0():
    tracker = IouTracker(TrackOptions(min_iou=0.0, max_gap=2))
    assert frame(tracker, (0, box(0, 0))) == [0]
    assert frame(tracker, (1, box(40, 20)), (0, box(30, 0))) == [1, 0]  # the same class continues, IoU 0 or not


def all_pairs_ids(frames: list[tuple[np.ndarray, list[bytes]]], options: TrackOptions) -> list[list[int]]:
    """The tracker's rule written plainly: IoU of every instance with every live track, other classes zeroed,
    pairs taken best first (a stable sort of the whole matrix)."""
    tracks, out, next_id = [], [], 0
    for number, (cls, counts) in enumerate(frames):
        ious = rle.iou(counts, [t["counts"] for t in tracks], H, W)
        if ious.size:
            ious = np.where(cls[:, None] == np.array([t["cls"] for t in tracks])[None, :], ious, 0.0)
        ids = [-1] * len(counts)
        for flat in np.argsort(-ious, axis=None, kind="stable"):
            i, t = divmod(int(flat), ious.shape[1])
            if ious[i, t] < options.min_iou:
                break
            if ids[i] < 0 and tracks[t]["seen"] < number:
                ids[i] = tracks[t]["id"]
                tracks[t].update(counts=counts[i], seen=number)
        for i in [i for i, x in enumerate(ids) if x < 0]:
            ids[i], next_id = next_id, next_id + 1
            tracks.append({"id": ids[i], "cls": int(cls[i]), "counts": counts[i], "seen": number})
        tracks = [t for t in tracks if number - t["seen"] <= options.max_gap]
        out.append(ids)
    return out


def test_ids_are_those_of_matching_every_instance_with_every_track():
    """Crowded frames of drifting, overlapping boxes of three classes, some of them the same mask twice (tied
    IoU), some frames empty: the tracker, which measures IoU only between instances and tracks of one class,
    gives the ids of the rule applied to all pairs."""
    rng = np.random.default_rng(7)
    options = TrackOptions(min_iou=0.3, max_gap=2)
    people = rng.integers(0, [W - 12, H - 12], size=(30, 2))
    frames = []
    for number in range(25):
        people = np.clip(people + rng.integers(-3, 4, size=people.shape), 0, [W - 12, H - 12])
        present = rng.random(len(people)) < (0.0 if number == 9 else 0.7)
        masks = [box(int(x), int(y), 12) for x, y in people[present]]
        masks += masks[:2]  # the same masks again: ties
        cls = rng.integers(0, 3, size=len(masks)).astype(np.int16)
        frames.append((cls, rle.encode(np.stack(masks)) if masks else []))
    tracker = IouTracker(options)
    got = [tracker.assign(cls, counts, H, W) for cls, counts in frames]
    expected = all_pairs_ids(frames, options)
    assert got == expected
    assert max(max(ids, default=0) for ids in got) < sum(map(len, got)) - 50  # tracks did continue


def test_masks_stage_keeps_each_shape_under_one_id_through_the_clip(tmp_path):
    """Clips of 40 frames (the shapes cross the frame in ~1.3 s at 30 fps, like fast real motion). Seeds 2 and 3,
    where the person hides the box completely for a few frames, are left out: IoU matching alone starts a new
    track after a full occlusion."""
    root = tmp_path / "videos"
    for seed in (0, 1, 4):
        frames, _, _ = shape_clip(40, 96, 64, seed=seed)
        write_video(root / "shapes" / f"clip{seed}.mp4", frames, 30, lossless=True)
    summary = run_masks(masks_config(root, tmp_path / "out", dataset="folder"), progress=False)
    run_dir = Path(summary.output)
    for clip in read_clips(run_dir).to_pylist():
        masks = load_clip_masks(run_dir, clip["clip_id"])
        assert len(set(masks.frame_index.tolist())) == 40
        for class_id in (0, 1):  # the person ellipse and the box each keep one id in every frame
            ids = set(masks.instance_id[masks.cls == class_id].tolist())
            assert len(ids) == 1, (clip["clip_id"], class_id, ids)
        assert sorted(set(masks.instance_id.tolist())) == [0, 1]
