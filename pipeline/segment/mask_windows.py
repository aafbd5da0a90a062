"""Each kept instance's mask, assembled on the device only inside its box, at the source size.

ultralytics (process_mask_native, crop_mask) upsamples the prototype-resolution logits in two bilinear steps,
which are linear and separable: they are folded into one row operator and one column operator (built once per
frame geometry by running the same interpolations on an identity), and a window is `rows @ logits @ cols.T`.
Each instance's logits are a product in its own frame's padded group, and its window is assembled at padded sizes
that depend on its own box only (`ladder`), so that no byte depends on the instances a batch shares
(tests/test_fixed_batches.py). The windows cross to the host in one copy: as booleans, or on a device_rle.DEVICES
device as RLE runs made there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.segment import device_rle, transfer
from pipeline.segment.model_input import Geometry

WINDOW_BUDGET = 1 << 24  # float elements of mask windows assembled at once (64 MiB)
GROUP_SLACK = 1 << 16  # operand floats a group of pieces may pad to whatever their own (256 KiB): past it, at most
# twice their own (small windows are not padded to a large one's size)
OPERATOR_WAITS = 4  # a geometry's maps made (`mask_operators`, once): each map's reach and starts read on the host
SMALLEST_WINDOW = 8  # window sides are padded up the ladder 8, 12, 16, 24, 32, 48, … (at most 1.5× each way)


@dataclass(frozen=True, kw_only=True)
class Instances:
    """A batch's instances after NMS, on the device, in slots: each frame has min(room, max_det) slots, its kept
    instances first by falling score, the rest unused; flattened (K = frames × slots), boxes in output pixels."""

    xyxy: torch.Tensor  # (K, 4) float32
    coeffs: torch.Tensor  # (K, 32) mask coefficients
    origin: torch.Tensor  # (K, 2) int64 x, y: the top-left pixel of the mask window (inside the frame)
    extent: torch.Tensor  # (K, 2) int64 w, h: the window's size

    def __add__(self, other: "Instances") -> "Instances":
        return Instances(**{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)])
                            for f in dataclasses.fields(self)})


def ladder(sides: np.ndarray) -> np.ndarray:
    """Sides rounded up to 8, 12, 16, 24, 32, 48, 64, …: a half-octave ladder, at most 1.5× each way."""
    sides = np.maximum(np.asarray(sides, dtype=np.int64), SMALLEST_WINDOW)
    step = 2 ** (np.floor(np.log2(sides - 1)).astype(np.int64) - 1)
    return -(-sides // step) * step


@dataclass(frozen=True)
class Windows:
    """A batch's instances' masks as they reach the host, by instance: (h_k, w_k) bool windows, or RLE strings
    (None for an empty mask); and the times the host waited for the device to get them."""

    masks: list[np.ndarray] | list[bytes | None]
    host_waits: int


def mask_windows(kept: Instances, chosen: np.ndarray, *, frame: np.ndarray, rank: np.ndarray, places: np.ndarray,
                 proto: torch.Tensor, geometry: Geometry, height: int, width: int) -> Windows:
    """The masks of the `chosen` instances of `kept` (each in `frame` at `rank` among its kept ones, its window at
    `places`: x, y, w, h), as (h_k, w_k) bool windows, or on a device_rle.DEVICES device as RLE strings. Each is
    assembled at padded sizes that depend on its own extent only (`ladder`), together with the others of the same
    padded size, as many as WINDOW_BUDGET allows (a piece); the operands of consecutive pieces are made at once,
    at the largest of their sizes (`operands`: each piece reads exact copies of its own values; `_groups`), so
    that a batch launches a few kernels a piece, not dozens. At most a group's operands (WINDOW_BUDGET floats,
    twice that while they are made) and one piece's work (WINDOW_BUDGET) are held at once, besides the windows
    made so far: the batch's booleans, kept until they cross (as windows; on a device_rle.DEVICES device, until
    their runs do: `RunBatch`). All cross to the host in one copy (the windows, or their run lengths)."""
    misses = mask_operators.cache_info().misses
    rows, cols = mask_operators(tuple(proto.shape[2:]), geometry.height, geometry.width, height, width,
                                proto.device)
    setup = OPERATOR_WAITS * (mask_operators.cache_info().misses - misses)  # waits making them (a new geometry)
    padded = np.stack([ladder(places[:, 3]), ladder(places[:, 2])], axis=1)  # h, w
    order = np.lexsort((padded[:, 1], padded[:, 0]))
    sizes, starts = np.unique(padded[order], axis=0, return_index=True)
    frame_rows, plan = logit_rows(frame, rank, len(proto))
    index = transfer.index_to_device(np.concatenate([chosen, frame_rows, order, plan.frames]), proto.device)
    instance, frame_rows, on_device, frames = index.split([len(chosen), len(chosen), len(order), len(plan.frames)])
    logits = instance_logits(kept.coeffs[instance], frame_rows, proto, frames, plan)
    box, origin, extent = kept.xyxy[instance], kept.origin[instance], kept.extent[instance]
    chunks, assembled = [], []
    runs = device_rle.RunBatch(height, width) if proto.device.type in device_rle.DEVICES else None
    for group in _groups(_pieces(sizes, starts, len(order), rows, cols)):
        begin, end = group[0].begin, group[-1].end
        grouped = on_device[begin:end]
        made = operands(logits, box[grouped], origin[grouped], rows, cols, *_largest(group), members=grouped)
        at, size = origin[grouped], extent[grouped]
        for piece in group:
            part, these = slice(piece.begin - begin, piece.end - begin), order[piece.begin:piece.end]
            window = made.window(part, piece.h, piece.w, piece.ph, piece.pw)
            if runs is not None:
                runs.add(window, at[part], size[part], capacity=device_rle.capacity(places[these, 2]))
            else:
                assembled.append(window.flatten())
            chunks.append((these, piece.h, piece.w))
        del made  # before the next group's operands
    if runs is not None:
        added = np.concatenate([members for members, _, _ in chunks])  # the order the runs were added in
        strings: list[bytes | None] = [None] * len(added)
        for member, string in zip(added.tolist(), runs.strings()):
            strings[member] = string
        return Windows(strings, setup + runs.copies)
    flat = torch.cat(assembled).cpu().numpy()
    windows: list[np.ndarray] = [np.zeros((0, 0), dtype=bool)] * len(order)
    offset = 0
    for members, h, w in chunks:
        block = flat[offset:offset + len(members) * h * w].reshape(len(members), h, w)
        offset += block.size
        for k, window in zip(members.tolist(), block):
            windows[k] = window[:places[k, 3], :places[k, 2]]
    return Windows(windows, setup + 1)


@dataclass(frozen=True)
class Axis:
    """The linear map along one axis from prototype resolution to frame pixels. Each output reads at most `taps`
    neighbouring inputs, from `start` on, so a window of outputs needs only a short span of inputs."""

    dense: torch.Tensor  # (out, 2 size + taps): the map, then zeros, for reads past its last input
    start: torch.Tensor  # (out,) int64: the first input each output reads
    taps: int
    first: np.ndarray  # `start` on the host
    spans: dict = dataclasses.field(default_factory=dict, compare=False)  # span(n), as asked for

    @classmethod
    def of(cls, dense: torch.Tensor) -> "Axis":
        nonzero = dense != 0
        size = dense.shape[1]
        first = torch.where(nonzero.any(1), nonzero.float().argmax(1), 0)
        last = size - 1 - nonzero.flip(1).float().argmax(1)
        taps = int((last - first).max()) + 1
        # any span (`span`) starts before `size` and is at most size - 1 + taps long: it ends inside the zeros
        return cls(F.pad(dense, (0, size + taps)), first, taps, first.cpu().numpy())

    def span(self, n: int) -> int:
        """Inputs that any run of n consecutive outputs reads (wherever it starts)."""
        if n not in self.spans:
            n_in = min(n, len(self.first))
            self.spans[n] = int((self.first[n_in - 1:] - self.first[:len(self.first) - n_in + 1]).max()) + self.taps
        return self.spans[n]

    def sub(self, outputs: torch.Tensor, begin: torch.Tensor, length: int) -> torch.Tensor:
        """(k, n, length): for each k, the map's rows `outputs[k]` over the inputs begin[k] … begin[k] + length
        (0 past the last input): whole rows of `length` entries, picked from a view of every such row (a copy:
        callers may write into it)."""
        return self.dense.unfold(1, length, 1)[outputs, begin[:, None]]


@functools.lru_cache(maxsize=32)
def mask_operators(proto_shape: tuple[int, int], height: int, width: int, out_height: int, out_width: int,
                   device: torch.device) -> tuple[Axis, Axis]:
    """The maps along rows and along columns that take prototype-resolution logits to output pixels
    (process_mask_native: upsample ×f, crop the letterbox padding of the (height, width) frames the model saw,
    resize, here straight to the output size, the source's display size)."""
    mh, mw = proto_shape
    gain = min(4 * mh / height, 4 * mw / width)
    pad = (4 * mh - max(round(height * gain), 1)) | (4 * mw - max(round(width * gain), 1))
    f = 4 // math.gcd(4, pad | pad // 2)
    im_h, im_w = mh * f, mw * f
    gain = min(im_h / height, im_w / width)
    pad_w, pad_h = (im_w - max(round(width * gain), 1)) / 2, (im_h - max(round(height * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(height * gain), 1), left + max(round(width * gain), 1)
    return (Axis.of(_axis_operator(mh, f, top, bottom, out_height, device)),
            Axis.of(_axis_operator(mw, f, left, right, out_width, device)))


def _axis_operator(size: int, f: int, start: int, stop: int, out: int, device: torch.device) -> torch.Tensor:
    """The same interpolations along one axis, applied to each unit vector: column j is the response to e_j."""
    unit = torch.eye(size, device=device, dtype=torch.float32)[:, None, :, None]  # (size, 1, size, 1)
    if f > 1:
        unit = F.interpolate(unit, scale_factor=(f, 1), mode="bilinear")
    unit = F.interpolate(unit[:, :, start:stop], size=(out, 1), mode="bilinear")
    return unit[:, 0, :, 0].T.contiguous()  # (out, size)


@dataclass(frozen=True, kw_only=True)
class LogitPlan:
    """How a batch's instances' mask logits are made: each frame's instances as the rows of one matrix, padded to
    `ladder` of that frame's own count, so that no instance's arithmetic depends on another frame's; frames of
    the same padded count in one batched product."""

    frames: np.ndarray  # the frames that have instances, by padded count
    counts: list[tuple[int, int]]  # (frames, padded rows each), for consecutive runs of `frames`


def logit_rows(frame: np.ndarray, rank: np.ndarray, frames: int) -> tuple[np.ndarray, LogitPlan]:
    """Each instance's row among the padded frames' rows (`instance_logits`), and the plan."""
    counts = np.bincount(frame, minlength=frames)
    present = np.flatnonzero(counts)
    padded = ladder(counts[present])
    by_size = np.lexsort((present, padded))
    present, padded = present[by_size], padded[by_size]
    first = np.zeros(frames, dtype=np.int64)
    first[present] = np.cumsum(padded) - padded
    sizes, runs = np.unique(padded, return_counts=True)
    return first[frame] + rank, LogitPlan(frames=present, counts=list(zip(runs.tolist(), sizes.tolist())))


def instance_logits(coeffs: torch.Tensor, rows: torch.Tensor, proto: torch.Tensor, frames: torch.Tensor,
                    plan: LogitPlan) -> torch.Tensor:
    """(K, mh, mw) prototype-resolution mask logits of instances with these coefficients, at these rows of
    `logit_rows`: their frame's prototypes times the coefficients, one product per padded size."""
    channels, mh, mw = proto.shape[1:]
    total = sum(count * size for count, size in plan.counts)
    padded = coeffs.new_zeros((total, channels))
    padded[rows] = coeffs
    out, row, at = [], 0, 0
    for count, size in plan.counts:
        these = proto[frames[at:at + count]].view(count, channels, mh * mw)
        out.append((padded[row:row + count * size].view(count, size, channels) @ these).view(-1, mh, mw))
        row, at = row + count * size, at + count
    return torch.cat(out)[rows]


@dataclass(frozen=True)
class _Piece:
    """Instances begin … end (in padded-size order) of one padded size (h, w), whose windows read ph × pw
    prototype logits: one product, within WINDOW_BUDGET."""

    h: int
    w: int
    ph: int
    pw: int
    begin: int
    end: int


def _pieces(sizes: np.ndarray, starts: np.ndarray, count: int, rows: "Axis", cols: "Axis") -> list[_Piece]:
    """Each padded size's instances, in as many pieces as WINDOW_BUDGET asks for."""
    pieces = []
    for (h, w), begin, end in zip(sizes.tolist(), starts.tolist(), [*starts[1:].tolist(), count]):
        ph, pw = rows.span(h), cols.span(w)
        per = h * w + h * ph + h * pw + w * pw + 2 * ph * pw  # floats one window takes
        step = max(1, WINDOW_BUDGET // per)
        pieces += [_Piece(h, w, ph, pw, at, min(end, at + step)) for at in range(begin, end, step)]
    return pieces


def _groups(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Consecutive pieces whose operands, at the largest of their sizes, fit WINDOW_BUDGET together, and GROUP_SLACK
    or twice their own operands (a piece alone past it: a group of its own): each group's operands are made at
    once (`operands`)."""
    groups: list[list[_Piece]] = []
    for piece in pieces:
        group = [*groups[-1], piece] if groups else [piece]
        h, w, ph, pw = _largest(group)
        padded = (group[-1].end - group[0].begin) * (h * ph + w * pw + ph * pw)
        own = sum((p.end - p.begin) * (p.h * p.ph + p.w * p.pw + p.ph * p.pw) for p in group)
        if groups and device_rle.padding_pays(padded, own, most=WINDOW_BUDGET, slack=GROUP_SLACK):
            groups[-1] = group
        else:
            groups.append([piece])
    return groups


def _largest(group: list[_Piece]) -> tuple[int, int, int, int]:
    """The sizes a group's operands are made at: its pieces' largest h, w, ph and pw."""
    return tuple(max(getattr(piece, side) for piece in group) for side in ("h", "w", "ph", "pw"))


@dataclass(frozen=True)
class Operands:
    """Instances' operands of their windows' product (`operands`), at sizes up to (h, w) and (ph, pw): a window of
    a smaller padded size reads their leading rows and columns, the same values as if made at its own size."""

    down: torch.Tensor  # (k, h, ph): the map down each window's rows, cut to its box
    span: torch.Tensor  # (k, ph, pw): the prototype logits each window reads
    across: torch.Tensor  # (k, w, pw): the map across its columns, cut to its box

    def window(self, part: slice, h: int, w: int, ph: int, pw: int) -> torch.Tensor:
        """(k, h, w) bool windows of the instances in `part`: the product at exactly their padded size (each
        operand its leading block, `_fresh`), so that its bytes depend on that size only."""
        down, span, across = (_fresh(self.down[part, :h, :ph], self.down), _fresh(self.span[part, :ph, :pw], self.span),
                              _fresh(self.across[part, :w, :pw], self.across))
        return (down @ span @ across.transpose(1, 2)) > 0  # (k, h, w)


def _fresh(block: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """A block of `whole` as the product's operand: `whole` itself if it is all of it, else a contiguous copy in
    memory of its own (a BLAS may pick its kernel, and so its order of sums, by where an operand starts)."""
    return whole if block.shape == whole.shape else block.clone(memory_format=torch.contiguous_format)


def operands(logits: torch.Tensor, box: torch.Tensor, origin: torch.Tensor, rows: Axis, cols: Axis,
             h: int, w: int, ph: int, pw: int, *, members: torch.Tensor | None = None) -> Operands:
    """The operands of (k, h, w) windows at `origin`: the logits' prototype span (the k instances' logits, or
    those at `members`), and the maps to the window's pixels cut to the box. Each entry is an exact copy of a
    map's or a logit's value, or 0: a window of a smaller padded size reads the same values from their leading
    rows and columns."""
    device = logits.device
    members = torch.arange(len(box), device=device) if members is None else members
    ys = (origin[:, 1, None] + torch.arange(h, device=device)).clamp(max=len(rows.start) - 1)  # (k, h)
    xs = (origin[:, 0, None] + torch.arange(w, device=device)).clamp(max=len(cols.start) - 1)  # (k, w)
    top, left = rows.start[ys[:, 0]], cols.start[xs[:, 0]]
    mh, mw = logits.shape[1:]
    proto_rows = (top[:, None] + torch.arange(ph, device=device)).clamp(max=mh - 1)
    proto_cols = (left[:, None] + torch.arange(pw, device=device)).clamp(max=mw - 1)
    span = logits[members[:, None, None], proto_rows[:, :, None], proto_cols[:, None, :]]  # (k, ph, pw)
    inside_y = (ys >= box[:, 1, None]) & (ys < box[:, 3, None])
    inside_x = (xs >= box[:, 0, None]) & (xs < box[:, 2, None])
    # the cut to the box as zero rows of the maps: outside it the product is 0 (never > 0), inside it is the same
    # product as uncut (an output element's sum never reads another row of the maps)
    down = rows.sub(ys, top, ph).mul_(inside_y[:, :, None])  # (copies: written in place)
    across = cols.sub(xs, left, pw).mul_(inside_x[:, :, None])
    return Operands(down=down, span=span, across=across)
