"""A 4K video is streamed in bounded batches: a worker's peak memory does not grow with the clip's length."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.decode import DecodeOptions, VideoDecoder
from tests.conftest import ROOT, write_kinetics_csv

WIDTH, HEIGHT = 3840, 2160


def write_4k(path: Path, frames: int) -> None:
    """A 4K H.264 clip (x264 ultrafast, so writing it stays quick), one moving white square."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25), options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        for i in range(frames):
            frame[:] = 0
            frame[800:1400, 1000 + 20 * i : 1400 + 20 * i] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def peak_mb(tmp_path: Path, frames: int) -> dict:
    """The stats of a masks run over one 4K clip of `frames` frames, in a fresh process (its own peak)."""
    root = tmp_path / f"data{frames}"
    write_4k(root / "train" / f"-long{frames}_000000_000010.mp4", frames)
    write_kinetics_csv(root, "train", [("juggling balls", f"-long{frames}", 0, 10)])
    out = tmp_path / f"out{frames}"
    subprocess.run([sys.executable, "-m", "pipeline", "masks", "--dataset", "kinetics400", "--root", str(root), "--out",
                    str(out), "--segmenter", "tests.segmenters:BoxSegmenter", "--workers", "0"],
                   cwd=ROOT, check=True, capture_output=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                                   "YOLO_OFFLINE": "1"})
    (stats,) = out.rglob("train-*_stats.json")
    return json.loads(stats.read_text())


def test_4k_batches_are_capped_by_bytes(tmp_path):
    write_4k(tmp_path / "a.mp4", 12)
    sizes = [len(batch) for batch in VideoDecoder(tmp_path / "a.mp4", DecodeOptions(batch=16))]
    assert sizes == [6, 6], "128 MiB of 24.9 MB frames: 6 per batch, not 16"


def test_peak_memory_of_a_4k_clip_does_not_grow_with_its_length(tmp_path):
    short, long = peak_mb(tmp_path, 30), peak_mb(tmp_path, 90)
    assert (short["frames"], long["frames"]) == (30, 90) and long["totals"]["instances"] == 90
    assert long["peak_rss_mb"] < short["peak_rss_mb"] * 1.1, (short["peak_rss_mb"], long["peak_rss_mb"])
    decoded_mb = 90 * WIDTH * HEIGHT * 3 / 2**20  # 2.2 GiB: what holding the clip's frames would take
    assert long["peak_rss_mb"] < decoded_mb, "a few batches of 4K frames, not the clip"
