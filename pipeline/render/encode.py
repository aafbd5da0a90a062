"""Write a rendered clip as H.264 mp4 (PyAV) or as an mmaction2 rawframes folder, atomically. FORMAT=webdataset
encodes each clip exactly as mp4 does; the render stage then puts the mp4 into its shard's tar (render/tars.py).

x264's macroblock-tree rate control gave a different bitstream from run to run on the same frames here
(single thread included); with `mbtree=0` every encode of the same frames is byte-identical, so renders are
reproducible. It costs a little compression at the same crf.
"""

from __future__ import annotations

import queue
import shutil
import threading
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.decode import pack_yuv420, yuv420_planes

LAZY = "lazy"  # no pixels: status rows, pairs and coverage; the loaders and `predict` compose clips on the fly
FORMATS = ("mp4", "rawframes", "webdataset", LAZY)
VIDEO_FORMATS = ("mp4", "webdataset")  # an H.264 mp4 per clip: as a file, or inside a WebDataset tar
X264_PARAMS = "mbtree=0"  # deterministic output (see the module docstring)


@dataclass(frozen=True, kw_only=True)
class EncodeOptions:
    format: str = "mp4"  # mp4, rawframes, webdataset or lazy
    crf: int = 23
    preset: str = "veryfast"
    short_side: int | None = None  # None: the source size
    jpeg_quality: int = 95  # rawframes
    threads: int = 0  # x264 threads; 0 lets x264 choose

    def output_fields(self) -> dict:
        """What shapes the files (threads does not)."""
        if self.format in ("source", LAZY):  # no files: the source videos themselves, or composed when read
            return {"format": self.format}
        fields = {k: v for k, v in asdict(self).items() if k != "threads"}
        if self.format == "rawframes":
            fields.pop("crf"), fields.pop("preset")
        else:
            fields.pop("jpeg_quality")
        return fields

    @property
    def video(self) -> bool:
        """Whether clips are encoded to H.264 mp4 (mp4 files, or mp4 members of WebDataset tars)."""
        return self.format in VIDEO_FORMATS

    def suffix(self) -> str:
        """The suffix of one clip's file (a rawframes folder has none)."""
        return ".mp4" if self.video else ""


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the short side is `short_side`, rounded to even numbers (yuv420p needs them)."""
    if short_side and min(width, height) != short_side:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


class ClipWriter:
    """Writes frames to `path`, an mp4 file or a rawframes folder; `close` finishes it, `abort` removes it.
    The caller gives a temporary path (the engine's Commit), so nothing partial is ever visible.

    Conversion and encoding run on a writer thread (PyAV and OpenCV release the GIL), so they overlap the
    caller's decoding and compositing; frames are written in the order given.
    """

    def __init__(self, path: Path, *, fps: float, width: int, height: int, options: EncodeOptions) -> None:
        self.options = options
        self.size = output_size(width, height, options.short_side)
        self.frames = 0
        self._tmp = Path(path)
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        if options.video:
            self._container = av.open(str(self._tmp), "w", format="mp4")
            codec_options = {"crf": str(options.crf), "preset": options.preset, "x264-params": X264_PARAMS}
            if options.threads:
                codec_options["threads"] = str(options.threads)
            rate = Fraction(fps or 25).limit_denominator(100_000)
            self._stream = self._container.add_stream("libx264", rate=rate, options=codec_options)
            self._stream.width, self._stream.height = self.size
            self._stream.pix_fmt = "yuv420p"
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir()
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"write {self._tmp.name}", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray) -> None:
        """Append one frame: RGB (H, W, 3), or for mp4 yuv420p planes (H·3/2, W); any size, it is scaled to the
        output size. Do not modify it afterwards."""
        if self._error is not None:
            raise self._error
        if frame.ndim == 2 and not self.options.video:
            raise ValueError(f"{self._tmp}: yuv420p planes can only be written to mp4")
        self.frames += 1
        self._queue.put((self.frames, frame))

    def close(self) -> None:
        self._finish()
        if self.options.video:
            self._container.mux(self._stream.encode())
            self._container.close()

    def abort(self) -> None:
        try:
            self._finish()
        except BaseException:  # noqa: BLE001 - aborting anyway; the caller's error is the one to report
            pass
        if self.options.video:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the partial file is removed either way
                pass
            self._tmp.unlink(missing_ok=True)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                self._write_now(*item)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller on its next call
            self._error = exc
            while self._queue.get() is not None:  # keep the producer from blocking until it stops
                pass

    def _write_now(self, number: int, frame: np.ndarray) -> None:
        if frame.ndim == 2:  # yuv420p planes
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(self._scaled_planes(frame),
                                                                               format="yuv420p")))
            return
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        if self.options.video:
            # OpenCV's BT.601 limited-range I420 conversion matches swscale's default within rounding, ~25x faster
            yuv = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")))
            return
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.options.jpeg_quality])
        if not ok:
            raise ValueError(f"frame {number}: JPEG encoding failed")
        (self._tmp / f"img_{number:05d}.jpg").write_bytes(jpeg.tobytes())  # a full disk raises with its errno

    def _scaled_planes(self, planes: np.ndarray) -> np.ndarray:
        """yuv420p planes at the output size, each plane scaled on its own."""
        luma, chroma = yuv420_planes(planes)
        if (luma.shape[1], luma.shape[0]) == self.size:
            return planes
        width, height = self.size
        return pack_yuv420(cv2.resize(luma, (width, height), interpolation=cv2.INTER_AREA),
                           [cv2.resize(plane, (width // 2, height // 2), interpolation=cv2.INTER_AREA) for plane in chroma])
