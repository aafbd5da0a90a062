import numpy as np
import pytest

from pipeline import rle


def test_round_trip_random_masks_is_exact():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 53)) > 0.6  # odd sizes catch row/column-order mistakes
    masks[1] = False
    masks[2] = True
    counts = rle.encode(masks)
    assert len(counts) == 4 and all(isinstance(c, bytes) for c in counts)
    for mask, c in zip(masks, counts):
        np.testing.assert_array_equal(rle.decode(c, 37, 53), mask)
        assert rle.area(c, 37, 53) == mask.sum()


def test_rle_is_column_major_coco_and_compact():
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:60, 20:120] = True
    (counts,) = rle.encode(mask[None])
    assert len(counts) < 250  # two runs per column, about a byte each: far below 2,500 bytes of packed bits
    from pycocotools import mask as coco

    assert coco.toBbox({"size": [100, 200], "counts": counts}).tolist() == [20, 10, 100, 50]


def test_empty_stack_and_bad_shape():
    assert rle.encode(np.zeros((0, 8, 8), dtype=bool)) == []
    with pytest.raises(ValueError):
        rle.encode(np.zeros((8, 8), dtype=bool))


def test_from_counts_is_pycocotools_bytes():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 7, 9)) > 0.5
    masks[0] = True  # starts with an empty run of zeros
    flat = masks.transpose(0, 2, 1).reshape(3, -1).astype(np.int8)
    runs = [np.diff(np.concatenate([[0], np.flatnonzero(np.diff(np.concatenate([[0], f]))), [f.size]])) for f in flat]
    assert rle.from_counts(runs, 7, 9) == rle.encode(masks)
    assert rle.from_counts([], 7, 9) == []


def test_compress_is_pycocotools_bytes():
    """Run lengths of every size up to 2^24 (where pycocotools' own writer is safe), zeros among them."""
    from pycocotools import _mask as coco_c

    rng = np.random.default_rng(3)
    for _ in range(300):
        runs = [rng.integers(0, [2, 17, 40, 1 << 12, 1 << 20, 1 << 24][int(rng.integers(0, 6))],
                             int(rng.integers(1, 12))).astype(np.uint32) for _ in range(int(rng.integers(1, 8)))]
        made = [m["counts"] for m in coco_c.frUncompressedRLE([{"size": [7, 9], "counts": r} for r in runs], 7, 9)]
        assert rle.compress(np.concatenate(runs), [len(r) for r in runs]) == made
    for _ in range(300):  # the whole uint32 range, padded with zero run lengths (one character each) so that
        # pycocotools' own writer stays within its buffer of 6 characters a run length
        runs = [rng.permutation(np.concatenate([rng.integers(0, 1 << 32, int(rng.integers(1, 4)), dtype=np.uint64),
                                                np.zeros(12, np.uint64)])).astype(np.uint32)
                for _ in range(int(rng.integers(1, 5)))]
        made = [m["counts"] for m in coco_c.frUncompressedRLE([{"size": [7, 9], "counts": r} for r in runs], 7, 9)]
        assert rle.compress(np.concatenate(runs), [len(r) for r in runs]) == made
    with pytest.raises(ValueError, match="at least one"):
        rle.compress(np.zeros(2, np.uint32), [2, 0])


def test_frames_of_2_24_pixels_or_more_never_reach_pycocotools_string_writer(monkeypatch):
    """Its writer overruns its buffer for run lengths of 2^24 or more: such frames' strings are made here, and
    their unions by decoding (the right half of a 4096 × 8192 frame: two run lengths of 2^24, 6 characters each)."""
    from pycocotools import _mask as coco_c
    from pycocotools import mask as coco_mask

    height, width = 4096, 8192
    half = np.zeros((height, width), dtype=bool)
    half[:, width // 2:] = True
    corner = np.zeros((height, width), dtype=bool)
    corner[:10, :20] = True
    for name, module in (("frUncompressedRLE", coco_c), ("encode", coco_mask), ("merge", coco_mask)):
        monkeypatch.setattr(module, name, lambda *a, name=name, **k: pytest.fail(f"pycocotools' {name} called"))
    strings = rle.encode(np.stack([half, corner]))
    assert strings[0] == b"PPPP`0" * 2  # 2^24 twice, six characters each: groups 0, 0, 0, 0 and 16 with more to
    # come (48 + 32 + group), then 0 (48)
    assert all(np.array_equal(rle.decode(s, height, width), m) for s, m in zip(strings, (half, corner)))
    assert rle.from_counts([np.array([1 << 24, 1 << 24], np.uint32)], height, width) == strings[:1]
    assert rle.encode_windows([corner[:10, :20]], [(0, 0)], height, width) == strings[1:]
    assert rle.union_area(strings, height, width) == (1 << 24) + 200
    assert np.array_equal(rle.decode_union(strings, height, width), half | corner)
    empty = rle.encode(np.zeros((1, 4096, 4096), dtype=bool))  # the smallest that overruns it: one run of 2^24
    assert empty == [b"PPPP`0"] and rle.area(empty[0], 4096, 4096) == 0


def test_a_stack_of_values_is_encoded_as_nonzero_both_ways():
    values = np.array([[[0, 1], [2, 1]]], dtype=np.uint8)
    assert rle.encode(values) == rle.encode(values.astype(bool))
