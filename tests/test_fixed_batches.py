"""Mask bytes do not depend on scheduling: YOLO runs every batch of one frame size at one fixed shape (padded to
the batch size), and post-processes each instance at shapes of its own, so a clip's masks are the same bytes
whatever DECODERS, and whether its frames shared a batch with other clips' or ran alone.

The model is a yaml-built YOLO-seg made lively (outputs that depend on the image), saved as a checkpoint, so every
run loads the very same weights; on this CPU a batch of one frame and a batch of several already give different
bytes through the network alone, as a GPU does for every batch size."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.bench import lively
from pipeline.datasets.sample import shape_clip
from pipeline.decode import DecodeOptions, FrameBatch
from pipeline.executor import ExecOptions
from pipeline.gpu_workers import available_cores
from pipeline.masks import MasksConfig, run_masks
from pipeline.segment import RefineSpec, SegmenterSpec
from pipeline.segment.yolo import YoloSegmenter
from tests.test_masks_stage import config, shard_bytes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolo11n-seg.yaml")
    frames = np.concatenate([shape_clip(12, 96, 64, seed=seed)[0] for seed in range(3)])
    lively(yolo.model, frames)
    path = tmp_path_factory.mktemp("weights") / "lively-seg.pt"
    yolo.save(path)
    return path


def spec(checkpoint: Path) -> SegmenterSpec:
    return SegmenterSpec(backend="yolo", model=str(checkpoint), conf=0.05)


def test_shards_are_the_same_bytes_whatever_the_decoders(shapes_dataset, tmp_path, checkpoint):
    root, _ = shapes_dataset
    runs = {}
    for decoders in (1, 3):  # alone, the 13-frame clip ends in a batch of one frame
        summary = run_masks(config(root, tmp_path / f"d{decoders}", shard_size=6, segmenter=spec(checkpoint),
                                   decoders=decoders, decode=DecodeOptions(batch=6)), progress=False)
        assert summary.by_status == {"ok": 5}
        runs[decoders] = Path(summary.output)
    masks = [pq.read_table(p) for p in sorted(runs[1].glob("*-?????.parquet"))]
    assert sum(t.num_rows for t in masks) > 20  # the model finds instances: there are bytes to differ
    assert shard_bytes(runs[3]) == shard_bytes(runs[1]) != {}


@pytest.mark.parametrize("conf, frame", [(0.05, 4), (0.4, 5)])  # frame 5 has one instance at 0.4, frame 8 17
def test_a_frame_gets_the_same_masks_alone_or_among_others(checkpoint, conf, frame):
    """The same frame at another place of a batch, beside frames with many or no instances, or alone (padded to the
    batch size): the same boxes, scores and mask bytes."""
    frames = np.concatenate([shape_clip(12, 96, 64, seed=seed)[0] for seed in (0, 1)])  # (24, 64, 96, 3)
    segmenter = YoloSegmenter(dataclasses.replace(spec(checkpoint), conf=conf))

    def run(chosen: np.ndarray, capacity: int):
        batch = FrameBatch(frames=chosen, indices=np.arange(len(chosen)), times=np.zeros(len(chosen)), height=64,
                           width=96, capacity=capacity)
        return segmenter.segment(batch)

    together = run(frames[:12], 12)
    want = together[frame]
    assert len(want) and sum(len(found) for found in together) > 2 * len(want)
    for others in ([], [20, 21, 22], [8, 2, 7, 17, 13, 3, 9]):
        alone = run(frames[[*others, frame]], 12)[-1]  # the frame after the others
        np.testing.assert_array_equal(alone.xyxy, want.xyxy)
        np.testing.assert_array_equal(alone.conf, want.conf)
        assert alone.rle() == want.rle()


def test_the_batch_size_keys_the_run_where_it_shapes_the_masks(shapes_dataset, tmp_path, checkpoint):
    """A batch of another size may give other bytes (on this CPU a batch of one frame does, through the network
    alone; on a GPU any size may), so for YOLO BATCH and max_batch_mb are part of the run's fingerprint; for a
    segmenter that runs frame by frame they only schedule the work."""
    root, _ = shapes_dataset

    def tag(segmenter_spec: SegmenterSpec, **decode) -> str:
        return config(root, tmp_path, segmenter=segmenter_spec, decode=DecodeOptions(**decode)).run_tag()

    yolo = spec(checkpoint)
    assert len({tag(yolo, batch=16), tag(yolo, batch=8), tag(yolo, batch=16, max_batch_mb=64)}) == 3
    luma = SegmenterSpec(backend="tests.segmenters:LumaKeySegmenter")
    assert tag(luma, batch=16) == tag(luma, batch=8) == tag(luma, batch=16, max_batch_mb=64)


def test_an_instances_logits_do_not_depend_on_other_frames_instances():
    """Each frame's instances are one product of a shape of its own (here, one instance beside a frame of 20: on
    this CPU a product of one row and one of 20 give other last bits at this size)."""
    from pipeline.segment.mask_windows import instance_logits, logit_rows

    torch.manual_seed(0)
    proto, coeffs = torch.randn(2, 32, 80, 64), torch.randn(21, 32)

    def logits(frame: list[int], rank: list[int]) -> torch.Tensor:
        rows, plan = logit_rows(np.array(frame), np.array(rank), len(proto))
        return instance_logits(coeffs[:len(frame)], torch.from_numpy(rows), proto, torch.from_numpy(plan.frames), plan)

    alone = logits([0], [0])
    among = logits([0, *[1] * 20], [0, *range(20)])
    assert torch.equal(alone[0], among[0])  # with one product of 20 padded rows for both frames, they differ here


def test_a_cpu_runs_thread_count_keys_its_run_folder(shapes_dataset, tmp_path, checkpoint):
    """On a CPU the network's bytes differ with torch's thread count (WORKERS and the machine set it), so the
    count is part of the run tag: a run on another count starts a folder of its own and names the folder beside
    it that holds these settings' masks, with the THREADS that goes on with it; that count resumes it."""
    root, _ = shapes_dataset
    out = tmp_path / "run"

    def run(threads: int, **overrides):
        segmenter = dataclasses.replace(spec(checkpoint), threads=threads)
        return run_masks(config(root, out, shard_size=2, segmenter=segmenter, **overrides), progress=False)

    before = torch.get_num_threads()
    try:
        two = run(2)
        torch.set_num_threads(2)  # what ran before in this process does not set the count the shards run on
        one = run(1)
        torch.set_num_threads(3)
        again = run(2, overwrite=True, limit=1)  # the first folder again, its first shard redone
    finally:
        torch.set_num_threads(before)  # the stage set it for this process
    assert one.output != two.output == again.output
    assert (two.computed, one.computed, again.computed) == (3, 3, 1)
    assert two.made_with["threads"] == again.made_with["threads"] == {"2": 3} and one.made_with["threads"] == {"1": 3}
    assert json.loads((Path(two.output) / "run.json").read_text())["config"]["segmenter"]["threads"] == 2
    assert two.warnings == again.warnings == []  # the first folder is no new one
    (said,) = one.warnings
    assert f"{two.output} holds masks of these settings made on 2 torch threads; this run, on 1 torch threads, " \
           f"starts {Path(one.output).name}" in said and said.endswith("pass THREADS=2")
    assert "  WARNING: " + said in one.lines()
    assert json.loads((Path(one.output) / "summary.json").read_text())["warnings"] == one.warnings


def test_a_tag_folder_made_on_another_count_is_redone_and_the_run_says_so(shapes_dataset, tmp_path, checkpoint):
    root, _ = shapes_dataset
    before = torch.get_num_threads()

    def run(threads: int, **overrides):
        return run_masks(config(root, tmp_path / "run", shard_size=2, tag="mine", **overrides,
                                segmenter=dataclasses.replace(spec(checkpoint), threads=threads)), progress=False)

    try:
        two = run(2)
        one = run(1, limit=1)  # its first shard redone on 1 thread
        back = run(2)  # as the warning says: the two shards made on 2 threads kept, the first redone again
    finally:
        torch.set_num_threads(before)
    assert one.output == two.output == back.output and two.warnings == []
    assert (two.computed, one.computed, back.computed) == (3, 1, 1)
    said = "kinetics400: {}'s record says its masks were last made on {} torch threads; this run, on {} torch " \
        "threads, redoes every shard made on another count: on a CPU the count shapes the masks' last bits; to go " \
        "on with those, pass THREADS={}"
    assert one.warnings == [said.format(two.output, 2, 1, 2)]
    assert back.warnings == [said.format(two.output, 1, 2, 1)]


def test_a_cpu_run_without_threads_runs_on_the_count_it_is_keyed_by(shapes_dataset, tmp_path, checkpoint):
    """The default count (the cores this process may run on, in-process) is the one the shards run on, whatever
    count this process had before."""
    root, _ = shapes_dataset
    cores, before = available_cores(), torch.get_num_threads()
    try:
        torch.set_num_threads(1 if cores > 1 else 2)  # not the count the run is keyed by
        summary = run_masks(config(root, tmp_path / "run", shard_size=2, segmenter=spec(checkpoint)), progress=False)
    finally:
        torch.set_num_threads(before)
    assert json.loads((Path(summary.output) / "run.json").read_text())["config"]["segmenter"]["threads"] == cores
    assert summary.made_with["threads"] == {str(cores): 3}


def test_shards_that_ran_on_cpus_of_different_kinds_say_so(shapes_dataset, tmp_path, checkpoint, monkeypatch,
                                                          capsys):
    """A run folder whose current shards were segmented on machines of different kinds of CPU is named in the
    summary, by the run that mixed it and by any later one, and `pipeline status` shows what the last said."""
    import pipeline.masks.stage
    from pipeline.cli import main
    from pipeline.machine import cpu_kind

    root, _ = shapes_dataset
    alike = run_masks(config(root, tmp_path / "run", shard_size=2, segmenter=spec(checkpoint)), progress=False)
    monkeypatch.setattr(pipeline.masks.stage, "cpu_kind", lambda: "another CPU")
    mixed = run_masks(config(root, tmp_path / "run", shard_size=2, segmenter=spec(checkpoint), overwrite=True,
                             limit=1), progress=False)
    later = run_masks(config(root, tmp_path / "run", shard_size=2, segmenter=spec(checkpoint)), progress=False)
    assert alike.warnings == [] and (mixed.computed, later.computed) == (1, 0)
    for summary in (mixed, later):
        assert len(summary.warnings) == 1 and "machines of different kinds (shards on each: " in summary.warnings[0]
        assert "1 on another CPU" in summary.warnings[0] and f"2 on {cpu_kind()}" in summary.warnings[0]
    capsys.readouterr()
    assert main(["status", "--dataset", "kinetics400", "--out", str(tmp_path / "run")]) == 0
    assert f"  WARNING: {mixed.warnings[0]}\n" in capsys.readouterr().out  # from the shards, as they are now
    monkeypatch.undo()
    alike_again = run_masks(config(root, tmp_path / "run", shard_size=2, segmenter=spec(checkpoint), overwrite=True,
                                   limit=1), progress=False)  # the odd shard made again here: alike
    assert alike_again.computed == 1 and alike_again.warnings == []
    assert main(["status", "--dataset", "kinetics400", "--out", str(tmp_path / "run")]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_shards_on_workers_of_a_scheduler_started_elsewhere_that_ran_on_other_counts_say_so(shapes_dataset, tmp_path,
                                                                                         checkpoint):
    """Where each worker runs on its own default count (a scheduler started elsewhere, no THREADS), the count is
    not known when the run is planned and cannot key it: a run folder whose current shards ran on different
    counts is named in the summary, by the run that mixed it and by any later one."""
    from distributed import Client, LocalCluster

    from pipeline.machine import cpu_kind

    root, _ = shapes_dataset
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        def run(threads: int, **overrides):  # the worker's default, set on its one task thread
            client.submit(torch.set_num_threads, threads, pure=False).result()
            return run_masks(config(root, tmp_path / "run", shard_size=2, segmenter=spec(checkpoint),
                                    execution=ExecOptions(scheduler=cluster.scheduler_address), **overrides),
                             progress=False)

        alike = run(2)  # every shard on 2 threads
        mixed = run(1, overwrite=True, limit=1)  # the first shard again, on 1 thread
        later = run(2)  # nothing to compute: the folder's shards as they are
    assert json.loads((Path(alike.output) / "run.json").read_text())["config"]["segmenter"]["threads"] == 0
    assert alike.made_with["threads"] == {"2": 3} and alike.warnings == []
    assert alike.made_with["cpu"] == {cpu_kind(): 3}  # what each shard ran on, for the run to compare
    assert mixed.output == later.output == alike.output and mixed.computed == 1 and later.computed == 0
    for summary in (mixed, later):
        assert summary.made_with["threads"] == {"1": 1, "2": 2} and len(summary.warnings) == 1
        assert "(shards on so many threads: 1 on 1, 2 on 2)" in summary.warnings[0]
        assert "  WARNING: " + summary.warnings[0] in summary.lines()


def test_the_thread_count_keys_cpu_runs_of_torch_networks_only(tmp_path):
    yolo = SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml")

    def keyed(segmenter: SegmenterSpec, **execution) -> dict:
        return MasksConfig(dataset="sample", out=tmp_path, segmenter=segmenter,
                           execution=ExecOptions(**execution)).threads_field()

    cores = available_cores()  # those this process may run on
    assert keyed(yolo, workers=0) == {"threads": cores}  # in this process: all of them
    assert MasksConfig(dataset="sample", segmenter=yolo).output_fields()["threads"] == max(1, cores // 2)  # the tag's
    assert keyed(yolo, workers=2) == {"threads": max(1, cores // 2)}
    assert keyed(dataclasses.replace(yolo, threads=3), workers=2) == {"threads": 3}
    assert keyed(yolo, scheduler="tcp://elsewhere:8786") == {"threads": 0}  # each worker's default
    assert keyed(dataclasses.replace(yolo, threads=3), scheduler="tcp://elsewhere:8786") == {"threads": 3}
    assert keyed(SegmenterSpec(backend="selfie", refine=RefineSpec(checkpoint="random")), workers=1) == \
        {"threads": cores}  # SAM runs on torch
    assert keyed(dataclasses.replace(yolo, device="cuda")) == {}
    assert keyed(SegmenterSpec(backend="selfie")) == {}
    assert keyed(SegmenterSpec(backend="tests.segmenters:LumaKeySegmenter")) == {}


def test_a_new_cpu_run_folder_names_the_folders_beside_it_of_these_settings(tmp_path):
    from pipeline.masks.threads import other_thread_runs

    config = MasksConfig(dataset="sample", out=tmp_path, execution=ExecOptions(workers=0),
                         segmenter=SegmenterSpec(backend="yolo", model="yolo11n-seg.yaml", threads=2))
    beside = config.run_dir().parent

    def made(folder: str, record: dict) -> None:
        (beside / folder).mkdir(parents=True)
        (beside / folder / "run.json").write_text(json.dumps(record))

    def run_on(threads: int, execution: ExecOptions = config.execution, **segmenter) -> dict:
        other = dataclasses.replace(config, execution=execution,
                                    segmenter=dataclasses.replace(config.segmenter, threads=threads, **segmenter))
        return {"config": other.provenance(), "fingerprint": other.fingerprint()}

    on_three = dataclasses.replace(config, segmenter=dataclasses.replace(config.segmenter, threads=3)).run_tag()
    made(on_three, run_on(3))  # the folder THREADS=3 goes on with
    made("three", run_on(3))  # one a TAG named
    made("remote", run_on(0, ExecOptions(scheduler="tcp://elsewhere:8786")))
    made("two", run_on(2))  # this run's own settings and count: not named
    made("conf", run_on(3, conf=0.5))  # other settings
    old = run_on(2)  # made before the count keyed the folder: run.json and run tag without it
    del old["config"]["segmenter"]["threads"]
    old["fingerprint"] = hashlib.sha256(json.dumps({k: v for k, v in config.output_fields().items() if k != "threads"},
                                                   sort_keys=True, default=str).encode()).hexdigest()[:10]
    made("before", old)
    made("broken", {"config": "not a record"})
    (beside / "empty").mkdir()
    said = other_thread_runs(config)
    assert len(said) == 4
    assert said[0].startswith(f"{beside / 'before'} holds masks of these settings made before the thread count keyed")
    assert said[0].endswith("last bits")  # no way to go on with it
    assert said[1] == f"{beside / 'remote'} holds masks of these settings made on each worker's own torch thread " \
        f"count; this run, on 2 torch threads, starts {config.run_tag()}: on a CPU the count shapes the masks' " \
        "last bits; to go on with remote, run on workers of a scheduler started elsewhere, without THREADS TAG=remote"
    assert said[2].startswith(f"{beside / 'three'} holds masks of these settings made on 3 torch threads; this run")
    assert said[2].endswith("; to go on with three, pass THREADS=3 TAG=three")
    assert said[3].startswith(f"{beside / on_three} holds masks of these settings made on 3 torch threads")
    assert said[3].endswith(f"; to go on with {on_three}, pass THREADS=3")
    assert other_thread_runs(dataclasses.replace(config, segmenter=dataclasses.replace(config.segmenter,
                                                                                       device="cuda"))) == []
    tagged = other_thread_runs(dataclasses.replace(config, tag="mine"))  # THREADS=3 alone would go to mine
    assert tagged[3].endswith(f"; to go on with {on_three}, pass THREADS=3 TAG={on_three}")
    made(config.run_tag(), run_on(2))
    assert other_thread_runs(config) == []  # this run goes on with its own folder


def test_the_mixed_threads_warning_is_for_torch_networks_on_a_cpu():
    from pipeline.masks.threads import machine_warnings

    made = {"device": {"cpu": 12}, "threads": {"2": 2, "10": 10}}
    (said,) = machine_warnings("k", True, made)
    assert "(shards on so many threads: 2 on 2, 10 on 10)" in said  # by count
    assert machine_warnings("k", False, made) == []  # not torch (selfie, one of your own)
    assert machine_warnings("k", True, {**made, "device": {"cuda": 12}}) == []  # the GPU's bytes
    assert machine_warnings("k", True, {**made, "threads": {"2": 12}}) == []
    assert machine_warnings("k", True, {**made, "threads": {"0": 4, "2": 8}}) == []  # 0: stats of before, unknown


def test_which_segmenters_and_records_are_torch_networks(tmp_path):
    from pipeline.masks.threads import torch_network_of
    from pipeline.segment import RefineSpec

    assert SegmenterSpec(backend="yolo").torch_network
    assert SegmenterSpec(backend="selfie", refine=RefineSpec(checkpoint="random")).torch_network  # SAM runs on torch
    assert not SegmenterSpec(backend="selfie").torch_network
    assert not SegmenterSpec(backend="tests.segmenters:LumaKeySegmenter").torch_network
    def run_with(record) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps(record))
        return folder

    assert torch_network_of(run_with({"config": {"segmenter": {"backend": "yolo"}}}))
    assert torch_network_of(run_with({"config": {"segmenter": {"backend": "selfie", "refine": {"model": "vit_b"}}}}))
    assert not torch_network_of(run_with({"config": {"segmenter": {"backend": "selfie"}}}))
    assert not torch_network_of(run_with({})) and not torch_network_of(run_with({"config": "not a record"}))
    assert not torch_network_of(tmp_path / "none")  # no record yet


def test_the_mixed_machines_warning_is_for_torch_networks_on_a_cpu_and_for_gpus():
    from pipeline.machine import cpu_kind
    from pipeline.masks.threads import machine_warnings

    assert cpu_kind().split(": ")[1]  # this machine's instruction sets, as each CPU shard's stats keep them
    made = {"device": {"cpu": 5}, "cpu": {"AVX2: avx avx2 fma": 3, "AVX512: avx avx2 avx512f fma": 2}}
    (said,) = machine_warnings("k", True, made)
    assert said.startswith("k: the shards ran on a CPU on machines of different kinds (shards on each: 3 on AVX2: "
                           "avx avx2 fma; 2 on AVX512: avx avx2 avx512f fma); their masks may differ")
    assert machine_warnings("k", False, made) == []  # not torch
    assert machine_warnings("k", True, {**made, "device": {"cpu": 4, "cuda": 1}}) == []  # not all on one side
    assert machine_warnings("k", True, {**made, "cpu": {"AVX2: avx avx2 fma": 5}}) == []
    assert machine_warnings("k", True, {"device": {"cpu": 5}}) == []  # stats of before, all alike: unknown
    # shards made before the record beside one recorded kind: nothing can be said; beside two, they are named
    assert machine_warnings("k", True, {"device": {"cpu": 5}, "cpu": {"AVX2: avx avx2 fma": 3}}) == []
    (older,) = machine_warnings("k", True, {**made, "device": {"cpu": 7}})
    assert "(shards on each: 3 on AVX2: avx avx2 fma; 2 on AVX512: avx avx2 avx512f fma, and 2 made before the " \
        "kind was recorded)" in older
    gpus = {"device": {"cuda:0": 4, "cuda:1": 2}, "gpu": {"NVIDIA H100 80GB HBM3": 4, "NVIDIA A100-SXM4-80GB": 2}}
    (said,) = machine_warnings("k", True, gpus)
    assert "ran on GPUs of different models (shards on each: 2 on NVIDIA A100-SXM4-80GB; 4 on NVIDIA H100" in said
    assert machine_warnings("k", True, {**gpus, "gpu": {"NVIDIA H100 80GB HBM3": 6}}) == []
    assert machine_warnings("k", False, gpus) == []


def test_a_shard_records_the_machine_its_network_ran_on(monkeypatch):
    """A CPU shard of a torch network records its CPU's kind, a CUDA one its GPU's model; other segmenters
    neither."""
    import pipeline.masks.stage
    from pipeline.machine import cpu_kind
    from pipeline.masks.stage import MasksStage
    from pipeline.tracking import TrackOptions

    monkeypatch.setattr(pipeline.masks.stage, "gpu_model", lambda device: f"a GPU at {device}")
    made = {}
    for name, segmenter in (("cpu", SegmenterSpec(backend="yolo", device="cpu")),
                            ("cuda", SegmenterSpec(backend="yolo", device="cuda:1")),
                            ("selfie", SegmenterSpec(backend="selfie", device="cpu"))):
        made[name] = MasksStage(segmenter=segmenter, decode=DecodeOptions(), track=TrackOptions(), metadata={},
                                decoders=1).made_with()
    assert made["cpu"]["cpu"] == cpu_kind() and "gpu" not in made["cpu"]
    assert made["cuda"]["gpu"] == "a GPU at cuda:1" and "cpu" not in made["cuda"]
    assert "cpu" not in made["selfie"] and "gpu" not in made["selfie"]
