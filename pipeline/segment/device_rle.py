"""COCO RLE run lengths of instance masks, computed on the device from each instance's box window.

A window (h, w) at (x, y) in an (H, W) frame is the mask there, zero elsewhere. pycocotools runs down the
frame's columns, so inside a window column the value changes only between the window's rows or at its top and
bottom edges (the frame is zero above and below): a change at row p of window column c (p = h: just below it)
lies at the flat frame index (x + c) * H + y + p. Two cases join window columns: a window of the frame's full
height ends a column where the next begins, so a run crossing there is one run, not two changes; and a run that
reaches the frame's last pixel has no change after it. The run lengths are the gaps between consecutive changes,
from 0 to H * W: pycocotools' counts, starting with a (possibly empty) run of zeros.

`run_lengths` packs every instance's runs into one int32 tensor on the device, so the host needs one copy;
`unpack` splits that copy, `rle.from_counts` makes pycocotools' strings. `RunBatch` does the same for windows
assembled in several chunks, with one copy for all of them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import rle

log = logging.getLogger(__name__)

DEVICES = ("cuda",)  # devices whose masks leave as RLE runs made there (on a CPU, encoding windows is faster)
CHANGES_PER_COLUMN = 4  # a capacity guess: a person's mask has one run of ones (two changes) in most columns
CHANGE_FLAGS = 1 << 28  # the most change flags (K × w × (h + 1)) one `run_lengths` call of `RunBatch` makes: SAM's
# whole-frame masks at 4K take 8.3M each, so past 32 masks a batch is encoded in parts, its memory bounded
MERGE_SLACK = 1 << 24  # change flags that chunks padded to the largest may take whatever their own (16 MB of bools,
# a few times that in `run_lengths`, as mask_windows.WINDOW_BUDGET's 64 MiB): past it, at most twice their own (a
# few small windows are not padded to a large one's size). At 340x256, 2 to 4 calls a 64-frame batch (1 without
# the bound, one a padded window size, about 30, before chunks were encoded together)


def run_lengths(windows: torch.Tensor, origin: torch.Tensor, extent: torch.Tensor, height: int, width: int, *,
                capacity: int | None = None) -> torch.Tensor:
    """Run lengths of K masks given as windows, packed on the windows' device (int32).

    windows: (K, h, w) bool, each padded to (h, w) past its true size (the padding is ignored);
    origin: (K, 2) long (x, y), each window's top-left corner in the (height, width) frame;
    extent: (K, 2) long (w, h), each window's true size; origin + extent must lie inside the frame.
    Returns [m_0 … m_{K-1}, runs]: m_k, the number of value changes of instance k, then each instance's m_k + 1
    run lengths in turn. With `capacity`, the runs part has capacity + K slots whatever the masks, so that
    nothing waits for the device (torch.nonzero would, to size its result); changes past `capacity` are lost, and
    `unpack` says so (None). Without it, the runs part is exactly sum(m) + K long."""
    count, rows, cols = windows.shape
    if windows.dtype != torch.bool:
        raise ValueError(f"run_lengths takes bool windows, not {windows.dtype}")
    if height * width >= 2 ** 31:
        raise ValueError(f"a {height}x{width} frame has too many pixels for int32 run lengths (at most 2**31 - 1)")
    device = windows.device
    if count == 0:
        return torch.zeros(capacity or 0, dtype=torch.int32, device=device)
    if rows == 0 or cols == 0:  # empty windows: empty masks
        windows, rows, cols = windows.new_zeros((count, 1, 1)), 1, 1
    x, y = origin[:, 0].long(), origin[:, 1].long()
    w, h = extent[:, 0].long().clamp(0, cols), extent[:, 1].long().clamp(0, rows)
    col, row = torch.arange(cols, device=device), torch.arange(rows, device=device)
    masked = windows.transpose(1, 2) & (col[None, :] < w[:, None])[:, :, None]  # (K, w, h): down the columns
    masked &= (row[None, :] < h[:, None])[:, None, :]  # the padding cleared
    change = masked.new_empty((count, cols, rows + 1))  # row p differs from row p - 1, zero above and below
    change[..., 0], change[..., rows] = masked[..., 0], masked[..., rows - 1]
    torch.ne(masked[..., 1:], masked[..., :-1], out=change[..., 1:rows])
    below = h[:, None, None].expand(count, cols, 1)
    end = change.gather(2, below)[..., 0]  # (K, w): the change just below each window column
    joined = (h == height)[:, None] & end[:, :-1] & change[:, 1:, 0]  # one run across two full-height columns
    change[:, 1:, 0] &= ~joined
    end[:, :-1] &= ~joined
    end &= ~(((y + h) == height)[:, None] & (x[:, None] + col == width - 1))  # the frame's last pixel
    change.scatter_(2, below, end[..., None])

    flat = change.view(-1)
    if capacity is None:
        at = flat.nonzero()[:, 0]
        slots = len(at)
    else:  # one slot more than the capacity: found, it tells an overflow
        at = _nonzero_static(flat, capacity + 1)
        slots = capacity
    found = at >= 0
    at = at.clamp(min=0)
    instance, rest = at // (cols * (rows + 1)), at % (cols * (rows + 1))
    index = (x[instance] + rest // (rows + 1)) * height + y[instance] + rest % (rows + 1)  # sorted per instance
    instance = torch.where(found, instance, count)  # still sorted: misses last
    last = torch.searchsorted(instance, torch.arange(count, device=device), right=True)  # one past each's last
    changes = torch.diff(last, prepend=last.new_zeros(1))  # m_k (their sum past the capacity: an overflow)
    first = torch.ones_like(found)
    first[1:] = instance[1:] != instance[:-1]
    previous = torch.where(first, 0, index.roll(1))
    final = torch.full_like(changes, height * width)  # the run after the last change, up to the frame's end
    if slots:
        final -= torch.where(changes > 0, index[(last - 1).clamp(0, slots - 1)], 0)
    dump = slots + count  # where changes past the capacity, and final runs after them, are written
    runs = torch.zeros(dump + 1, dtype=torch.int64, device=device)
    runs.scatter_(0, torch.where(found, torch.arange(len(at), device=device) + instance, dump), index - previous)
    runs.scatter_(0, (last + torch.arange(count, device=device)).clamp(max=dump), final)
    return torch.cat([changes, runs[:dump]]).to(torch.int32)


def unpack(packed: np.ndarray, count: int) -> list[np.ndarray] | None:
    """Each instance's run lengths (uint32 views) from `run_lengths`'s result copied to the host; None when its
    capacity was too small for the changes."""
    changes = packed[:count].astype(np.int64)
    runs = packed[count:].view(np.uint32)
    total = int(changes.sum()) + count
    if total > len(runs):
        return None
    ends = np.cumsum(changes + 1).tolist()  # slices: np.split costs several times more for hundreds of masks
    return [runs[begin:end] for begin, end in zip([0, *ends[:-1]], ends)]


def capacity(widths: np.ndarray) -> int:
    """Change slots that are enough for windows of these widths unless their masks are unusually ragged."""
    return int(CHANGES_PER_COLUMN * np.sum(widths, dtype=np.int64))


@dataclass(frozen=True)
class _Chunk:
    windows: torch.Tensor
    origin: torch.Tensor
    extent: torch.Tensor
    capacity: int | None
    packed: torch.Tensor | None  # its runs (`run_lengths`), once encoded


def padding_pays(padded: int, own: int, *, most: int, slack: int) -> bool:
    """Whether work padded to a common size (`padded` elements, against `own` unpadded) is done together: within
    `most`, and within `slack` or twice its own (here and in mask_windows' groups)."""
    return padded <= most and (padded <= slack or padded <= 2 * own)


def _worth_padding(chunks: list[_Chunk]) -> bool:
    """Whether the chunks' windows are encoded together, padded to the largest's rows and columns (change flags,
    `padding_pays` within CHANGE_FLAGS and MERGE_SLACK)."""
    rows, cols = (max(chunk.windows.shape[axis] for chunk in chunks) for axis in (1, 2))
    padded = sum(len(chunk.windows) for chunk in chunks) * cols * (rows + 1)
    own = sum(len(chunk.windows) * chunk.windows.shape[2] * (chunk.windows.shape[1] + 1) for chunk in chunks)
    return padding_pays(padded, own, most=CHANGE_FLAGS, slack=MERGE_SLACK)


class RunBatch:
    """The run lengths of windows assembled in several chunks, kept on the device until `fetch` brings them all to the
    host in one copy. Chunks are encoded together, padded to the largest's size (the padding is ignored), in one
    `run_lengths` call for as many as CHANGE_FLAGS and the padding's waste allow (`_worth_padding`): a batch's
    windows come in one chunk for each padded size they were assembled at, and each call is dozens of kernels.
    Chunks with a capacity are not encoded with chunks without (those wait for the device to size their result). A
    call whose capacity was too small is redone exactly (one more copy, logged), from its windows: every chunk's
    windows (booleans, padded as encoded) are held until `fetch`, a batch's in all (184 MiB for 16 frames of 40
    instances each at 1280×720, by a review's count), past mask_windows' WINDOW_BUDGET for the work in flight."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self._queued: list[_Chunk] = []  # added, not encoded yet (packed: None)
        self._chunks: list[_Chunk] = []
        self._waited = 0  # waits on the device while chunks were encoded (no nonzero_static on it)
        self.copies = 0  # copies to the host the last `fetch` made, and waits since the one before: each a wait
        self.calls = 0  # `run_lengths` calls so far, redone ones too

    def add(self, windows: torch.Tensor, origin: torch.Tensor, extent: torch.Tensor, *,
            capacity: int | None = None) -> None:
        """Queue K windows (see `run_lengths`); their runs come back after those of the chunks added before. Past
        CHANGE_FLAGS the windows go in parts, each with its share of `capacity`."""
        count, rows, cols = windows.shape
        step = max(1, CHANGE_FLAGS // max(1, cols * (rows + 1)))
        if count > step:
            for at in range(0, count, step):
                part = slice(at, min(count, at + step))
                share = None if capacity is None else -(-capacity * (part.stop - at) // count)
                self.add(windows[part], origin[part], extent[part], capacity=share)
            return
        chunk = _Chunk(windows, origin, extent, capacity, None)
        if self._queued and ((capacity is None) != (self._queued[0].capacity is None)
                             or not _worth_padding([*self._queued, chunk])):
            self._encode()
        self._queued.append(chunk)

    def _encode(self) -> None:
        """The queued chunks encoded in one call, padded to the largest's rows and columns."""
        queued, self._queued = self._queued, []
        if len(queued) == 1:
            windows, origin, extent, capacity = queued[0].windows, queued[0].origin, queued[0].extent, \
                queued[0].capacity
        else:
            rows, cols = (max(chunk.windows.shape[axis] for chunk in queued) for axis in (1, 2))
            windows = queued[0].windows.new_zeros((sum(len(chunk.windows) for chunk in queued), rows, cols))
            at = 0
            for chunk in queued:
                count, h, w = chunk.windows.shape
                windows[at:at + count, :h, :w] = chunk.windows
                at += count
            origin = torch.cat([chunk.origin for chunk in queued])
            extent = torch.cat([chunk.extent for chunk in queued])
            capacity = None if queued[0].capacity is None else sum(chunk.capacity for chunk in queued)
        packed = run_lengths(windows, origin, extent, self.height, self.width, capacity=capacity)
        self.calls += 1
        self._chunks.append(_Chunk(windows, origin, extent, capacity, packed))
        if capacity is not None and not static_nonzero(windows.device):
            self._waited += 1  # torch.nonzero in its place waited for the device

    def fetch(self) -> list[np.ndarray]:
        """Every queued instance's run lengths, in the order added."""
        if self._queued:
            self._encode()
        if not self._chunks:
            return []
        host = torch.cat([chunk.packed for chunk in self._chunks]).cpu().numpy()
        self.copies, self._waited = 1 + self._waited, 0
        out, start = [], 0
        for chunk in self._chunks:
            count = len(chunk.windows)
            size = count + (chunk.capacity + count if chunk.capacity is not None else int(
                host[start:start + count].sum(dtype=np.int64)) + count)
            runs = unpack(host[start:start + size], count)
            if runs is None:
                log.debug("%d windows had more changes than their capacity %d; encoding them again exactly",
                          count, chunk.capacity)
                exact = run_lengths(chunk.windows, chunk.origin, chunk.extent, self.height, self.width)
                runs = unpack(exact.cpu().numpy(), count)
                self.calls += 1
                self.copies += 2  # the exact size (torch.nonzero), then the copy
            out.extend(runs)
            start += size
        self._chunks.clear()
        return out

    def strings(self) -> list[bytes | None]:
        """`fetch`, as pycocotools' compressed RLE strings (one call for all), None for an empty mask (one run of
        zeros)."""
        made = self.fetch()
        nonempty = [i for i, counts in enumerate(made) if len(counts) > 1]
        strings: list[bytes | None] = [None] * len(made)
        for i, string in zip(nonempty, rle.from_counts([made[i] for i in nonempty], self.height, self.width)):
            strings[i] = string
        return strings


def encode(windows: torch.Tensor, origin: torch.Tensor, extent: torch.Tensor, height: int, width: int, *,
           capacity: int | None = None) -> list[bytes]:
    """pycocotools' compressed RLE strings of K windows (see `run_lengths`), with one copy to the host."""
    batch = RunBatch(height, width)
    batch.add(windows, origin, extent, capacity=capacity)
    return rle.from_counts(batch.fetch(), height, width)


@functools.cache
def static_nonzero(device: torch.device) -> bool:
    """Whether this torch has nonzero_static for the device (CUDA: torch 2.6 on): without it, finding a window's
    changes waits for the device. Asked of the device itself (on `cuda`, the current one would start a context on
    another GPU). Only a missing function or kernel is the answer "no": any other error (out of memory, a device
    error) is raised, not kept as the answer for the life of the process."""
    try:
        torch.nonzero_static(torch.ones(1, dtype=torch.bool, device=device), size=1)
    except (AttributeError, NotImplementedError):
        return False
    return True


def _nonzero_static(flat: torch.Tensor, size: int) -> torch.Tensor:
    """The first `size` indices of `flat`'s nonzero entries, -1 past them, without waiting for the device where
    torch has nonzero_static for it (CUDA: torch 2.6 on); elsewhere through torch.nonzero, the same values."""
    if static_nonzero(flat.device):
        return torch.nonzero_static(flat, size=size, fill_value=-1)[:, 0]
    at = flat.nonzero()[:size, 0]
    return torch.cat([at, at.new_full((size - len(at),), -1)])
