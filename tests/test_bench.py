"""`make bench` at toy size, on CPU: the figures of every size are there, from the stage's own process and
segmenter (production max_det and classes), within the time budget; and the pieces it reads GPU figures with
(kernel-busy union, NVML sampling, the device path's counters) on fakes."""

from __future__ import annotations

import json
import os
import sys
import time
import types

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster

from pipeline.bench import lively, main, probe
from pipeline.bench.budget import affordable_clips, another_round, clip_plan
from pipeline.bench.clips import make_clips
from pipeline.bench.masks_bench import bench_size, held_batches, realistic_spec, spread
from pipeline.bench.placement import StagePlace
from pipeline.bench.throughput import parse_args
from pipeline.decode import DecodeOptions, FrameBatch, VideoDecoder
from pipeline.executor import ExecOptions
from pipeline.segment import SegmenterSpec, load_segmenter

TINY = ["--device", "cpu", "--frames", "4", "--batch", "4", "--repeat", "1", "--masks-only"]


def test_defaults_are_a_runs_settings_at_both_sizes():
    args = parse_args([])
    assert args.max_det == 100 and args.sizes == "340x256,1280x720"


def test_bench_reports_each_size_from_the_stage_within_its_minutes(tmp_path, monkeypatch, capsys):
    result = main([*TINY, "--clips", "3", "--minutes", "0.001", "--sizes", "96x64,128x96",
                   "--out", str(tmp_path / "bench"), "--json", str(tmp_path / "elsewhere" / "b.json")])
    assert list(result["masks"]) == ["96x64", "128x96"] and result["max_det"] == 100
    for size, masks in result["masks"].items():
        assert masks["clips"] == 1 and masks["rounds"] == 1 and masks["frames"] == 4, size  # the budget is spent
        assert masks["segmenter"]["max_det"] == "100" and masks["segmenter"]["classes"] == 80, size  # every class
        assert masks["instances_per_frame"] > 0, size
        for key in ("stage", "segment", "predict", "forward", "decode", "host", "host_in_shards"):
            assert masks[f"{key}_frames_per_s"] > 0, (size, key)
        assert masks["stage_vs_host"] > 0, size
        # one batch a clip, with instances: the room, NMS's sizes frame by frame and class by class (a CPU's way),
        # the instances, the windows (yolo_device): the same batches in the stage as in segment()
        waits = masks["host_waits_per_batch"]
        assert waits["stage"] == waits["segment"] > 2 + 4, size
        assert masks["stage_where"] == "in-process" and masks["stage_pid"] == os.getpid()
        assert masks["stage_peak_host_bytes"] > 50 << 20 and masks["stage_peak_gpu_allocated_bytes"] is None
        assert masks["gpu_kernel_busy"] is None and masks["gpu_util_nvml"] is None  # no CUDA here
    assert masks["input_shape"] == [4, 3, 96, 128]
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n"):]) == result
    assert json.loads((tmp_path / "bench" / "bench.json").read_text()) == result
    assert json.loads((tmp_path / "elsewhere" / "b.json").read_text()) == result  # --json: written there too


def test_a_bench_stopped_part_way_keeps_the_sizes_done_in_both_its_files(tmp_path, monkeypatch):
    """bench.json, and the --json copy gpu_check reads from OUT, are rewritten after each size: a bench stopped
    during the second size (a time limit, the device tool stopping the command) leaves the first."""
    import pipeline.bench.throughput as throughput

    def stopped_at_the_second(folder, spec, place, *, width, height, **kwargs):
        if (width, height) == (128, 96):
            raise KeyboardInterrupt
        return {"frames": 4}

    monkeypatch.setattr(throughput, "bench_size", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        main([*TINY, "--sizes", "96x64,128x96", "--out", str(tmp_path / "bench"), "--json", str(tmp_path / "b.json")])
    for path in (tmp_path / "bench" / "bench.json", tmp_path / "b.json"):
        written = json.loads(path.read_text())
        assert written["complete"] is False and written["masks"] == {"96x64": {"frames": 4}}, path


def test_a_relative_checkpoint_is_the_model_the_stage_runs(tmp_path, monkeypatch):
    from ultralytics import YOLO

    torch.save({"model": YOLO("yolo11n-seg.yaml").model, "train_args": {}}, tmp_path / "m.pt")
    monkeypatch.chdir(tmp_path)  # the stage makes `m.pt` absolute: the bench must measure that same model
    result = main([*TINY, "--clips", "1", "--model", "m.pt", "--sizes", "96x64", "--out", "bench"])
    assert result["masks"]["96x64"]["segmenter"]["model"] == str(tmp_path / "m.pt")


def test_the_stage_figures_come_from_the_worker_that_ran_it(tmp_path):
    spec = SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml", device="cpu", threads=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        place = StagePlace(where="dask-worker", note="test", execution=ExecOptions(scheduler=cluster.scheduler_address),
                           client=client)
        masks = bench_size(tmp_path, spec, place, width=96, height=64, clips=1, frames=4, batch=4, repeat=1,
                           seconds=60)
        (worker_pid,) = client.run(os.getpid).values()
    assert masks["stage_pid"] == worker_pid != os.getpid()
    assert masks["segmenter"]["model"] == str(tmp_path / "lively-yolo11n-seg.pt")  # the lively weights, there too
    assert masks["instances_per_frame"] > 5 and masks["stage_frames_per_s"] > 0
    assert masks["stage_in_shards_frames_per_s"] >= masks["stage_frames_per_s"]  # the run's start left out
    assert masks["stage_in_shards_vs_forward"] > 0
    assert masks["stage_decoders"] == 1 and masks["clip_frames"] == 4  # a CPU stage: one decoder, clips at length


def test_kernel_busy_time_counts_overlapping_kernels_once():
    events = [{"cat": "kernel", "ph": "X", "ts": 0, "dur": 10}, {"cat": "kernel", "ph": "X", "ts": 5, "dur": 10},
              {"cat": "kernel", "ph": "X", "ts": 30, "dur": 5}, {"cat": "cuda_runtime", "ph": "X", "ts": 0, "dur": 99},
              {"cat": "kernel", "ph": "X", "ts": 31, "dur": 1}]
    assert probe.busy_seconds(events) == pytest.approx(20e-6)


def test_busy_time_is_read_from_a_real_profiler_trace():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        torch.ones(256, 256) @ torch.ones(256, 256)
    assert 0 < probe.trace_busy(profiler, ("cpu_op",)) < 10


def test_nvml_utilisation_is_averaged_over_the_block(monkeypatch):
    samples = iter([20, 60] * 1000)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=next(samples)))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with probe.NvmlSampler("0", interval=0.001) as nvml:
        time.sleep(0.05)
    assert nvml.mean == pytest.approx(0.4, abs=0.02)
    with probe.NvmlSampler(None) as nvml:
        pass
    assert nvml.mean is None


def test_waits_per_batch_need_the_device_paths_counters():
    device = types.SimpleNamespace(spec=types.SimpleNamespace(inference="device"),
                                   on_device=types.SimpleNamespace(host_waits=4, batches=2))
    before = probe.counters(device)
    device.on_device.host_waits, device.on_device.batches = 10, 5
    assert probe.waits_per_batch(before, probe.counters(device)) == 2.0
    assert probe.counters(types.SimpleNamespace(spec=device.spec, on_device=object())) is None


def test_budget_fits_clips_and_rounds():
    assert affordable_clips(seconds=10, frames_per_clip=10, make_per_frame=0.05, round_per_frame=0.05, most=32) == 10
    assert affordable_clips(seconds=0, frames_per_clip=10, make_per_frame=0.05, round_per_frame=0.05, most=32) == 1
    assert affordable_clips(seconds=1e9, frames_per_clip=10, make_per_frame=0.05, round_per_frame=0.05, most=32) == 32
    now = time.perf_counter()
    assert another_round(done=[], repeat=1, deadline=now)
    assert not another_round(done=[1.0], repeat=3, deadline=now + 0.5)
    assert another_round(done=[1.0], repeat=3, deadline=now + 60)
    assert not another_round(done=[1.0, 1.0, 1.0], repeat=3, deadline=now + 60)


def test_clips_are_shortened_where_too_few_would_keep_a_gpu_stages_decoders_busy():
    costs = dict(make_per_frame=0.01, round_per_frame=0.02)  # 9 s a clip of 300 frames, 6 s its round
    assert clip_plan(seconds=90, frames_per_clip=300, most=32, at_least=8, **costs) == (10, 300)  # enough
    # 2 made (12 s of round), 6 more for 8 decoders in the 48 s left: 266 frames each
    assert clip_plan(seconds=60, frames_per_clip=300, most=32, at_least=8, made=2, **costs) == (8, 266)
    assert clip_plan(seconds=30, frames_per_clip=300, most=32, at_least=8, made=2, shortest=64, **costs) == (8, 100)
    assert clip_plan(seconds=30, frames_per_clip=300, most=32, at_least=8, made=2, shortest=128, **costs) == (6, 128)
    assert clip_plan(seconds=10, frames_per_clip=300, most=32, at_least=8, made=2, shortest=64, **costs) == (1, 300)
    assert clip_plan(seconds=30, frames_per_clip=300, most=2, at_least=8, made=2, **costs) == (2, 300)  # at most 2
    assert clip_plan(seconds=30, frames_per_clip=300, most=32, **costs) == (3, 300)  # a CPU stage: one decoder
    assert clip_plan(seconds=3, frames_per_clip=50, most=32, at_least=8, shortest=128, **costs) == (2, 50)  # never
    # longer than full length


def test_held_frames_are_capped(tmp_path):
    sources = make_clips(tmp_path, range(2), 8, 96, 64)
    decode = DecodeOptions(batch=4)
    assert sum(len(b) for b in held_batches(sources, decode, 1 << 30)) == 16
    assert [len(b) for b in held_batches(sources, decode, 2 * 4 * 96 * 64 * 3)] == [4, 4]
    assert [len(b) for b in held_batches(sources, decode, 1)] == [4]  # at least one batch


def test_a_random_model_keeps_about_the_instances_asked_for_on_its_calibration_frames(tmp_path):
    sources = make_clips(tmp_path, range(2), 8, 96, 64)
    frames = spread(sources, DecodeOptions(batch=8), 8, 8)
    assert len(frames) == 8
    spec = realistic_spec(SegmenterSpec(model="yolo11n-seg.yaml", device="cpu"), frames, tmp_path, instances=8)
    assert spec.model == str(tmp_path / "lively-yolo11n-seg.pt") and 0 < spec.conf < 1
    kept = [len(masks) for masks in load_segmenter(spec).segment(frames)]
    assert 4 <= sum(kept) / len(kept) <= 16  # about 8 on average (per frame, a random model's count swings)


def test_the_stage_runs_on_the_camera_moves_the_model_was_calibrated_on_and_on_enough_of_their_frames(
        tmp_path, monkeypatch):
    """A random model's count a frame swings with the image: calibrated on a batch of 4 frames, or on two clips
    while the stage ran others, the bench's stage found half the instances asked for. Now every stage clip
    repeats one of the two calibrated camera moves, and conf is set on at least CALIBRATION_FRAMES frames."""
    import pipeline.bench.masks_bench
    from pipeline.bench.masks_bench import CALIBRATION_FRAMES

    calibrated = []

    def spying(spec, frames, folder, **kwargs):
        calibrated.append(len(frames))
        return realistic_spec(spec, frames, folder, **kwargs)

    monkeypatch.setattr(pipeline.bench.masks_bench, "realistic_spec", spying)
    place = StagePlace(where="in-process", note="test", execution=ExecOptions(workers=0))
    spec = SegmenterSpec(model="yolo11n-seg.yaml", device="cpu")
    masks = bench_size(tmp_path, spec, place, width=96, height=64, clips=4, frames=20, batch=4, repeat=1,
                       seconds=600)
    assert masks["clips"] == 4 and masks["clip_frames"] == 20
    assert calibrated == [min(CALIBRATION_FRAMES, 2 * 20)] and CALIBRATION_FRAMES > 4  # more than a batch
    clips = sorted((tmp_path / "data" / "train").glob("*.mp4"))
    decoded = [np.concatenate([b.frames for b in VideoDecoder(clip, DecodeOptions(batch=8))]) for clip in clips]
    assert len(decoded) == 4 and not np.array_equal(decoded[0], decoded[1])
    assert np.array_equal(decoded[2], decoded[0]) and np.array_equal(decoded[3], decoded[1])


def test_the_decoding_bench_times_threads_and_processes_beside_a_busy_thread(tmp_path):
    from pipeline.bench.decoding import main as decoding

    decoding(["--out", str(tmp_path), "--clips", "2", "--frames", "8", "--sizes", "96x64", "--duties", "0.5",
              "--intervals", "5,0.5", "--json", str(tmp_path / "report" / "decoding.json")])
    assert not (tmp_path / "decoding.json").exists()  # where --json says (gpu_check's OUT), not beside the clips
    report = json.loads((tmp_path / "report" / "decoding.json").read_text())
    runs = report["sizes"]["96x64"]["runs"]
    assert report["sizes"]["96x64"]["frames"] == 16  # every frame, decoded each way
    assert [(r["decoders_on"], r["switch_interval_ms"]) for r in runs] == [("threads", 5), ("threads", 0.5),
                                                                           ("processes", 5)]
    assert all(r["decode_fps"] > 0 and r["loop_vs_alone"] > 0 for r in runs)
    assert sys.getswitchinterval() == 0.005  # put back


def spy_calibration(monkeypatch) -> list[int]:
    """The frames the host-cost probe makes its weights lively and sets conf on, by their place in the clip."""
    import pipeline.bench.hostcost
    from pipeline.bench.hostcost import realistic_spec

    calibrated = []

    def spying(spec, frames, folder, **kwargs):
        (clip,) = folder.rglob("*.mp4")
        decoded = np.concatenate([b.frames for b in VideoDecoder(clip, DecodeOptions(batch=8))])
        calibrated.extend(int(np.flatnonzero((decoded == frame).all(axis=(1, 2, 3)))[0]) for frame in frames.frames)
        return realistic_spec(spec, frames, folder, **kwargs)

    monkeypatch.setattr(pipeline.bench.hostcost, "realistic_spec", spying)
    return calibrated


def test_the_hostcost_probe_splits_segment_and_names_the_functions_that_take_the_host_time(tmp_path, monkeypatch):
    from pipeline.bench.hostcost import main as hostcost

    calibrated = spy_calibration(monkeypatch)
    report = hostcost(["--device", "cpu", "--sizes", "96x64", "--batch", "8", "--batches", "2", "--repeat", "1",
                       "--top", "3", "--out", str(tmp_path / "hostcost.json")])
    assert len(calibrated) == 8 and min(calibrated) == 0 and max(calibrated) == 15  # over both batches
    assert json.loads((tmp_path / "hostcost.json").read_text()) == report
    assert [p.name for p in tmp_path.iterdir()] == ["hostcost.json"]  # its clips and weights are not left there
    size = report["sizes"]["96x64"]
    assert size["frames"] == 16 and size["launch_ms"] > 0 and size["result_ms"] > 0 and size["forward_ms"] > 0
    assert size["instances_per_frame"] > 0 and size["rle_bytes_per_mask"] > 2
    by_batch = size["instances_per_frame_by_batch"]  # over the batches measured, not the first alone
    assert len(by_batch) == 2 and size["instances_per_frame"] == pytest.approx(sum(by_batch) / 2, abs=0.01)
    assert len(size["top"]) == 3 and all(row["calls_per_batch"] > 0 for row in size["top"])
    assert report["host"]["affinity"] >= 1 and report["host"]["python_loop_2e6_ms"] > 0


def test_the_hostcost_probe_calibrates_on_as_many_frames_as_a_measured_batch_holds(tmp_path, monkeypatch):
    """Where frames are large, a batch holds fewer than `--batch` (max_batch_mb): so does the calibration."""
    import functools

    import pipeline.bench.hostcost
    from pipeline.bench.hostcost import main as hostcost

    calibrated = spy_calibration(monkeypatch)
    monkeypatch.setattr(pipeline.bench.hostcost, "DecodeOptions", functools.partial(DecodeOptions, max_batch_mb=1))
    report = hostcost(["--device", "cpu", "--sizes", "640x360", "--batch", "8", "--batches", "1", "--repeat", "1",
                       "--top", "1", "--out", str(tmp_path / "hostcost.json")])
    assert len(report["sizes"]["640x360"]["instances_per_frame_by_batch"]) == 4  # 2 frames of 675 KiB a batch
    assert calibrated == [0, 7]  # as many, spread over the clip's 8 frames


def test_a_replayed_run_makes_the_rows_of_the_run_it_replays(shapes_dataset, tmp_path):
    """The host figure's segmenter: the masks of a shard's first clip handed back by frame position give that
    clip the very rows it had (masks, scores, boxes, and the tracker's ids); other clips get the same masks."""
    from pathlib import Path

    from pipeline.bench.masks_bench import first_shard
    from pipeline.bench.replay import replay_spec
    from pipeline.masks import run_masks
    from pipeline.masks.store import iter_shard
    from tests.test_masks_stage import config

    root, _ = shapes_dataset
    made = run_masks(config(root, tmp_path / "made"), progress=False)
    shard = first_shard(Path(made.output))
    first, second = list(iter_shard(shard))[:2]
    assert second.column("rle").tolist()[:len(first)] != first.column("rle").tolist()
    replayed = run_masks(config(root, tmp_path / "replayed", segmenter=replay_spec(SegmenterSpec(), shard)),
                         progress=False)
    assert replayed.frames == made.frames
    again = {clip.clip_id: clip for clip in iter_shard(first_shard(Path(replayed.output)))}
    assert again[first.clip_id].table.equals(first.table)
    assert again[second.clip_id].column("rle").tolist()[:len(first)] == first.column("rle").tolist()
    # fed as YOLO on CUDA is (launched ahead as its pieces, several clips a batch): the same rows
    from pipeline.bench.replay import ReplaySegmenter
    from tests.test_launched import outcomes, same

    replaying = ReplaySegmenter(replay_spec(SegmenterSpec(), shard))
    launched = outcomes(root, replaying, 3, overlap=True)
    assert same(launched, outcomes(root, replaying, 1, overlap=False))
    assert launched[first.clip_id].equals(first.table)


def test_the_compiled_probe_times_the_eager_forward_and_reports_a_mode_that_cannot_run(tmp_path):
    """On a CPU a CUDA graph cannot be captured: the probe says why and keeps the eager figure."""
    from pipeline.bench.compiled import main as compiled

    report = compiled(["--device", "cpu", "--sizes", "96x64", "--batch", "2", "--modes", "graph", "--seconds", "0.1",
                       "--out", str(tmp_path / "compiled.json")])
    assert json.loads((tmp_path / "compiled.json").read_text()) == report
    size = report["sizes"]["96x64"]
    assert size["eager"]["fps"] > 0 and "needs a CUDA device" in size["graph"]["error"]


@pytest.mark.gpu
def test_a_cuda_graph_of_the_forward_gives_the_eager_bytes(tmp_path):
    """The forward replayed as a CUDA graph runs the kernels the eager forward ran: every output the same bytes, for
    the input it was captured with and for another one copied in; its outputs are its own, rewritten by each call;
    a second graph of the same model at another shape leaves the first one's results alone."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from pipeline.bench.compiled import Graphed, _outputs
    from pipeline.bench.compiled import main as compiled

    report = compiled(["--device", "cuda", "--sizes", "340x256,171x128", "--batch", "8", "--modes", "graph",
                       "--seconds", "0.5", "--out", str(tmp_path / "compiled.json")])
    for size in ("340x256", "171x128"):
        graph = report["sizes"][size]["graph"]
        assert "error" not in graph, graph
        assert graph["same_bytes"] and graph["max_abs_diff"] == 0.0 and graph["fps"] > 0
    device = load_segmenter(SegmenterSpec(model="yolo11n-seg.yaml", device="cuda")).on_device
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        x, y = (device.prepare(rng.integers(0, 256, (4, 256, 340, 3), dtype=np.uint8), 4)[0] for _ in range(2))
        small = device.prepare(rng.integers(0, 256, (4, 128, 171, 3), dtype=np.uint8), 4)[0]
    want_x, want_y = _outputs(device.model, x), _outputs(device.model, y)
    graph = Graphed(device.model, x)
    anchors = device.model.model[-1].anchors  # what the captured kernels read
    assert any(kept is anchors for kept in graph.captured)
    first = graph(y)[0][0]
    seen = first.clone()
    assert torch.equal(seen, want_y[0]) and all(torch.equal(a, b) for a, b in zip(_outputs(graph, y), want_y))
    graph(x)
    assert torch.equal(first, want_x[0]) and not torch.equal(first, seen)  # its own tensors, rewritten
    second = Graphed(device.model, small)  # the head's anchors replaced for another shape, the old ones freed
    second(small)
    litter = [torch.full((1 << 16,), float("nan"), device=x.device, dtype=x.dtype) for _ in range(64)]  # reuses
    assert all(torch.equal(a, b) for a, b in zip(_outputs(graph, x), want_x))  # freed memory, if the graph had not
    del litter


def best_logit(model, frames, rank: int) -> float:
    """The `rank`-th best of the anchors' best class logits over `frames` at the model's input size."""
    from pipeline.segment.model_input import Geometry, input_size, letterbox

    height, width = frames.shape[1:3]
    geometry = Geometry.of(height, width, input_size(height, width, None), int(max(model.stride)))
    caught = []
    hooks = [branch[-1].register_forward_hook(lambda module, inputs, output: caught.append(output))
             for branch in model.model[-1].cv3]
    with torch.no_grad():
        model(letterbox(torch.from_numpy(frames), geometry, torch.float32))
    for hook in hooks:
        hook.remove()
    return float(torch.cat([logits.flatten(2) for logits in caught], dim=2).amax(1).flatten().topk(rank).values[-1])


def test_a_lively_models_class_logits_are_scaled_into_conf_s_search(tmp_path, monkeypatch):
    """Where a lively model's best logits run past where scores can be told apart, no conf keeps a few instances
    a frame: the bench's model has them scaled until the `instances`-th best a frame lies at SEARCH_LOGIT, at the
    model's input size; a model already below it is left alone."""
    from ultralytics import YOLO

    import pipeline.bench.masks_bench
    from pipeline.bench.masks_bench import within_search
    from pipeline.datasets.sample import shape_clip

    frames = np.concatenate([shape_clip(2, 96, 64, seed=seed)[0] for seed in range(2)])

    def made(**kwargs):
        torch.manual_seed(0)
        model = YOLO("yolo11n-seg.yaml").model
        lively(model, frames, **kwargs)
        return model

    model = made(masks_fill=True)
    rank = 2 * len(frames)  # 2 instances a frame
    low = best_logit(model, frames, rank) + 1  # above the model's own: nothing to scale
    monkeypatch.setattr(pipeline.bench.masks_bench, "SEARCH_LOGIT", low)
    assert within_search(model, frames, instances=2) == 1.0
    untouched = made(masks_fill=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), untouched.state_dict().values()))
    target = best_logit(model, frames, rank) / 2  # half of where they are: scaled to it
    monkeypatch.setattr(pipeline.bench.masks_bench, "SEARCH_LOGIT", target)
    scale = within_search(model, frames, instances=2)
    assert scale == pytest.approx(0.5, rel=1e-4) and best_logit(model, frames, rank) == pytest.approx(target, rel=1e-4)
    # the bench's model (realistic_spec) is made so
    spec = realistic_spec(SegmenterSpec(model="yolo11n-seg.yaml", device="cpu"), FrameBatch(
        frames=frames, indices=np.arange(len(frames)), times=np.zeros(len(frames)), height=64, width=96),
        tmp_path, instances=2)
    saved = torch.load(spec.model, weights_only=False)["model"].float().eval()
    assert best_logit(saved, frames, rank) == pytest.approx(target, rel=1e-3)


def test_the_workers_probe_times_the_stage_in_local_workers_against_their_forward_at_once(tmp_path):
    """The CPU stage as `make masks` places it: in two local workers (not this process), each on its share of the
    cores, one clip a shard, both workers running shards; and the bare forward in both."""
    from pipeline.bench.workers import main as workers
    from pipeline.bench.workers import one_clip_a_shard
    from pipeline.gpu_workers import available_cores

    assert sum(index % 2 for index in one_clip_a_shard(8)) == 4  # half of each camera move, as the bench's clips

    report = workers(["--size", "96x64", "--clips", "4", "--frames", "8", "--batch", "4", "--rounds", "1",
                      "--seconds", "0.2", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "workers.json")])
    assert json.loads((tmp_path / "workers.json").read_text()) == report
    (done,) = report["rounds"]
    assert len(done["forward"]) == 2 and min(done["forward"]) > 0
    ran = done["workers"]
    assert len(ran) == 2 and sum(w["shards"] for w in ran.values()) == 4
    assert all(w["frames"] == 8 * w["shards"] for w in ran.values())  # one clip a shard
    assert sorted(int(name.rsplit(":", 1)[1]) for name in ran) == report["worker_pids"]
    assert os.getpid() not in report["worker_pids"]
    assert report["threads"] == max(1, available_cores() // 2)
    assert report["stage_frames_per_s"] == round(sum(w["frames_per_s"] for w in ran.values()), 1) > 0
    assert report["stage_vs_forward"] == round(report["stage_frames_per_s"] / report["forward_frames_per_s"], 3)
