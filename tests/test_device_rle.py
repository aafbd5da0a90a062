import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from pipeline import rle
from pipeline.segment import device_rle, load_segmenter
from pipeline.segment.base import FrameMasks
from pipeline.segment.device_rle import run_lengths
from tests.test_device_faults import count_waits
from tests.test_fixed_batches import checkpoint, spec  # noqa: F401 - the lively checkpoint fixture
from tests.test_yolo_device import clip as photo_clip


def _reference(whole: np.ndarray) -> tuple[list[np.ndarray], list[bytes]]:
    """pycocotools' bytes of (K, H, W) masks, and their counts by definition: the gaps between the changes of
    the column-major pixels, starting from a zero before the first."""
    flat = whole.transpose(0, 2, 1).reshape(len(whole), -1).astype(np.int8)
    counts = []
    for pixels in flat:
        changes = np.flatnonzero(np.diff(np.concatenate([[0], pixels])))
        counts.append(np.diff(np.concatenate([[0], changes, [len(pixels)]])))
    encoded = coco_mask.encode(np.asfortranarray(whole.transpose(1, 2, 0).astype(np.uint8)))
    return counts, [made["counts"] for made in encoded]


def _case(windows, origin, extent, height, width, capacity=None):
    """The device function's counts and bytes next to pycocotools' for windows (K, h, w) at origin (x, y)."""
    whole = np.zeros((len(windows), height, width), dtype=bool)
    for k, ((x, y), (w, h)) in enumerate(zip(origin, extent)):
        whole[k, y:y + h, x:x + w] = windows[k, :h, :w]
    args = (torch.from_numpy(windows), torch.from_numpy(np.asarray(origin)), torch.from_numpy(np.asarray(extent)),
            height, width)
    packed = device_rle.run_lengths(*args, capacity=capacity)
    counts = device_rle.unpack(packed.numpy(), len(windows))
    return counts, device_rle.encode(*args, capacity=capacity), *_reference(whole)


def _assert_same(windows, origin, extent, height, width, capacity=None):
    counts, encoded, ref_counts, ref_encoded = _case(windows, origin, extent, height, width, capacity)
    if counts is not None:
        assert [c.tolist() for c in counts] == [c.tolist() for c in ref_counts]
    assert encoded == ref_encoded
    assert rle.from_counts(ref_counts, height, width) == ref_encoded


def test_random_windows_match_pycocotools():
    rng = np.random.default_rng(0)
    for trial in range(400):
        height, width = (int(v) for v in rng.integers(1, 24, 2))
        count = int(rng.integers(1, 6))
        extent = np.stack([rng.integers(1, width + 1, count), rng.integers(1, height + 1, count)], 1)
        origin = np.stack([rng.integers(0, width - extent[:, 0] + 1), rng.integers(0, height - extent[:, 1] + 1)], 1)
        pad_w, pad_h = extent.max(0) + rng.integers(0, 3, 2)  # padding past the largest window
        windows = rng.random((count, pad_h, pad_w)) < rng.random()  # padding holds ones that must not count
        capacity = None if trial % 2 else device_rle.capacity(extent[:, 0])  # both ways of sizing the result
        _assert_same(windows, origin, extent, height, width, capacity)


@pytest.mark.parametrize("height,width", [(1, 1), (1, 7), (7, 1), (5, 6)])
def test_edges_and_extremes(height, width):
    rng = np.random.default_rng(height * 10 + width)
    shapes = {(h, w) for h in (1, height) for w in (1, width)}
    for h, w in sorted(shapes):
        for x, y in {(0, 0), (width - w, 0), (0, height - h), (width - w, height - h)}:  # every frame corner
            for fill in ("empty", "ones", "random"):
                window = (np.zeros((1, h, w), bool) if fill == "empty" else np.ones((1, h, w), bool) if fill == "ones"
                          else rng.random((1, h, w)) < 0.5)
                _assert_same(window, [[x, y]], [[w, h]], height, width)


def test_runs_cross_columns_at_the_bottom_row_and_in_full_height_windows():
    height, width = 6, 5
    window = np.zeros((1, 3, 3), bool)
    window[0, 2, 0] = window[0, 0, 1] = True  # bottom of one column, then top of the next: two runs (gap above)
    _assert_same(window, [[1, 3]], [[3, 3]], height, width)
    full = np.zeros((1, height, 3), bool)
    full[0, -1, 0] = full[0, 0, 1] = True  # full height: the same two pixels are one run across the columns
    full[0, :, 2] = True
    _assert_same(full, [[1, 0]], [[3, height]], height, width)
    _assert_same(full, [[2, 0]], [[3, height]], height, width)  # … ending on the frame's last pixel


def test_padding_is_ignored():
    window = np.ones((2, 9, 9), bool)  # each padded with ones past its true size
    origin, extent = [[0, 0], [4, 2]], [[2, 3], [5, 4]]
    counts, encoded, ref_counts, ref_encoded = _case(window, origin, extent, 8, 10)
    assert encoded == ref_encoded and rle.area(encoded[0], 8, 10) == 6 and rle.area(encoded[1], 8, 10) == 20


def test_a_small_capacity_is_reported_and_the_batch_redone_exactly():
    rng = np.random.default_rng(3)
    windows = rng.random((3, 10, 10)) < 0.5  # ragged: many changes per column
    origin, extent = [[0, 0], [5, 2], [1, 1]], [[10, 10], [4, 7], [8, 8]]
    args = (torch.from_numpy(windows), torch.tensor(origin), torch.tensor(extent), 12, 14)
    assert device_rle.unpack(device_rle.run_lengths(*args, capacity=10).numpy(), 3) is None
    batch = device_rle.RunBatch(12, 14)
    batch.add(*args[:3], capacity=10)
    batch.add(*args[:3])
    batch.add(*(a[:1] for a in args[:3]), capacity=100)
    runs = batch.fetch()
    _, reference = _reference(FrameMasks(xyxy=np.zeros((3, 4)), conf=np.zeros(3), cls=np.zeros(3), size=(12, 14),
                                         windows=tuple(win[:h, :w] for win, (w, h) in zip(windows, extent)),
                                         origins=np.asarray(origin)[:, ::-1]).full())
    assert rle.from_counts(runs, 12, 14) == reference + reference + reference[:1]
    assert batch.copies == 3  # the copy, then the exact size and the copy of the chunk redone


def test_where_torch_lacks_nonzero_static_for_the_device_each_call_with_a_capacity_counts_a_wait(monkeypatch):
    windows = torch.ones((2, 4, 4), dtype=torch.bool)
    origin, extent = torch.zeros((2, 2), dtype=torch.long), torch.full((2, 2), 4)
    assert device_rle.static_nonzero(torch.device("cpu"))  # this torch has it on the CPU
    monkeypatch.setattr(device_rle, "static_nonzero", lambda device: False)
    batch = device_rle.RunBatch(8, 8)
    batch.add(windows, origin, extent, capacity=64)
    batch.add(windows, origin, extent, capacity=64)  # encoded with the first: one call, one wait
    batch.add(windows, origin, extent)  # torch.nonzero by design: waited for when fetched (one copy, sized)
    assert len(batch.fetch()) == 6 and batch.copies == 2 and batch.calls == 2
    batch.add(windows, origin, extent, capacity=64)
    assert len(batch.fetch()) == 2 and batch.copies == 2  # counted from the fetch before


def test_running_out_of_memory_while_asking_for_nonzero_static_is_not_kept_as_its_answer(monkeypatch):
    """A device short of memory for the one-element probe says nothing of what this torch can do: kept as "no",
    every later batch would wait for the device to find its windows' changes."""
    probe, calls = torch.nonzero_static, []

    def short_once(*args, **kwargs):
        calls.append(args[0].device)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("out of memory (injected)")
        return probe(*args, **kwargs)

    device_rle.static_nonzero.cache_clear()
    monkeypatch.setattr(torch, "nonzero_static", short_once)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            device_rle.static_nonzero(torch.device("cpu"))
        assert device_rle.static_nonzero(torch.device("cpu")) and calls == [torch.device("cpu")] * 2
    finally:
        device_rle.static_nonzero.cache_clear()


def test_nonzero_static_is_asked_of_the_datas_device_itself(monkeypatch):
    """On `cuda:1` the probe runs there, not on the current device (a context on another GPU), and a device's
    "no" is its own."""
    ones, made = torch.ones, []

    def spying(*args, device=None, **kwargs):
        made.append(device)
        return ones(*args, **kwargs)  # on the CPU, where this test runs

    device_rle.static_nonzero.cache_clear()
    monkeypatch.setattr(torch, "ones", spying)
    try:
        assert device_rle.static_nonzero(torch.device("cuda", 1))
        assert made == [torch.device("cuda", 1)]
    finally:
        device_rle.static_nonzero.cache_clear()


def test_chunks_of_several_sizes_are_encoded_in_one_call_within_the_change_flags_budget(monkeypatch):
    """A batch's windows come in a chunk for each padded size: encoded together, padded to the largest (the padding
    holds ones that must not count), pycocotools' bytes; chunks with a capacity and without are not mixed, and
    chunks whose padded flags would pass CHANGE_FLAGS go in another call."""
    rng = np.random.default_rng(7)
    height, width = 40, 50
    chunks, wholes = [], []
    for rows, cols in ((8, 8), (12, 8), (8, 16), (24, 16), (12, 12)):
        count = int(rng.integers(1, 4))
        windows = rng.random((count, rows, cols)) < 0.5
        extent = np.stack([rng.integers(1, cols + 1, count), rng.integers(1, rows + 1, count)], 1)
        origin = np.stack([rng.integers(0, width - cols, count), rng.integers(0, height - rows, count)], 1)
        chunks.append(tuple(torch.from_numpy(a) for a in (windows, origin, extent)))
        for k, ((x, y), (w, h)) in enumerate(zip(origin, extent)):
            whole = np.zeros((height, width), dtype=bool)
            whole[y:y + h, x:x + w] = windows[k, :h, :w]
            wholes.append(whole)
    expected = _reference(np.stack(wholes))[1]
    calls = []
    monkeypatch.setattr(device_rle, "run_lengths", lambda part, *args, **kw: calls.append(
        (tuple(part.shape), kw.get("capacity"))) or run_lengths(part, *args, **kw))
    total = sum(len(c[0]) for c in chunks)
    for capacities, encoded in (([1000] * 5, [((total, 24, 16), 5000)]),  # one call, the capacities summed
                                ([1000, None, None, 1000, 1000], [((len(chunks[0][0]), 8, 8), 1000),
                                                                   ((len(chunks[1][0]) + len(chunks[2][0]), 12, 16),
                                                                    None),
                                                                   ((total - len(chunks[0][0]) - len(chunks[1][0])
                                                                     - len(chunks[2][0]), 24, 16), 2000)])):
        calls.clear()
        batch = device_rle.RunBatch(height, width)
        for chunk, capacity in zip(chunks, capacities):
            batch.add(*chunk, capacity=capacity)
        assert rle.from_counts(batch.fetch(), height, width) == expected
        assert calls == encoded and batch.calls == len(encoded)
    monkeypatch.setattr(device_rle, "CHANGE_FLAGS", total * 16 * 25 - 1)  # all of them padded: one flag too many
    calls.clear()
    batch = device_rle.RunBatch(height, width)
    for chunk in chunks:
        batch.add(*chunk, capacity=1000)
    assert rle.from_counts(batch.fetch(), height, width) == expected
    assert len(calls) == 2 and all(rows_cols[0] * rows_cols[2] * (rows_cols[1] + 1) < total * 16 * 25
                                   for rows_cols, _ in calls)


def test_small_windows_are_not_padded_to_a_large_ones_size_past_the_slack(monkeypatch):
    """Thirty 8 × 8 windows and one of 200 × 300: padded together they would take 14 times their own flags, so
    they go in two calls (within MERGE_SLACK they would go in one); a merged call whose room is too small is
    redone exactly."""
    rng = np.random.default_rng(11)
    height, width = 220, 320
    small = torch.from_numpy(rng.random((30, 8, 8)) < 0.5), torch.zeros((30, 2), dtype=torch.long) + 3, \
        torch.full((30, 2), 8)
    large = torch.from_numpy(rng.random((1, 200, 300)) < 0.5), torch.tensor([[5, 7]]), torch.tensor([[300, 200]])
    whole = np.zeros((31, height, width), dtype=bool)
    whole[:30, 3:11, 3:11] = small[0].numpy()
    whole[30, 7:207, 5:305] = large[0].numpy()[0]
    expected = _reference(whole)[1]
    for slack, calls in ((1 << 10, 2), (1 << 24, 1)):
        monkeypatch.setattr(device_rle, "MERGE_SLACK", slack)
        batch = device_rle.RunBatch(height, width)
        batch.add(*small, capacity=30 * 8 * 9)  # every flag a change: room enough
        batch.add(*large, capacity=10)  # far too little: its call is redone exactly
        assert rle.from_counts(batch.fetch(), height, width) == expected
        assert batch.calls == calls + 1 and batch.copies == 3


@pytest.mark.parametrize("capacity", [None, 0, 800])  # exact; too small (every part redone exactly); enough
def test_windows_past_the_change_flags_budget_go_in_parts_with_the_same_bytes(monkeypatch, capacity):
    rng = np.random.default_rng(5)
    height, width = 20, 30
    windows = rng.random((7, 9, 11)) < 0.4  # padded to 9 × 11: 11 × (9 + 1) = 110 change flags each
    extent = np.stack([rng.integers(1, 12, 7), rng.integers(1, 10, 7)], 1)  # (w, h), each its own
    origin = np.stack([rng.integers(0, width - 11, 7), rng.integers(0, height - 9, 7)], 1)
    windows[:, 0, 0] = True  # a change in every window's first column …
    windows[2] = False  # … but one
    calls = []
    monkeypatch.setattr(device_rle, "CHANGE_FLAGS", 3 * 110 - 1)  # two windows a call (three at 99 or 108 a window)
    monkeypatch.setattr(device_rle, "run_lengths", lambda part, *args, **kw: calls.append(
        (len(part), kw.get("capacity"))) or run_lengths(part, *args, **kw))
    batch = device_rle.RunBatch(height, width)
    batch.add(torch.from_numpy(windows), torch.from_numpy(origin), torch.from_numpy(extent), capacity=capacity)
    whole = np.zeros((7, height, width), dtype=bool)
    for k, ((x, y), (w, h)) in enumerate(zip(origin, extent)):
        whole[k, y:y + h, x:x + w] = windows[k, :h, :w]
    assert rle.from_counts(batch.fetch(), height, width) == _reference(whole)[1]
    share = None if capacity is None else -(-capacity * 2 // 7)  # 0, or 229: more than two windows' 220 flags
    assert calls[:4] == [(2, share), (2, share), (2, share), (1, None if capacity is None else -(-capacity // 7))]
    redone = 4 if capacity == 0 else 0  # each part redone exactly: two more copies
    assert len(calls) == 4 + redone and batch.copies == 1 + 2 * redone


def test_no_windows():
    at = torch.zeros((0, 2), dtype=torch.long)
    empty = torch.zeros((0, 4, 4), dtype=torch.bool), at, at
    assert device_rle.encode(*empty, 8, 8) == [] and device_rle.encode(*empty, 8, 8, capacity=5) == []
    assert device_rle.RunBatch(8, 8).fetch() == []
    nothing = torch.zeros((2, 0, 3), dtype=torch.bool), at.new_zeros((2, 2)), at.new_ones((2, 2))  # zero rows
    assert device_rle.encode(*nothing, 8, 8) == rle.encode(np.zeros((2, 8, 8), bool))


def test_rejects_what_it_cannot_encode():
    window, at = torch.ones((1, 2, 2), dtype=torch.bool), torch.zeros((1, 2), dtype=torch.long)
    with pytest.raises(ValueError, match="bool windows"):
        device_rle.run_lengths(window.byte(), at, at + 2, 4, 4)
    with pytest.raises(ValueError, match="int32"):
        device_rle.run_lengths(window, at, at + 2, 1 << 16, 1 << 15)


def test_frame_masks_carry_rles():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 9, 11)) < 0.4
    counts = rle.encode(masks)
    found = FrameMasks(xyxy=np.zeros((3, 4), np.float32), conf=np.ones(3, np.float32), cls=np.zeros(3, np.int16),
                       rles=tuple(counts), size=(9, 11))
    assert found.rle() == counts and len(found) == 3
    np.testing.assert_array_equal(found.full(), masks)
    none = FrameMasks(xyxy=np.zeros((0, 4)), conf=np.zeros(0), cls=np.zeros(0), rles=(), size=(9, 11))
    assert none.full().shape == (0, 9, 11) and none.rle() == []
    base = dict(xyxy=np.zeros((3, 4)), conf=np.zeros(3), cls=np.zeros(3))
    with pytest.raises(ValueError, match="an RLE string"):
        FrameMasks(**base, rles=tuple(counts[:2]), size=(9, 11))
    with pytest.raises(ValueError, match="an RLE string"):
        FrameMasks(**base, rles=tuple(counts))  # no size
    with pytest.raises(ValueError, match="an RLE string"):
        FrameMasks(**base, rles=tuple(c.decode() for c in counts), size=(9, 11))
    with pytest.raises(ValueError, match="not several"):
        FrameMasks(**base, rles=tuple(counts), masks=masks, size=(9, 11))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(2)
    windows = rng.random((16, 40, 30)) < 0.3
    extent = np.stack([rng.integers(1, 31, 16), rng.integers(1, 41, 16)], 1)
    origin = np.stack([rng.integers(0, 64 - extent[:, 0] + 1), rng.integers(0, 48 - extent[:, 1] + 1)], 1)
    cpu = (torch.from_numpy(windows), torch.from_numpy(origin), torch.from_numpy(extent))
    cuda = tuple(t.cuda() for t in cpu)
    for capacity in (None, device_rle.capacity(extent[:, 0]), 5):
        assert device_rle.encode(*cuda, 48, 64, capacity=capacity) == device_rle.encode(*cpu, 48, 64)
    exact = device_rle.run_lengths(*cpu, 48, 64).numpy()  # noise: far more changes than capacity() guesses
    changes = int(exact[:16].sum())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # with a capacity, nothing in it waits for the device
    try:
        fits = device_rle.run_lengths(*cuda, 48, 64, capacity=changes)
        short = device_rle.run_lengths(*cuda, 48, 64, capacity=changes - 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    made = device_rle.unpack(fits.cpu().numpy(), 16)
    assert made is not None and len(made) == 16
    for runs, expected in zip(made, device_rle.unpack(exact, 16)):
        np.testing.assert_array_equal(runs, expected)
    assert device_rle.unpack(short.cpu().numpy(), 16) is None  # one slot short: an overflow, said


def test_the_device_path_hands_over_the_same_rle_made_on_the_device(checkpoint, monkeypatch):  # noqa: F811
    """YOLO's masks as runs made on the device (what CUDA does) are the bytes the host makes from the windows."""
    frames = photo_clip(340, 256, 1).frames
    device = load_segmenter(spec(checkpoint)).on_device
    windows = device(frames, 256, 340, capacity=8)
    monkeypatch.setattr(device_rle, "DEVICES", ("cuda", "cpu"))
    calls = count_waits(monkeypatch)
    before = device.host_waits
    runs = device(frames, 256, 340, capacity=8)
    assert device.host_waits - before == len(calls) >= 4, calls  # more when a chunk's runs outgrow their room
    assert sum(map(len, runs)) > 0
    for a, b in zip(runs, windows):
        assert a.rles is not None and b.rles is None
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        assert a.rle() == b.rle()
