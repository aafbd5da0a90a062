"""`python -m pipeline.bench compiled`: YOLO's bare forward at the feeder's fixed batch shape, eager against
the forward captured once as a CUDA graph and replayed (`graph`: torch.cuda.CUDAGraph, no compiler; CUDA only)
and against `torch.compile` (its default mode, and `reduce-overhead`, which on a GPU replays the batch as a CUDA
graph), to decide whether any is worth keeping in the device path. Batches of one frame size always have one
shape (`FrameBatch.capacity`), which is what all of them need.

For each frame size and mode it reports the compile or capture time (to the end of the first call), frames/s over
`--seconds`, the largest difference from the eager output and whether the bytes are the same (where they are
not, kernels differ, so the masks would too, and a kept mode would be part of the run tag). A mode that fails
reports its error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.segment import SegmenterSpec
from pipeline.segment.yolo import YoloSegmenter


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench compiled", description=__doc__)
    parser.add_argument("--model", default="yolo11n-seg.yaml", help="weights (.pt) or an architecture (.yaml)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", default="340x256,1280x720", help="frame sizes, WxH, comma-separated")
    parser.add_argument("--modes", default="graph,default,reduce-overhead",
                        help="graph (a CUDA graph of the eager forward), or torch.compile's modes")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed per size and mode")
    parser.add_argument("--out", type=Path, default=Path("out/bench-compiled.json"))
    args = parser.parse_args(argv)
    device = YoloSegmenter(SegmenterSpec(model=args.model, device=args.device)).on_device
    report = {"model": args.model, "device": str(device.device), "batch": args.batch, "sizes": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    inputs, eager = {}, {}
    for size in args.sizes.split(","):  # every size's eager figure first, then each mode at every size in turn:
        width, height = map(int, size.split("x"))  # a slow compile leaves the faster modes' figures in place
        frames = np.random.default_rng(0).integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)
        with torch.inference_mode():
            inputs[size], _ = device.prepare(frames, args.batch)
        eager[size], fps = _timed(device.model, inputs[size], args.seconds)
        report["sizes"][size] = {"eager": {"fps": round(args.batch * fps, 1)}}
        args.out.write_text(json.dumps(report, indent=2))
    for mode in args.modes.split(","):
        for size, x in inputs.items():
            report["sizes"][size][mode] = _compiled(device.model, x, mode, eager[size], args)
            args.out.write_text(json.dumps(report, indent=2))  # after each measurement: a timeout keeps it
            print(size, mode, json.dumps(report["sizes"][size][mode]), flush=True)
    return report


def _compiled(model: torch.nn.Module, x: torch.Tensor, mode: str, eager: torch.Tensor, args) -> dict:
    try:
        start = time.perf_counter()
        if mode == "graph":
            compiled = Graphed(model, x)  # captured: the first call below is a replay
        else:
            compiled = torch.compile(model, mode=mode)
        with torch.inference_mode():
            compiled(x)
        _sync(x)
        seconds = time.perf_counter() - start
        out, fps = _timed(compiled, x, args.seconds)
    except Exception as exc:  # noqa: BLE001 - reported, as the measurement's result
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"compile_s": round(seconds, 1), "fps": round(args.batch * fps, 1),
            "max_abs_diff": float((out.float() - eager.float()).abs().max()), "same_bytes": bool(torch.equal(out, eager))}


class Graphed:
    """A model's forward at one input shape captured as a CUDA graph (after warm-up calls on a side stream, as
    torch's docs ask): a call copies its input into the graph's own and replays every kernel with one launch. Its
    outputs are the graph's own tensors, rewritten by the next call."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        if x.device.type != "cuda":
            raise RuntimeError(f"a CUDA graph needs a CUDA device, not {x.device}")
        self.x = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                model(self.x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.out = model(self.x)

    def __call__(self, x: torch.Tensor):
        self.x.copy_(x)
        self.graph.replay()
        return self.out


def _timed(model, x: torch.Tensor, seconds: float) -> tuple[torch.Tensor, float]:
    """The predictions of one call, and calls per second over about `seconds` (after two untimed calls)."""
    with torch.inference_mode():
        for _ in range(2):
            out = model(x)[0][0].clone()
        _sync(x)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 3:
            model(x)
            calls += 1
            if calls % 8 == 0:
                _sync(x)
        _sync(x)
        return out, calls / (time.perf_counter() - start)


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
