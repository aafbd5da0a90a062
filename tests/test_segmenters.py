"""Both backends on real code paths: the pretrained selfie model, and YOLO-seg built from its yaml."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline import rle
from pipeline.datasets.sample import asset, pan_zoom
from pipeline.decode import FrameBatch
from pipeline.masks import MASK_SCHEMA, read_clips, run_masks
from pipeline.segment import SegmenterLoadError, SegmenterSpec, load_segmenter
from pipeline.segment.yolo import select_classes
from tests.test_masks_stage import config


def photo_batch(name: str, width: int, height: int, frames: int = 4, short_side: int | None = None) -> FrameBatch:
    photo = cv2.cvtColor(cv2.imread(str(asset(name))), cv2.COLOR_BGR2RGB)
    full = pan_zoom(photo, width, height, frames, seed=0)
    small = full
    if short_side:
        scale = short_side / min(width, height)
        size = (round(width * scale), round(height * scale))
        small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in full])
    return FrameBatch(frames=small, indices=np.arange(frames), times=np.arange(frames) / 10.0,
                      height=height, width=width)


def yolo_with_detections(spec: SegmenterSpec):
    """The cached YOLO segmenter for a yaml spec with fixed random weights (seeded) and class logits biased so
    they give max_det detections per frame; unseeded, about half of the random builds give no boxes at all."""
    torch.manual_seed(0)
    segmenter = load_segmenter(spec)
    for branch in segmenter.model.model.model[-1].cv3:
        branch[-1].bias.data.fill_(-2.0)
    segmenter.model.predictor = None  # predict() set up again, from the biased model (not the warm-up's)
    return segmenter


def coverage(results) -> float:
    return float(np.mean([r.masks.any(axis=0).mean() if len(r) else 0.0 for r in results]))


def test_selfie_finds_the_people_in_zidane(selfie_model):
    segmenter = load_segmenter(SegmenterSpec(backend="selfie", selfie_model=str(selfie_model)))
    results = segmenter.segment(photo_batch("zidane.jpg", 320, 240))
    assert coverage(results) > 0.3
    for found in results:
        assert found.masks.shape[1:] == (240, 320) and set(found.cls.tolist()) == {0}
        assert np.all(found.conf > 0.5) and np.all(found.conf <= 1)
        assert np.all(found.masks.sum(axis=(1, 2)) >= 64)  # min_area
    dark = FrameBatch(frames=np.zeros((2, 240, 320, 3), np.uint8), indices=np.arange(2), times=np.zeros(2),
                      height=240, width=320)
    assert all(len(r) == 0 for r in segmenter.segment(dark))
    assert segmenter.provenance()["weights_sha256"] != ""


@pytest.mark.parametrize("inference", ["device", "predict"])
def test_yolo_from_yaml_masks_at_source_size_with_coco_names(inference):
    spec = SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml", conf=0.01, max_det=3, inference=inference)
    segmenter = yolo_with_detections(spec)
    assert len(segmenter.names) == 80 and segmenter.names[0] == "person"
    batch = photo_batch("bus.jpg", 240, 320, frames=3, short_side=128)  # inference at 128×171, stored at 240×320
    seen = []
    original = segmenter.model.predict
    segmenter.model.predict = lambda frames, **kw: seen.append(frames) or original(frames, **kw)
    try:
        results = segmenter.segment(batch)
    finally:
        segmenter.model.predict = original
    if inference == "predict":
        np.testing.assert_array_equal(seen[0][0], batch.frames[0][..., ::-1])  # ultralytics gets BGR
    else:
        assert not seen  # predict() is not on the device path
    assert len(results) == 3
    for found in results:
        assert len(found) == 3
        masks = found.full()
        assert masks.shape == (len(found), 320, 240) and masks.dtype == bool and masks.any(axis=(1, 2)).all()
        assert np.all(found.xyxy[:, 2] <= 240 + 1e-3) and np.all(found.xyxy[:, 3] <= 320 + 1e-3)
        assert found.rle() == rle.encode(masks)
    assert segmenter.provenance()["weights_file"].startswith("none (random init")
    assert segmenter.provenance()["inference"] == inference


def test_yolo_run_writes_a_valid_table(shapes_dataset, tmp_path):
    root, truth = shapes_dataset
    spec = SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml", conf=0.01, max_det=2, object_classes=())
    yolo_with_detections(spec)  # workers=0: the run uses this cached instance
    summary = run_masks(config(root, tmp_path, segmenter=spec, splits=("val",)), progress=False)
    assert summary.by_status == {"ok": 1}
    run_dir = Path(summary.output)
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "val-00000.parquet")
    assert table.schema.remove_metadata() == MASK_SCHEMA
    frames = read_clips(run_dir).to_pylist()[0]["frames"]
    assert table.num_rows == 2 * frames
    assert set(table.column("class_name").to_pylist()) == {"person"}  # object_classes=() keeps people only
    assert table.schema.metadata[b"segmenter.classes"] == b"0:person"


def test_class_selection():
    names = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle"}
    assert select_classes(names, None) == [0, 1, 2, 3]
    assert select_classes(names, ()) == [0]
    assert select_classes(names, ("car", "3")) == [0, 2, 3]
    with pytest.raises(SegmenterLoadError, match="unknown object class 'tram'"):
        select_classes(names, ("tram",))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_yolo_on_cuda_fp16():
    spec = SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml", device="cuda", conf=0.01, max_det=3)
    segmenter = yolo_with_detections(spec)
    results = segmenter.segment(photo_batch("zidane.jpg", 320, 240))
    assert segmenter.half and all(len(r) == 3 and r.full().shape[1:] == (240, 320) for r in results)
