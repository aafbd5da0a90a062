"""The batched device path of YOLO-seg against ultralytics' predict(), and window RLE against pycocotools.

Models are built from the packaged yamls with seeded random weights, made lively (batch norms calibrated on
the frames, so that scores, boxes and masks depend on the image) as the benchmark does. predict() runs on the
same segmenter object, so both paths see the very same (fused) network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import rle
from pipeline.bench import lively
from pipeline.datasets.sample import asset, pan_zoom
from pipeline.decode import FrameBatch
from pipeline.segment import SegmenterSpec
from pipeline.segment.base import FrameMasks
from pipeline.segment.mask_windows import ladder, mask_operators, operands
from pipeline.segment.model_input import Geometry, input_size
from pipeline.segment.yolo import YoloSegmenter

FRAMES = 4


def clip(width: int, height: int, seed: int) -> FrameBatch:
    import cv2

    photo = cv2.cvtColor(cv2.imread(str(asset(("bus.jpg", "zidane.jpg")[seed % 2]))), cv2.COLOR_BGR2RGB)
    frames = np.stack(list(pan_zoom(photo, width, height, FRAMES, seed=seed)))
    return FrameBatch(frames=frames, indices=np.arange(FRAMES), times=np.arange(FRAMES) / 25, height=height,
                      width=width)


def segmenter(model: str, batch: FrameBatch, seed: int, **spec) -> YoloSegmenter:
    torch.manual_seed(seed)
    found = YoloSegmenter(SegmenterSpec(model=model, **spec))
    lively(found.model.model, batch.frames)
    return found


def assert_same(reference: list[FrameMasks], device: list[FrameMasks]) -> int:
    """The issue's tolerances: same classes, boxes within 1 px, scores within 1e-3, mask IoU ≥ 0.98."""
    assert len(reference) == len(device)
    for ref, dev in zip(reference, device):
        assert len(ref) == len(dev)
        np.testing.assert_array_equal(ref.cls, dev.cls)
        np.testing.assert_allclose(dev.xyxy, ref.xyxy, atol=1.0, rtol=0)
        np.testing.assert_allclose(dev.conf, ref.conf, atol=1e-3, rtol=0)
        for a, b in zip(ref.full(), dev.full()):
            assert (a & b).sum() / max(1, (a | b).sum()) >= 0.98
    return sum(len(ref) for ref in reference)


@pytest.mark.parametrize("model", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_path_matches_predict(model, seed):
    """Frames at a multiple of the stride: the model input is the frame itself, padded by nothing."""
    batch = clip(352, 288, seed)
    yolo = segmenter(model, batch, seed, conf=0.3, max_det=30)
    device = yolo.segment(batch)
    assert all(found.masks is None and found.windows for found in device if len(found))  # windows, not frames
    assert assert_same(yolo.predict(batch), device) >= FRAMES * 10


@pytest.mark.parametrize("seed", [0, 1])
def test_device_path_keeps_the_classes_predict_keeps(seed):
    """Some classes kept: an anchor is a candidate only if its best class is one of them (a kept class in second
    place does not make it one), as predict()'s `classes` has it."""
    batch = clip(352, 288, seed)
    yolo = segmenter("yolo11n-seg.yaml", batch, seed, conf=0.05, max_det=30, object_classes=("car", "bus", "tie"))
    device = yolo.segment(batch)
    assert set(np.concatenate([found.cls for found in device])) <= {0, 2, 5, 27}
    assert assert_same(yolo.predict(batch), device) >= FRAMES * 3


@pytest.mark.parametrize("seed", [0, 1])
def test_device_path_matches_predict_through_the_letterbox(monkeypatch, seed):
    """340×256 frames: resized to 352×265 and padded to 288 rows, masks upsampled ×4, the padding cut, resized
    back. With OpenCV's resize in place of the device's (the two differ by rounding, tested below), the
    geometry of boxes and masks must match predict()'s exactly."""
    from ultralytics.data.augment import LetterBox

    import pipeline.segment.yolo_device as yolo_device

    def opencv_letterbox(frames, geometry, dtype):
        box = LetterBox((geometry.input_height, geometry.input_width), auto=False, stride=32)
        padded = np.stack([box(image=frame) for frame in frames.cpu().numpy()])
        return torch.from_numpy(padded).permute(0, 3, 1, 2).float().div(255).to(dtype)

    monkeypatch.setattr(yolo_device, "letterbox", opencv_letterbox)
    batch = clip(340, 256, seed)
    yolo = segmenter("yolo11n-seg.yaml", batch, seed, conf=0.3, max_det=30)
    assert assert_same(yolo.predict(batch), yolo.segment(batch)) >= FRAMES * 10


@pytest.mark.parametrize("display, frames", [((1920, 1080), (455, 256)), ((160, 263), (128, 210)),
                                             ((320, 240), (171, 128))])
def test_masks_at_the_display_size_when_inference_frames_are_smaller(display, frames):
    """`--short-side`: the model sees smaller frames; boxes and masks come back at the source's display size,
    boxes inside it even where float rounding of the scale would push an edge box past it."""
    small = clip(*frames, 3)
    batch = FrameBatch(frames=small.frames, indices=small.indices, times=small.times, height=display[1],
                       width=display[0])
    yolo = segmenter("yolo11n-seg.yaml", batch, 3, conf=0.05, max_det=50)
    found = yolo.segment(batch)
    assert sum(len(f) for f in found) >= FRAMES * 20
    touching = 0
    for f in found:
        assert np.all(f.xyxy[:, 2] <= display[0]) and np.all(f.xyxy[:, 3] <= display[1])
        touching += int(np.sum(np.ceil(f.xyxy[:, 2]) == display[0]) + np.sum(np.ceil(f.xyxy[:, 3]) == display[1]))
        masks = f.full()
        assert masks.shape == (len(f), display[1], display[0]) and masks.any(axis=(1, 2)).all()
        assert f.rle() == rle.encode(masks)
        for mask, box in zip(masks, f.xyxy):  # nothing outside the box (crop_mask)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert cols[0] >= np.ceil(box[0]) and cols[-1] < box[2] and rows[0] >= np.ceil(box[1]) and rows[-1] < box[3]
    assert touching  # the case that once crashed is exercised


@pytest.mark.parametrize("size", [(340, 256), (1280, 720), (171, 128)])
def test_device_letterbox_is_opencvs_within_rounding(size):
    from ultralytics.data.augment import LetterBox

    from pipeline.segment.model_input import letterbox

    width, height = size
    frames = clip(width, height, 0).frames
    imgsz = input_size(height, width, None)
    geometry = Geometry.of(height, width, imgsz, 32)
    ours = (letterbox(torch.from_numpy(frames), geometry, torch.float32) * 255).round().byte()
    theirs = np.stack([LetterBox(imgsz, auto=True, stride=32)(image=f)
                       for f in frames])
    assert ours.permute(0, 2, 3, 1).shape == theirs.shape
    difference = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - theirs)
    assert difference.max() <= 1 and difference.mean() < 0.2
    half = letterbox(torch.from_numpy(frames), geometry, torch.float16)  # a half model's (CUDA): the same steps
    assert torch.equal(half, letterbox(torch.from_numpy(frames), geometry, torch.float32).half())


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs a CUDA device")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("size", [(340, 256), (171, 128), (1280, 720), (500, 500), (320, 240), (256, 340), (240, 320)])
def test_letterbox_keeps_the_values_and_layout_the_masks_were_made_with(size, device):
    """Enlarged frames are resized planar on a CPU (faster), and the input is made in fewer passes than step by
    step: the model's input must still be the values and the layout of resizing, padding and dividing in turn,
    since the network's kernels, and so the masks' bytes, follow the layout (a planar input ran 25-30% slower
    here, and its predictions differed); on CUDA, whose division by 255 is a multiplication, too."""
    import torch.nn.functional as F

    from pipeline.segment.model_input import PAD_VALUE, letterbox

    width, height = size
    geometry = Geometry.of(height, width, input_size(height, width, None), 32)
    pixels = np.random.default_rng(width).integers(0, 256, (3, height + 3, width + 2, 4), dtype=np.uint8)
    dense = torch.from_numpy(np.ascontiguousarray(pixels[:, :height, :width, :3])).to(device)
    planar = dense.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # NHWC over NCHW memory
    sliced = torch.from_numpy(pixels).to(device)[:, 3:, 1:-1, :3]  # a crop of RGBA frames: not dense
    threads = torch.get_num_threads()
    cases = [(n, frames) for n in (1, 2) for frames in (dense, dense[:1], planar, sliced, dense[::2])]
    for n, frames in cases:  # the planar resize is taken on 2 threads (where it is faster), not on 1; torch's
        torch.set_num_threads(n)  # interleaved resize itself rounds differently on 1 thread than on several
        try:
            ours = letterbox(frames, geometry, torch.float32)
            half = letterbox(frames, geometry, torch.float16)
            x = frames.permute(0, 3, 1, 2).float()  # as it was made before: in the frames' layout throughout
            if (geometry.new_height, geometry.new_width) != (height, width):
                x = F.interpolate(x, size=(geometry.new_height, geometry.new_width), mode="bilinear",
                                  align_corners=False).round_().clamp_(0, 255)
            x = F.pad(x, (geometry.left, geometry.input_width - geometry.new_width - geometry.left, geometry.top,
                          geometry.input_height - geometry.new_height - geometry.top), value=PAD_VALUE).div_(255)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(ours, x) and ours.stride() == x.stride()
        assert torch.equal(half, x.half()) and half.stride() == x.stride()
        assert ours.is_contiguous(memory_format=torch.channels_last) == (frames is not planar)


def test_a_half_models_scores_meet_conf_in_half_precision_as_predict_compares_them():
    """predict() on a half model (CUDA) compares its half scores with `conf` rounded to half: a score equal to
    half(0.7) = 0.7002 is not over it. The device path compares scores made fp32 with `conf` in the model's
    precision, so that it keeps what predict() keeps."""
    import copy

    from pipeline.segment.yolo_device import DeviceYolo

    network = YoloSegmenter(SegmenterSpec(model="yolo11n-seg.yaml")).on_device.model
    # half(0.7), the half below it, one over; 0.70068359375 is half(c) for c = 0.700439454125 rounded once, while
    # torch rounds c through float32 to 0.7001953125: a score of it is over c in half precision
    scores = [0.7001953125, 0.69970703125, 0.75, 0.70068359375]
    preds = torch.zeros((1, len(scores), 4 + 80 + 32))
    preds[0, :, 4] = torch.tensor(scores)
    for conf, in_fp32 in ((0.7, [True, False, True, True]), (0.700439454125, [False, False, True, True])):
        in_half = (torch.tensor(scores, dtype=torch.float16) > conf).tolist()  # as predict() compares on CUDA
        rounded_once = (torch.tensor(scores) > float(np.float16(conf))).tolist()
        assert in_half != (in_fp32 if conf == 0.7 else rounded_once)  # what each case tells apart
        for half, expected in ((True, in_half), (False, in_fp32)):
            yolo = DeviceYolo(copy.deepcopy(network), device="cpu", half=half, conf=conf, iou=0.7, max_det=100,
                              classes=list(range(80)), imgsz=None)
            _, usable = yolo._scores(preds)
            assert usable[0].tolist() == expected, (conf, half)


def test_window_rle_is_pycocotools_bytes():
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = rng.integers(1, 40, 2)
        h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        window = rng.random((h, w)) < rng.random()
        whole = np.zeros((1, height, width), dtype=bool)
        whole[0, y:y + h, x:x + w] = window
        assert rle.encode_window(window, y, x, height, width) == rle.encode(whole)[0]
    full = np.ones((3, 5), dtype=bool)  # touching every edge, and the frame's last pixel
    assert rle.encode_window(full, 0, 0, 3, 5) == rle.encode(full[None])[0]
    with pytest.raises(ValueError, match="does not fit"):
        rle.encode_window(full, 1, 0, 3, 5)


@pytest.mark.parametrize("budget", [rle.ENCODE_BYTES, 60])
def test_many_windows_in_one_call_are_each_ones_pycocotools_bytes(budget, monkeypatch):
    """A frame's windows encoded together: each gives the bytes of its own whole mask, whatever its neighbours
    (windows ending where the next begins, empty ones, full-height ones whose runs join across columns), in one
    pass or, over a budget, in several."""
    monkeypatch.setattr(rle, "ENCODE_BYTES", budget)
    rng = np.random.default_rng(1)
    height, width = 23, 31
    for _ in range(50):
        count = int(rng.integers(1, 12))
        shapes = rng.integers(1, [height + 1, width + 1], size=(count, 2))
        shapes[rng.random(count) < 0.3, 0] = height  # whole columns
        origins = [(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))) for h, w in shapes]
        windows = [rng.random((h, w)) < rng.choice([0.0, 0.5, 1.0]) for h, w in shapes]
        expected = []
        for window, (y, x) in zip(windows, origins):
            whole = np.zeros((1, height, width), dtype=bool)
            whole[0, y:y + window.shape[0], x:x + window.shape[1]] = window
            expected.append(rle.encode(whole)[0])
        assert rle.encode_windows(windows, origins, height, width) == expected
    assert rle.encode_windows([], [], height, width) == []
    dot = np.ones((1, 1), dtype=bool)  # one mask's run ends at the very pixel where the next one's begins
    wholes = np.zeros((2, height, width), dtype=bool)
    wholes[0, 0, 0] = wholes[1, 1, 0] = True
    assert rle.encode_windows([dot, dot], [(0, 0), (1, 0)], height, width) == rle.encode(wholes)
    with pytest.raises(ValueError, match="does not fit"):
        rle.encode_windows([np.ones((2, 2), bool), np.ones((2, 2), bool)], [(0, 0), (22, 0)], height, width)


def windows_as_written_plainly(logits, box, origin, rows, cols, h, w, ph, pw):
    """Mask windows the plain way: each map's entries gathered one by one (0 past its inputs), the whole product,
    then the cut to the box as a boolean AND."""
    ys = (origin[:, 1, None] + torch.arange(h)).clamp(max=len(rows.start) - 1)
    xs = (origin[:, 0, None] + torch.arange(w)).clamp(max=len(cols.start) - 1)
    top, left = rows.start[ys[:, 0]], cols.start[xs[:, 0]]
    mh, mw = logits.shape[1:]
    span = logits[torch.arange(len(logits))[:, None, None],
                  (top[:, None] + torch.arange(ph)).clamp(max=mh - 1)[:, :, None],
                  (left[:, None] + torch.arange(pw)).clamp(max=mw - 1)[:, None, :]]

    def entries(axis, outputs, begin, length, inputs):
        dense = torch.nn.functional.pad(axis.dense[:, :inputs], (0, 1))
        return dense[outputs[:, :, None], (begin[:, None] + torch.arange(length)).clamp(max=inputs)[:, None, :]]

    window = entries(rows, ys, top, ph, mh) @ span @ entries(cols, xs, left, pw, mw).transpose(1, 2)
    inside_x = (xs >= box[:, 0, None]) & (xs < box[:, 2, None])
    inside_y = (ys >= box[:, 1, None]) & (ys < box[:, 3, None])
    return (window > 0) & inside_y[:, :, None] & inside_x[:, None, :]


@pytest.mark.parametrize("out", [(256, 340), (720, 1280), (97, 61)])
def test_mask_windows_are_the_plain_products_bytes(out):
    """The windows as the device path makes them (the box cut as zero rows of the maps, rows of the maps picked
    from an unfolded view) are exactly those of the plain product cut afterwards: with logits that are infinite
    or NaN here and there, boxes whose edges are whole pixels, and windows that run past the frame's edge."""
    torch.manual_seed(0)
    height, width = out
    geometry = Geometry.of(height, width, input_size(height, width, None), 32)
    net_h, net_w = geometry.input_height, geometry.input_width
    rows, cols = mask_operators((net_h // 4, net_w // 4), height, width, height, width, torch.device("cpu"))
    for k_h, k_w in [(8, 8), (12, 48), (64, 24), (int(ladder(np.array([height]))[0]), 16)]:
        k = 20
        logits = torch.randn(k, net_h // 4, net_w // 4)
        odd = torch.tensor([float("inf"), -float("inf"), float("nan")]).repeat(10)
        logits.view(-1)[torch.randint(logits.numel(), (30,))] = odd
        origin = torch.stack([torch.randint(0, width, (k,)), torch.randint(0, height, (k,))], dim=1)
        corner = origin.float() + torch.randint(0, 3, (k, 2)).float() * torch.rand(k, 2).round()  # whole pixels too
        box = torch.cat([corner, corner + torch.tensor([k_w, k_h]) * torch.rand(k, 2)], dim=1)
        ph, pw = rows.span(k_h), cols.span(k_w)
        made = operands(logits, box, origin, rows, cols, k_h, k_w, ph, pw).window(slice(None), k_h, k_w, ph, pw)
        assert torch.equal(made, windows_as_written_plainly(logits, box, origin, rows, cols, k_h, k_w, ph, pw))
        assert made.any() and not made.all()


def test_predict_stays_selectable_and_is_in_the_fingerprint():
    device, predict = SegmenterSpec(model="yolo11n-seg.yaml"), SegmenterSpec(model="yolo11n-seg.yaml",
                                                                             inference="predict")
    assert device.output_fields() != predict.output_fields()
    assert "nms" in device.output_fields() and "nms" not in predict.output_fields()  # its NMS changed once
    on_cuda = SegmenterSpec(model="yolo11n-seg.yaml", device="cuda").output_fields()  # its fp16 input changed once
    assert "half_input" in on_cuda and "half_input" not in device.output_fields()
    assert "half_conf" in on_cuda and "half_conf" not in device.output_fields()  # its threshold changed once
    selfie = SegmenterSpec(backend="selfie")
    assert "inference" not in selfie.output_fields()
    from pipeline.segment import SegmenterLoadError

    with pytest.raises(SegmenterLoadError, match="unknown YOLO inference"):
        YoloSegmenter(SegmenterSpec(model="yolo11n-seg.yaml", inference="tensorrt"))


def test_the_heads_anchors_are_made_once_for_each_input_shape(monkeypatch):
    """ultralytics' head makes its anchors again whenever its input's shape is not the last one's (on a GPU, nine
    waits on the device): batches of two frame sizes in turn make them once a shape, with the same masks."""
    import ultralytics.nn.modules.head as head

    made, make = [], head.make_anchors
    monkeypatch.setattr(head, "make_anchors", lambda feats, *args: made.append(feats[0].shape) or make(feats, *args))
    small, large = clip(96, 64, 0), clip(160, 128, 1)
    device = segmenter("yolo11n-seg.yaml", small, 0, conf=0.05).on_device
    first = [device(batch.frames, batch.height, batch.width, capacity=4) for batch in (small, large)]
    made.clear()
    for _ in range(3):
        again = [device(batch.frames, batch.height, batch.width, capacity=4) for batch in (small, large)]
        assert [[m.rle() for m in masks] for masks in again] == [[m.rle() for m in masks] for masks in first]
    assert made == []  # none made again
    assert sum(len(m) for masks in first for m in masks) > 0
