"""COCO run-length encoding of binary masks, through pycocotools.

pycocotools' `rleToString`, which writes every compressed string (encoding, and merging), allocates 6 characters
a run length and none for the terminator. A mask whose run lengths all take 6 characters (a run length, or a
difference of two, of 2^24 or more), or any that takes 7 (2^29), writes past that buffer. Masks of frames of
SAFE_PIXELS or more are therefore encoded here (`compress`, the same bytes), and their unions made by decoding:
decoding, areas and IoU only read strings."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import _mask as coco_c
from pycocotools import mask as coco_mask

SAFE_PIXELS = 1 << 24  # frames under it: every run length in 5 of pycocotools' characters, within its buffer


def encode(masks: np.ndarray) -> list[bytes]:
    """Encode a (K, H, W) stack (nonzero: in the mask) into K compressed COCO RLE `counts` strings."""
    if masks.ndim != 3:
        raise ValueError(f"expected a (K, H, W) mask stack, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    masks = masks.astype(bool, copy=False)  # both ways alike (pycocotools would split runs at 1 → 2)
    if masks.shape[1] * masks.shape[2] >= SAFE_PIXELS:  # each mask a window of the whole frame: `compress`
        return encode_windows(list(masks), [(0, 0)] * len(masks), masks.shape[1], masks.shape[2])
    stacked = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    return [rle["counts"] for rle in coco_mask.encode(stacked)]


ENCODE_BYTES = 1 << 25  # windows' pixels laid out for one pass of `encode_windows` at most (a frame of many
# large masks goes in parts: its buffer and the comparison's are two bytes a pixel)


def encode_window(window: np.ndarray, y: int, x: int, height: int, width: int) -> bytes:
    """`encode_windows` of one window."""
    return encode_windows([window], [(y, x)], height, width)[0]


def encode_windows(windows: Sequence[np.ndarray], origins: Sequence[tuple[int, int]], height: int, width: int
                   ) -> list[bytes]:
    """Compressed COCO RLE of (height, width) masks, each a window placed at its (y, x) and zero elsewhere: the
    same bytes as `encode` of the whole masks, from work proportional to the windows, not the frame. Runs go down
    the columns; the windows' columns, each between two zeros, lie end to end in one buffer, so one comparison
    finds every run boundary; a run that ends a column where the next one starts is one run, and a mask that
    reaches the frame's last pixel ends without a closing run of zeros (the same rules as
    `segment.device_rle.run_lengths`, in torch on a device)."""
    if not len(windows):
        return []
    shapes = np.array([window.shape for window in windows], dtype=np.int64).reshape(-1, 2)  # rows, cols
    places = np.asarray(origins, dtype=np.int64).reshape(-1, 2)  # y, x
    if (places < 0).any() or (places + shapes > [height, width]).any():
        k = int(np.flatnonzero((places < 0).any(1) | (places + shapes > [height, width]).any(1))[0])
        raise ValueError(f"window {tuple(shapes[k])} at {tuple(places[k])} does not fit a {height}x{width} frame")
    sizes = shapes[:, 1] * (shapes[:, 0] + 2)  # each column and a zero either side
    group = np.cumsum(sizes) // ENCODE_BYTES  # passes of at most ENCODE_BYTES (a larger window: one of its own)
    bounds = np.flatnonzero(np.diff(group, prepend=-1, append=group[-1] + 1))
    runs = []
    for first, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        runs += _runs(windows[first:stop], shapes[first:stop], places[first:stop], height, width)
    return from_counts(runs, height, width)


def _runs(windows: Sequence[np.ndarray], shapes: np.ndarray, places: np.ndarray, height: int, width: int
          ) -> list[np.ndarray]:
    """Each window's run lengths over the whole frame, in one pass (`encode_windows`)."""
    stride = shapes[:, 0] + 2
    sizes = shapes[:, 1] * stride
    starts = np.concatenate([[0], np.cumsum(sizes)])
    buffer = np.zeros(starts[-1] + 1, dtype=bool)
    for window, begin, size, rows in zip(windows, starts.tolist(), sizes.tolist(), stride.tolist()):
        buffer[begin:begin + size].reshape(-1, rows)[:, 1:-1] = window.T
    change = np.flatnonzero(buffer[1:] != buffer[:-1])  # a boundary after each of these
    owner = np.searchsorted(starts, change, side="right") - 1
    col, row = np.divmod(change - starts[owner], stride[owner])
    edges = (places[owner, 1] + col) * height + places[owner, 0] + row  # column-major, over the whole frame
    # a run that ends a column where the next one starts is one run
    touching = np.flatnonzero((edges[1:] == edges[:-1]) & (owner[1:] == owner[:-1]))
    keep = np.ones(len(edges), dtype=bool)
    keep[touching] = keep[touching + 1] = False
    edges, owner = edges[keep], owner[keep]
    bounds = np.searchsorted(owner, np.arange(len(windows) + 1))
    runs = []
    for k in range(len(windows)):
        counts = np.diff(np.concatenate([[0], edges[bounds[k]:bounds[k + 1]], [height * width]]))
        runs.append(counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts)  # the mask reaches the end
    return runs


def from_counts(runs: Sequence[np.ndarray], height: int, width: int) -> list[bytes]:
    """Compressed COCO RLE strings of masks given as their run lengths (column-major, starting with a run of
    zeros, as pycocotools' `encode` counts them): one pycocotools call for all of them (`compress` from
    SAFE_PIXELS on)."""
    if not len(runs):
        return []
    if int(height) * int(width) >= SAFE_PIXELS:
        return compress(np.concatenate(runs), np.fromiter(map(len, runs), dtype=np.int64, count=len(runs)))
    size = [int(height), int(width)]
    return [made["counts"] for made in coco_c.frUncompressedRLE([{"size": size, "counts": r} for r in runs], *size)]


STRING_CHUNKS = 7  # 5-bit groups for the largest difference of two run lengths under 2**32 (35 bits, signed)


def compress(counts: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """pycocotools' compressed strings of masks whose run lengths lie end to end in `counts` (lengths[k] each, at
    least one), with no buffer to overrun: its `rleToString` writes each run length (from the fourth on, less
    the one two before it) as 5-bit groups, least significant first, each the character 48 + group, plus 32
    while more follow, and stops once what is left is the last group's sign (0 or -1). A few numpy passes over
    the run lengths (slower than pycocotools under SAFE_PIXELS: docs/PERFORMANCE.md, eleventh session)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return []
    if (lengths < 1).any():
        raise ValueError("every mask has at least one run length")
    given = np.asarray(counts).astype(np.int64)
    first = np.cumsum(lengths) - lengths  # each mask's first run length
    later = np.flatnonzero(np.arange(len(given)) - np.repeat(first, lengths) > 2)
    x = given.copy()
    x[later] -= given[later - 2]
    groups = np.ones(len(x), dtype=np.int64)  # the groups each takes: x fits in 5 × groups bits, signed
    for k in range(1, STRING_CHUNKS):
        groups += (x >= 1 << (5 * k - 1)) | (x < -(1 << (5 * k - 1)))
    chars = np.empty((len(x), STRING_CHUNKS), dtype=np.uint8)
    for k in range(STRING_CHUNKS):
        chars[:, k] = ((x >> (5 * k)) & 0x1F) + 48 + 32 * (k < groups - 1)
    blob = chars[np.arange(STRING_CHUNKS) < groups[:, None]].tobytes()
    ends = np.cumsum(groups)[first + lengths - 1]
    return [blob[begin:end] for begin, end in zip([0, *ends[:-1].tolist()], ends.tolist())]


def decode(counts: bytes, height: int, width: int) -> np.ndarray:
    """Decode one compressed RLE string into an (H, W) boolean mask."""
    return coco_mask.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)


def area(counts: bytes, height: int, width: int) -> int:
    """Foreground pixel count of one RLE, without decoding it."""
    return int(coco_mask.area({"size": [int(height), int(width)], "counts": counts}))


def union_area(counts: list[bytes], height: int, width: int) -> int:
    """Foreground pixel count of the union of several RLEs, without decoding them (but from SAFE_PIXELS on,
    where each is decoded: about 25 ms a mask at 7680×4320, measured by a review on this VM)."""
    if not counts:
        return 0
    if len(counts) > 1 and int(height) * int(width) >= SAFE_PIXELS:  # merging would write a string
        return int(decode_union(counts, height, width).sum())
    rles = [{"size": [int(height), int(width)], "counts": c} for c in counts]
    return int(coco_mask.area(coco_mask.merge(rles, intersect=0) if len(rles) > 1 else rles[0]))


def decode_union(counts: list[bytes], height: int, width: int) -> np.ndarray:
    """The union of several RLEs as one (H, W) boolean mask (merged as RLE, decoded once; from SAFE_PIXELS on,
    each decoded)."""
    if not counts:
        return np.zeros((int(height), int(width)), dtype=bool)
    if len(counts) > 1 and int(height) * int(width) >= SAFE_PIXELS:  # merging would write a string
        union = decode(counts[0], height, width)
        for more in counts[1:]:
            union |= decode(more, height, width)
        return union
    rles = [{"size": [int(height), int(width)], "counts": c} for c in counts]
    return coco_mask.decode(coco_mask.merge(rles, intersect=0) if len(rles) > 1 else rles[0]).astype(bool)


def iou(first: list[bytes], second: list[bytes], height: int, width: int) -> np.ndarray:
    """(len(first), len(second)) mask IoU of two lists of RLEs of the same size, without decoding them."""
    if not first or not second:
        return np.zeros((len(first), len(second)), dtype=np.float64)
    size = [int(height), int(width)]
    a = [{"size": size, "counts": c} for c in first]
    b = [{"size": size, "counts": c} for c in second]
    return np.asarray(coco_mask.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))
