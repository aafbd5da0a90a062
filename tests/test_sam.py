"""SAM refinement: box prompts reach the model in its own frame and masks come back at the source size, on
keyframes only; the real vit_b (random weights) runs through the masks stage; bad checkpoints fail clearly."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline.cli import main
from pipeline.datasets.sample import shape_clip, write_video
from pipeline.decode import DecodeOptions, VideoDecoder
from pipeline.masks import load_clip_masks, run_masks
from pipeline.segment import RefineSpec, SegmenterLoadError, SegmenterSpec, load_segmenter
from pipeline.segment.sam import RefinedSegmenter, SamRefiner, load_sam
from tests.conftest import LUMA
from tests.test_masks_stage import config


def tiny_sam(img_size: int = 64, cls: type[Sam] = Sam) -> Sam:
    """SAM's own modules at toy sizes, randomly initialised (seeded): the real code path in milliseconds."""
    torch.manual_seed(0)
    dim, grid = 32, img_size // 16
    return cls(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                                      out_chans=dim, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(depth=1, embedding_dim=dim,
                                 mlp_dim=64, num_heads=2), iou_head_depth=1, iou_head_hidden_dim=16),
    ).eval()


class BoxSam(Sam):
    """Answers each prompt box, as received in the model's input frame, with exactly that box as its mask, then
    maps it back with SAM's own postprocessing: the output is the detector's box iff the prompts are right."""

    def forward(self, batched_input, multimask_output):
        size = self.image_encoder.img_size
        outputs = []
        for record in batched_input:
            logits = torch.full((len(record["boxes"]), 1, size, size), -1.0)
            for k, (x1, y1, x2, y2) in enumerate(record["boxes"].round().int().tolist()):
                logits[k, 0, y1:y2, x1:x2] = 1.0
            masks = self.postprocess_masks(logits, record["image"].shape[-2:], record["original_size"]) > 0
            outputs.append({"masks": masks})
        return outputs


class EmptySam(Sam):
    def forward(self, batched_input, multimask_output):
        return [{"masks": torch.zeros((len(r["boxes"]), 1, *r["original_size"]), dtype=torch.bool)}
                for r in batched_input]


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
    refined = RefinedSegmenter(luma(), SamRefiner(tiny_sam(1024, BoxSam), every=3, images=2), {})
    decoder = VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=5, short_side=short_side))
    keyframes = 0
    for batch in decoder:  # batches of 5: keyframes 0, 3 | 6, 9 fall at different places in each
        base, out = luma().segment(batch), refined.segment(batch)
        for position, (before, after) in zip(batch.positions.tolist(), zip(base, out)):
            assert after.masks.shape == (len(before), 64, 96) and after.masks.dtype == bool
            np.testing.assert_array_equal(after.cls, before.cls)
            if position % 3:
                np.testing.assert_array_equal(after.masks, before.masks)
                continue
            keyframes += 1
            assert len(before) == 2  # the ellipse "person" and the box: refined into their boxes
            for k in range(len(before)):
                np.testing.assert_array_equal(after.masks[k], filled_box(after.xyxy[k], 64, 96))  # a rectangle …
                assert np.abs(after.xyxy[k] - before.xyxy[k]).max() <= 1  # … on the prompt box
            assert not np.array_equal(after.masks[0], before.masks[0])  # an ellipse is not its box
    assert keyframes == 4


def test_a_real_tiny_sam_refines_deterministically_and_empty_answers_keep_the_detector_mask(tmp_path):
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=4))))
    base = luma().segment(batch)
    first = SamRefiner(tiny_sam()).refine(batch, base)
    again = SamRefiner(tiny_sam()).refine(batch, base)
    for before, a, b in zip(base, first, again):
        assert a.masks.shape == before.masks.shape and a.masks.dtype == bool
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.conf, before.conf)
    kept = SamRefiner(tiny_sam(cls=EmptySam)).refine(batch, base)
    for before, after in zip(base, kept):
        np.testing.assert_array_equal(after.masks, before.masks)
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_box_prompts_match_the_cpu_and_a_real_sam_runs_in_fp16(tmp_path):
    batch = next(iter(VideoDecoder(shapes_video(tmp_path), DecodeOptions(batch=4, short_side=32))))
    base = luma().segment(batch)
    on_cpu = SamRefiner(tiny_sam(1024, BoxSam)).refine(batch, base)
    on_gpu = SamRefiner(tiny_sam(1024, BoxSam).to("cuda")).refine(batch, base)
    for a, b in zip(on_cpu, on_gpu):
        assert (a.masks != b.masks).mean() < 0.002  # fp16 resizing may move an edge pixel
    refiner = SamRefiner(tiny_sam().to("cuda"))
    assert refiner.half
    for before, after in zip(base, refiner.refine(batch, base)):
        assert after.masks.shape == before.masks.shape and after.masks.dtype == bool
