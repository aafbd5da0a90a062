"""scripts/gpu_check.sh's orchestration, with a stand-in for Python that answers at once: what it leaves in OUT
(the device tool brings back at most 8 files) and how it keeps to TOTAL_SECONDS (the tool stops a command at
600 s). The steps themselves are rehearsed on a CPU by hand (docs/PERFORMANCE.md, "GPU check")."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEVEN = ["bench-x.json", "bench.json", "compiled.json", "decoding.json", "env.txt", "hostcost.json", "log"]

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Answers each of gpu_check's calls at once: the versions (a script on stdin), the import check, the tests, and
# each bench, which writes its JSON where --out says.
echo "python $*" >> "$CALLS"
case "$1" in
    -) cat > /dev/null; echo "python 3.12.3 (stand-in)" ;;
    -c) ;;
    -m)
        case "$2" in
            pytest) echo "1 passed" ;;
            pipeline.bench)
                if [ -n "${FAIL_MODEL:-}" ] && printf '%s\n' "$@" | grep -qx -- --model; then exit 3; fi
                out=$(printf '%s\n' "$@" | grep -A1 -x -- --out | tail -1)
                case "$3" in
                    compiled | hostcost) if [ -n "${FAIL_PROBES:-}" ]; then exit 3; fi
                                         echo '{}' > "$out" ;;
                    decoding) if [ -n "${FAIL_PROBES:-}" ]; then exit 3; fi
                              json=$(printf '%s\n' "$@" | grep -A1 -x -- --json | tail -1)
                              mkdir -p "$out" && echo '{}' > "${json:-$out/decoding.json}" ;;
                    *) json=$(printf '%s\n' "$@" | grep -A1 -x -- --json | tail -1)  # and in OUT, as it goes
                       mkdir -p "$out" && echo '{"complete": true}' > "$out/bench.json"
                       if [ -n "$json" ]; then echo '{"complete": true}' > "$json"; fi
                       if [ -n "${BENCH_SLEEP:-}" ]; then sleep "$BENCH_SLEEP"; fi ;;
                esac ;;
        esac ;;
esac
"""


def gpu_check_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment that runs gpu_check with the stand-in Python (in tmp_path), its OUT tmp_path/out."""
    tmp_path.mkdir(exist_ok=True)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "wheels").mkdir()
    return {**os.environ, "PY": str(fake), "WHEELS": str(tmp_path / "wheels"), "WORK": str(tmp_path / "work"),
            "OUT": str(tmp_path / "out"), "CALLS": str(tmp_path / "calls"), **env}


def gpu_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path, str]:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env=gpu_check_env(tmp_path, **env))
    return done, tmp_path / "out", (tmp_path / "calls").read_text()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_the_gpu_check_leaves_seven_files_and_runs_every_step(tmp_path):
    done, out, calls = gpu_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == SEVEN
    assert "== done: tests exit 0, bench exit 0, bench of yolo11x-seg.yaml exit 0" in (out / "log").read_text()
    assert "-m pytest -q -rs -m gpu" in calls and "--masks-only --minutes 2 --out" in calls
    assert "--masks-only --model yolo11x-seg.yaml --sizes 340x256 --minutes 0.5 --out" in calls
    assert f"--json {out / 'decoding.json'}" in calls and "pipeline.bench compiled" in calls
    assert "pipeline.bench hostcost --repeat 2 --out" in calls


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_the_second_model_is_left_out_when_asked_and_skipped_without_time(tmp_path):
    done, out, calls = gpu_check(tmp_path / "none", X_MODEL="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--model" not in calls and "bench-x.json" not in [p.name for p in out.iterdir()]
    assert "bench of no second model exit 0" in (out / "log").read_text()
    done, out, calls = gpu_check(tmp_path / "short", TOTAL_SECONDS="65")  # the probes keep 60 s
    log = (out / "log").read_text()
    assert done.returncode == 1 and "--model" not in calls and "pipeline.bench decoding" in calls
    assert re.search(r"== bench of yolo11x-seg.yaml at 340x256: --minutes -?[\d.]+: skipped, ", log)
    assert "bench of yolo11x-seg.yaml exit 124" in log
    done, out, calls = gpu_check(tmp_path / "shrunk", TOTAL_SECONDS="200", X_MINUTES="1")
    minutes = float(re.search(r"--model yolo11x-seg.yaml --sizes 340x256 --minutes (\S+) ", calls)[1])
    assert done.returncode == 0 and 0.75 < minutes <= 50 / 60  # what is left less the probes' 60 s and 90 s (a
    # second or two less, if the clock's second turned since the script started)


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_the_second_bench_failing_fails_the_check(tmp_path):
    (tmp_path / "out").mkdir(parents=True)
    (tmp_path / "out" / "bench-x.json").write_text("{}")  # an earlier run's, in an OUT used again
    done, out, _ = gpu_check(tmp_path, FAIL_MODEL="1")
    assert done.returncode == 1
    log = (out / "log").read_text()
    assert "== done: tests exit 0, bench exit 0, bench of yolo11x-seg.yaml exit 3" in log
    assert "gpu_check: no bench-x.json" in log and not (out / "bench-x.json").exists()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_failed_probes_leave_no_earlier_reports(tmp_path):
    probes = ["compiled.json", "decoding.json", "hostcost.json"]
    (tmp_path / "out").mkdir(parents=True)
    for name in probes:  # an earlier run's, in an OUT used again
        (tmp_path / "out" / name).write_text('{"earlier": true}')
    done, out, _ = gpu_check(tmp_path, FAIL_PROBES="1")
    assert done.returncode == 0  # a probe's failure fails nothing
    log = (out / "log").read_text()
    for name in probes:
        assert f"gpu_check: no {name}" in log and not (out / name).exists()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_bench_args_reach_both_benches_and_the_scripts_own_flags_win(tmp_path):
    done, out, calls = gpu_check(tmp_path, BENCH_ARGS="--frames 8 --minutes 9 --sizes 160x96 --out /elsewhere")
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = [line for line in calls.splitlines() if "--masks-only" in line]
    assert first.endswith(f"--masks-only --frames 8 --minutes 9 --sizes 160x96 --out /elsewhere --minutes 2 --out "
                          f"{tmp_path / 'work' / 'bench'} --json {out / 'bench.json'}")
    assert second.endswith("--sizes 160x96 --out /elsewhere --model yolo11x-seg.yaml --sizes 340x256 --minutes 0.5 "
                           f"--out {tmp_path / 'work' / 'bench-x'} --json {out / 'bench-x.json'}")
    assert sorted(p.name for p in out.iterdir()) == SEVEN
    assert "== bench --frames 8 --minutes 9 --sizes 160x96 --out /elsewhere: --minutes 2, at most" in (
        out / "log").read_text()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_a_step_without_time_left_is_skipped_and_says_so(tmp_path):
    done, out, calls = gpu_check(tmp_path, TOTAL_SECONDS="150")  # the tests would leave the bench under 150 s
    log = (out / "log").read_text()
    assert done.returncode == 1
    assert "CUDA tests (-m gpu) in" in log and "s left of TOTAL_SECONDS=150" in log and "-m pytest" not in calls
    assert "== done: tests exit 124, bench exit 0" in log
    minutes = float(re.search(r"--masks-only --minutes (\S+) ", calls)[1])  # what is left less 90 s: 60 s (or
    assert 0.95 < minutes <= 1  # a second less, if the clock's second turned since the script started)
    assert "bench of yolo11x-seg.yaml exit 124" in log  # no 90 s left after the 60 s kept for the probes
    assert sorted(p.name for p in out.iterdir()) == sorted(set(SEVEN) - {"bench-x.json"})


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_a_bench_stopped_from_outside_leaves_what_it_wrote_in_out(tmp_path):
    """The device tool stops the whole command at its limit: a bench writes its JSON into OUT as it goes (--json),
    not only once it ends (the bench's own writing after each size: tests/test_bench.py, a bench stopped part
    way)."""
    env = gpu_check_env(tmp_path, BENCH_SLEEP="60")
    running = subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    copied = tmp_path / "out" / "bench.json"
    try:
        deadline = time.monotonic() + 30
        while not copied.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.poll() is None  # still in the bench, asleep
    finally:
        kill_session(running.pid)  # as the tool stops it: no step finishes
        running.wait()
    assert copied.read_text() == '{"complete": true}\n'
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "env.txt", "log"]


def kill_session(session: int) -> None:
    """SIGKILL to every process of a session (coreutils' timeout puts its command in a process group of its own)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
