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


def frames_in_flight(options: DecodeOptions, *, decoders: int, overlap: bool, frame_bytes: int = 1,
                     pinned: bool | None = None) -> int:
    """At most this many decoded frames of `frame_bytes` each are held at once by a feeder of `decoders` with
    batches of `options` (`overlap`: it feeds a GPU): the frames it holds (`frames_held`), and where its decoders
    write into pinned memory (`pinned`; by default where it feeds a GPU, as YOLO's device path on CUDA does), on
    top, the pinned memory they may fill (`pinned_budget`, in frames). The default `frame_bytes` of 1: frames
    small enough that no cap in bytes binds."""
    held = frames_held(options, decoders=decoders, overlap=overlap, frame_bytes=frame_bytes)
    if not (overlap if pinned is None else pinned):
        return held
    return held + -(-pinned_budget(options, decoders=decoders, frame_bytes=frame_bytes) // frame_bytes)


def frames_held(options: DecodeOptions, *, decoders: int, overlap: bool, frame_bytes: int = 1) -> int:
    """The decoded frames a feeder holds at once, at most, each counted once. Per decoder: the pieces queued
    ahead, the one its thread waits to queue, the one it is filling and the one taken ahead, and a batch being
    packed per frame size (at most one per decoder); then the batch being segmented, as its pieces and as one
    array. Feeding a GPU: also the batch launched before it and the batches behind (RLE and tracking, queued and
    running), and as a batch's pieces are held whole while any of their frames is, a piece more for each batch
    and each decoder's packing. Pieces and batches are capped in bytes too (a piece at its share of
    max_batch_mb), so large frames are held fewer at a time."""
    pieces = piece_options(options, decoders)
    piece = frames_within(pieces.batch, pieces.max_batch_mb << 20, frame_bytes)
    batch = frames_within(options.batch, options.max_batch_mb << 20, frame_bytes)
    decoding = decoders * ((PREFETCH + 3) * piece + batch)
    if not overlap:
        return decoding + 2 * batch
    return decoding + (BEHIND + 4) * batch + (decoders + BEHIND + 3) * piece


def pinned_budget(options: DecodeOptions, *, decoders: int, frame_bytes: int = 1) -> int:
    """Bytes of pinned memory a GPU feeder holds frames in, at most: its decoders' share (`pinned_for_frames`)
    and the device path's two staging buffers. Its copies of results to the host, a few of their bytes a frame,
    come on top."""
    batch = frames_within(options.batch, options.max_batch_mb << 20, frame_bytes)
    staging = 2 * (1 << (batch * frame_bytes - 1).bit_length())
    return pinned_for_frames(options, decoders=decoders, frame_bytes=frame_bytes) + staging


def pinned_for_frames(options: DecodeOptions, *, decoders: int, frame_bytes: int = 1) -> int:
    """Bytes of pinned memory a GPU feeder's decoders write frames into, at most: what the frames it holds take
    (kept to by `transfer.PinnedFrames`, counting torch's blocks as torch rounds and caches them, one count for the
    process's open feeders, held to the largest of their budgets; past it, ordinary memory, and those batches are
    staged)."""
    return frames_held(options, decoders=decoders, overlap=True, frame_bytes=frame_bytes) * frame_bytes
