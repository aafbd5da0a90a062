"""NMS at fixed shapes (pipeline/segment/device_nms.py): torchvision's greedy NMS with exact class offsets,
whatever the room, the rounds or the frames beside; and through the YOLO device path, a frame with more
candidates than the room, or NMS that has not settled, runs again to the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import pipeline.segment.yolo_device as yolo_device
from pipeline.segment import device_nms, load_segmenter
from pipeline.segment.yolo import YoloSegmenter
from tests.test_fixed_batches import checkpoint, spec  # noqa: F401 - the lively checkpoint fixture
from tests.test_yolo_device import clip as photo_clip


def random_frames(frames: int, anchors: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Crowded boxes (many overlap), scores with ties (two decimals), three classes, a third not candidates."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(frames, anchors, 2, generator=g) * 60
    size = 10 + torch.rand(frames, anchors, 2, generator=g) * 30
    xyxy = torch.cat([centre - size / 2, centre + size / 2], dim=2)
    score = (torch.rand(frames, anchors, generator=g) * 100).round() / 100
    cls = torch.randint(0, 3, (frames, anchors), generator=g)
    usable = torch.rand(frames, anchors, generator=g) > 1 / 3
    return xyxy, score, cls, usable


def kept(xyxy, score, cls, usable, room: int, rounds: int | None = None) -> list[list[int]]:
    """Each frame's kept anchors, by falling score, settled."""
    found = device_nms.candidates(score, usable, room)
    boxes = xyxy.gather(1, found.anchor[..., None].expand(-1, -1, 4))
    suppress = device_nms.suppression(boxes, cls.gather(1, found.anchor), found.valid, 0.5)
    keep, unsettled = device_nms.greedy(suppress, found.valid, rounds)
    if unsettled.any():
        keep, _ = device_nms.settle(suppress, found.valid)
    return [found.anchor[f][keep[f]].tolist() for f in range(len(keep))]


@pytest.mark.parametrize("seed", range(5))
def test_it_is_torchvisions_nms_with_exact_class_offsets(seed):
    xyxy, score, cls, usable = random_frames(3, 300, seed)
    ours = kept(xyxy, score, cls, usable, room=300)
    for f in range(3):
        order = torch.sort(torch.where(usable[f], score[f], -torch.inf), descending=True, stable=True).indices
        order = order[:int(usable[f].sum())]
        boxes = xyxy[f, order].double() + cls[f, order, None].double() * 7680
        theirs = torchvision.ops.nms(boxes, -torch.arange(len(order), dtype=torch.float64), 0.5)  # our order
        assert ours[f] == order[theirs].tolist()
        assert 10 < len(ours[f]) < len(order)  # there is suppression to get wrong


def test_the_kept_do_not_depend_on_room_rounds_or_the_frames_beside():
    xyxy, score, cls, usable = random_frames(4, 400, 7)
    counts = usable.sum(1).max().item()
    whole = kept(xyxy, score, cls, usable, room=400)
    assert kept(xyxy, score, cls, usable, room=counts) == whole
    assert kept(xyxy, score, cls, usable, room=counts, rounds=0) == whole  # settled on the host
    assert kept(xyxy[2:3], score[2:3], cls[2:3], usable[2:3], room=counts) == whole[2:3]


@pytest.mark.parametrize("budget", [400 * 400 * 2, 400 * 7, 1])  # two frames at a time; 7 rows; one row
def test_the_overlaps_are_the_same_in_blocks(monkeypatch, budget):
    xyxy, score, cls, usable = random_frames(3, 400, 3)
    whole = device_nms.suppression(xyxy, cls, usable, 0.5)
    assert whole.sum() > 300
    monkeypatch.setattr(device_nms, "PAIR_BUDGET", budget)
    assert torch.equal(device_nms.suppression(xyxy, cls, usable, 0.5), whole)


def test_a_chain_of_suppressions_takes_a_round_per_link():
    """Boxes in a row, each overlapping the next: 0 suppresses 1, so 2 is kept, which suppresses 3, …"""
    xyxy = torch.tensor([[[x, 0.0, x + 10, 10] for x in range(0, 24, 3)]])  # IoU 7/13 between neighbours, 1/4 next
    score = torch.linspace(0.9, 0.2, 8)[None]
    usable, cls = torch.ones(1, 8, dtype=torch.bool), torch.zeros(1, 8, dtype=torch.long)
    suppress = device_nms.suppression(xyxy, cls, usable, 0.5)
    _, unsettled = device_nms.greedy(suppress, usable, rounds=2)
    assert unsettled.tolist() == [True]
    keep, checks = device_nms.settle(suppress, usable)
    assert keep[0].tolist() == [True, False] * 4 and checks > 3
    assert kept(xyxy, score, cls, usable, room=8, rounds=0) == [[0, 2, 4, 6]]


def test_a_long_chain_settles_in_runs_checked_once_each():
    """Forty boxes in a row, each suppressing the next: forty rounds to the fixed point, found with a check at the
    end of runs of 1, 2, 4, … rounds (6 checks, not 41), and the kept set is torchvision's."""
    count = 40
    xyxy = torch.tensor([[[x, 0.0, x + 10, 10] for x in range(0, 3 * count, 3)]], dtype=torch.float32)
    usable, cls = torch.ones(1, count, dtype=torch.bool), torch.zeros(1, count, dtype=torch.long)
    suppress = device_nms.suppression(xyxy, cls, usable, 0.5)
    keep, checks = device_nms.settle(suppress, usable)
    assert keep[0].tolist() == [True, False] * (count // 2) and checks == 6
    found = device_nms.Candidates(anchor=torch.arange(count)[None], score=torch.linspace(0.9, 0.2, count)[None],
                                  valid=usable, count=torch.tensor([count]))
    assert torch.equal(device_nms.frame_by_frame(xyxy, cls, found, 0.5)[0], keep)


@pytest.mark.parametrize("room, rounds", [("some", 4), ("all", 4), (1024, 0)])
def test_frames_that_need_more_run_again_to_the_same_bytes(checkpoint, monkeypatch, room, rounds):  # noqa: F811
    """CUDA's way on the CPU: a room smaller than some frames' candidates (or all frames'), or NMS stopped before
    it settles, and those frames run again, counted; the masks are those of the room the CPU picks. The room
    then follows the frames: the next batch like it runs once."""
    frames = photo_clip(340, 256, 1).frames
    expected = load_segmenter(spec(checkpoint)).on_device(frames, 256, 340, capacity=8)
    device = YoloSegmenter(spec(checkpoint)).on_device  # a room of its own
    counts = sorted(device._scores(device._checked(device.forward(device.prepare(frames)[0])[0].float()))[1]
                    .sum(1).tolist())
    assert counts[0] < counts[-1]
    room = {"some": counts[0], "all": counts[0] - 1}.get(room, room)  # frames that fit, and frames that do not
    monkeypatch.setattr(yolo_device, "FIXED_NMS", ("cpu",))
    monkeypatch.setattr(yolo_device, "NMS_CAPACITY", room)
    monkeypatch.setattr(device_nms, "ROUNDS", rounds)
    for turn in range(2):
        before = device.host_waits
        found = device(frames, 256, 340, capacity=8)
        waits = device.host_waits - before
        if turn == 0 or rounds == 0:  # the first copy, the frames again (and their checks), the windows
            assert waits > 2
        else:
            assert waits == 2
        assert sum(map(len, found)) > 10
        for a, b in zip(found, expected):
            np.testing.assert_array_equal(a.xyxy, b.xyxy)
            np.testing.assert_array_equal(a.conf, b.conf)
            assert a.rle() == b.rle()
