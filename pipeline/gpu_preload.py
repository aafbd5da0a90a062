"""Loaded by each Dask worker of a multi-GPU batch job (`dask worker --preload pipeline.gpu_preload`): pins the
worker to one of its job's GPUs, through CUDA_VISIBLE_DEVICES, before anything in it touches CUDA."""

from __future__ import annotations

import logging
import os

from pipeline.gpu_workers import GPUS_PER_JOB_ENV

log = logging.getLogger(__name__)


def gpu_for(worker_name: str, visible: str, gpus_per_job: int) -> str | None:
    """The GPU id a worker of a job with `gpus_per_job` GPUs owns: dask names a job's workers `<job>-<i>` when it
    starts several, so worker i takes the i-th of the job's visible GPUs; None when the job has one GPU."""
    if gpus_per_job <= 1:
        return None
    ids = [item.strip() for item in visible.split(",") if item.strip()] or [str(i) for i in range(gpus_per_job)]
    index = int(str(worker_name).rsplit("-", 1)[1])
    return ids[index % len(ids)]


def dask_setup(worker) -> None:
    gpu = gpu_for(worker.name, os.environ.get("CUDA_VISIBLE_DEVICES", ""), int(os.environ.get(GPUS_PER_JOB_ENV, "1")))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("worker %s owns GPU %s", worker.name, gpu)
