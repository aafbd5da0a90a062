#!/usr/bin/env bash
# One command for a GPU machine that starts bare (torch preinstalled, no network, no venv): install what it lacks
# from the wheels carried in .whl/, run the CUDA tests (those marked `gpu`), then the masks bench
# (`python -m pipeline.bench --masks-only`: make bench would build a venv), and leave the JSON and logs in $OUT:
#   log (everything, the tests' and the bench's output too), env.txt (machine, versions), bench.json; then a
#   second, shorter bench of the largest model at the small size (bench-x.json: the issue's goal for
#   yolo11x-seg; like the tests and the first bench, its failure or skip fails the check), and three probes, whose
#   failure fails nothing: hostcost.json (where the device path's host time goes, batch by batch, and how fast
#   this host is), decoding.json (decoders on threads or processes beside a busy thread) and compiled.json (the
#   forward eager, compiled, as CUDA graphs). Seven files: the device tool brings back at most 8.
# Rehearse it on a CPU first (the CUDA tests skip, the bench runs on the CPU), e.g.:
#   OUT=/tmp/out-gpucheck PY=.venv/bin/python BENCH_MINUTES=0.5 BENCH_ARGS="--frames 8" scripts/gpu_check.sh
# Settings (environment): OUT (default ./gpu-check), PY (python3), WHEELS (.whl), WORK (/tmp/gpu-check: the
# installed wheels, bench clips; emptied first), BENCH_MINUTES (2), BENCH_ARGS (extra flags of both benches),
# TEST_SECONDS (120), X_MODEL (yolo11x-seg.yaml; empty: no second bench), X_MINUTES (0.5), PROBE_SECONDS (40),
# PROBE_DECODERS (half the cores), COMPILE_SECONDS (60), HOSTCOST_SECONDS (60), TOTAL_SECONDS (560: the device
# tool stops a command at 600, counted here from the script's start). The steps' own limits add up to 610 s: each
# bench's budget shrinks to fit, each probe's limit to what is left (less what it keeps for the probes after it),
# a step with under 10 s left is skipped, and says so; each step is killed 10 s after its limit if SIGTERM does not
# stop it. The benches and the probes rewrite their JSON in OUT as they go (the decoding probe after each size), so
# a command stopped from outside keeps what was measured. The wheels: scripts/gpu_wheels.sh (docs/PERFORMANCE.md,
# "GPU check"). About 9 min 20 s at most, if the wheels install and the versions are read in their usual seconds
# (they have no limit of their own).
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/gpu-check}
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
WORK=${WORK:-/tmp/gpu-check}
BENCH_MINUTES=${BENCH_MINUTES:-2}
TEST_SECONDS=${TEST_SECONDS:-120}
X_MODEL=${X_MODEL-yolo11x-seg.yaml}
X_MINUTES=${X_MINUTES:-0.5}
PROBE_SECONDS=${PROBE_SECONDS:-40}
PROBE_DECODERS=${PROBE_DECODERS:-$(( $(nproc) > 2 ? $(nproc) / 2 : 1 ))}
COMPILE_SECONDS=${COMPILE_SECONDS:-60}
HOSTCOST_SECONDS=${HOSTCOST_SECONDS:-60}
TOTAL_SECONDS=${TOTAL_SECONDS:-560}
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
for report in bench.json bench-x.json hostcost.json decoding.json compiled.json; do  # what the steps write in OUT:
    rm -f "$OUT/$report"  # not an earlier run's (OUT is not emptied), so that a step that writes none leaves none
done
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$WORK/ultralytics MPLCONFIGDIR=$WORK/matplotlib

left() {  # seconds left of TOTAL_SECONDS, less $1 kept back
    echo $(( TOTAL_SECONDS - SECONDS - ${1:-0} ))
}

at_most() {  # the smaller of two numbers of seconds
    echo $(( $1 < $2 ? $1 : $2 ))
}

budget() {  # budget MINUTES RESERVE: a bench's --minutes (MINUTES, or what is left less RESERVE and 90 s for what
    # runs past it: loading, the last measurement) and its limit in seconds (under 10: it is skipped)
    local minutes
    minutes=$(awk "BEGIN {m = ($(left "$2") - 90) / 60; print (m < $1 ? m : $1)}")
    echo "$minutes $(awk "BEGIN {s = int($minutes * 60); print (s < 10 ? s : s + 90)}")"
}

run_bench() {  # run_bench WHAT JSON MINUTES RESERVE FLAGS...: the masks bench in its budget, its bench.json also
    # written to OUT/JSON after each size (if the device tool stops the whole command mid-bench, the sizes done stay)
    local what=$1 json=$2 minutes seconds status
    read -r minutes seconds < <(budget "$3" "$4")
    shift 4
    bounded "$seconds" "$what: --minutes $minutes" "$PY" -m pipeline.bench --masks-only "$@" --minutes "$minutes" \
        --out "$WORK/${json%.json}" --json "$OUT/$json"
    status=$?
    written "$json"
    return "$status"
}

written() {  # written JSON: says so where a step left no OUT/JSON (it failed, was skipped or stopped first)
    [ -f "$OUT/$1" ] || echo "gpu_check: no $1"
}

bounded() {  # bounded SECONDS WHAT COMMAND...: run it for at most SECONDS (skipped under 10: exit 124)
    local seconds=$1 what=$2
    shift 2
    if [ "$seconds" -lt 10 ]; then
        echo "== $what: skipped, a limit of ${seconds}s with $(left)s left of TOTAL_SECONDS=$TOTAL_SECONDS"
        return 124
    fi
    echo "== $what, at most ${seconds}s"
    timeout -k 10 "$seconds" "$@"
}

main() {
    echo "== gpu_check $(date -u +%FT%TZ) in $PWD, python $PY"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$WHEELS"/*.whl || { echo "gpu_check: installing the wheels in $WHEELS failed (see above)"; return 2; }
        export PYTHONPATH=$WORK/site:$PWD
    else
        echo "== no wheels in $WHEELS: using the packages $PY already has"
        export PYTHONPATH=$PWD
    fi
    {
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
        "$PY" - <<'EOF'
import importlib.metadata as md, os, platform, torch
print("python", platform.python_version(), "cpus", os.cpu_count())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("torchvision", "ultralytics", "av", "dask", "distributed", "pycocotools", "numpy", "pyarrow",
             "opencv-python-headless", "opencv-python", "nvidia-ml-py"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "absent")
if torch.cuda.is_available():  # what transfer.PinnedFrames and device_rle rely on, in this torch
    from pipeline.segment.device_rle import static_nonzero
    from pipeline.segment.transfer import empty_pinned_cache, pinned_bytes

    torch.cuda.init()
    before = pinned_bytes()
    block = torch.empty(1 << 20, dtype=torch.uint8, pin_memory=True)
    during = pinned_bytes()
    del block
    cached = pinned_bytes()
    empty_pinned_cache()
    after = pinned_bytes()
    counts = None not in (before, during, cached) and during >= before + (1 << 20) and cached >= during
    print("pinned-memory statistics:", "present" if before is not None else "ABSENT: PinnedFrames pins no frames",
          "(informative: a 1 MiB block pinned, then cached,", "counted)" if counts else
          f"not counted as expected: {before}, {during}, {cached})")
    print("cached pinned blocks:", "handed back" if counts and after <= before else
          f"NOT handed back ({cached} -> {after}): PinnedFrames' hand-backs free nothing")
    here = torch.device("cuda", torch.cuda.current_device())
    print("nonzero_static on CUDA:", "yes" if static_nonzero(here) else "NO (each RLE chunk waits for the GPU)")
EOF
    } 2>&1 | tee "$OUT/env.txt"
    "$PY" -c "import av, cv2, distributed, pycocotools, torch, ultralytics" \
        || { echo "gpu_check: a package the pipeline needs cannot be imported (see above); add its wheel to $WHEELS (scripts/gpu_wheels.sh, run where the package index is)"
             return 2; }

    local tests=0
    mapfile -t gpu_tests < <(grep -l "mark.gpu" tests/test_*.py)
    if [ "${#gpu_tests[@]}" -gt 0 ]; then
        # the bench keeps 150 s at least
        bounded "$(at_most "$TEST_SECONDS" "$(left 150)")" "CUDA tests (-m gpu) in ${gpu_tests[*]}" \
            "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider "${gpu_tests[@]}"
        tests=$?
    else
        echo "== no test file marks a test gpu"
    fi

    # shellcheck disable=SC2086 # BENCH_ARGS is a list of flags (before --minutes and --out, which win)
    run_bench "bench${BENCH_ARGS:+ $BENCH_ARGS}" bench.json "$BENCH_MINUTES" 0 $BENCH_ARGS
    local bench=$? x_bench=0
    if [ -n "$X_MODEL" ]; then  # 60 s at least kept for the probes
        # shellcheck disable=SC2086 # and before the model and the size too
        run_bench "bench of $X_MODEL at 340x256" bench-x.json "$X_MINUTES" 60 $BENCH_ARGS --model "$X_MODEL" \
            --sizes 340x256
        x_bench=$?
    fi

    # the other probes keep 30 s
    bounded "$(at_most "$HOSTCOST_SECONDS" "$(left 30)")" "the device path's host time, and this host's speed" \
        "$PY" -m pipeline.bench hostcost --repeat 2 --out "$OUT/hostcost.json"
    written hostcost.json
    bounded "$(at_most "$PROBE_SECONDS" "$(left 20)")" "decoders on threads or in processes beside a busy thread" \
        "$PY" -m pipeline.bench decoding --decoders "$PROBE_DECODERS" --clips "$((2 * PROBE_DECODERS))" \
        --frames 60 --out "$WORK/decoding" --json "$OUT/decoding.json"  # the compile probe keeps 20 s
    written decoding.json
    bounded "$(at_most "$COMPILE_SECONDS" "$(left)")" "the forward eager or compiled (torch.compile, CUDA graphs)" \
        "$PY" -m pipeline.bench compiled --seconds 5 --out "$OUT/compiled.json"
    written compiled.json
    local files
    files=$(find "$OUT" -type f | wc -l)
    [ "$files" -le 8 ] || echo "gpu_check: $files files in $OUT, and the device tool brings back at most 8"
    echo "== done: tests exit $tests, bench exit $bench, bench of ${X_MODEL:-no second model} exit $x_bench"
    [ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$x_bench" -eq 0 ]
}

main 2>&1 | tee "$OUT/log"
