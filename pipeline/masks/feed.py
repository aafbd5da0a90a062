"""Cross-clip feeding: several clips of a shard decoded at once (each on its own thread), their frames packed
into model batches by a fixed round-robin over the decoder slots, and every result routed back to its clip in
frame order.

The packing depends only on the clips' frame sequences, never on thread timing: the feeder takes the next
piece of each slot in turn, waiting for it, so the same clips give the same batches. A slot whose clip ends is
given the next clip at the start of the next round. A batch holds frames of one size; a piece of another size
starts a new one.

A clip's failure stays its own: a decoder that raises ends only its clip, and a batch the segmenter raises on is
run again clip by clip, so that only the clip whose frames raise it gets the error. A machine error (device,
memory) stops the feeder. Frames in flight are bounded: each slot's decoder is at most `PREFETCH` pieces ahead,
plus the batch being packed and what waits for RLE and tracking.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from pipeline.decode import DecodeError, DecodeOptions, FrameBatch, VideoDecoder, VideoInfo
from pipeline.engine.failures import is_infrastructure
from pipeline.masks.tables import ClipRows
from pipeline.prefetch import Behind, prefetched
from pipeline.records import ClipRecord
from pipeline.segment import FrameMasks, Segmenter

log = logging.getLogger(__name__)

PREFETCH = 2  # pieces each slot's decoder may be ahead
BEHIND = 2  # batches waiting for RLE and tracking (on CUDA)


@dataclass(eq=False, kw_only=True)
class FedClip:
    """One clip as the feeder leaves it: what its decoder learned, its frames, and the rows of its masks."""

    clip: ClipRecord
    rows: ClipRows
    info: VideoInfo | None = None  # None: no frame decoded
    frames: int = 0
    error: str | None = None  # the decode error that ended it part way (or before any frame)
    failed: Exception | None = field(default=None, repr=False)  # the clip's own failure: it has no usable rows
    ended: bool = False
    waiting: int = 0  # pieces packed or segmented whose masks are not yet in `rows`
    decoder: VideoDecoder | None = field(default=None, repr=False)
    pieces: Iterator[FrameBatch] | None = field(default=None, repr=False)


class Feeder:
    """Runs a segmenter over many clips at once; `run` yields each clip's FedClip, or its exception."""

    def __init__(self, segmenter: Segmenter, options: DecodeOptions, *, decoders: int,
                 rows: Callable[[ClipRecord], ClipRows], overlap: bool = False) -> None:
        self.segmenter, self.decoders, self.batch = segmenter, max(1, decoders), options.batch
        self.options = replace(options, batch=max(1, options.batch // self.decoders))  # a piece: one slot's share
        self.rows, self.overlap = rows, overlap

    @property
    def frames_in_flight(self) -> int:
        """At most this many decoded frames are held at once (decoders ahead, the batch, RLE and tracking)."""
        return self.decoders * (PREFETCH + 1) * self.options.batch + self.batch * (1 + (BEHIND if self.overlap else 0))

    def run(self, clips: list[ClipRecord], begin: Callable[[ClipRecord], None]
            ) -> Iterator[tuple[ClipRecord, FedClip | Exception]]:
        """Every clip's outcome, in the order they finish; `begin(clip)` is called as each is opened."""
        waiting, slots = deque(clips), [None] * self.decoders
        packing: list[tuple[FedClip, FrameBatch]] = []
        ended: list[FedClip] = []
        try:
            with Behind(depth=BEHIND if self.overlap else 0) as after:
                while True:
                    for s in range(len(slots)):
                        if slots[s] is None and waiting:
                            clip = waiting.popleft()
                            begin(clip)
                            slots[s] = self._open(clip)
                    if not any(slots):
                        break
                    for s, fed in enumerate(slots):
                        if fed is None:
                            continue
                        piece = self._next(fed)
                        if piece is None:
                            slots[s], fed.ended = None, True
                            ended.append(fed)
                            continue
                        while piece is not None:  # what fits fills the batch; the rest starts the next
                            if packing and not packing[0][1].fits(piece):
                                packing = self._segment(packing, after)
                            head, piece = piece.split(self.batch - _frames(packing))
                            packing.append((fed, head))
                            fed.waiting += 1
                            if _frames(packing) == self.batch:
                                packing = self._segment(packing, after)
                    yield from self._finished(ended, after)
                self._segment(packing, after)
                yield from self._finished(ended, after)
        finally:
            for fed in slots:
                if fed is not None and fed.pieces is not None:
                    fed.pieces.close()  # stops its decoder thread

    def _open(self, clip: ClipRecord) -> FedClip:
        decoder = VideoDecoder(clip.path, self.options)
        return FedClip(clip=clip, rows=self.rows(clip), decoder=decoder, pieces=prefetched(decoder, PREFETCH))

    def _next(self, fed: FedClip) -> FrameBatch | None:
        """The slot's next piece; None once its clip has ended (decoded to the end, a decode error, a failure)."""
        try:
            piece = next(fed.pieces, None)
        except DecodeError as exc:
            log.warning("decode error after %d frames: %s", fed.frames, exc)
            fed.error = str(exc)
            piece = None
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            fed.failed = exc
            piece = None
        if piece is None:
            fed.info = fed.decoder.info
            fed.pieces.close()
            return None
        fed.frames += len(piece)
        return piece

    def _segment(self, packing: list[tuple[FedClip, FrameBatch]], after: Behind) -> list:
        """Segment one packed batch and hand each piece's masks to its clip's rows (behind, in order); returns
        the next, empty, batch."""
        for fed, _ in packing:
            fed.waiting -= 1
        live = [(fed, piece) for fed, piece in packing if fed.failed is None]
        if not live:
            return []
        try:
            results = self.segmenter.segment(FrameBatch.concat([piece for _, piece in live]))
            found, offset = {}, 0
            for _, piece in live:
                found[id(piece)], offset = results[offset:offset + len(piece)], offset + len(piece)
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            found = self._clip_by_clip(live, exc)
        for fed, piece in live:
            if fed.failed is None:
                after.submit(_add, fed, piece, found[id(piece)])
        return []

    def _clip_by_clip(self, live: list[tuple[FedClip, FrameBatch]], error: Exception) -> dict[int, list[FrameMasks]]:
        """A batch raised `error`: each clip's pieces again on their own. A clip that raises alone (or was alone
        in the batch) fails with its error; the others' masks come back by piece."""
        owners = list(dict.fromkeys(fed for fed, _ in live))
        found = {}
        for fed in owners:
            pieces = [piece for owner, piece in live if owner is fed]
            try:
                if len(owners) == 1:
                    raise error
                results = self.segmenter.segment(FrameBatch.concat(pieces))
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                fed.failed = exc
                continue
            offset = 0
            for piece in pieces:
                found[id(piece)], offset = results[offset:offset + len(piece)], offset + len(piece)
        return found

    def _finished(self, ended: list[FedClip], after: Behind) -> Iterator[tuple[ClipRecord, FedClip | Exception]]:
        """The ended clips whose masks are all in their rows (what runs behind is waited for only then)."""
        ready = [fed for fed in ended if fed.failed is not None or fed.waiting == 0]
        if any(fed.failed is None for fed in ready):
            after.drain()
        for fed in ready:
            ended.remove(fed)
            yield fed.clip, (fed.failed if fed.failed is not None else fed)


def _add(fed: FedClip, piece: FrameBatch, found: list[FrameMasks]) -> None:
    if fed.failed is not None:
        return
    try:
        fed.rows.add(piece, found)
    except Exception as exc:  # noqa: BLE001 - the clip's own failure (a machine error is raised on)
        if is_infrastructure(exc):
            raise
        fed.failed = exc


def _frames(packing: list[tuple[FedClip, FrameBatch]]) -> int:
    return sum(len(piece) for _, piece in packing)


