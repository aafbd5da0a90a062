"""mask_windows makes the operands of consecutive pieces at once, at the largest of their sizes: every window is
still the bytes of its piece made alone, at its own padded size (the computation before operands were shared).
On a CPU a product of a piece's operands taken as views, or at the group's sizes, happens to give the same
bytes; the CUDA case (`gpu`: cuBLAS picks its kernels by shape and alignment) is the one that would tell."""

import numpy as np
import pytest
import torch

from pipeline.segment import device_rle, mask_windows
from pipeline.segment.mask_windows import Instances
from pipeline.segment.model_input import Geometry, input_size


def instances(seed: int, frames: int, height: int, width: int, slots: int = 12):
    """Random kept instances of `frames` frames, in slots, boxes of every size up to the frame's, and the
    arguments mask_windows takes for them."""
    rng = np.random.default_rng(seed)
    count = frames * slots
    w = np.minimum(width, np.exp(rng.uniform(np.log(2), np.log(width), count)).astype(np.int64))
    h = np.minimum(height, np.exp(rng.uniform(np.log(2), np.log(height), count)).astype(np.int64))
    x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
    corner = np.stack([x, y], 1) + rng.random((count, 2))
    xyxy = np.concatenate([corner, corner + np.stack([w, h], 1) * rng.uniform(0.5, 1, (count, 2))], 1)
    kept = Instances(xyxy=torch.tensor(xyxy, dtype=torch.float32), coeffs=torch.randn(count, 32),
                     origin=torch.tensor(np.stack([x, y], 1)), extent=torch.tensor(np.stack([w, h], 1)))
    per_frame = rng.integers(0, slots + 1, frames)
    chosen = np.concatenate([f * slots + np.arange(n) for f, n in enumerate(per_frame)]).astype(np.int64)
    geometry = Geometry.of(height, width, input_size(height, width, None), 32)
    proto = torch.randn(frames, 32, geometry.input_height // 4, geometry.input_width // 4)
    return kept, chosen, dict(frame=chosen // slots, rank=chosen % slots,
                              places=np.stack([x, y, w, h], 1)[chosen], proto=proto, geometry=geometry,
                              height=height, width=width)


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])  # on CUDA: cuBLAS picks kernels by shape and by where operands lie
@pytest.mark.parametrize("rle", [False, True])
@pytest.mark.parametrize("out,budget", [((256, 340), 1 << 17), ((256, 340), 1 << 24), ((97, 61), 1 << 12)])
def test_windows_are_the_bytes_of_each_piece_made_alone(monkeypatch, device, rle, out, budget):
    torch.manual_seed(0)
    kept, chosen, args = instances(1, 8, *out)
    kept = Instances(**{name: getattr(kept, name).to(device) for name in ("xyxy", "coeffs", "origin", "extent")})
    args["proto"] = args["proto"].to(device)
    monkeypatch.setattr(mask_windows, "WINDOW_BUDGET", budget)
    if rle:
        monkeypatch.setattr(device_rle, "DEVICES", ("cuda", "cpu"))
    elif device == "cuda":
        monkeypatch.setattr(device_rle, "DEVICES", ())  # windows, not runs
    made, calls, grouped = [], [], []
    operands = mask_windows.operands
    monkeypatch.setattr(mask_windows, "operands", lambda *a, **k: calls.append(a[-4:]) or operands(*a, **k))
    for groups in (lambda pieces: grouped.extend(GROUPS(pieces)) or grouped,  # shared, as run; each piece alone
                   lambda pieces: [[piece] for piece in pieces]):
        monkeypatch.setattr(mask_windows, "_groups", groups)
        before = len(calls)
        made.append((mask_windows.mask_windows(kept, chosen, **args).masks, len(calls) - before))
    (together, shared), (alone, pieces) = made
    assert len(together) == len(alone) == len(chosen)
    if rle:
        assert together == alone and any(string is not None for string in together)
    else:
        assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(together, alone))
        assert any(a.any() for a in together)
    assert 1 <= shared < pieces  # pieces shared their operands, in groups of several sizes
    assert any(len({(piece.h, piece.w, piece.ph, piece.pw) for piece in group}) > 1 for group in grouped)
    for group in grouped:  # padded to their largest, within the slack or twice their own
        h, w, ph, pw = (max(getattr(piece, side) for piece in group) for side in ("h", "w", "ph", "pw"))
        padded = (group[-1].end - group[0].begin) * (h * ph + w * pw + ph * pw)
        own = sum((p.end - p.begin) * (p.h * p.ph + p.w * p.pw + p.ph * p.pw) for p in group)
        assert len(group) == 1 or padded <= max(mask_windows.GROUP_SLACK, 2 * own)


GROUPS = mask_windows._groups  # as the module has it (each test may replace it)
