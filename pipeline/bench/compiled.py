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

from pipeline.atomic import write_json
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
    inputs, eager = {}, {}
    for size in args.sizes.split(","):  # every size's eager figure first, then each mode at every size in turn:
        width, height = map(int, size.split("x"))  # a slow compile leaves the faster modes' figures in place
        inputs[size] = []
        for seed in (0, 1):  # a mode is called with the first; its bytes are compared on both
            frames = np.random.default_rng(seed).integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)
            with torch.inference_mode():
                inputs[size].append(device.prepare(frames, args.batch)[0])
        eager[size] = [_outputs(device.model, x) for x in inputs[size]]
        fps = _timed(device.model, inputs[size][0], args.seconds)
        report["sizes"][size] = {"eager": {"fps": round(args.batch * fps, 1)}}
        write_json(args.out, report, sort_keys=False)
    for mode in args.modes.split(","):
        for size, xs in inputs.items():
            report["sizes"][size][mode] = _compiled(device.model, xs, mode, eager[size], args)
            write_json(args.out, report, sort_keys=False)  # after each measurement: a timeout keeps it
            print(size, mode, json.dumps(report["sizes"][size][mode]), flush=True)
    return report


def _compiled(model: torch.nn.Module, xs: list[torch.Tensor], mode: str, eager: list[list[torch.Tensor]],
              args) -> dict:
    """One mode at one shape: its compile or capture time, frames/s on the first input, and its outputs (every
    tensor, every frame) against the eager ones on both inputs."""
    try:
        start = time.perf_counter()
        if mode == "graph":
            compiled = Graphed(model, xs[0])  # captured: the first call below is a replay
        else:
            torch._dynamo.reset()  # a fresh compile at this shape: not a recompile with dynamic sizes
            compiled = torch.compile(model, mode=mode, dynamic=False)
        with torch.inference_mode():
            compiled(xs[0])
        _sync(xs[0])
        seconds = time.perf_counter() - start
        fps = _timed(compiled, xs[0], args.seconds)
        outputs = [_outputs(compiled, x) for x in xs]
        if [[t.shape for t in out] for out in outputs] != [[t.shape for t in out] for out in eager]:
            return {"compile_s": round(seconds, 1), "fps": round(args.batch * fps, 1),
                    "error": "its outputs' shapes are not the eager ones'"}
        pairs = [pair for out, wanted in zip(outputs, eager) for pair in zip(out, wanted)]
        return {"compile_s": round(seconds, 1), "fps": round(args.batch * fps, 1),
                "max_abs_diff": max(float((got.float() - want.float()).abs().max()) for got, want in pairs),
                "same_bytes": all(torch.equal(got, want) for got, want in pairs)}
    except Exception as exc:  # noqa: BLE001 - reported, as the measurement's result
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


class Graphed:
    """A model's forward at one input shape captured as a CUDA graph on the input's device (after warm-up calls
    on a side stream, as torch's docs ask): a call copies its input into the graph's own and replays every kernel
    with one launch. Its outputs are the graph's own tensors, rewritten by the next call. ultralytics' head
    replaces its anchors when it sees another shape; the graph keeps the ones it captured alive, so a second
    graph of the same model at another shape leaves this one's intact."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        if x.device.type != "cuda":
            raise RuntimeError(f"a CUDA graph needs a CUDA device, not {x.device}")
        with torch.cuda.device(x.device):
            self.x = x.clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(3):
                    model(self.x)
            torch.cuda.current_stream(x.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(self.graph, stream=side):
                self.out = model(self.x)
        self.captured = [value for module in model.modules() for value in vars(module).values()
                         if isinstance(value, torch.Tensor)]  # (anchors, strides: buffers the graph reads)

    def __call__(self, x: torch.Tensor):
        self.x.copy_(x)
        self.graph.replay()
        return self.out


def _outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor of one call's outputs, copied (a graph's are rewritten by its next call)."""
    with torch.inference_mode():
        return [t.clone() for t in _tensors(model(x))]


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor in a model's outputs: nested tuples, lists and dicts (by key) walked in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = [out[key] for key in sorted(out, key=str)]
    return [t for part in out for t in _tensors(part)] if isinstance(out, (list, tuple)) else []


def _timed(model, x: torch.Tensor, seconds: float) -> float:
    """Calls per second over about `seconds` (after two untimed calls)."""
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        _sync(x)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 3:
            model(x)
            calls += 1
            if calls % 8 == 0:
                _sync(x)
        _sync(x)
        return calls / (time.perf_counter() - start)


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
