"""`python -m pipeline.bench decoding`: decoders on threads (as the feeder runs them) or in processes, each beside
a thread that holds the interpreter lock as the inference thread does (pure Python), to see which decodes
without slowing the other.

For each frame size it times, over the same clips: the decoders alone; the Python loop alone (holding the lock
all the time, or part of it); both at once with the decoders on threads (at the interpreter's switch interval,
and a shorter one); both at once with the decoders in processes, whose pieces reach this process through a
queue (pickled: the copy a process decoder costs). It reports decoded frames/s and the loop's rate, each as a
fraction of its rate alone. Give each decoder and the loop a core of its own (DECODERS + 1 cores), or the figures
measure the cores, not the lock.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.bench.clips import clip_path, make_clips
from pipeline.decode import DecodeOptions, VideoDecoder
from pipeline.prefetch import prefetched

DONE = None  # a process decoder's last message


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench decoding", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/bench-decoding"),
                        help="the clips, and decoding.json unless --json says where")
    parser.add_argument("--json", type=Path, help="the report's path, in place of OUT/decoding.json")
    parser.add_argument("--decoders", type=int, default=1)
    parser.add_argument("--clips", type=int, default=8, help="clips per frame size (split among the decoders)")
    parser.add_argument("--frames", type=int, default=120, help="frames per clip")
    parser.add_argument("--sizes", default="340x256,1280x720", help="frame sizes, WxH, comma-separated")
    parser.add_argument("--duties", default="1,0.5", help="shares of the time the loop holds the lock")
    parser.add_argument("--intervals", default="5,0.5", help="sys.setswitchinterval values (ms) for threads")
    args = parser.parse_args(argv)
    report, json_path = {"decoders": args.decoders, "sizes": {}}, args.json or args.out / "decoding.json"
    for size in args.sizes.split(","):
        width, height = map(int, size.split("x"))
        root = args.out / f"clips-{size}"
        paths = [clip_path(root, i) for i in range(args.clips)]
        if not all(p.is_file() for p in paths):
            paths = make_clips(root, range(args.clips), args.frames, width, height)
        print(size, flush=True)
        report["sizes"][size] = measure(paths, args.decoders, [float(d) for d in args.duties.split(",")],
                                        [float(i) / 1000 for i in args.intervals.split(",")])
        write_json(json_path, report, sort_keys=False)  # after each size: a timeout keeps it


def measure(paths: list[Path], decoders: int, duties: list[float], intervals: list[float]) -> dict:
    shares = [paths[i::decoders] for i in range(decoders)]
    frames, alone = _timed(lambda: _on_threads(shares))
    out = {"frames": frames, "decode_alone_fps": round(frames / alone, 1), "runs": []}
    default = sys.getswitchinterval()
    for duty in duties:
        loop_alone = _loop_rate(max(1.0, alone), duty)
        for mode, interval in [("threads", i) for i in intervals] + [("processes", default)]:
            run = (lambda: _timed(lambda: _on_threads(shares))) if mode == "threads" else lambda: _in_processes(shares)
            counter, stop = [0], threading.Event()
            loop = threading.Thread(target=_spin, args=(counter, stop, duty), daemon=True)
            sys.setswitchinterval(interval)
            try:
                loop.start()
                got, seconds = run()
                stop.set()
                loop.join()
            finally:
                sys.setswitchinterval(default)
            assert got == frames, (mode, got, frames)
            out["runs"].append({"loop_duty": duty, "decoders_on": mode, "switch_interval_ms": interval * 1000,
                                "decode_fps": round(frames / seconds, 1), "decode_vs_alone": round(alone / seconds, 3),
                                "loop_vs_alone": round(counter[0] / seconds / loop_alone, 3)})
            print(json.dumps(out["runs"][-1]), flush=True)
    return out


def _timed(run) -> tuple[int, float]:
    start = time.perf_counter()
    frames = run()
    return frames, time.perf_counter() - start


def _spin(counter: list[int], stop: threading.Event, duty: float = 1.0) -> None:
    """Pure Python work, holding the interpreter lock but for its switch interval, `duty` of the time; the rest
    asleep (as an inference thread waits for its GPU): a unit of work takes about 0.5 ms."""
    while not stop.is_set():
        start = time.perf_counter()
        total = 0
        for i in range(10_000):
            total += i * i
        counter[0] += 1
        if duty < 1:
            time.sleep((time.perf_counter() - start) * (1 - duty) / duty)


def _loop_rate(seconds: float, duty: float) -> float:
    counter, stop = [0], threading.Event()
    loop = threading.Thread(target=_spin, args=(counter, stop, duty), daemon=True)
    loop.start()
    time.sleep(seconds)
    stop.set()
    loop.join()
    return counter[0] / seconds


def _decode(paths: list[Path], sink) -> int:
    frames = 0
    for path in paths:
        for piece in prefetched(VideoDecoder(path, DecodeOptions(batch=16)), 2):
            frames += len(piece)
            sink(piece.frames)
    return frames


def _on_threads(shares: list[list[Path]]) -> int:
    counts = [0] * len(shares)

    def work(i: int) -> None:
        counts[i] = _decode(shares[i], lambda frames: None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def _in_processes(shares: list[list[Path]]) -> int:
    """Frames decoded by one process per share, received here; the processes are started (and have imported
    what they need) before the clock starts."""
    context = multiprocessing.get_context("spawn")
    queue, ready, go = context.Queue(maxsize=4 * len(shares)), context.Semaphore(0), context.Event()
    workers = [context.Process(target=_process_decoder, args=(share, queue, ready, go), daemon=True)
               for share in shares]
    for w in workers:
        w.start()
    for _ in workers:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    frames, running = 0, len(workers)
    while running:
        piece = queue.get()
        if piece is DONE:
            running -= 1
        else:
            frames += len(piece)
    for w in workers:
        w.join()
    return frames, time.perf_counter() - start


def _process_decoder(paths: list[Path], queue, ready, go) -> None:
    ready.release()
    go.wait()
    _decode(paths, queue.put)
    queue.put(DONE)
