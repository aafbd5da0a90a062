"""The YOLO device path on a CUDA device (skipped without one; `scripts/gpu_check.sh` runs them on a GPU machine):
the same bytes whatever shares a batch, RLE made on the GPU equal to the host's, NMS at fixed shapes equal to
torchvision's, every wait on the GPU counted by the path itself (two a batch), and shards byte-identical whatever
DECODERS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.segment.yolo_device as yolo_device
from pipeline.decode import DecodeOptions, FrameBatch
from pipeline.masks import run_masks
from pipeline.segment import SegmenterSpec, device_rle, transfer
from pipeline.segment.yolo import YoloSegmenter
from tests.test_fixed_batches import checkpoint  # noqa: F401 - the lively checkpoint fixture
from tests.test_masks_stage import config, shard_bytes
from tests.test_yolo_device import clip as photo_clip

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_spec(checkpoint: Path) -> SegmenterSpec:  # noqa: F811
    return SegmenterSpec(backend="yolo", model=str(checkpoint), conf=0.05, device="cuda")


def assert_same_bytes(found, expected) -> None:
    """The same boxes and mask bytes, frame by frame."""
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        assert a.rle() == b.rle()


def batch(frames: np.ndarray, capacity: int) -> FrameBatch:
    height, width = frames.shape[1:3]
    return FrameBatch(frames=frames, indices=np.arange(len(frames)), times=np.zeros(len(frames)), height=height,
                      width=width, capacity=capacity)


def test_a_frame_gets_the_same_bytes_alone_or_among_others_on_cuda(checkpoint):  # noqa: F811
    frames = np.concatenate([photo_clip(340, 256, seed).frames for seed in (0, 1)])  # 8 frames
    segmenter = YoloSegmenter(cuda_spec(checkpoint))
    together = segmenter.segment(batch(frames, 8))
    assert sum(map(len, together)) > 0
    for others in ([], [5, 6], [1, 2, 3, 7, 0]):
        alone = segmenter.segment(batch(frames[[*others, 4]], 8))[-1]
        np.testing.assert_array_equal(alone.xyxy, together[4].xyxy)
        np.testing.assert_array_equal(alone.conf, together[4].conf)
        assert alone.rle() == together[4].rle()


def test_rle_made_on_the_gpu_is_the_hosts(checkpoint, monkeypatch):  # noqa: F811
    frames = photo_clip(1280, 720, 0).frames
    device = YoloSegmenter(cuda_spec(checkpoint)).on_device
    on_gpu = device(frames, 720, 1280, capacity=8)
    monkeypatch.setattr(device_rle, "DEVICES", ())
    from_windows = device(frames, 720, 1280, capacity=8)
    assert sum(map(len, on_gpu)) > 0
    assert all(a.rles is not None and b.rles is None for a, b in zip(on_gpu, from_windows))
    assert_same_bytes(on_gpu, from_windows)


def synchronising(monkeypatch, run):
    """run()'s result, and every wait on the GPU it made: torch's sync debug mode warns at every synchronising
    call, and events' waits (which it does not see) are counted apart."""
    torch.cuda.synchronize()
    events = []
    synchronize = torch.cuda.Event.synchronize
    monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda event: events.append("event") or synchronize(event))
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        monkeypatch.setattr(torch.cuda.Event, "synchronize", synchronize)
    return found, [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()] + events


@pytest.mark.parametrize("runs", [True, False])
def test_the_path_counts_every_wait_on_the_gpu(checkpoint, monkeypatch, runs):  # noqa: F811
    """The path's own count of waits is the debug mode's: two a batch with the masks as windows (one copy each
    for the instances and the windows), at least two as RLE runs (their copy is made again where a chunk's runs
    outgrow the room guessed for them)."""
    monkeypatch.setattr(device_rle, "DEVICES", ("cuda",) if runs else ())
    frames = photo_clip(340, 256, 1).frames
    device = YoloSegmenter(cuda_spec(checkpoint)).on_device
    device(frames, 256, 340, capacity=8)  # the geometry's operators, made once
    before = device.host_waits
    found, waits = synchronising(monkeypatch, lambda: device(frames, 256, 340, capacity=8))
    assert sum(map(len, found)) > 0
    assert device.host_waits - before == len(waits), waits
    assert len(waits) == 2 if not runs else len(waits) >= 2, waits


def test_batches_of_two_sizes_in_turn_wait_twice_a_batch_once_each_is_known(checkpoint, monkeypatch):  # noqa: F811
    """ultralytics' head makes its anchors again, waiting on the GPU, whenever its input's shape is not the last
    one's: the path keeps them by shape. A size's first batch waits while its anchors and its masks' maps are
    made (counted), and every batch after it twice."""
    monkeypatch.setattr(device_rle, "DEVICES", ())
    small, large = photo_clip(340, 256, 1).frames, photo_clip(640, 360, 0).frames
    device = YoloSegmenter(cuda_spec(checkpoint)).on_device
    seen, counted = [], []
    for frames in [small, large, small, large, small]:
        before = device.host_waits
        found, waits = synchronising(monkeypatch, lambda: device(frames, *frames.shape[1:3], capacity=8))
        assert sum(map(len, found)) > 0
        seen.append(waits)
        counted.append(device.host_waits - before)
    assert counted == [len(waits) for waits in seen], seen
    assert counted[2:] == [2, 2, 2], seen
    assert counted[0] > 2 and counted[1] > 2, seen  # the first batch of each: anchors and maps made


def test_the_masks_stream_reads_nothing_the_models_stream_may_still_be_writing(checkpoint):  # noqa: F811
    """Under torch's CUDA stream sanitizer (in a process of its own: it reports a race and exits), batches
    launched one ahead of the masks of the one before, as the Feeder runs them: the masks' stream waits on one
    event a batch, and every tensor it reads must be made before that event (the prototypes' cast was made after
    it once)."""
    script = textwrap.dedent(f"""
        import torch
        from pipeline.segment import SegmenterSpec
        from pipeline.segment.yolo import YoloSegmenter
        from tests.test_yolo_device import clip
        spec = SegmenterSpec(backend="yolo", model={str(checkpoint)!r}, conf=0.05, device="cuda")
        device = YoloSegmenter(spec).on_device
        batches = [clip(340, 256, seed).frames for seed in range(4)]
        ahead, found = device.launch(batches[0], 256, 340, capacity=8), 0
        for frames in batches[1:]:
            launched = device.launch(frames, 256, 340, capacity=8)
            found += sum(map(len, ahead.result()))
            ahead = launched
        found += sum(map(len, ahead.result()))
        torch.cuda.synchronize()
        print("instances", found)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TORCH_CUDA_SANITIZER": "1"})
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "CSAN" not in said, said[-6000:]
    assert int(done.stdout.split("instances")[-1]) > 0


def test_pieces_in_pinned_memory_cross_as_they_are(checkpoint):  # noqa: F811
    """Frames decoded into the segmenter's memory (pinned) cross to the GPU piece by piece with no staging copy;
    a batch with a piece in ordinary memory is staged whole; the masks are the same bytes either way."""
    frames = photo_clip(340, 256, 1).frames
    segmenter = YoloSegmenter(cuda_spec(checkpoint))
    device = segmenter.on_device
    staged = device(frames, 256, 340, capacity=8)
    assert device._staging.staged == 1
    memory = segmenter.frame_memory(lambda frame_bytes: 1 << 30)
    pieces = [memory(part.shape) for part in (frames[:3], frames[3:])]
    memory.close()  # the process's pinned frames: this budget no longer holds (the pieces stay pinned)
    pieces[0][...], pieces[1][...] = frames[:3], frames[3:]
    assert all(torch.from_numpy(piece).is_pinned() for piece in pieces) and not torch.from_numpy(frames).is_pinned()
    found = device.launch(pieces, 256, 340, capacity=8).result()
    assert device._staging.staged == 1  # no staging copy this time
    assert_same_bytes(found, staged)
    mixed = device.launch([pieces[0], frames[3:]], 256, 340, capacity=8).result()
    assert device._staging.staged == 2
    assert_same_bytes(mixed, staged)


def test_nms_at_fixed_shapes_keeps_what_torchvision_keeps_on_cuda(checkpoint, monkeypatch):  # noqa: F811
    """The fixed-point NMS (CUDA's) and torchvision's frame by frame (a CPU's) give the same bytes on the GPU."""
    frames = photo_clip(340, 256, 1).frames
    device = YoloSegmenter(cuda_spec(checkpoint)).on_device
    fixed = device(frames, 256, 340, capacity=8)
    monkeypatch.setattr(yolo_device, "FIXED_NMS", ())
    by_frame = device(frames, 256, 340, capacity=8)
    assert sum(map(len, fixed)) > 10
    assert_same_bytes(fixed, by_frame)


def test_shards_are_the_same_bytes_whatever_the_decoders_on_cuda(shapes_dataset, tmp_path, checkpoint,  # noqa: F811
                                                                  monkeypatch):
    """... and every batch of the runs crosses to the GPU piece by piece, from the pinned memory its decoders
    wrote into (no staging copy but the warm-up's)."""
    root, _ = shapes_dataset
    runs, staged, stage = [], [], transfer.Staging._staged
    monkeypatch.setattr(transfer.Staging, "_staged",
                        lambda self, pieces, count: staged.append(pieces[0].shape[1:]) or stage(self, pieces, count))
    for decoders in (1, 3):
        summary = run_masks(config(root, tmp_path / f"d{decoders}", shard_size=6, segmenter=cuda_spec(checkpoint),
                                   decoders=decoders, decode=DecodeOptions(batch=6)), progress=False)
        assert summary.by_status == {"ok": 5} and "pieces_unpinned" not in summary.totals
        runs.append(Path(summary.output))
    assert set(staged) <= {(64, 64, 3)}, staged  # the warm-up's frames alone
    assert shard_bytes(runs[0]) == shard_bytes(runs[1]) != {}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_on_the_second_gpu_gives_the_first_gpus_bytes(checkpoint):  # noqa: F811
    """With cuda:0 current, a model on cuda:1: each batch's copy to the host is waited for on cuda:1's stream,
    where it was queued (an event recorded on cuda:0's would be done at once, and the host would read the copy
    before it lands)."""
    frames = np.concatenate([photo_clip(340, 256, seed).frames for seed in (0, 1)])
    first = YoloSegmenter(cuda_spec(checkpoint)).segment(batch(frames, 8))
    second = YoloSegmenter(SegmenterSpec(backend="yolo", model=str(checkpoint), conf=0.05, device="cuda:1"))
    assert torch.cuda.current_device() == 0
    assert sum(map(len, first)) > 0
    for _ in range(3):  # batches in a row, each copy into a fresh pinned buffer
        assert_same_bytes(second.segment(batch(frames, 8)), first)
