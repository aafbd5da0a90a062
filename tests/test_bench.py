"""`make bench` end to end at toy size: every figure is there and plausible, and random weights still give
the fixed number of detections per frame."""

from pipeline.bench import main


def test_bench_reports_masks_storage_and_render_figures(tmp_path, selfie_model, capsys):
    result = main(["--device", "cpu", "--clips", "2", "--frames", "8", "--batch", "4", "--repeat", "1",
                   "--max-det", "3", "--selfie-model", str(selfie_model), "--out", str(tmp_path / "bench")])
    masks = result["masks"]
    assert masks["frames"] == 16 and masks["instances_per_frame"] == 3.0
    for key in ("stage_frames_per_s", "segment_frames_per_s", "forward_frames_per_s", "stage_vs_forward",
                "peak_host_bytes", "bytes_per_instance_frame"):
        assert masks[key] > 0, key
    assert masks["peak_gpu_bytes"] is None and masks["input_shape"][:2] == [4, 3]
    assert result["selfie_masks"]["instances_per_frame"] > 0.5  # people in the photos
    assert result["render"]["bare_frames_per_s"] > 0 and result["render"]["ratio"] > 0
    assert '"stage_vs_forward"' in capsys.readouterr().out  # the JSON is printed
