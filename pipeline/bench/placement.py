"""Where `make bench` runs the masks stage. On CUDA: through one Dask GPU worker, as a real run uses it (a worker
process of its own that sees only its GPU, as `cuda`, and declares GPU=1: pipeline.executor's one-worker-per-GPU
cluster), started once for the whole bench. On a CPU: in this process (the in-process run the bench always made;
a CPU run's Dask workers would share the cores with the bench itself)."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pipeline.executor import ExecOptions, dask_client, visible_gpus
from pipeline.segment import SegmenterLoadError, SegmenterSpec


@dataclass(frozen=True, kw_only=True)
class StagePlace:
    where: str  # "dask-gpu-worker" or "in-process"
    note: str
    execution: ExecOptions  # what run_masks is given
    gpu: str | None = None  # the GPU the worker owns, as CUDA_VISIBLE_DEVICES names it
    client: Any = None  # the bench's client of the GPU worker's cluster

    def stage_spec(self, spec: SegmenterSpec) -> SegmenterSpec:
        """The spec as the stage's process loads it: a pinned GPU worker sees its GPU as `cuda`."""
        pinned = self.client is not None and spec.device.startswith("cuda")
        return dataclasses.replace(spec, device="cuda") if pinned else spec

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) in the stage's process (pipeline.bench.probe's functions)."""
        if self.client is None:
            return fn(*args, **kwargs)
        (result,) = self.client.run(fn, *args, **kwargs).values()
        return result


@contextmanager
def stage_place(device: str) -> Iterator[StagePlace]:
    if not device.startswith("cuda"):
        yield StagePlace(where="in-process", execution=ExecOptions(workers=0),
                         note="CPU: the stage runs in this process, not in a Dask worker")
        return
    gpus = visible_gpus(device)[:1]
    if not gpus:
        raise SegmenterLoadError(f"device {device!r} asked for, but no such CUDA device is visible; use --device cpu")
    with dask_client(ExecOptions(gpus=gpus)) as client:
        yield StagePlace(where="dask-gpu-worker", gpu=gpus[0], client=client,
                         execution=ExecOptions(scheduler=client.scheduler.address),
                         note=f"one Dask GPU worker (CUDA_VISIBLE_DEVICES={gpus[0]}, resource GPU=1), as a real run")
