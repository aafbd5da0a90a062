"""Decode a video with PyAV into bounded batches of RGB frames, upright, optionally resampled and resized."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import numpy as np

# PyAV 17 made frame conversion (sws_scale_frame) multithreaded, by default on as many threads as the machine has
# cores. For one small frame at a time, beside other decoders and the network, that made decoding 340×256 RGB
# frames 1.5× slower with one decoder and 1.8× with two, on two cores (docs/PERFORMANCE.md, twelfth session); the
# bytes are the same on any count (tests/test_decode.py). Older PyAV converts on one thread, without `threads`.
ONE_THREAD = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


class DecodeError(Exception):
    """The file could not be opened or decoded as video; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    fps: float | None = None  # resample to this rate by timestamps; None keeps every frame
    short_side: int | None = None  # resize frames for inference so the short side is this; None keeps size
    batch: int = 16  # frames per batch handed to the segmenter
    max_batch_mb: int = 128  # and fewer when frames are large (4K: 5), so a worker's memory stays bounded
    pixels: str = "rgb24"  # or "yuv420p": the planes as (H·3/2, W) arrays, for sources of even width and height


@dataclass(kw_only=True)
class VideoInfo:
    """What the decoder learned about a clip; `frames` counts the frames yielded so far."""

    fps: float
    width: int  # display size (rotation applied), the size masks are stored at
    height: int
    duration: float
    rotation: int  # degrees counter-clockwise applied to every frame
    frames: int = 0


@dataclass(frozen=True, kw_only=True)
class FrameBatch:
    """Consecutive frames of one clip, ready for a segmenter."""

    frames: np.ndarray  # (N, h, w, 3) uint8 RGB at inference size (yuv420p: (N, h·3/2, w) planes)
    indices: np.ndarray  # (N,) source frame index (position in the native decode order)
    times: np.ndarray  # (N,) presentation time in seconds
    height: int  # display size of the source frames: masks are returned at this size
    width: int
    positions: np.ndarray | None = None  # (N,) each frame's position among the frames its clip yielded; None: 0…N-1
    capacity: int = 0  # the batch size a model whose results depend on the batch's shape runs it at (padded); 0: N

    def __post_init__(self) -> None:
        if self.positions is None:
            object.__setattr__(self, "positions", np.arange(len(self.indices)))

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def concat(cls, batches: list["FrameBatch"], *, capacity: int = 0) -> "FrameBatch":
        """One batch of the frames of several (of one size, possibly from different clips), in order, run at
        `capacity`."""
        first = batches[0]
        if not all(first.fits(b) for b in batches):
            raise ValueError("frames of different sizes cannot share a batch")
        frames = np.concatenate([b.frames for b in batches])
        return cls(frames=frames, indices=np.concatenate([b.indices for b in batches]),
                   times=np.concatenate([b.times for b in batches]), height=first.height, width=first.width,
                   positions=np.concatenate([b.positions for b in batches]), capacity=capacity)

    def split(self, count: int) -> tuple["FrameBatch", "FrameBatch | None"]:
        """(the first `count` frames, the rest or None)."""
        if count >= len(self):
            return self, None
        parts = [FrameBatch(frames=self.frames[s], indices=self.indices[s], times=self.times[s], height=self.height,
                            width=self.width, positions=self.positions[s]) for s in (slice(0, count), slice(count, None))]
        return parts[0], parts[1]

    def fits(self, other: "FrameBatch") -> bool:
        """Whether `other`'s frames can share a batch with these (same frame and display size)."""
        return self.frames.shape[1:] == other.frames.shape[1:] and (self.height, self.width) == (other.height, other.width)


def frames_within(frames: int, limit: int, frame_bytes: int) -> int:
    """At most `frames` frames, fewer where they would pass `limit` bytes (one frame past it, at least one): how
    many frames a batch holds (VideoDecoder's batches, the feeder's)."""
    return min(frames, max(1, -(-limit // frame_bytes)))


def inference_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side`, aspect kept."""
    if not short_side or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


FrameMemory = Callable[[tuple[int, ...]], np.ndarray]  # an empty uint8 array of this shape for a batch's frames
# (a segmenter's may also have `close()`, called when its feeder is done: transfer.FramesShare)


class VideoDecoder:
    """Iterate a video as FrameBatch objects; `info` is filled once the first frame is decoded. `memory`: where
    each batch's frames are written (a GPU segmenter's pinned memory, `Segmenter.frame_memory`); None: numpy's."""

    def __init__(self, path: Path, options: DecodeOptions = DecodeOptions(), *,
                 memory: FrameMemory | None = None) -> None:
        self.path = Path(path)
        self.options = options
        self.memory = memory
        self.info: VideoInfo | None = None
        self._quarter_turns = 0  # set with `info`, from the first frame
        self._coded_size = (0, 0)  # (width, height) to ask of the coded, unrotated picture

    def __iter__(self) -> Iterator[FrameBatch]:
        try:
            yield from self._batches()
        except av.FFmpegError as exc:
            raise DecodeError(f"{self.path}: {exc}") from exc

    def _batches(self) -> Iterator[FrameBatch]:
        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{self.path}: no video stream")
            stream = container.streams.video[0]
            native_fps = float(stream.average_rate or stream.guessed_rate or 0)
            duration = _duration(stream, container)
            step = 1.0 / self.options.fps if self.options.fps else 0.0
            next_time = 0.0
            pending: list[tuple[int, float, np.ndarray]] = []
            error: av.FFmpegError | None = None
            try:
                for index, frame in enumerate(container.decode(stream)):
                    time = frame.time if frame.time is not None else index / (native_fps or 1.0)
                    if step and time + 1e-6 < next_time:
                        continue
                    if step:  # keep the first frame at or after each point of the grid k / fps
                        next_time = (np.floor(time / step + 1e-6) + 1) * step
                    if self.info is None:
                        self._start(_info(frame, native_fps, duration))
                    pending.append((index, time, self._to_array(frame)))
                    self.info.frames += 1
                    if len(pending) == frames_within(self.options.batch, self._batch_bytes, pending[0][2].nbytes):
                        yield self._batch(pending)
                        pending = []
            except av.FFmpegError as exc:  # part way (a truncated file): first hand out the frames before it
                if self.info is None:
                    raise
                error = exc
            if pending:
                yield self._batch(pending)
            if error is not None:
                raise error
        if self.info is not None and not self.info.fps and self.info.duration:
            self.info.fps = self.info.frames / self.info.duration

    @property
    def _batch_bytes(self) -> int:
        return self.options.max_batch_mb << 20

    def _start(self, info: VideoInfo) -> None:
        self.info = info
        self._quarter_turns = round(info.rotation / 90) % 4
        width, height = inference_size(info.width, info.height, self.options.short_side)
        if self.options.pixels == "yuv420p" and (width % 2 or height % 2):
            raise ValueError(f"{self.path}: {width}x{height} frames have no yuv420p planes (odd size); decode to rgb24")
        # the coded picture is transposed relative to the display after a quarter turn
        self._coded_size = (height, width) if self._quarter_turns % 2 else (width, height)

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = self._coded_size
        pixels = self.options.pixels
        if (width, height) == (frame.width, frame.height):
            array = frame.to_ndarray(format=pixels, **ONE_THREAD)
        else:
            array = frame.to_ndarray(format=pixels, width=width, height=height, **ONE_THREAD)
        turns = self._quarter_turns
        if not turns:
            return array
        return _rotate_yuv420(array, turns) if pixels == "yuv420p" else np.ascontiguousarray(np.rot90(array, turns))

    def _batch(self, pending: list[tuple[int, float, np.ndarray]]) -> FrameBatch:
        assert self.info is not None
        arrays = [array for _, _, array in pending]
        out = self.memory((len(arrays), *arrays[0].shape)) if self.memory is not None else None
        return FrameBatch(
            frames=np.stack(arrays, out=out),
            indices=np.array([index for index, _, _ in pending], dtype=np.int64),
            times=np.array([time for _, time, _ in pending], dtype=np.float64),
            height=self.info.height,
            width=self.info.width,
            positions=np.arange(self.info.frames - len(pending), self.info.frames),
        )


def yuv420_planes(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y, chroma) views of an (H·3/2, W) yuv420p array: Y is (H, W), chroma (2, H/2, W/2), U then V."""
    height, width = array.shape[0] * 2 // 3, array.shape[1]
    return array[:height], array[height:].reshape(2, height // 2, width // 2)


def pack_yuv420(luma: np.ndarray, chroma: Iterable[np.ndarray]) -> np.ndarray:
    """The (H·3/2, W) yuv420p array of a Y plane and its U and V planes."""
    return np.concatenate([plane.ravel() for plane in (luma, *chroma)]).reshape(-1, luma.shape[1])


def _rotate_yuv420(array: np.ndarray, turns: int) -> np.ndarray:
    """A yuv420p array turned `turns` quarter turns counter-clockwise, each plane on its own."""
    luma, chroma = yuv420_planes(array)
    return pack_yuv420(np.rot90(luma, turns), [np.rot90(plane, turns) for plane in chroma])


def _duration(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _info(frame: av.VideoFrame, fps: float, duration: float) -> VideoInfo:
    rotation = int(round(frame.rotation or 0)) % 360
    width, height = frame.width, frame.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(fps=fps, width=width, height=height, duration=duration, rotation=rotation)
