"""Cross-clip feeding: several clips of a shard decoded at once (each on its own thread), their frames packed
into model batches by a fixed round-robin over the decoder slots, and every result routed back to its clip in
frame order.

The packing depends only on the clips' frame sequences, never on thread timing: the feeder takes the next
piece of each slot in turn, waiting for it, and a slot whose clip ends is given the next clip at the start of
the next round. Frames of different sizes are packed apart, one batch per size; a batch is run when it holds
`batch` frames or `max_batch_mb` of them (the decoder's own caps), or when no slot decodes its size any more.
Every batch of one frame size is handed over with the same `capacity` (that cap), so a segmenter whose results
depend on the batch's shape runs each at one fixed shape: a clip's masks do not depend on what shared its batches.

A clip's failure stays its own: a decoder that raises ends only its clip, and a batch the segmenter raises on is
run again clip by clip, so that only the clip whose frames raise it gets the error. A batch that runs out of
device memory is split in two and each half run at half the capacity (down to one frame); any other machine
error (device, memory) stops the feeder. Frames in flight are bounded (`frames_in_flight`). Feeding a GPU
(`overlap`), the decoders write frames where the segmenter wants them (pinned memory, from which each piece
crosses to the GPU as it is: the thread that drives the GPU copies no frame), the feeder launches a batch before
it takes the masks of the one before, and the interpreter switches threads more often, so that the decoders are
not starved by the thread that drives the GPU.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from pipeline.decode import DecodeError, DecodeOptions, FrameBatch, VideoDecoder, VideoInfo, frames_within
from pipeline.engine.failures import is_device_out_of_memory, is_infrastructure
from pipeline.in_flight import BEHIND, PREFETCH, frames_in_flight, piece_options, pinned_for_frames
from pipeline.masks.runtime import free_device_cache, switching
from pipeline.masks.started import Packed, Started, taken
from pipeline.masks.tables import ClipRows
from pipeline.prefetch import Behind, prefetched
from pipeline.records import ClipRecord
from pipeline.segment import FrameMasks, Segmenter

log = logging.getLogger(__name__)

@dataclass(eq=False, kw_only=True)
class FedClip:
    """One clip as the feeder leaves it: what its decoder learned, its frames, and the rows of its masks."""

    clip: ClipRecord
    rows: ClipRows | None  # None: it could not be opened (`failed` says why)
    info: VideoInfo | None = None  # None: no frame decoded
    frames: int = 0
    error: str | None = None  # the decode error that ended it part way (or before any frame)
    failed: Exception | None = field(default=None, repr=False)  # its own failure: no usable rows
    add_error: Exception | None = field(default=None, repr=False)  # its failure in RLE or tracking (behind)
    sent: int = 0  # pieces handed to RLE and tracking (main thread)
    added: int = 0  # of those, added to `rows` (the thread behind)
    waiting: int = 0  # pieces packed but not yet segmented
    shape: tuple | None = None  # the size its frames are packed by
    ahead: FrameBatch | None = field(default=None, repr=False)  # its next piece, taken from the decoder
    decoder: VideoDecoder | None = field(default=None, repr=False)
    pieces: Iterator[FrameBatch] | None = field(default=None, repr=False)


class Feeder:
    """Runs a segmenter over many clips at once; `run` yields each clip's FedClip, or its exception."""

    def __init__(self, segmenter: Segmenter, options: DecodeOptions, *, decoders: int,
                 rows: Callable[[ClipRecord], ClipRows], overlap: bool = False) -> None:
        self.segmenter, self.decoders = segmenter, max(1, decoders)
        self.batch_options = options
        self.options = piece_options(options, self.decoders)  # a piece: one slot's share of a batch
        self.rows, self.overlap = rows, overlap
        # where decoders write frames on CUDA: the segmenter's memory its batches cross to the device from (pinned)
        memory = getattr(segmenter, "frame_memory", None) if overlap else None
        self._memory = memory(self.pinned_budget) if memory is not None else None
        self.splits = 0  # batches split in two after running out of device memory
        self._launched: Started | None = None  # a batch launched on the device, its masks not yet taken

    @property
    def frames_in_flight(self) -> int:
        """At most this many decoded frames are held at once (frames small enough that no cap in bytes binds)."""
        return self.frames_in_flight_at(1)

    def frames_in_flight_at(self, frame_bytes: int) -> int:
        """At most this many decoded frames of `frame_bytes` each are held at once (`in_flight.frames_in_flight`)."""
        return frames_in_flight(self.batch_options, decoders=self.decoders, overlap=self.overlap,
                                pinned=self._memory is not None,
                                frame_bytes=frame_bytes)

    def pinned_budget(self, frame_bytes: int) -> int:
        """Bytes of pinned memory the decoders may write frames of `frame_bytes` into (`in_flight`)."""
        return pinned_for_frames(self.batch_options, decoders=self.decoders, frame_bytes=frame_bytes)

    def close(self) -> None:
        """Done: its decoders' share of the pinned memory no longer holds a budget (where it has one)."""
        close = getattr(self._memory, "close", None)
        if close is not None:
            close()

    @property
    def unpinned(self) -> int:
        """Pieces decoded into ordinary memory where the segmenter's pinned memory had no room (then staged)."""
        return getattr(self._memory, "ordinary", 0)

    def run(self, clips: list[ClipRecord], begin: Callable[[ClipRecord], None]
            ) -> Iterator[tuple[ClipRecord, FedClip | Exception]]:
        """Every clip's outcome, as each is finished; `begin(clip)` is called as each is opened."""
        waiting, slots = deque(clips), [None] * self.decoders
        packing: dict[tuple, Packed] = {}  # by frame size, in the order sizes first came
        ended: list[FedClip] = []
        try:
            with Behind(depth=BEHIND if self.overlap else 0) as after, switching(self.overlap):
                while True:
                    self._fill(slots, waiting, begin, ended)
                    live = [fed for fed in slots if fed is not None]
                    decoding = {fed.shape for fed in live}
                    for shape in [shape for shape in packing if shape not in decoding]:
                        self._segment(packing.pop(shape), after)  # no slot fills it any more: its clips end
                    yield from self._finished(ended)
                    if not live:
                        break
                    for fed in live:
                        piece, fed.ahead = fed.ahead, None
                        self._pack(packing, fed, piece, after)
                self._drain(after)
                after.drain()
                yield from self._finished(ended)
        finally:
            self._launched = None  # a batch of a run cut short is not finished in the next
            for fed in slots:
                if fed is not None:
                    fed.pieces.close()  # stops its decoder thread

    def _fill(self, slots: list[FedClip | None], waiting: deque, begin: Callable[[ClipRecord], None],
              ended: list[FedClip]) -> None:
        """Each slot in turn with its next piece ahead: a clip without one has ended and leaves its slot to the
        next waiting clip (opened, and its first piece taken, so that its frame size is known)."""
        for s in range(len(slots)):
            while True:
                if slots[s] is None:
                    if not waiting:
                        break
                    clip = waiting.popleft()
                    begin(clip)
                    try:
                        slots[s] = self._open(clip)
                    except Exception as exc:  # noqa: BLE001 - the clip's (a machine error is raised on)
                        if is_infrastructure(exc):
                            raise
                        ended.append(FedClip(clip=clip, rows=None, failed=exc))
                        continue
                fed = slots[s]
                if fed.ahead is None:
                    fed.ahead = self._next(fed)
                if fed.ahead is not None:
                    break
                slots[s] = None
                ended.append(fed)

    def _open(self, clip: ClipRecord) -> FedClip:
        decoder = VideoDecoder(clip.path, self.options, memory=self._memory)
        return FedClip(clip=clip, rows=self.rows(clip), decoder=decoder, pieces=prefetched(decoder, PREFETCH))

    def _next(self, fed: FedClip) -> FrameBatch | None:
        """The slot's next piece; None once its clip has ended (decoded to the end, a decode error, a failure)."""
        piece = None
        if fed.failed is None:  # a clip that failed (its batch, alone) is not decoded further
            try:
                piece = next(fed.pieces, None)
            except DecodeError as exc:
                log.warning("decode error after %d frames: %s", fed.frames, exc)
                fed.error = str(exc)
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                fed.failed = exc
        if piece is None:
            fed.info = fed.decoder.info
            fed.pieces.close()
            return None
        fed.frames += len(piece)
        fed.shape = (*piece.frames.shape[1:], piece.height, piece.width)
        return piece

    def _pack(self, packing: dict[tuple, Packed], fed: FedClip, piece: FrameBatch, after: Behind) -> None:
        """Add a piece to the batch of its size; what fits fills it (then it runs), the rest starts the next."""
        limit = self.capacity(piece)
        while piece is not None:
            packed = packing.setdefault(fed.shape, [])
            room = limit - sum(len(p) for _, p in packed)
            head, piece = piece.split(room)
            packed.append((fed, head))
            fed.waiting += 1
            if len(head) == room:
                self._segment(packing.pop(fed.shape), after)

    def capacity(self, piece: FrameBatch) -> int:
        """Frames of a batch of this piece's frame size: `batch`, or fewer where they would pass `max_batch_mb`
        (as VideoDecoder caps its batches)."""
        return frames_within(self.batch_options.batch, self.batch_options.max_batch_mb << 20, piece.frames[0].nbytes)

    def _segment(self, packed: Packed, after: Behind) -> None:
        """Segment one packed batch and hand each piece's masks to its clip's rows (behind, in order). Where the
        segmenter can launch batches (and `overlap`), this one is launched and the one launched before it is
        finished: the device runs this batch while the host takes the other's masks."""
        for fed, _ in packed:
            if fed.failed is not None:
                fed.waiting -= 1
        live = [(fed, piece) for fed, piece in packed if fed.failed is None]
        if not live:
            return
        started = self._start(live)
        if started.launched is None:  # run as it is given (no launch), or its launch failed: the one launched before
            self._drain(after)  # it is finished first (and lets go of the device memory it holds)
            self._complete(started, after)
            return
        previous, self._launched = self._launched, started
        if previous is not None:
            self._complete(previous, after)

    def _drain(self, after: Behind) -> None:
        """The batch still launched, finished."""
        started, self._launched = self._launched, None
        if started is not None:
            self._complete(started, after)

    def _start(self, live: Packed) -> Started:
        """The batch of these pieces, launched where the segmenter can (a failure is kept for `_complete`)."""
        started = Started(live=live, capacity=self.capacity(live[0][1]))
        launch = getattr(self.segmenter, "launch", None) if self.overlap else None
        if launch is not None:
            try:
                started.launched = launch([piece for _, piece in live], capacity=started.capacity)
            except Exception as exc:  # noqa: BLE001 - raised where a batch's masks are taken (_complete), at once
                started.error = exc
        return started

    def _complete(self, started: Started, after: Behind) -> None:
        """A started batch's masks, each piece's to its clip's rows (behind, in order)."""
        live = started.live
        for fed, _ in live:
            fed.waiting -= 1
        try:
            found = self._by_piece(live, self._fitting(started))
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            found = self._clip_by_clip(live, exc)
        work = [(fed, piece, found[id(piece)]) for fed, piece in live if fed.failed is None]
        for fed, _, _ in work:
            fed.sent += 1
        after.submit(_add, work)
        if not self.overlap:  # `_add` ran inline: a clip it failed is not decoded further
            for fed, _, _ in work:
                fed.failed = fed.failed or fed.add_error

    def _masks(self, pieces: Packed) -> dict[int, list[FrameMasks]]:
        """The segmenter on the pieces as one batch, at once: each piece's masks, by the piece's id."""
        return self._by_piece(pieces, self._fitting(Started(live=pieces, capacity=self.capacity(pieces[0][1]))))

    @staticmethod
    def _by_piece(pieces: Packed, results: list[FrameMasks]) -> dict[int, list[FrameMasks]]:
        """A batch's results, each piece's by the piece's id."""
        if len(results) != sum(len(piece) for _, piece in pieces):
            raise ValueError(f"the segmenter gave {len(results)} results for "
                             f"{sum(len(piece) for _, piece in pieces)} frames")
        found, offset = {}, 0
        for _, piece in pieces:
            found[id(piece)], offset = results[offset:offset + len(piece)], offset + len(piece)
        return found

    def _fitting(self, started: Started) -> list[FrameMasks]:
        """The segmenter's results for a started batch (those of its launch, where it was launched); out of device
        memory, the two halves at half the capacity each (a single frame that does not fit is the machine's
        error)."""
        try:
            if started.launched is not None or started.error is not None:
                return taken(started)
            return self.segmenter.segment(started.batch)
        except Exception as exc:
            if not is_device_out_of_memory(exc) or started.capacity <= 1 and len(started.batch) <= 1:
                raise
        batch = started.batch  # the pieces in one array (in ordinary memory) if they were launched as they are
        free_device_cache()  # out of the handler: its traceback no longer holds the batch's tensors
        self.splits += 1
        capacity = -(-max(batch.capacity, len(batch)) // 2)
        log.warning("out of device memory on a batch of %d frames: running it as two of %d (their masks may differ "
                    "in the last bits from full batches'; a smaller BATCH avoids it)", batch.capacity or len(batch),
                    capacity)
        head, tail = batch.split(-(-len(batch) // 2))
        found = self._fitting(Started.of(replace(head, capacity=capacity)))
        return found + (self._fitting(Started.of(replace(tail, capacity=capacity))) if tail is not None else [])

    def _clip_by_clip(self, live: Packed, error: Exception) -> dict[int, list[FrameMasks]]:
        """A batch raised `error`: each clip's pieces again on their own. A clip that raises alone (or was alone
        in the batch) fails with its error; the others' masks come back."""
        owners = list(dict.fromkeys(fed for fed, _ in live))
        found = {}
        for fed in owners:
            try:
                if len(owners) == 1:
                    raise error
                found |= self._masks([(owner, piece) for owner, piece in live if owner is fed])
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                fed.failed = exc
        return found

    def _finished(self, ended: list[FedClip]) -> Iterator[tuple[ClipRecord, FedClip | Exception]]:
        """The ended clips that failed, or whose masks are all in their rows."""
        for fed in [fed for fed in ended if fed.failed is not None or (fed.waiting == 0 and fed.added == fed.sent)]:
            ended.remove(fed)
            if fed.failed is None and fed.add_error is not None:  # read once everything behind is done
                fed.failed = fed.add_error
            yield fed.clip, (fed.failed if fed.failed is not None else fed)


def _add(work: list[tuple[FedClip, FrameBatch, list[FrameMasks]]]) -> None:
    """Behind the model: each piece's masks into its clip's rows (RLE, tracking), in order."""
    for fed, piece, found in work:
        if fed.add_error is None:
            try:
                fed.rows.add(piece, found)
            except Exception as exc:  # noqa: BLE001 - the clip's own failure; a machine error is raised on
                if is_infrastructure(exc):
                    raise
                fed.add_error = exc
        fed.added += 1
