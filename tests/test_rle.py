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
