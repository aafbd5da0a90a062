"""`make bench` end to end at toy size: every figure is there and plausible, and the random-weight model
(made lively) gives close to `max_det` detections per frame."""

from pipeline.bench import main


def test_bench_reports_masks_storage_and_render_figures(tmp_path, selfie_model, capsys):
    result = main(["--device", "cpu", "--clips", "2", "--frames", "8", "--batch", "4", "--repeat", "1",
                   "--max-det", "3", "--selfie-model", str(selfie_model), "--out", str(tmp_path / "bench")])
    masks = result["masks"]["340x256"]  # the default size
    assert masks["frames"] == 16 and 2 <= masks["instances_per_frame"] <= 3  # max_det, a few frames with fewer
    for key in ("stage_frames_per_s", "segment_frames_per_s", "predict_frames_per_s", "forward_frames_per_s",
                "decode_frames_per_s", "stage_vs_forward", "segment_vs_predict", "peak_host_bytes",
                "bytes_per_instance_frame"):
        assert masks[key] > 0, key
    assert masks["peak_gpu_bytes"] is None and masks["gpu_forward_busy"] is None  # no CUDA here
    assert masks["input_shape"] == [4, 3, 288, 352]
    assert result["selfie_masks"]["instances_per_frame"] > 0.5  # people in the photos
    assert result["render"]["bare_frames_per_s"] > 0 and result["render"]["ratio"] > 0
    loader = result["loader"]
    assert loader["sampling"] == {"clip_len": 16, "frame_interval": 1} and loader["size"] == 224
    for variant in ("human_only", "scuba", "background_only"):
        assert loader[variant]["samples"] == 2, variant  # every clip, composed
        assert loader[variant]["plain_samples_per_s"] > 0 and loader[variant]["masked_samples_per_s"] > 0, variant
    assert '"stage_vs_forward"' in capsys.readouterr().out  # the JSON is printed
