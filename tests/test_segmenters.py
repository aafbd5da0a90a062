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
from pipeline.masks.runner import worker_spec
from pipeline.segment import SegmenterLoadError, SegmenterSpec, load_segmenter
from pipeline.segment.yolo import YoloSegmenter, select_classes, torch_device
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
    for network in (segmenter.model.model, segmenter.on_device.model):  # loaded (warmed up): each path's own copy
        for branch in network.model[-1].cv3:
            branch[-1].bias.data.fill_(-2.0)
    segmenter.model.predictor = None  # predict() set up again, from the biased network (not the warm-up's)
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
    run = config(root, tmp_path, segmenter=spec, splits=("val",))
    yolo_with_detections(worker_spec(run))  # workers=0: the run uses this cached instance
    summary = run_masks(run, progress=False)
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


def fresh_yolo(model: str) -> YoloSegmenter:
    """A new (uncached) YOLO segmenter whose seeded random weights give detections on the sample photos; a
    yolo26 one is end-to-end, as its trained checkpoints load (built from the yaml, it has both heads and
    uses the one-to-many)."""
    torch.manual_seed(0)
    segmenter = YoloSegmenter(SegmenterSpec(backend="yolo", model=model, conf=0.01, max_det=5))
    head = segmenter.model.model.model[-1]
    for branch in [*head.cv3, *getattr(head, "one2one_cv3", ())]:
        branch[-1].bias.data.fill_(-2.0)
    segmenter.model.model.end2end = model.startswith("yolo26")
    return segmenter


def outputs(results) -> list[tuple]:
    return [(r.cls.tolist(), r.xyxy.tolist(), r.conf.tolist(), r.rle()) for r in results]


@pytest.mark.parametrize("model", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])  # yolo26: an end-to-end head
@pytest.mark.parametrize("first", ["predict", "device"])
def test_predict_and_the_device_path_each_give_what_they_give_alone(model, first):
    """Either order, on one segmenter, gives each path's results alone; the device path holds its own copy of
    the network (no parameter shared with the one predict() is handed), and switching off an end-to-end head
    for it leaves predict()'s network as it was."""
    batch = photo_batch("zidane.jpg", 320, 240, frames=2)
    alone = {"predict": outputs(fresh_yolo(model).predict(batch)),
             "device": outputs(fresh_yolo(model).on_device(batch.frames, batch.height, batch.width))}
    assert alone["device"] and any(found[0] for found in alone["predict"])
    both = fresh_yolo(model)
    end2end = getattr(both.model.model, "end2end", False)
    run = {"predict": lambda: both.predict(batch), "device": lambda: both.on_device(batch.frames, 240, 320)}
    second = "device" if first == "predict" else "predict"
    assert outputs(run[first]()) == alone[first]
    assert outputs(run[second]()) == alone[second]
    assert outputs(run[first]()) == alone[first]
    assert getattr(both.model.model, "end2end", False) == end2end
    assert end2end == (model == "yolo26n-seg.yaml")
    held = {p.data_ptr() for p in both.on_device.model.parameters()}
    assert not held & {p.data_ptr() for p in both.model.model.parameters()}
    assert not held & {p.data_ptr() for p in both.model.predictor.model.parameters()}


def test_predict_is_handed_the_explicit_torch_device(monkeypatch):
    """A torch.device, which ultralytics uses as it is; a string such as "1" makes ultralytics 8.4.8 set
    CUDA_VISIBLE_DEVICES (too late once CUDA has started) and run on GPU 0."""
    import ultralytics.engine.predictor as predictor

    asked = []
    select = predictor.select_device
    monkeypatch.setattr(predictor, "select_device", lambda device, **kw: asked.append(device) or select(device, **kw))
    segmenter = fresh_yolo("yolo11n-seg.yaml")
    segmenter.predict(photo_batch("bus.jpg", 240, 320, frames=1))
    assert asked == [torch.device("cpu")] and isinstance(asked[0], torch.device)
    assert segmenter.on_device.device == torch.device("cpu")


def test_predict_leaves_torchs_cpu_threads_as_they_were():
    """ultralytics' select_device sets torch's CPU threads for the whole process to its own count (cores - 1,
    at most 8) as predict() first sets its predictor up: once predict() had run, the device path and every bench
    figure after it (the CPU masks bench calls predict() at warm-up) ran on 1 thread of a 2-core machine, and the
    first call's network ran on that count, later ones on the caller's (on an AMD EPYC VM, other boxes)."""
    from ultralytics.utils import NUM_THREADS

    before = torch.get_num_threads()
    segmenter, ran_on = fresh_yolo("yolo11n-seg.yaml"), []
    segmenter.model.model.register_forward_pre_hook(lambda module, args: ran_on.append(torch.get_num_threads()))
    try:
        torch.set_num_threads(NUM_THREADS + 1)  # not ultralytics' count, whatever the machine
        for _ in range(2):  # the first call sets its predictor up (select_device), the second does not
            segmenter.predict(photo_batch("bus.jpg", 240, 320, frames=1))
            assert torch.get_num_threads() == NUM_THREADS + 1
    finally:
        torch.set_num_threads(before)
    assert ran_on == [NUM_THREADS + 1] * 2  # the network too, on the first call as on later ones (its last bits)


def pretend_gpus(monkeypatch, count: int) -> list[int]:
    """torch says `count` CUDA devices are there; returns the devices made current (torch.cuda.set_device)."""
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_devices_are_explicit_torch_devices_and_refused_when_absent(monkeypatch):
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(SegmenterLoadError, match="expected cpu, cuda or cuda:N"):
        torch_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SegmenterLoadError, match="no CUDA device is visible; use DEVICE=cpu"):
        torch_device("cuda:1")
    pretend_gpus(monkeypatch, 2)
    assert torch_device("cuda") == torch.device("cuda", 0)
    assert torch_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SegmenterLoadError, match="only 2 CUDA device"):
        torch_device("cuda:2")


def test_ultralytics_selects_the_torch_device_it_is_given_and_leaves_cuda_visible_devices(monkeypatch):
    """What the predict path relies on, in the ultralytics installed (≥ 8.4.8): DEVICE=cuda:1 runs on cuda:1."""
    import ultralytics.utils.torch_utils as torch_utils

    current = pretend_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch_utils, "get_gpu_info", lambda index: "pretend GPU", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert torch_utils.select_device(torch_device("cuda:1"), verbose=False) == torch.device("cuda", 1)
    assert current in ([], [1])  # made current (8.4.190) or left alone (8.4.8)
    assert torch_utils.os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_yolo_on_cuda_fp16():
    spec = SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml", device="cuda", conf=0.01, max_det=3)
    segmenter = yolo_with_detections(spec)
    results = segmenter.segment(photo_batch("zidane.jpg", 320, 240))
    assert segmenter.half and all(len(r) == 3 and r.full().shape[1:] == (240, 320) for r in results)
