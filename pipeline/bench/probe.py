"""What `make bench` reads in the process that runs the masks stage (this one on a CPU, the Dask GPU worker on
CUDA), around one window of work: the device path's counters, peak host and GPU memory, and on CUDA the time
the GPU spent in kernels.

Kernel-busy time is the union of the intervals of every CUDA kernel the torch profiler recorded in the window
(CUPTI activity: the device's own timestamps), not CUDA events on the stream, which count launch gaps as busy.
`NvmlSampler` cross-checks it from outside the process with NVML's utilisation samples (device-wide).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable

from pipeline.segment import SegmenterSpec, load_segmenter

log = logging.getLogger(__name__)

_window: dict[str, Any] = {}  # the window in progress in this process: its profiler and counters at the start


def counters(segmenter: object) -> dict[str, int] | None:
    """The device path's cumulative blocking device→host waits and batches, or None where it keeps none."""
    if getattr(getattr(segmenter, "spec", None), "inference", "device") != "device":
        return None  # predict(): ultralytics' own path, uncounted
    on_device = getattr(segmenter, "on_device", None)
    waits, batches = getattr(on_device, "host_waits", None), getattr(on_device, "batches", None)
    if waits is None or batches is None:
        return None
    return {"host_waits": int(waits), "batches": int(batches)}


def waits_per_batch(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    if before is None or after is None or after["batches"] == before["batches"]:
        return None
    return round((after["host_waits"] - before["host_waits"]) / (after["batches"] - before["batches"]), 2)


def loaded(spec: SegmenterSpec):
    """The segmenter this process already loaded for `spec` (the stage's); RuntimeError if it had none: a
    figure read from a second model (a path spelled otherwise, say) would describe nothing the stage ran."""
    misses = load_segmenter.cache_info().misses
    segmenter = load_segmenter(spec)
    if load_segmenter.cache_info().misses != misses:
        raise RuntimeError(f"the masks stage never loaded {spec.model!r} in this process (pid {os.getpid()}); "
                           "the bench and the stage must name the model alike (resolve_weights)")
    return segmenter


def reset_peak_rss() -> bool:
    """Start the process's peak RSS afresh (Linux: /proc/self/clear_refs); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak resident set: VmHWM (since the last reset), else getrusage (since it started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def busy_seconds(events: Iterable[dict], categories: tuple[str, ...] = ("kernel",)) -> float:
    """Seconds covered by at least one complete trace event of `categories` (Chrome trace: ts, dur in µs);
    overlapping kernels (several streams) count once."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in events
                   if e.get("cat") in categories and e.get("ph", "X") == "X")
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1e6


def trace_busy(profiler, categories: tuple[str, ...] = ("kernel",)) -> float:
    """busy_seconds over a stopped torch profiler's trace (exported, read and removed again)."""
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as folder:
        path = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(path))
        return busy_seconds(json.loads(path.read_text()).get("traceEvents", []), categories)


def begin(spec: SegmenterSpec, *, profile: bool) -> None:
    """Open a window in this process: counters read, peaks reset, on CUDA (with `profile`) the profiler on."""
    import torch

    _window.clear()
    _window["counters"] = counters(loaded(spec))
    _window["rss_reset"] = reset_peak_rss()
    cuda = spec.device.startswith("cuda") and torch.cuda.is_available()
    if cuda:  # the spec's GPU (cuda:N), not the current one
        torch.cuda.synchronize(spec.device)
        torch.cuda.reset_peak_memory_stats(spec.device)
    if cuda and profile:
        try:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            profiler.start()
            _window["profiler"] = profiler
        except Exception as exc:  # noqa: BLE001 - a figure missing, not a bench failing
            _window["profiler_error"] = f"{type(exc).__name__}: {exc}"


def end(spec: SegmenterSpec) -> dict[str, Any]:
    """Close the window: what it measured (None where this process or device cannot tell)."""
    import torch

    cuda = spec.device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(spec.device)
    figures: dict[str, Any] = {
        "pid": os.getpid(),
        "host_waits_per_batch": waits_per_batch(_window.get("counters"), counters(loaded(spec))),
        "peak_host_bytes": peak_rss_bytes(),
        "peak_host_scope": "window" if _window.get("rss_reset") else "process",
        "peak_gpu_allocated_bytes": torch.cuda.max_memory_allocated(spec.device) if cuda else None,
        "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(spec.device) if cuda else None,
        "gpu_kernel_busy_s": None,
        "profiler_error": _window.get("profiler_error"),
    }
    profiler = _window.pop("profiler", None)
    if profiler is not None:
        try:
            profiler.stop()
            figures["gpu_kernel_busy_s"] = round(trace_busy(profiler), 4)
        except Exception as exc:  # noqa: BLE001
            figures["profiler_error"] = f"{type(exc).__name__}: {exc}"
    return figures


class NvmlSampler:
    """Mean of NVML's GPU utilisation (the share of each sample period with a kernel running, device-wide) over
    a block, sampled every `interval` s; `mean` stays None without NVML (pynvml) or a GPU it can name."""

    def __init__(self, gpu: str | None, interval: float = 0.05) -> None:
        self.gpu, self.interval, self.mean = gpu, interval, None
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._handle = None

    def __enter__(self) -> "NvmlSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            gpu = self.gpu or ""
            self._handle = (pynvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                            else pynvml.nvmlDeviceGetHandleByUUID(gpu) if gpu else None)
        except Exception as exc:  # noqa: BLE001 - no NVML: the figure stays None
            log.debug("no NVML sampling: %s", exc)
            self._handle = None
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def __exit__(self, *exc: object) -> None:
        if self._handle is None:
            return
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()
        if self._samples:
            self.mean = round(sum(self._samples) / len(self._samples) / 100, 3)
