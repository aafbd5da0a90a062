"""The feeder with a segmenter that launches batches (a GPU's): it holds one batch launched while it takes the
masks of the one before, so the device runs a batch while the host finishes another. Rows are the same as
batch by batch, a clip's failure (at launch or at its result) stays its own, a batch out of memory is split, a
machine error stops the run and leaves nothing launched behind; on the CPU, with YOLO's own launch."""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import threading
import types
import weakref

import numpy as np
import pytest
import torch

from pipeline.decode import DecodeOptions, FrameBatch
from pipeline.masks.feed import Feeder
from pipeline.masks.tables import ClipRows
from pipeline.segment import SegmenterSpec, load_segmenter
from tests.segmenters import DeviceErrorOnceSegmenter, FailingSegmenter, Launching, LumaKeySegmenter
from tests.test_device_faults import OutOfMemory
from tests.test_feed import clips
from tests.test_fixed_batches import checkpoint, spec  # noqa: F401 - the lively checkpoint fixture
from tests.test_masks_stage import add_bright_clip

LUMA = SegmenterSpec(backend="luma")


def outcomes(root, segmenter, decoders: int, *, overlap: bool, feeder: Feeder | None = None) -> dict[str, object]:
    """Each clip's rows as bytes, or its exception's message."""
    feeder = feeder or Feeder(segmenter, DecodeOptions(batch=8), decoders=decoders, overlap=overlap,
                              rows=lambda clip: ClipRows(clip.clip_id, dict(segmenter.names)))
    out = {}
    for clip, fed in feeder.run(clips(root), begin=lambda _: None):
        out[clip.clip_id] = str(fed) if isinstance(fed, Exception) else fed.rows.table()
    return out


def same(a: dict[str, object], b: dict[str, object]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] if isinstance(a[k], str) else a[k].equals(b[k]) for k in a)


@pytest.mark.parametrize("decoders", [1, 3])
def test_one_batch_is_launched_while_the_one_before_is_finished(shapes_dataset, decoders):
    root, _ = shapes_dataset
    reference = outcomes(root, LumaKeySegmenter(LUMA), decoders, overlap=False)
    launching = Launching(LumaKeySegmenter(LUMA))
    assert same(outcomes(root, launching, decoders, overlap=True), reference)
    events = "".join(event[0] for event in launching.events)
    assert events.startswith("ll") and events.count("l") == events.count("r") > 2  # every launch finished
    assert "lrlr" in events  # then in step: launch the next, finish the one before
    assert launching.in_buffers == events.count("l")  # every launch's pieces: frames decoded where it asked
    batch_by_batch = Launching(LumaKeySegmenter(LUMA))
    assert same(outcomes(root, batch_by_batch, decoders, overlap=False), reference)
    assert not batch_by_batch.events and not batch_by_batch.buffers


@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize("decoders", [1, 3])
def test_a_clips_failure_stays_its_own_at_launch_or_at_its_result(shapes_dataset, decoders, eager):
    root, _ = shapes_dataset
    add_bright_clip(root)
    reference = outcomes(root, FailingSegmenter(LUMA), decoders, overlap=False)
    assert sum(isinstance(v, str) for v in reference.values()) == 1 and len(reference) == 6  # the bright clip
    assert same(outcomes(root, Launching(FailingSegmenter(LUMA), eager=eager), decoders, overlap=True), reference)


def test_a_launched_batch_out_of_memory_is_split(shapes_dataset):
    root, _ = shapes_dataset
    reference = outcomes(root, LumaKeySegmenter(LUMA), 3, overlap=False)
    tight = OutOfMemory(room=2)
    assert same(outcomes(root, Launching(tight), 3, overlap=True), reference)
    assert set(tight.ran) == {2}


def test_a_machine_error_stops_the_run_and_leaves_nothing_launched(shapes_dataset, tmp_path, monkeypatch):
    root, _ = shapes_dataset
    reference = outcomes(root, LumaKeySegmenter(LUMA), 3, overlap=False)
    broken = Launching(DeviceErrorOnceSegmenter(LUMA))
    feeder = Feeder(broken, DecodeOptions(batch=8), decoders=3, overlap=True,
                    rows=lambda clip: ClipRows(clip.clip_id, dict(broken.names)))
    monkeypatch.setenv("FAULT_ONCE", str(tmp_path / "once"))
    (tmp_path / "once").touch()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        outcomes(root, broken, 3, overlap=True, feeder=feeder)
    assert broken.events.count("launch") >= 2  # one was launched when the one before failed
    del broken.events[:]
    assert same(outcomes(root, broken, 3, overlap=True, feeder=feeder), reference)  # the same feeder, again
    assert broken.events.count("launch") == broken.events.count("result")  # nothing of the run cut short


@pytest.mark.parametrize("decoders", [1, 3])
def test_yolo_launched_gives_the_same_rows(shapes_dataset, checkpoint, decoders, monkeypatch):  # noqa: F811
    """YOLO's own launch on the CPU (its network and NMS queued, the masks taken later), against batch by batch."""
    root, _ = shapes_dataset
    yolo = load_segmenter(spec(checkpoint))
    reference = outcomes(root, yolo, decoders, overlap=False)
    device = yolo.on_device
    calls = []
    for name in ("launch", "finish"):
        method = getattr(device, name)
        monkeypatch.setattr(device, name, lambda *a, method=method, name=name, **k: calls.append(name) or method(*a, **k))
    assert same(outcomes(root, yolo, decoders, overlap=True), reference)
    assert calls[:2] == ["launch", "launch"] and calls.count("launch") == calls.count("finish")
    assert sum(len(t) for t in reference.values()) > 20  # instances whose bytes could differ


def test_feeding_a_gpu_switches_threads_more_often_while_it_runs(shapes_dataset):
    import sys

    from pipeline.masks.runtime import SWITCH_INTERVAL

    root, _ = shapes_dataset
    seen = []

    class Watching(LumaKeySegmenter):
        def segment(self, batch):
            seen.append(sys.getswitchinterval())
            return super().segment(batch)

    before = sys.getswitchinterval()
    outcomes(root, Launching(Watching(LUMA)), 2, overlap=True)
    assert set(seen) == {SWITCH_INTERVAL} != {before} and sys.getswitchinterval() == before
    seen.clear()
    outcomes(root, Watching(LUMA), 2, overlap=False)
    assert set(seen) == {before}


class Held:
    """What a launch keeps on the device (its input, activations), here an object to count."""


class OutOfMemoryAtLaunch(LumaKeySegmenter):
    """Runs out of device memory on batches of more than `room` frames, at launch (its tensors then held by the
    error's traceback) or when run at once; `alive` records, as each batch runs, how many launches' tensors are
    still held."""

    def __init__(self, room: int) -> None:
        super().__init__(LUMA)
        self.room, self.held, self.alive = room, weakref.WeakSet(), []

    def launch(self, pieces, *, capacity):
        tensors = Held()
        self.held.add(tensors)
        batch = FrameBatch.concat(pieces, capacity=capacity)
        if max(batch.capacity, len(batch)) > self.room:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return types.SimpleNamespace(tensors=tensors, result=lambda: self.segment(batch))

    def segment(self, batch):
        self.alive.append(len(self.held))
        if max(batch.capacity, len(batch)) > self.room:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().segment(batch)


def test_a_batch_out_of_memory_at_launch_lets_go_of_what_it_held_before_it_runs_in_halves(shapes_dataset):
    """Without the cycle collector: each failed launch's tensors are gone by reference counting before its halves
    run, and no failed batch keeps the one before it alive."""
    root, _ = shapes_dataset
    reference = outcomes(root, LumaKeySegmenter(LUMA), 3, overlap=False)
    tight = OutOfMemoryAtLaunch(room=2)
    gc.disable()
    try:
        assert same(outcomes(root, tight, 3, overlap=True), reference)
    finally:
        gc.enable()
    assert len(tight.alive) > 10 and max(tight.alive) <= 1, tight.alive


class FakePinned:
    """torch's pinned-memory cache as `transfer.PinnedFrames` sees it, on the CPU: blocks rounded up to a power of
    two, a freed block cached for requests of its own size only, and its statistics."""

    def __init__(self, monkeypatch) -> None:
        from pipeline.segment import transfer

        self.active, self.cached, self.emptied, empty = 0, collections.Counter(), 0, torch.empty
        self.handed = 0  # bytes of every block ever handed out

        def empty_maybe_pinned(*shape, pin_memory=False, **kwargs):
            if not pin_memory:
                return empty(*shape, **kwargs)
            array = np.empty(*shape, dtype=np.uint8)
            block = 1 << (array.size - 1).bit_length()
            self.cached[block] -= 1 if self.cached[block] else 0
            self.active += block
            self.handed += block
            weakref.finalize(array, self.free, block)  # the block is in use while the array is
            return types.SimpleNamespace(numpy=lambda: array)

        monkeypatch.setattr(transfer.torch, "empty", empty_maybe_pinned)
        monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {
            "active_bytes.current": self.active, "allocated_bytes.current": self.allocated})
        monkeypatch.setattr(transfer, "empty_pinned_cache", self.empty_cache)
        monkeypatch.setattr(torch.cuda, "init", lambda: None)
        monkeypatch.setattr(transfer, "_process_frames", None)  # the process's count: made afresh here

    @property
    def allocated(self) -> int:
        return self.active + sum(block * count for block, count in self.cached.items())

    def free(self, block: int) -> None:
        self.active -= block
        self.cached[block] += 1

    def empty_cache(self) -> None:
        self.emptied += 1
        self.cached.clear()


def test_decoders_get_pinned_memory_within_its_budget_and_ordinary_memory_past_it(monkeypatch, caplog):
    from pipeline.segment.transfer import PinnedFrames

    host = FakePinned(monkeypatch)
    frames = PinnedFrames()
    memory = frames.share(lambda frame_bytes: 80 << 10)  # blocks in use within 64 KiB; 16 KiB cached is handed back
    assert host.emptied == 1 and frames.emptied == 0  # what torch kept cached before (nothing here)
    small = [memory((10, 1000)) for _ in range(5)]  # 10,000 bytes: a 16 KiB block each
    assert memory.ordinary == 1 and host.active == 64 << 10 and all(a.shape == (10, 1000) for a in small)
    del small[:2]
    small.append(memory((10, 1000)))  # a cached block of its size: taken again, nothing more pinned
    assert memory.ordinary == 1 and host.allocated == 64 << 10
    large = memory((20, 1000))  # a 32 KiB block does not fit beside 48 KiB in use
    assert memory.ordinary == 2 and host.emptied == 1
    small.clear()
    del large
    large = memory((20, 1000))  # fits beside nothing in use, but 64 KiB of smaller blocks cached: handed back
    assert large.shape == (20, 1000) and memory.ordinary == 2
    assert host.emptied == 2 and frames.emptied == 1 and host.allocated == host.active == 32 << 10
    assert host.allocated <= 80 << 10
    with caplog.at_level(logging.WARNING, logger="pipeline.segment.transfer"):
        monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {})  # a torch that does not count: no pinning
        blind = PinnedFrames().share(lambda frame_bytes: 1 << 30)
        assert blind((1, 10)).shape == (1, 10) and blind.ordinary == 1 and host.active == 32 << 10
    assert "no pinned-memory statistics" in caplog.text


def test_frames_of_several_sizes_share_the_largest_budget_without_handing_blocks_back_each_time(monkeypatch):
    """A clip of smaller frames (a smaller budget of its own) is measured against the largest budget asked for,
    and pieces of two sizes taken and dropped in turn reuse their cached blocks: nothing is handed back."""
    from pipeline.segment.transfer import PinnedFrames

    host = FakePinned(monkeypatch)
    frames = PinnedFrames()
    memory = frames.share(lambda frame_bytes: (200 << 10) if frame_bytes >= 2000 else (20 << 10))
    held = [memory((10, 2000)), memory((10, 2000))]  # 32 KiB blocks; then 16, 16 and 64 KiB ones in turn
    for _ in range(50):
        pieces = [memory((10, 1000)), memory((10, 1000)), memory((20, 2000))]
        del pieces
    assert memory.ordinary == 0 and frames.emptied == 0 and host.allocated <= 200 << 10
    assert len(held) == 2
    held.clear()
    host.empty_cache()
    frames = PinnedFrames()
    memory = frames.share(lambda frame_bytes: 100 << 10)  # in use within 80 KiB; 20 KiB cached is handed back
    held = [memory((10, 1000)) for _ in range(4)]
    del held[0]  # 16 KiB cached, too little to hand back
    held.append(memory((20, 1000)))  # 48 + 32 KiB in use, and the 16 KiB: past 80 KiB, within the budget
    assert frames.emptied == 0 and memory.ordinary == 0 and host.allocated == 96 << 10


def test_a_shard_starting_hands_back_what_earlier_shards_feeders_left_cached(monkeypatch):
    """Shard after shard of other frame sizes, each shard's feeder a share of the process's one count, closed with
    its shard: a share made while no frames are pinned hands back what torch keeps cached, or torch would keep each
    size's cached blocks pinned, past the budget (480 KiB for 400 at the last shard with no hand-back at all)."""
    from pipeline.segment.transfer import PinnedFrames

    host = FakePinned(monkeypatch)
    budget, frames = 400 << 10, PinnedFrames()
    for frame in (500, 1000, 2000, 4000):  # each shard's clips at another size: 8, 16, 32 and 64 KiB blocks
        memory = frames.share(lambda frame_bytes: budget)  # the shard's feeder (4 blocks in use: within its room)
        assert host.allocated == 0  # the earlier shards' blocks handed back
        for _ in range(20):
            pieces = [memory((10, frame)) for _ in range(4)]
            del pieces
        memory.close()
        assert memory.ordinary == 0 and host.allocated <= budget
    assert frames.emptied == 0 and host.emptied == 4 and host.allocated == 4 * (64 << 10)


def test_a_segmenters_feeders_share_one_budget_and_count_their_own_unpinned_pieces(monkeypatch):
    """A shard's clips run together (three decoders: a larger budget), then its retries alone on a clip of
    another size (a smaller one): the second feeder's blocks and the first's cached ones are one count, held to the
    larger budget, not to the two added (224 KiB for 200 with a count each); each feeder counts its own pieces
    given ordinary memory. The replayed masks' segmenter takes its shares of the same count."""
    from pipeline.bench.replay import ReplaySegmenter
    from pipeline.segment.transfer import FramesShare
    from pipeline.segment.yolo import YoloSegmenter

    host = FakePinned(monkeypatch)
    yolo = types.SimpleNamespace(spec=types.SimpleNamespace(inference="device"), device=torch.device("cuda", 0))
    together = YoloSegmenter.frame_memory(yolo, lambda frame_bytes: 200 << 10)  # in use within 160 KiB
    alone = YoloSegmenter.frame_memory(yolo, lambda frame_bytes: 100 << 10)
    replayed = ReplaySegmenter.frame_memory(types.SimpleNamespace(spec=types.SimpleNamespace(device="cuda:0")),
                                            lambda frame_bytes: 1)
    assert isinstance(together, FramesShare) and together.frames is alone.frames is replayed.frames
    replayed.close()
    pieces = [together((10, 1000)) for _ in range(11)]  # 16 KiB blocks: ten pinned, the eleventh not
    assert together.ordinary == 1 and host.allocated == 160 << 10
    del pieces  # cached: 160 KiB
    held = []
    for _ in range(3):
        held.append(alone((20, 1000)))  # 32 KiB blocks: the 16 KiB ones cached are handed back for the first
        assert host.allocated <= 200 << 10
    assert alone.ordinary == 0 and together.ordinary == 1 and host.allocated == host.active == 96 << 10


def test_a_closed_feeders_budget_no_longer_holds(monkeypatch):
    """A run with a large budget (a larger BATCH, more decoders, larger frames), then one with a small budget in
    the same process (a worker that stays): the second is held to its own budget (160 KiB pinned for 100 where
    the first one's still held)."""
    from pipeline.segment.transfer import frame_memory

    host = FakePinned(monkeypatch)
    large = frame_memory(lambda frame_bytes: 400 << 10)
    pieces = [large((10, 1000)) for _ in range(20)]  # 16 KiB blocks: 320 KiB, all pinned
    assert large.ordinary == 0
    del pieces
    large.close()
    small = frame_memory(lambda frame_bytes: 100 << 10)  # in use within 80 KiB
    pieces = [small((10, 1000)) for _ in range(10)]
    assert small.ordinary == 5 and len(pieces) == 10 and host.allocated == 80 << 10 and large.frames is small.frames


def test_a_feeder_done_closes_its_share_of_the_pinned_memory(shapes_dataset, monkeypatch):
    """A feeder's budget holds while it runs, not after: a closed feeder's share leaves the process's count."""
    from pipeline.segment import transfer

    root, _ = shapes_dataset
    FakePinned(monkeypatch)
    launching = Launching(LumaKeySegmenter(LUMA))
    monkeypatch.setattr(launching, "frame_memory", transfer.frame_memory)  # pinned, as YOLO's on CUDA
    feeder = Feeder(launching, DecodeOptions(batch=8), decoders=3, overlap=True,
                    rows=lambda clip: ClipRows(clip.clip_id, dict(launching.names)))
    reference = outcomes(root, LumaKeySegmenter(LUMA), 3, overlap=False)
    assert same(outcomes(root, launching, 3, overlap=True, feeder=feeder), reference)
    assert set(transfer._process_frames._shares) == {feeder._memory} and feeder.unpinned == 0
    feeder.close()
    assert not transfer._process_frames._shares


@pytest.mark.parametrize("ending", ["finish", "abort"])
def test_a_shard_finished_or_given_up_closes_its_feeders_shares(monkeypatch, ending):
    """A shard's two feeders on CUDA (its clips together, its retries alone) each hold a share of the process's
    pinned frames while the shard runs; finished or given up, the shard closes both."""
    from pipeline.masks.stage import MasksStage, MasksWork
    from pipeline.segment import transfer
    from pipeline.tracking import TrackOptions

    FakePinned(monkeypatch)
    segmenter = types.SimpleNamespace(names={0: "person"}, frame_memory=transfer.frame_memory)
    stage = MasksStage(segmenter=SegmenterSpec(device="cuda"), decode=DecodeOptions(batch=8), track=TrackOptions(),
                       metadata={}, decoders=3)
    work = MasksWork(stage, segmenter, types.SimpleNamespace(finish=lambda outcomes: None, abort=lambda: None))
    assert len(transfer._process_frames._shares) == 2
    if ending == "finish":
        work.finish([], commit=None)
    else:
        work.abort()
    assert not transfer._process_frames._shares


def test_pieces_freed_make_room_though_torch_counts_every_block_it_handed_out_in_use(monkeypatch):
    """torch 2.11 on an H200 did not lower its count of pinned blocks in use when one was freed (docs/PERFORMANCE.md,
    the first GPU check): the blocks in use are counted here, so pieces freed make room for the next ones."""
    from pipeline.segment.transfer import PinnedFrames

    host = FakePinned(monkeypatch)
    monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {
        "active_bytes.current": host.handed, "allocated_bytes.current": host.allocated})
    frames = PinnedFrames()
    memory = frames.share(lambda frame_bytes: 80 << 10)  # blocks in use within 64 KiB
    for _ in range(20):
        pieces = [memory((10, 1000)), memory((10, 1000))]  # 16 KiB blocks, reused from the cache
        del pieces
    assert memory.ordinary == 0 and frames.in_use == 0 and host.allocated == 32 << 10 and host.handed == 640 << 10
    held = [memory((10, 1000)) for _ in range(5)]  # the budget still holds
    assert memory.ordinary == 1 and frames.in_use == host.active == 64 << 10 and len(held) == 5


def test_other_pinned_memory_does_not_make_the_frames_hand_their_cache_back_again_and_again(monkeypatch):
    """Staging buffers and copies of results are pinned too: torch holds more than the frames' room, but only the
    frames' own cached blocks of other sizes are handed back, once; pieces of one size reuse theirs."""
    from pipeline.segment import transfer
    from pipeline.segment.transfer import PinnedFrames

    host = FakePinned(monkeypatch)
    staging = [transfer.torch.empty(64 << 10, pin_memory=True) for _ in range(2)]  # 128 KiB held throughout
    frames = PinnedFrames()
    memory = frames.share(lambda frame_bytes: 160 << 10)  # in use within 128 KiB; 32 KiB stale is handed back
    for _ in range(50):
        pieces = [memory((10, 1000)) for _ in range(6)]  # 16 KiB blocks: 96 KiB in use
        del pieces
    assert memory.ordinary == 0 and frames.emptied == 0 and host.allocated == (128 + 96) << 10
    assert frames.cached == 96 << 10  # each block taken again, then freed again
    large = [memory((20, 1000)) for _ in range(2)]  # 32 KiB blocks: 96 KiB of 16 KiB ones cached, handed back
    assert frames.emptied == 1 and host.allocated == (128 + 64) << 10 and frames.in_use == 64 << 10
    assert frames.cached == 0
    del large
    for _ in range(20):
        pieces = [memory((10, 1000)), memory((20, 1000))]  # both sizes reuse their blocks: nothing handed back
        del pieces
    assert frames.emptied == 1 and memory.ordinary == 0 and len(staging) == 2
    assert frames.cached == (16 + 2 * 32) << 10 and frames.in_use == 0  # the two large blocks, one small


def test_a_piece_freed_while_the_lock_is_held_elsewhere_does_not_wait_for_it(monkeypatch):
    """A piece is dropped in whatever thread lets go of it last, the inference thread say, while a decoder holds
    the lock across pinning: its finalizer only notes the block, counted at the next call."""
    from pipeline.segment.transfer import PinnedFrames

    FakePinned(monkeypatch)
    frames = PinnedFrames()
    memory = frames.share(lambda frame_bytes: 80 << 10)
    holder, done = [memory((10, 1000))], threading.Event()
    with frames._lock:  # a decoder thread inside __call__
        dropping = threading.Thread(target=lambda: (holder.clear(), done.set()))  # the last reference, let go
        dropping.start()
        dropping.join(5)
        assert done.is_set()
    dropping.join()
    assert frames.in_use == 0


def test_the_device_path_on_cuda_alone_gives_its_decoders_pinned_memory(monkeypatch):
    from pipeline.segment.transfer import PinnedFrames
    from pipeline.segment.yolo import YoloSegmenter

    FakePinned(monkeypatch)
    yolo = types.SimpleNamespace(spec=types.SimpleNamespace(inference="device"), device=torch.device("cuda", 0))
    assert isinstance(YoloSegmenter.frame_memory(yolo, lambda frame_bytes: 1).frames, PinnedFrames)
    for inference, device in (("predict", "cuda"), ("device", "cpu")):
        yolo.spec.inference, yolo.device = inference, torch.device(device)
        assert YoloSegmenter.frame_memory(yolo, lambda frame_bytes: 1) is None


def test_staging_copies_pinned_pieces_as_they_are_and_stages_the_others(monkeypatch):
    """`transfer.Staging` with CUDA's streams and events stood in for on the CPU: pieces in pinned memory are
    copied each to its rows, a batch with any other piece is put together in a pinned buffer first; either way
    the device gets the frames in order, then black ones up to `rows`."""
    from pipeline.segment import transfer

    pinned, empty = set(), torch.empty

    def maybe_pinned(*shape, pin_memory=False, **kwargs):
        tensor = empty(*shape, **kwargs)
        if pin_memory:
            pinned.add(tensor.data_ptr())
        return tensor

    stream = types.SimpleNamespace(wait_stream=lambda other: None, wait_event=lambda event: None)
    event = types.SimpleNamespace(record=lambda stream=None: None, query=lambda: True, synchronize=lambda: None)
    monkeypatch.setattr(transfer.torch, "empty", maybe_pinned)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: stream)
    monkeypatch.setattr(torch.cuda, "Event", lambda: event)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: self.data_ptr() in pinned)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (7, 6, 5, 3), dtype=np.uint8)
    pieces = [maybe_pinned(part.shape, dtype=torch.uint8, pin_memory=True).numpy()
              for part in (frames[:3], frames[3:4], frames[4:])]
    for piece, part in zip(pieces, (frames[:3], frames[3:4], frames[4:])):
        piece[...] = part
    expected = np.concatenate([frames, np.zeros((3, 6, 5, 3), dtype=np.uint8)])
    staging = transfer.Staging(torch.device("cpu"))
    np.testing.assert_array_equal(staging.copy(pieces, 10).numpy(), expected)
    assert staging.staged == 0
    np.testing.assert_array_equal(staging.copy([pieces[0], frames[3:4].copy(), pieces[2]], 10).numpy(), expected)
    np.testing.assert_array_equal(staging.copy([frames], 0).numpy(), frames)
    assert staging.staged == 2 and staging.buffers[0] is not None and staging.buffers[1] is not None


def test_work_on_a_side_stream_that_raises_is_waited_for_by_the_stream_outside(monkeypatch):
    """A batch's masks are assembled on a stream of their own from tensors made on the model's: if that work raises
    part way (out of memory, then the batch is split), the model's stream (current outside) waits for what was
    queued before the tensors, dropped with the error, can be reused there; and the error itself goes on, even
    where the wait fails too (a context the error broke). Streams stand in for CUDA's here."""
    from pipeline.segment import transfer

    class Stream:
        def __init__(self, device: torch.device) -> None:
            self.device, self.waited = device, []

        def wait_event(self, event) -> None:
            self.waited.append(event)

        def wait_stream(self, other) -> None:
            if broken:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            self.waited.append(other)

    device = torch.device("cuda", 1)
    outer, side, asked, broken = Stream(device), Stream(device), [], False
    current = {device: outer}

    @contextlib.contextmanager
    def switched(stream):
        before, current[stream.device] = current[stream.device], stream
        try:
            yield
        finally:
            current[stream.device] = before

    def current_stream(where=None):
        asked.append(where)
        return current[where]

    monkeypatch.setattr(transfer.torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(transfer.torch.cuda, "stream", switched)
    with transfer.side_stream(side, after="copied"):
        assert current[device] is side
    assert side.waited == ["copied"] and outer.waited == []  # work that ends is waited for by its results' copy
    with pytest.raises(torch.cuda.OutOfMemoryError), transfer.side_stream(side, after=None):
        raise torch.cuda.OutOfMemoryError("out of memory (injected)")
    assert outer.waited == [side] and side.waited == ["copied"] and current[device] is outer
    assert asked and all(where == device for where in asked)  # the side stream's device, not the current one
    broken = True
    with pytest.raises(torch.cuda.OutOfMemoryError), transfer.side_stream(side, after=None):
        raise torch.cuda.OutOfMemoryError("out of memory (injected)")
