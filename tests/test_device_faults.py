"""Faults of the device path, injected on the CPU: a device that fails the first batch stops the run at load
(exit 2), a batch out of device memory is split rather than the worker restarted, non-finite boxes are dropped
before anything indexes with them, and the device path counts every point where the host waits for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import pipeline.segment.yolo_device as yolo_device
from pipeline.cli import main
from pipeline.datasets.sample import shape_clip
from pipeline.decode import DecodeOptions, FrameBatch
from pipeline.engine.failures import is_infrastructure
from pipeline.masks.feed import Feeder
from pipeline.masks.tables import ClipRows
from pipeline.segment import SegmenterLoadError, SegmenterSpec, load_segmenter
from tests.segmenters import LumaKeySegmenter
from tests.test_feed import clips
from tests.test_fixed_batches import checkpoint, spec  # noqa: F401 - the lively checkpoint fixture
from tests.test_yolo_device import clip as photo_clip

NO_KERNEL = "Could not run 'aten::sort.stable' with arguments from the 'CUDA' backend."


@pytest.fixture
def kernel_missing(monkeypatch):
    """NMS, past the network, meets an operator the device has no kernel for (as a CPU-only build would)."""
    def candidates(*args, **kwargs):
        raise NotImplementedError(NO_KERNEL)

    monkeypatch.setattr(yolo_device.device_nms, "candidates", candidates)
    load_segmenter.cache_clear()
    yield
    load_segmenter.cache_clear()


def test_a_device_that_fails_the_first_batch_is_a_load_error(kernel_missing):
    with pytest.raises(SegmenterLoadError, match="failed its first batch on cpu: NotImplementedError: Could not run"):
        load_segmenter(SegmenterSpec(model="yolo11n-seg.yaml"))


def test_the_run_stops_at_once_with_one_line_and_exit_2(kernel_missing, shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    rc = main(["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(tmp_path / "out"),
               "--model", "yolo11n-seg.yaml", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert any("failed its first batch" in line and "DEVICE=cpu" in line for line in err), err
    assert not list((tmp_path / "out").rglob("*.parquet"))


class OutOfMemory(LumaKeySegmenter):
    """The luma key on a device with room for `room` frames a batch."""

    def __init__(self, room: int) -> None:
        super().__init__(SegmenterSpec(backend="luma"))
        self.room, self.ran = room, []

    def segment(self, batch: FrameBatch):
        if max(batch.capacity, len(batch)) > self.room:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.ran.append(batch.capacity)
        return super().segment(batch)


def fed_rows(root, segmenter, decoders: int) -> tuple[Feeder, dict[str, bytes]]:
    feeder = Feeder(segmenter, DecodeOptions(batch=8), decoders=decoders,
                    rows=lambda clip: ClipRows(clip.clip_id, dict(segmenter.names)))
    out = {clip.clip_id: fed for clip, fed in feeder.run(clips(root), begin=lambda _: None)}
    return feeder, {key: fed.rows.table() for key, fed in out.items()}


@pytest.mark.parametrize("decoders", [1, 3])
def test_a_batch_out_of_device_memory_is_split_in_two_until_it_fits(shapes_dataset, decoders):
    root, _ = shapes_dataset
    _, reference = fed_rows(root, LumaKeySegmenter(SegmenterSpec(backend="luma")), decoders)
    tight = OutOfMemory(room=2)
    feeder, rows = fed_rows(root, tight, decoders)
    assert feeder.splits > 0 and set(tight.ran) == {2}
    assert rows.keys() == reference.keys()
    assert all(rows[key].equals(reference[key]) for key in reference)


def test_a_single_frame_that_does_not_fit_is_the_machines_error(shapes_dataset):
    root, _ = shapes_dataset
    with pytest.raises(torch.cuda.OutOfMemoryError) as caught:
        fed_rows(root, OutOfMemory(room=0), decoders=2)
    assert is_infrastructure(caught.value)


def test_non_finite_boxes_are_dropped_before_indexing(checkpoint, monkeypatch):  # noqa: F811
    frames = shape_clip(12, 96, 64, seed=1)[0][:4]
    segmenter = load_segmenter(spec(checkpoint))
    device = segmenter.on_device
    forward = device.forward
    preds, _ = forward(device.prepare(frames)[0])
    nc = device.nc
    best = preds[:, 4:4 + nc].amax(1).argsort(dim=1, descending=True)[:, :3]  # each frame's 3 best anchors

    def broken(x, value):  # those anchors' boxes not finite (fp16 overflow), or the anchors not candidates at all
        preds, proto = forward(x)
        preds = preds.clone()
        for f in range(len(preds)):
            if value is None:
                preds[f, 4:4 + nc, best[f]] = -1.0
            else:
                preds[f, :4, best[f]] = value
        return preds, proto

    monkeypatch.setattr(device, "forward", lambda x: broken(x, None))
    without = device(frames, 64, 96)
    assert sum(map(len, without)) > 0
    for value in (float("nan"), float("inf"), -float("inf")):
        monkeypatch.setattr(device, "forward", lambda x, value=value: broken(x, value))
        found = device(frames, 64, 96)
        for a, b in zip(found, without):
            np.testing.assert_array_equal(a.xyxy, b.xyxy)
            assert a.rle() == b.rle()


@pytest.mark.parametrize("fixed", [True, False])
def test_every_wait_on_the_device_is_counted(checkpoint, monkeypatch, fixed):  # noqa: F811
    """Each way post-processing can make the host wait (a copy to the host, a result whose size the host needs)
    is counted where it happens, and the device path's own count agrees: a batch takes two where NMS runs at a
    fixed room (CUDA's way, switched on here); more on a CPU, where the host asks how many candidates there are
    (for the room, then for each frame's and class's NMS), which costs nothing there."""
    monkeypatch.setattr(yolo_device, "FIXED_NMS", ("cpu",) if fixed else ())
    frames = photo_clip(340, 256, 1).frames
    device = load_segmenter(spec(checkpoint)).on_device
    device(frames, 256, 340)  # the frame geometry's operators, made once
    calls = count_waits(monkeypatch)
    before = device.host_waits
    found = device(frames, 256, 340, capacity=8)
    assert sum(map(len, found)) > 0
    assert device.host_waits - before == len(calls), calls
    assert len(calls) == 2 if fixed else len(calls) > 4 + len(frames), calls


def test_the_waits_that_make_a_new_geometrys_maps_are_counted(checkpoint, monkeypatch):  # noqa: F811
    """Masks at a size not asked for before: the maps to it are made once (mask_operators), and the host waits
    while they are; the path's count has those waits too."""
    from pipeline.segment.mask_windows import OPERATOR_WAITS

    monkeypatch.setattr(yolo_device, "FIXED_NMS", ("cpu",))
    frames = photo_clip(340, 256, 1).frames
    device = load_segmenter(spec(checkpoint)).on_device
    device(frames, 256, 340, capacity=8)
    calls = count_waits(monkeypatch)
    before = device.host_waits
    found = device(frames, 251, 333, capacity=8)  # another display size: new maps
    assert sum(map(len, found)) > 0
    assert device.host_waits - before == len(calls) == 2 + OPERATOR_WAITS, calls


def count_waits(monkeypatch) -> list[str]:
    """From now on, a list of every call that makes the host wait for a CUDA device: a copy to the host, or a
    result whose size the host needs."""
    calls = []

    def counting(name, function):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return wrapped

    for name in ("cpu", "tolist", "item", "nonzero", "new_tensor", "__int__", "__bool__", "__float__"):  # new_tensor: a copy to the device, synchronised
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    for name in ("nonzero", "tensor", "equal"):
        monkeypatch.setattr(torch, name, counting(name, getattr(torch, name)))
    monkeypatch.setattr(torchvision.ops, "nms", counting("nms", torchvision.ops.nms))  # its result's size
    return calls
