"""How many decoded frames the masks stage's feeder (masks/feed.py) holds at once, at most: the bound it reports
and that a GPU worker's memory is sized by (gpu_workers.memory_need), in one place that needs neither."""

from __future__ import annotations

from dataclasses import replace

from pipeline.decode import DecodeOptions, frames_within

PREFETCH = 2  # pieces each decoder may be ahead
BEHIND = 2  # batches waiting for RLE and tracking (on CUDA)


def piece_options(options: DecodeOptions, decoders: int) -> DecodeOptions:
    """What each of `decoders` decodes at a time: a piece, its slot's share of a batch in frames and in bytes."""
    return replace(options, batch=max(1, options.batch // decoders),
                   max_batch_mb=max(1, options.max_batch_mb // decoders))


def frames_in_flight(options: DecodeOptions, *, decoders: int, overlap: bool, frame_bytes: int = 1) -> int:
    """At most this many decoded frames of `frame_bytes` each are held at once by a feeder of `decoders` with
    batches of `options` (`overlap`: it feeds a GPU). Per decoder: the pieces queued ahead, the one its thread
    waits to queue, the one it is filling and the one taken ahead, and a batch being packed per frame size (at most
    one per decoder); then the batch being segmented, as its pieces and as one array. On CUDA the pieces are
    decoded into pinned memory, in blocks that torch rounds up to a power of two of bytes and that live while any
    frame of theirs is held: there, every piece counts as its block, and besides the batches being packed and
    segmented, the one launched before it and those behind (RLE and tracking, queued and running) hold parts of
    pieces; the frames a decoder fills a piece from, two pinned staging buffers, and a batch put in one array when
    it runs out of device memory come on top. Pieces and batches are capped in bytes too (a piece at its share of
    max_batch_mb), so large frames are held fewer at a time. The default `frame_bytes` of 1: frames small enough
    that no cap in bytes binds."""
    pieces = piece_options(options, decoders)
    piece = frames_within(pieces.batch, pieces.max_batch_mb << 20, frame_bytes)
    batch = frames_within(options.batch, options.max_batch_mb << 20, frame_bytes)
    if not overlap:
        return decoders * ((PREFETCH + 3) * piece + batch) + 2 * batch
    batches = decoders + 2 + BEHIND + 1  # being packed, segmented, launched before it, behind
    blocks = decoders * (PREFETCH + 3) + batches * (-(-batch // piece) + 1)  # a batch holds parts of so many pieces
    pinned = blocks * _pinned(piece * frame_bytes) + 2 * _pinned(batch * frame_bytes)
    return -(-pinned // frame_bytes) + decoders * piece + batch


def _pinned(size: int) -> int:
    """The bytes of torch's pinned block for `size` bytes."""
    return 1 << (size - 1).bit_length()
