"""The command line: bad input is one line and exit 2 with nothing written; the sample runs end to end."""

import argparse
import json
import os
import re

import numpy as np
import pytest

from pipeline.cli import build_parser, main
from pipeline.masks import load_clip_masks, read_clips
from pipeline.render.variants import PRESETS
from tests.conftest import LUMA


@pytest.mark.parametrize(
    "argv, message",
    [
        (["masks"], "the following arguments are required: --dataset"),
        (["masks", "--dataset", "sample", "--batch", "0"], "--batch: must be at least 1"),
        (["masks", "--dataset", "sample", "--device", "gpu"], "expected cpu, cuda or cuda:N"),
        (["masks", "--dataset", "sample", "--bogus"], "unrecognized arguments: --bogus"),
        (["masks", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["masks", "--dataset", "kinetics400"], "needs DATA_ROOT"),
        (["masks", "--dataset", "kinetics400", "--root", "/does/not/exist"], "/does/not/exist: dataset folder not found"),
        (["masks", "--dataset", "kinetics400", "--root", "/x", "--split-id", "2"], "kinetics400 has no official alternative splits"),
        (["masks", "--dataset", "ucf101", "--split-id", "4"], "--split-id: invalid choice: 4"),
        (["masks", "--dataset", "mimetics", "--root", "/does/not/exist"], "/does/not/exist: dataset folder not found"),
        (["masks", "--dataset", "sample", "--segmenter", "selfie", "--selfie-model", "/no/model.tflite"],
         "selfie model not found at /no/model.tflite"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    extra = ["--out", str(out), "--workers", "0"] if len(argv) > 1 else []
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (out / "masks").exists()


def test_yolo_without_weights_says_what_to_pass(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    code = main(["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(tmp_path),
                 "--model", str(tmp_path / "missing-seg.pt"), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "MODEL=/path/to/weights.pt" in err and "SEGMENTER=selfie" in err


def test_sample_end_to_end_on_dask_finds_people_and_reruns_instantly(tmp_path, capsys, selfie_model):
    argv = ["masks", "--dataset", "sample", "--out", str(tmp_path), "--selfie-model", str(selfie_model)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "masks sample: 10 clips (ok 10)" in printed and "3 computed" in printed
    (run_dir,) = (tmp_path / "masks" / "sample").iterdir()
    clips = read_clips(run_dir).to_pylist()
    coverage = {}
    for clip in clips:
        masks = load_clip_masks(run_dir, clip["clip_id"])
        coverage[clip["clip_id"]] = np.mean([masks.frame_mask(f).mean() for f in range(clip["frames"])])
    photo = {k: v for k, v in coverage.items() if k.startswith(("zidane", "bus"))}
    assert len(photo) == 7 and all(v > 0.05 for v in photo.values()), coverage
    assert all(coverage[k] > 0.3 for k in photo if k.startswith("zidane")), coverage
    assert main(argv) == 0
    assert "0 computed, 3 already done" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["render", "--dataset", "kinetics400"], "no masks yet; run `make masks DATASET=kinetics400` first"),
    (["render", "--dataset", "kinetics400", "--variants", "bg,nope"], "unknown variant(s) nope"),
    (["render", "--dataset", "kinetics400", "--define", "x:sky=keep"], "unknown keys ['sky']"),
    (["render", "--dataset", "kinetics400", "--format", "gif"], "invalid choice: 'gif'"),
    (["render", "--dataset", "kinetics400", "--pair-coverage", "0.5,0.1"], "LOW must not exceed HIGH"),
    (["manifests", "--dataset", "kinetics400"], "no masks yet; run `make masks DATASET=kinetics400` first"),
    (["report", "--dataset", "ucf101", "--split-id", "2"], "no masks yet; run `make masks DATASET=ucf101 SPLIT_ID=2` first"),
    # a typo is not a dataset without masks yet, at any stage
    (["render", "--dataset", "kinetcs400"], "unknown dataset 'kinetcs400'; known: sample, kinetics400, kinetics600"),
    (["manifests", "--dataset", "kinetcs400"], "unknown dataset 'kinetcs400'; known: sample, kinetics400"),
    (["report", "--dataset", "kinetcs400"], "unknown dataset 'kinetcs400'; known: sample, kinetics400"),
    (["evaluate", "--dataset", "kinetcs400", "--predictions", "p"], "unknown dataset 'kinetcs400'; known: sample"),
    (["evaluate", "--dataset", "kinetics400", "--predictions", "p"], "no masks yet; run `make masks DATASET=kinetics400` first"),
])
def test_later_stages_refuse_bad_input_in_one_line(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "renders").exists() and not (tmp_path / "manifests").exists()


def test_masks_render_manifests_report_through_the_cli_on_dask(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    out = ["--dataset", "kinetics400", "--out", str(tmp_path)]
    assert main(["masks", *out, "--root", str(root), "--segmenter", LUMA, "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "masks kinetics400: 5 clips (ok 5)" in printed
    # one train and one val shard (32 clips per shard by default), in this process
    assert re.search(rf"worker [^:]+:{os.getpid()}: 2 shards, 70 frames, [\d.]+ frames/s, peak \d+ MiB", printed)
    (tag,) = [p.name for p in (tmp_path / "masks" / "kinetics400").iterdir()]
    assert main(["render", *out, "--variants", "bg_obj2,swap,mine", "--define", "mine:background=blur(3)",
                 "--workers", "2", "--dilate", "1"]) == 0
    printed = capsys.readouterr().out
    assert "bg_obj2: 5 clips (ok 5)" in printed and "mine: 5 clips (ok 5)" in printed
    assert main(["manifests", *out, "--variants", "mine,human_onyl"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown variant 'human_onyl'; known: rendered bg_obj2, mine, "
                                               f"swap; presets {', '.join(PRESETS)}")
    assert main(["manifests", *out, "--variants", "human_only"]) == 2  # a preset, just not rendered
    assert "no renders for human_only; run `make render DATASET=kinetics400` first" in capsys.readouterr().err
    assert main(["manifests", *out]) == 0
    assert "manifests kinetics400/mine: mp4/train: ok 4; mp4/val: ok 1" in capsys.readouterr().out
    assert main(["report", *out]) == 0
    page = (tmp_path / "reports" / "kinetics400" / tag / "index.html").read_text()
    assert "<h3>Last masks run</h3>" in page and "2 computed, 0 already done, 0 failed" in page
    assert re.search(rf"<td>[^<]+:{os.getpid()}</td><td>2</td><td>70</td>", page), "the worker table"
    assert "WARNING" not in page
    summary = tmp_path / "masks" / "kinetics400" / tag / "summary.json"  # as a run that warned keeps it
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "warnings": ["counts <1> & <2>"]}))
    assert main(["report", *out]) == 0
    page = (tmp_path / "reports" / "kinetics400" / tag / "index.html").read_text()
    assert "<p><b>WARNING:</b> counts &lt;1&gt; &amp; &lt;2&gt;</p>" in page
    spec = (tmp_path / "renders" / "kinetics400" / tag / "mine" / "variant.mp4.json").read_text()
    assert '"background": "blur(3)"' in spec and '"dilate": 1' in spec


def test_help_lists_every_command_and_every_flag_has_help_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    top = parser.format_help()
    for name, sub in commands.choices.items():
        assert name in parser.description and re.search(rf"\n    {name} +\S", top), name
        formatter = sub._get_formatter()
        for action in sub._actions:
            if "-h" in action.option_strings:
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text.strip(), f"{name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, "", []):
                assert "default" in text, f"{name} {action.option_strings[0]}: {text}"
                if isinstance(action.default, (int, float, str, os.PathLike)):
                    shown = text.replace(", ", ",")  # a list of names may be spelled out with spaces
                    assert str(action.default) in shown, f"{name} {action.option_strings[0]}: {text}"
    masks_help = commands.choices["masks"].format_help()
    assert re.search(r"--device DEVICE +cpu, cuda \(one worker per visible GPU\) or cuda:N \(default: cpu\)", masks_help)
    assert re.search(r"--conf CONF +yolo score threshold \(default: 0.25\)", masks_help)


def test_threads_reach_the_masks_run_and_key_a_cpu_yolo_run():
    from pipeline.cli.configs import masks_config
    from pipeline.gpu_workers import available_cores

    def config(*flags: str):
        return masks_config(build_parser().parse_args(["masks", "--dataset", "kinetics400", "--segmenter", "yolo",
                                                        "--model", "yolo11n-seg.yaml", "--workers", "0", *flags]))

    three = config("--threads", "3")
    assert three.segmenter.threads == 3 and three.output_fields()["threads"] == 3
    assert config().segmenter.threads == 0 and config().output_fields()["threads"] == available_cores()
    assert config("--threads", "3", "--device", "cuda").run_tag() == config("--device", "cuda").run_tag()
