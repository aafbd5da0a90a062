"""`pipeline status`: a dataset's masks run and renders, finished or in progress, read without writing."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.cli import main
from tests.conftest import ROOT
from tests.test_faults import env, wait_for
from tests.test_masks_stage import add_bright_clip
from tests.test_progress import FAILING, GATE

GATED = "tests.test_progress:GatedSegmenter"


def masks(root: Path, out: Path, segmenter: str, *extra: str) -> list[str]:
    return ["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(out), "--segmenter", segmenter,
            "--shard-size", "2", "--workers", "0", *extra]


def status(out: Path, capsys) -> str:
    assert main(["status", "--dataset", "kinetics400", "--out", str(out)]) == 0
    return capsys.readouterr().out


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under OUT, with its size and modification time."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in [out, *out.rglob("*")]}


def test_a_finished_run_counts_what_its_shards_hold_and_status_writes_nothing(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    add_bright_clip(root)  # fails its one try
    out = tmp_path / "out"
    assert main(masks(root, out, FAILING, "--max-tries", "1")) == 0
    assert main(["render", "--dataset", "kinetics400", "--out", str(out), "--variants", "bg", "--workers", "0"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    text = status(out, capsys)
    assert snapshot(out) == before, "status wrote nothing"
    run = next((out / "masks" / "kinetics400").iterdir()).name
    assert f"masks kinetics400/{run}: {out / 'masks' / 'kinetics400' / run}" in text
    masks_part, render_part = text.split("render bg (mp4)")
    assert "shards: 3 of 3 done, 0 claimed now, 0 remaining, 0 failed\n" in masks_part
    assert "clips: 6 done (failed 1, ok 5); 0 finished in claimed shards; 0 to go\n" in masks_part
    assert "1x failed: gave up after 1 tries: RuntimeError: injected model failure (e.g. zzbright_000000_000010)" \
        in masks_part
    assert "shards: 3 of 3 done, 0 claimed now, 0 remaining, 0 failed\n" in render_part
    assert re.search(r"clips: 6 done \(.*ok 5.*\)", render_part), render_part
    assert re.search(r"rate: [\d.,]+ frames/s, [\d.,]+ clips/s over the last \d+s; all done", masks_part), masks_part


def test_a_run_in_progress_shows_its_claimed_shard_holder_and_clips(shapes_dataset, tmp_path, capsys):
    """The run waits in its second shard's second clip (the gated segmenter's fourth call) while status reads it."""
    root, _ = shapes_dataset
    out, gate = tmp_path / "out", tmp_path / "gate"
    run = subprocess.Popen([sys.executable, "-m", "pipeline", *masks(root, out, GATED)], cwd=ROOT,
                           env=env(**{GATE: str(gate), "PROGRESS_GATE_AT": "4"}), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    def second_shard_has_a_clip() -> bool:
        journal = next(out.rglob(".train-00001_tries.json"), None)
        return journal is not None and b'"ev":"ok"' in journal.read_bytes()

    try:
        wait_for(second_shard_has_a_clip, what="a clip of the second shard")
        text = status(out, capsys)
    finally:
        gate.touch()
        output = run.communicate(timeout=120)[0]
    assert run.returncode == 0, output
    assert "shards: 1 of 3 done, 1 claimed now, 1 remaining, 0 failed\n" in text, text
    assert "clips: 2 done (ok 2); 1 finished in claimed shards; 2 to go\n" in text, text
    assert re.search(rf"claimed: train-00001 by {re.escape(socket.gethostname())}:{run.pid} for \d+s, 1 clip "
                     r"finished, last \d+s ago", text), text
    assert re.search(r"rate: [\d.,]+ frames/s, [\d.,]+ clips/s over the last \d+s; ETA \d+", text), text
    assert "clips: 2 done" not in status(out, capsys), "finished since"


def test_a_shard_given_up_for_a_machine_error_is_failed_with_its_error(shapes_dataset, tmp_path, capsys,
                                                                        monkeypatch):
    root, _ = shapes_dataset
    monkeypatch.setenv("FAULT_ONCE", str(tmp_path / "flag"))
    (tmp_path / "flag").touch()
    assert main(masks(root, tmp_path / "out", "tests.segmenters:DeviceErrorOnceSegmenter")) == 1
    text = status(tmp_path / "out", capsys)
    assert "shards: 0 of ? done, 0 claimed now, ? remaining, 1 failed (no plan yet" in text, text
    assert "failed: train-00000: machine error: RuntimeError: CUDA error: an illegal memory access" in text, text


def test_status_without_a_masks_run_is_one_line(tmp_path, capsys):
    assert main(["status", "--dataset", "kinetics400", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'masks' / 'kinetics400'}: no masks run yet")
    assert not list(tmp_path.iterdir())


def test_a_corrupt_plan_is_one_line_naming_it(tmp_path, capsys):
    run = tmp_path / "masks" / "kinetics400" / "selfie-0123456789"
    run.mkdir(parents=True)
    (run / "plan.json").write_text('{"train-00000": ')  # cut short (not by this project: it renames into place)
    assert main(["status", "--dataset", "kinetics400", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run / 'plan.json'}: not a plan (")
