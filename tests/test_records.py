"""A run's record changes only when something new is committed; Ctrl-C is an ordinary stop; a read-only OUT is
read when all is done; every clip that is not ok is named in problems.csv and the summary."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.engine.journal import read_tries
from tests.conftest import LUMA, ROOT, write_kinetics_csv
from tests.test_faults import env, wait_for
from tests.test_identity import only_run as run_folder

RECORD = ("run.json", "plan.json", "layout.json")


SLOW = "tests.segmenters:SlowLumaSegmenter"  # sleeps FAULT_SLEEP seconds per batch


def masks_argv(root: Path, out: Path, *extra: str, segmenter: str = LUMA) -> list[str]:
    return ["masks", "--dataset", "kinetics400", "--root", str(root), "--out", str(out), "--segmenter", segmenter,
            "--shard-size", "2", *extra]


def record_state(run_dir: Path) -> dict[str, tuple[str, int]]:
    """Each record file's sha256 and modification time."""
    return {name: (hashlib.sha256((run_dir / name).read_bytes()).hexdigest(), (run_dir / name).stat().st_mtime_ns)
            for name in RECORD}


def test_a_failed_start_leaves_a_finished_runs_record_as_it_was(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert main(masks_argv(root, out, "--workers", "0")) == 0
    run_dir = run_folder(out)
    before = record_state(run_dir)
    # no GPU 9 anywhere (the case: DEVICE=cuda OVERWRITE=1 where there is no such GPU)
    assert main(masks_argv(root, out, "--device", "cuda:9", "--overwrite", "--workers", "2")) == 2
    assert "no such CUDA device" in capsys.readouterr().err
    # a segmenter that cannot load, found only on the Dask workers
    assert main(masks_argv(root, out, "--overwrite", "--workers", "1", "--segmenter", "tests.segmenters:NoSuchClass")) == 2
    assert record_state(run_dir) == before
    assert list((out / "masks" / "kinetics400").iterdir()) == [run_dir]


def test_flags_that_select_or_schedule_work_are_not_provenance(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert main(masks_argv(root, out, "--workers", "0", "--limit", "1", "--batch", "4")) == 0
    run_dir = run_folder(out)
    run_json = (run_dir / "run.json").read_bytes()
    assert b'"limit"' not in run_json and b'"overwrite"' not in run_json and b'"workers"' not in run_json
    assert main(masks_argv(root, out, "--workers", "1", "--overwrite", "--splits", "val", "--batch", "8",
                           "--shard-size", "8", "--tag", run_dir.name)) == 0
    assert (run_dir / "run.json").read_bytes() == run_json
    stats = {path.name: path.read_text() for path in run_dir.glob("*_stats.json")}
    assert '"batch": 4' in stats["train-00000_stats.json"] and '"batch": 8' in stats["val-00000_stats.json"]


def test_problems_are_named_in_problems_csv_and_the_summary(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    (root / "val" / "corrupt_000000_000010.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    write_kinetics_csv(root, "val", [("juggling balls", "-clip4_x", 4, 14), ("juggling balls", "corrupt", 0, 10),
                                     ("juggling balls", "gone", 0, 10)])
    out = tmp_path / "out"
    assert main(masks_argv(root, out, "--workers", "0")) == 0
    printed = capsys.readouterr().out
    problems = run_folder(out) / "problems.csv"
    with open(problems, newline="") as f:
        rows = {row["clip_id"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"corrupt_000000_000010", "gone_000000_000010"}
    assert rows["gone_000000_000010"]["status"] == "missing" and "file not found" in rows["gone_000000_000010"]["error"]
    assert rows["corrupt_000000_000010"]["status"] == "decode_error"
    assert rows["gone_000000_000010"]["source"] == f"{root / 'annotations' / 'val.csv'}:4"
    assert rows["corrupt_000000_000010"]["split"] == "val" and rows["corrupt_000000_000010"]["shard"].startswith("val-")
    assert "problems: 2 clips not ok (decode_error 1, missing 1)" in printed
    assert "gone_000000_000010 [val] missing" in printed and str(problems) in printed
    # the render names the clips it could not render too
    assert main(["render", "--dataset", "kinetics400", "--out", str(out), "--workers", "0", "--variants", "bg"]) == 0
    rendered = run_folder(out).parents[2] / "renders" / "kinetics400" / run_folder(out).name / "bg" / "_status" / "mp4"
    assert {row["clip_id"] for row in csv.DictReader(open(rendered / "problems.csv"))} == set(rows)
    # the report lists them, with the CSV line that names each
    assert main(["manifests", "--dataset", "kinetics400", "--out", str(out)]) == 0
    assert main(["report", "--dataset", "kinetics400", "--out", str(out)]) == 0
    page = next((out / "reports" / "kinetics400").glob("*/index.html")).read_text()
    for clip_id, row in rows.items():
        assert clip_id in page and row["source"] in page


def test_problems_of_shards_committed_before_the_lists_come_from_their_status_rows(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    write_kinetics_csv(root, "val", [("juggling balls", "-clip4_x", 4, 14), ("juggling balls", "gone", 0, 10)])
    out = tmp_path / "out"
    assert main(masks_argv(root, out, "--workers", "0")) == 0
    run_dir = run_folder(out)
    listed = (run_dir / "problems.csv").read_text()
    assert "gone_000000_000010" in listed
    for stats in run_dir.glob("*_stats.json"):  # as written before the stats listed problems
        data = json.loads(stats.read_text())
        del data["problems"], data["made_with"]
        stats.write_text(json.dumps(data))
    (run_dir / "problems.csv").unlink()
    assert main(masks_argv(root, out, "--workers", "0")) == 0
    assert (run_dir / "problems.csv").read_text() == listed


def test_a_variant_whose_render_never_committed_is_not_a_rendered_one(shapes_dataset, tmp_path):
    """An interrupted first render leaves its claim's folder, but no record: manifests go on without it."""
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert main(masks_argv(root, out, "--workers", "0")) == 0
    assert main(["render", "--dataset", "kinetics400", "--out", str(out), "--workers", "0", "--variants", "bg"]) == 0
    interrupted = out / "renders" / "kinetics400" / run_folder(out).name / "person" / "_status" / "mp4"
    interrupted.mkdir(parents=True)
    (interrupted / ".train-00000_stats.json.lock").touch()
    assert main(["manifests", "--dataset", "kinetics400", "--out", str(out)]) == 0
    assert [p.name for p in (out / "manifests" / "kinetics400" / run_folder(out).name).iterdir()] == ["bg"]


def test_no_problems_is_a_header_only_list(shapes_dataset, tmp_path, capsys):
    root, _ = shapes_dataset
    assert main(masks_argv(root, tmp_path / "out", "--workers", "0")) == 0
    assert "problems:" not in capsys.readouterr().out
    assert (run_folder(tmp_path / "out") / "problems.csv").read_text() == "clip_id,split,status,error,shard,source\n"


def test_ctrl_c_to_the_process_group_stops_without_a_traceback_and_counts_no_tries(shapes_dataset, tmp_path):
    """SIGINT as a terminal sends it (to the whole process group: the Dask workers too), mid-run."""
    root, _ = shapes_dataset
    reference = tmp_path / "reference"
    assert main(masks_argv(root, reference, "--workers", "0", segmenter=SLOW)) == 0
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pipeline", *masks_argv(root, out, "--workers", "2", segmenter=SLOW)]
    run = subprocess.Popen(argv, cwd=ROOT, env=env(FAULT_SLEEP="0.3"), start_new_session=True, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: bool(list(out.rglob(".*_tries.json"))), what="a shard started")
    os.killpg(run.pid, signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    for noise in ("Traceback", "KeyboardInterrupt", "CancelledError"):
        assert noise not in stderr, stderr
    assert re.search(r"^interrupted: masks kinetics400: \d of 3 shards committed; rerun to resume$", stderr, re.M), stderr
    # the rerun: no clip needed another try, and the shards are the undisturbed run's bytes
    rerun = subprocess.run([sys.executable, "-m", "pipeline", *masks_argv(root, out, "--workers", "0", segmenter=SLOW)],
                           cwd=ROOT, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0 and "retried" not in rerun.stdout, rerun.stdout + rerun.stderr
    assert shard_files(run_folder(out)) == shard_files(run_folder(reference))


SLOW_STOP = """
import os, sys, time
from pathlib import Path
from pipeline.engine.commit import Commit
abort = Commit.abort
def slow_abort(self):  # stopping takes a while: the first Ctrl-C is being handled
    Path(os.environ["STOPPING"]).touch()
    time.sleep(30)
    return abort(self)
Commit.abort = slow_abort
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_ctrl_c_while_stopping_ends_at_once_without_a_traceback(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    out, stopping = tmp_path / "out", tmp_path / "stopping"
    argv = [sys.executable, "-c", SLOW_STOP, *masks_argv(root, out, "--workers", "0", segmenter=SLOW)]
    run = subprocess.Popen(argv, cwd=ROOT, env=env(FAULT_SLEEP="0.3", STOPPING=str(stopping)), start_new_session=True,
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # a clip's try begun: the shard's writer is open, so stopping goes through its abort (a journal alone can
    # appear while the stage is still opening, under load for a while, and a Ctrl-C there has nothing to abort)
    wait_for(lambda: any(read_tries(p) for p in out.rglob(".*_tries.json")), what="a clip's try begun")
    os.killpg(run.pid, signal.SIGINT)
    wait_for(stopping.exists, what="the first Ctrl-C being handled")
    started = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and time.monotonic() - started < 20, stderr  # not after the 30 s of stopping
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == "interrupted again (SIGINT): stopped at once", stderr
    counted = [read_tries(p) for p in out.rglob(".*_tries.json")]
    assert counted and all(e.failures == 0 for entries in counted for e in entries.values()), counted


def shard_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.glob("*.parquet")}


def test_a_read_only_out_is_read_when_all_is_done_and_refused_in_one_line_otherwise(shapes_dataset, tmp_path):
    """OUT bind-mounted read-only in a mount namespace of the command's own (needs root and unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare -m for a read-only bind mount")
    root, _ = shapes_dataset
    out = tmp_path / "out"
    assert main(masks_argv(root, out, "--workers", "0")) == 0
    assert main(["render", "--dataset", "kinetics400", "--out", str(out), "--workers", "0", "--variants", "bg"]) == 0
    assert main(["manifests", "--dataset", "kinetics400", "--out", str(out)]) == 0
    assert main(["report", "--dataset", "kinetics400", "--out", str(out)]) == 0
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}

    def read_only(*argv: str) -> subprocess.CompletedProcess:
        command = " ".join(f"'{a}'" for a in (sys.executable, "-m", "pipeline", *argv))
        script = f"mount --bind '{out}' '{out}' && mount -o remount,bind,ro '{out}' && {command}"
        return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env(), capture_output=True, text=True)

    done = read_only(*masks_argv(root, out, "--workers", "2"))
    assert done.returncode == 0 and "3 already done" in done.stdout, done.stderr
    for step in (["render", "--workers", "0", "--variants", "bg"], ["manifests"], ["report"]):
        done = read_only(step[0], "--dataset", "kinetics400", "--out", str(out), *step[1:])
        assert done.returncode == 0, done.stderr
    for work in (masks_argv(root, out, "--workers", "0", "--overwrite"),
                 ["render", "--dataset", "kinetics400", "--out", str(out), "--workers", "0", "--variants", "person"]):
        refused = read_only(*work)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.splitlines()[-1].endswith("make it writable, or pick another OUT"), refused.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == files
