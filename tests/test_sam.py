"""SAM refinement: box prompts reach the model in its own frame and masks come back at the source size, on
keyframes only; the real vit_b (random weights) runs through the masks stage; bad checkpoints fail clearly."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline import rle
from pipeline.cli import main
from pipeline.datasets.sample import shape_clip, write_video
from pipeline.decode import DecodeOptions, FrameBatch, VideoDecoder
from pipeline.masks import load_clip_masks, run_masks
from pipeline.segment import RefineSpec, SegmenterLoadError, SegmenterSpec, load_segmenter, sam_device
from pipeline.segment.base import FrameMasks, boxes_from_masks
from pipeline.segment.sam import RefinedSegmenter, SamRefiner, load_sam
from tests.conftest import LUMA
from tests.test_masks_stage import config


def tiny_sam(img_size: int = 64) -> Sam:
    """SAM's own modules at toy sizes, randomly initialised (seeded): the real code path in milliseconds."""
    torch.manual_seed(0)
    dim, grid = 32, img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                                      out_chans=dim, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(depth=1, embedding_dim=dim,
                                 mlp_dim=64, num_heads=2), iou_head_depth=1, iou_head_hidden_dim=16),
    ).eval()


class BoxPrompts(torch.nn.Module):
    """Keeps each call's prompt boxes, as received in the model's input frame, for BoxDecoder."""

    def forward(self, points, boxes, masks):
        self.boxes = boxes
        return boxes.new_zeros((len(boxes), 2, 8)), boxes.new_zeros((len(boxes), 8, 4, 4))

    def get_dense_pe(self):
        return torch.zeros((1, 8, 4, 4))


class BoxDecoder(torch.nn.Module):
    """Answers each prompt box with exactly that box as its logits (+1 inside, -1 outside) at the model's input
    size, which SAM's own postprocessing maps back: the output is the detector's box iff the prompts are right."""

    def __init__(self, prompts: BoxPrompts, size: int) -> None:
        super().__init__()
        self.prompts, self.size = prompts, size

    def forward(self, image_embeddings, **_):
        boxes = self.prompts.boxes
        logits = torch.full((len(boxes), 1, self.size, self.size), -1.0, device=boxes.device)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            logits[k, 0, y1:y2, x1:x2] = 1.0
        return logits.to(image_embeddings.dtype), None


class EmptyDecoder(torch.nn.Module):
    def forward(self, image_embeddings, sparse_prompt_embeddings, **_):
        return torch.full((len(sparse_prompt_embeddings), 1, 16, 16), -1.0, dtype=image_embeddings.dtype), None


class BitsDecoder(torch.nn.Module):
    """Logits from the lowest mantissa bit of each of the first 256 values of the image embedding, so that masks
    differ wherever the embedding differs in any way."""

    def forward(self, image_embeddings, sparse_prompt_embeddings, **_):
        values = image_embeddings.flatten()[:256]
        bits = values.view({4: torch.int32, 2: torch.int16}[values.element_size()]) & 1
        logits = (bits * 2 - 1).float().reshape(1, 1, 16, 16)
        return logits.expand(len(sparse_prompt_embeddings), -1, -1, -1).to(image_embeddings.dtype), None


def frames_of(batch: FrameBatch, keep: list[int]) -> FrameBatch:
    return FrameBatch(frames=batch.frames[keep], indices=batch.indices[keep], times=batch.times[keep],
                      height=batch.height, width=batch.width, positions=batch.positions[keep])


def box_sam(img_size: int = 1024) -> Sam:
    sam = tiny_sam(img_size)
    sam.prompt_encoder = BoxPrompts()
    sam.mask_decoder = BoxDecoder(sam.prompt_encoder, img_size)
    return sam


def empty_sam() -> Sam:
    sam = tiny_sam()
    sam.mask_decoder = EmptyDecoder()
    return sam


def shapes_video(tmp_path: Path, frames: int = 12) -> Path:
    video, _, _ = shape_clip(frames, 96, 64, seed=1)
    path = tmp_path / "shapes.mp4"
    write_video(path, video, 12, lossless=True)
    return path


def luma() -> object:
    return load_segmenter(SegmenterSpec(backend=LUMA))


def filled_box(box: np.ndarray, height: int, width: int) -> np.ndarray:
    x1, y1, x2, y2 = box.round().astype(int)
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


@pytest.mark.parametrize("short_side", [None, 32])
def test_keyframes_get_the_prompt_box_back_at_source_size(tmp_path, short_side):
    refined = RefinedSegmenter(luma(), SamRefiner(box_sam(), every=3, images=2), {})
    decoder = VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=5, short_side=short_side))
    keyframes = 0
    for batch in decoder:  # batches of 5: keyframes 0, 3 | 6, 9 fall at different places in each
        base, out = luma().segment(batch), refined.segment(batch)
        for position, (before, after) in zip(batch.positions.tolist(), zip(base, out)):
            masks = after.full()
            assert masks.shape == (len(before), 64, 96) and masks.dtype == bool
            np.testing.assert_array_equal(after.cls, before.cls)
            if position % 3:
                np.testing.assert_array_equal(masks, before.masks)
                continue
            keyframes += 1
            assert len(before) == 2  # the ellipse "person" and the box: refined into their boxes
            for k in range(len(before)):
                np.testing.assert_array_equal(masks[k], filled_box(after.xyxy[k], 64, 96))  # a rectangle …
                assert np.abs(after.xyxy[k] - before.xyxy[k]).max() <= 1  # … on the prompt box
            assert not np.array_equal(masks[0], before.masks[0])  # an ellipse is not its box
            assert after.rle() == rle.encode(masks)
    assert keyframes == 4


def test_a_real_tiny_sam_refines_deterministically_and_empty_answers_keep_the_detector_mask(tmp_path):
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=4))))
    base = luma().segment(batch)
    first = SamRefiner(tiny_sam()).refine(batch, base)
    again = SamRefiner(tiny_sam()).refine(batch, base)
    for before, a, b in zip(base, first, again):
        assert a.full().shape == before.masks.shape and a.full().dtype == bool
        np.testing.assert_array_equal(a.full(), b.full())
        np.testing.assert_array_equal(a.conf, before.conf)
    kept = SamRefiner(empty_sam()).refine(batch, base)
    for before, after in zip(base, kept):
        np.testing.assert_array_equal(after.full(), before.masks)
        np.testing.assert_array_equal(after.xyxy, before.xyxy)


def test_random_vit_b_through_the_masks_stage_records_sam_and_leaves_other_frames_alone(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    plain = run_masks(config(root, tmp_path / "out", splits=("val",)), progress=False)
    spec = SegmenterSpec(backend=LUMA, refine=RefineSpec(checkpoint="random", every=100))  # frame 0 only
    refined = run_masks(config(root, tmp_path / "out", splits=("val",), segmenter=spec), progress=False)
    assert refined.by_status == {"ok": 1} and refined.output != plain.output  # refinement is in the fingerprint
    meta = pq.read_schema(Path(refined.output) / "val-00000.parquet").metadata
    assert meta[b"segmenter.refine"] == b"sam" and meta[b"segmenter.sam_type"] == b"vit_b"
    assert meta[b"segmenter.sam_checkpoint"] == b"none (random init of vit_b)"
    assert meta[b"segmenter.sam_every"] == b"100"
    assert meta[b"segmenter.sam_images"] == b"1"  # on a CPU one image per encoder call, whatever `images` says
    assert meta[b"segmenter.sam_precision"] == b"fp32"
    (clip_id,) = [p.name.removesuffix(".mp4") for p in (root / "val").glob("*.mp4")]
    a, b = load_clip_masks(Path(plain.output), clip_id), load_clip_masks(Path(refined.output), clip_id)
    later_a, later_b = a.frame_index > 0, b.frame_index > 0
    masks_a, masks_b = a.masks(), b.masks()
    np.testing.assert_array_equal(masks_a[later_a], masks_b[later_b])
    assert masks_b[~later_b].shape == masks_a[~later_a].shape == (2, 64, 96)


def test_missing_or_mismatched_checkpoints_are_clear_errors(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    base = ["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(tmp_path / "out"),
            "--segmenter", LUMA, "--workers", "0", "--refine", "sam"]
    assert main(base) == 2
    assert "needs a checkpoint" in capsys.readouterr().err
    assert main([*base, "--sam-type", "vit_h", "--sam-checkpoint", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert "nope.pth' not found" in err and "sam_vit_h_4b8939.pth" in err and "SAM_CHECKPOINT" in err
    assert not (tmp_path / "out" / "masks").exists()
    wrong = tmp_path / "wrong.pth"
    torch.save(tiny_sam().state_dict(), wrong)
    with pytest.raises(SegmenterLoadError, match="wrong.pth: cannot load as a SAM vit_b checkpoint.*--sam-type"):
        load_sam(RefineSpec(checkpoint=str(wrong)), "cpu")
    assert main([*base, "--sam-checkpoint", "random", "--sam-precision", "fp16"]) == 2  # a CPU runs fp32
    assert "SAM runs in fp32 on cpu: leave out SAM_PRECISION=fp16" in capsys.readouterr().err
    without = base[:-2]  # SAM's settings, but no --refine sam: no mask would use them
    assert main([*without, "--sam-checkpoint", "random", "--refine-every", "4"]) == 2
    assert "--sam-checkpoint, --refine-every set without --refine sam" in capsys.readouterr().err
    assert main([*without, "--sam-precision", "fp16"]) == 2
    assert "--sam-precision set without --refine sam" in capsys.readouterr().err
    assert not (tmp_path / "out" / "masks").exists()


def test_a_keyframe_refined_alone_or_packed_with_others_gives_the_same_bytes(tmp_path):
    """The encoder always takes `images` images, so a keyframe's masks do not depend on its call's company or its
    place in it (without the padding, the lone keyframes' embeddings differ in their last bits on this CPU)."""
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=6))))
    base = luma().segment(batch)
    sam = tiny_sam()
    sam.mask_decoder = BitsDecoder()
    refiner = SamRefiner(sam, images=4)
    refined = refiner.refine(batch, base)  # calls of 4 and 2 keyframes
    assert 0 < refined[0].full().mean() < 1  # the embedding's bits make a mask of some pixels, not all or none
    packed = [f.rle() for f in refined]
    for left_out in [(0,), (1, 2), (0, 1, 2, 3, 4)]:  # other company, other places in the call
        frames = [i for i in range(len(batch)) if i not in left_out]
        again = refiner.refine(frames_of(batch, frames), [base[i] for i in frames])
        assert [f.rle() for f in again] == [packed[i] for i in frames]



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_box_prompts_match_the_cpu_and_a_real_sam_runs_in_bf16_or_fp16_whatever_the_packing(tmp_path):
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=6, short_side=32))))
    base = luma().segment(batch)
    precision = "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"  # an older GPU: fp16 by name
    on_cpu = SamRefiner(box_sam()).refine(batch, base)
    on_gpu = SamRefiner(box_sam().to("cuda"), precision=precision).refine(batch, base)
    for a, b in zip(on_cpu, on_gpu):
        assert (a.full() != b.full()).mean() < 0.002  # resizing on the GPU may move an edge pixel
    refiner = SamRefiner(tiny_sam().to("cuda"), precision=precision)
    assert refiner.precision == precision
    assert refiner.sam.image_encoder.patch_embed.proj.weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[
        precision]
    for before, after in zip(base, refiner.refine(batch, base)):
        assert after.full().shape == before.masks.shape
    sam = tiny_sam().to("cuda")
    sam.mask_decoder = BitsDecoder()
    refiner = SamRefiner(sam, images=4, precision=precision)
    packed = [f.rle() for f in refiner.refine(batch, base)]
    together = refiner.refine(frames_of(batch, [2, 5]), [base[2], base[5]])  # other company and places
    assert [f.rle() for f in together] == [packed[2], packed[5]]


class NonFiniteDecoder(torch.nn.Module):
    """Positive logits everywhere (SAM's answer: the whole frame), but a NaN in the first instance's and an
    infinity in the second's, as an overflowing fp16 encoder gives."""

    def forward(self, image_embeddings, sparse_prompt_embeddings, **_):
        logits = torch.ones((len(sparse_prompt_embeddings), 1, 16, 16))
        logits[0, 0, 3, 3], logits[1, 0, 5, 5] = float("nan"), float("inf")
        return logits, None


def test_non_finite_logits_keep_the_detector_mask(tmp_path):
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=2))))
    base = luma().segment(batch)
    sam = tiny_sam()
    sam.mask_decoder = NonFiniteDecoder()
    for before, after in zip(base, SamRefiner(sam).refine(batch, base)):
        assert len(before) == 2
        np.testing.assert_array_equal(after.full(), before.masks)
        np.testing.assert_array_equal(after.xyxy, before.xyxy)


def test_masks_reach_the_host_as_windows_at_their_tight_boxes():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 13, 21)) > 0.7  # windows whose bits are not a multiple of 8
    masks[1] = False
    masks[2] = False
    masks[2, 12, 20] = True  # the frame's last pixel
    masks[3] = True
    boxes, windows = sam_device.to_host(torch.from_numpy(masks))
    np.testing.assert_array_equal(boxes, boxes_from_masks(masks))
    assert [w.shape for w in windows][1:4] == [(0, 0), (1, 1), (13, 21)]
    found = FrameMasks(xyxy=boxes.astype(np.float32), conf=np.ones(5, np.float32), cls=np.zeros(5, np.int16),
                       windows=tuple(windows), origins=boxes[:, [1, 0]], size=(13, 21))
    np.testing.assert_array_equal(found.full(), masks)
    assert found.rle() == rle.encode(masks)
    boxes, windows = sam_device.to_host(torch.zeros((0, 13, 21), dtype=torch.bool))
    assert boxes.shape == (0, 4) and windows == []


@pytest.mark.parametrize("native", [True, False])
def test_on_cuda_sam_computes_in_bf16_only_where_the_device_has_it_natively(monkeypatch, native):
    """A GPU without native bf16 fails to load at the default, rather than run fp16 under a run tag that says
    bf16: fp16 is asked for by name (and is a run folder of its own)."""
    asked = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: asked.append(str(device)) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation
                        and native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    if native:
        assert sam_device.choose_dtype("cuda:1", "bf16") == torch.bfloat16 and asked == ["cuda:1"]
    else:
        with pytest.raises(SegmenterLoadError, match=r"cuda:1 \(Tesla V100\).*SAM_PRECISION=fp16"):
            sam_device.choose_dtype("cuda:1", "bf16")
    assert sam_device.choose_dtype("cuda:1", "fp16") == torch.float16
    assert sam_device.choose_dtype("cuda:1", "fp32") == torch.float32
    assert sam_device.choose_dtype("cpu", "fp32") == torch.float32


def test_in_bf16_weights_are_cast_once_norms_run_in_fp32_and_provenance_says_bf16(tmp_path, monkeypatch):
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=2))))
    base = luma().segment(batch)
    refiner = SamRefiner(tiny_sam(), precision="bf16")  # on a CPU the spec refuses it (fp32), but it runs
    sam = refiner.sam
    assert sam.image_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert sam.mask_decoder.output_upscaling[0].weight.dtype == torch.bfloat16
    assert sam.image_encoder.neck[1].weight.dtype == torch.float32  # a LayerNorm2d
    assert {p.dtype for p in sam.prompt_encoder.parameters()} == {torch.float32}
    weights = {name: (p.dtype, p.data_ptr()) for name, p in sam.named_parameters()}
    norm_inputs = []
    sam.image_encoder.neck[1].register_forward_pre_hook(lambda module, args: norm_inputs.append(args[0].dtype))
    for before, after in zip(base, refiner.refine(batch, base)):
        assert after.full().shape == before.masks.shape
    refiner.refine(batch, base)
    assert {name: (p.dtype, p.data_ptr()) for name, p in sam.named_parameters()} == weights  # not recast per call
    assert norm_inputs == [torch.float32, torch.float32]
    assert RefinedSegmenter(luma(), refiner, {}).provenance()["sam_precision"] == "bf16"
    with pytest.raises(ValueError, match="cast to torch.bfloat16 already"):
        sam_device.cast_once(sam, torch.float16)


def test_the_run_fingerprint_follows_sam_precision_and_encoder_batch_as_they_run():
    def refine_fields(device: str, images: int) -> dict:
        spec = SegmenterSpec(backend=LUMA, device=device, refine=RefineSpec(checkpoint="random", images=images))
        return spec.output_fields()["refine"]

    assert refine_fields("cpu", 4) == refine_fields("cpu", 2)  # a CPU takes one image per call whatever is asked
    assert refine_fields("cpu", 4) == {"sam_type": "vit_b", "random": True, "every": 1, "images": 1,
                                       "precision": "fp32"}  # as before SAM_PRECISION: CPU runs keep their folders
    assert refine_fields("cuda:0", 4)["images"] == 4 and refine_fields("cuda:0", 2)["images"] == 2
    assert refine_fields("cuda:0", 4)["precision"] == "bf16"
    fp16 = SegmenterSpec(backend=LUMA, device="cuda:0", refine=RefineSpec(checkpoint="random", precision="fp16"))
    assert fp16.output_fields()["refine"] == {**refine_fields("cuda:0", 4), "precision": "fp16"}


def test_masks_reach_the_host_as_rle_made_on_the_device_where_it_does_that():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 13, 21)) > 0.7
    masks[1] = False
    masks[3] = True
    masks[4] = False
    masks[4, 12, 20] = True  # the frame's last pixel
    boxes, strings = sam_device.to_host_rles(torch.from_numpy(masks))
    np.testing.assert_array_equal(boxes, boxes_from_masks(masks))
    assert strings[1] is None and strings[:1] + strings[2:] == [r for k, r in enumerate(rle.encode(masks)) if k != 1]
    assert sam_device.to_host_rles(torch.zeros((0, 13, 21), dtype=torch.bool))[1] == []


@pytest.mark.parametrize("decoder", ["tiny", "empty"])
def test_refined_masks_are_the_same_bytes_as_windows_or_as_device_rle(tmp_path, monkeypatch, decoder):
    """CUDA's way (run lengths made on the device) switched on for the CPU: the same masks and boxes; where SAM's
    mask is empty, the detector's, as RLE."""
    from pipeline.segment import device_rle

    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=4))))
    base = luma().segment(batch)
    sam = tiny_sam() if decoder == "tiny" else empty_sam()
    windows = SamRefiner(sam).refine(batch, base)
    monkeypatch.setattr(device_rle, "DEVICES", ("cuda", "cpu"))
    rles = SamRefiner(sam).refine(batch, base)
    assert sum(map(len, rles)) >= 4
    for a, b in zip(windows, rles):
        assert a.windows and b.rles is not None
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        assert a.rle() == b.rle()


@pytest.mark.parametrize("form", ["masks", "windows", "rles"])
def test_an_empty_sam_mask_keeps_the_detectors_however_it_holds_it(form):
    """The YOLO device path hands masks over as windows (CPU) or RLE made on the GPU: where SAM's mask is empty,
    the detector's is kept from either."""
    from pipeline.segment.sam import _merge

    mask = np.zeros((20, 30), dtype=bool)
    mask[4:9, 10:17] = True
    common = dict(xyxy=np.array([[10, 4, 17, 9]], np.float32), conf=np.ones(1, np.float32), cls=np.zeros(1, np.int16))
    found = {"masks": FrameMasks(masks=mask[None], **common),
             "windows": FrameMasks(windows=(mask[4:9, 10:17],), origins=np.array([[4, 10]]), size=(20, 30), **common),
             "rles": FrameMasks(rles=tuple(rle.encode(mask[None])), size=(20, 30), **common)}[form]
    merged = _merge(found, np.zeros((1, 4), np.int64), [np.zeros((0, 0), bool)], (20, 30))
    np.testing.assert_array_equal(merged.full()[0], mask)
