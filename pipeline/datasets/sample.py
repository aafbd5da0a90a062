"""The `sample` dataset: short clips generated on first use, in the Kinetics CVDF layout, no download needed.

Photo clips pan and zoom over the two real photos that ship inside ultralytics (`zidane.jpg`, `bus.jpg`),
so they contain real people. Shape clips move a white ellipse ("person") over a grey rectangle ("object")
on a dark background; their true masks are written to `truth/<clip_id>.json` as COCO RLE.

Every clip is lossless H.264 (about 7 MB in all): lossy x264 output was seen to vary from one encode to the
next here (same frames, one thread), which would make the masks differ between machines, while a lossless
bitstream always decodes to the same pixels. That also makes the shape truth exact on screen.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline import rle
from pipeline.atomic import temp_name

log = logging.getLogger(__name__)

FPS = 15
PERSON_VALUE, OBJECT_VALUE, BACKGROUND_VALUE = 255, 128, 16  # grey levels of the shape clips
DONE_MARKER = ".complete"


@dataclass(frozen=True)
class SampleClip:
    split: str
    label: str
    youtube_id: str
    seconds: int
    source: str  # a photo file name in ultralytics/assets, or "shapes"
    seed: int

    @property
    def clip_id(self) -> str:
        start = self.seed * 10
        return f"{self.youtube_id}_{start:06d}_{start + 10:06d}"


CLIPS = (
    SampleClip("train", "celebrating (zidane photo)", "zidane_pan1", 2, "zidane.jpg", 1),
    SampleClip("train", "celebrating (zidane photo)", "zidane_pan2", 3, "zidane.jpg", 2),
    SampleClip("train", "celebrating (zidane photo)", "zidane_zoom", 2, "zidane.jpg", 3),
    SampleClip("val", "celebrating (zidane photo)", "zidane_val1", 2, "zidane.jpg", 4),
    SampleClip("train", "waiting for a bus", "bus_pan0001", 2, "bus.jpg", 5),
    SampleClip("train", "waiting for a bus", "bus_zoom001", 3, "bus.jpg", 6),
    SampleClip("val", "waiting for a bus", "bus_val0001", 2, "bus.jpg", 7),
    SampleClip("train", "moving shapes (synthetic)", "-shapes_001", 2, "shapes", 8),
    SampleClip("train", "moving shapes (synthetic)", "-shapes_002", 2, "shapes", 9),
    SampleClip("val", "moving shapes (synthetic)", "-shapes_val", 2, "shapes", 10),
)


def ensure_sample(root: Path) -> Path:
    """Generate the sample under `root` unless a complete one is there; returns `root`."""
    root = Path(root)
    if (root / DONE_MARKER).is_file():
        return root
    log.info("generating the sample dataset in %s", root)
    staging = temp_name(root)
    shutil.rmtree(staging, ignore_errors=True)
    write_sample(staging)
    if root.exists():  # an incomplete earlier attempt
        shutil.rmtree(root)
    staging.rename(root)
    return root


def write_sample(root: Path) -> None:
    rows: dict[str, list[str]] = {}
    for clip in CLIPS:
        path = root / clip.split / f"{clip.clip_id}.mp4"
        frames_count = clip.seconds * FPS
        if clip.source == "shapes":
            frames, person, objects = sample_shapes(clip)
            write_video(path, frames, FPS, lossless=True)
            write_truth(root / "truth" / f"{clip.clip_id}.json", person, objects)
        else:
            photo = cv2.cvtColor(cv2.imread(str(asset(clip.source))), cv2.COLOR_BGR2RGB)
            size = (320, 240) if photo.shape[1] > photo.shape[0] else (240, 320)
            write_video(path, pan_zoom(photo, *size, frames_count, seed=clip.seed), FPS, lossless=True)
        start = clip.seed * 10
        rows.setdefault(clip.split, []).append(f'"{clip.label}",{clip.youtube_id},{start},{start + 10},{clip.split}')
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        header = "label,youtube_id,time_start,time_end,split"
        (root / "annotations" / f"{split}.csv").write_text("\n".join([header, *lines]) + "\n")
    (root / DONE_MARKER).write_text("ok\n")


SHAPES_SIZE = (320, 240)  # width, height of the shape clips


def sample_shapes(clip: SampleClip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shape clip of the sample: its frames and true person and object masks (`shape_clip`)."""
    return shape_clip(clip.seconds * FPS, *SHAPES_SIZE, seed=clip.seed)


def shape_truth(clip_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The true (frames, H, W) person and object masks of the sample's shape clip `clip_id`, made again (they
    are deterministic); None for any other clip."""
    clip = next((c for c in CLIPS if c.clip_id == clip_id and c.source == "shapes"), None)
    if clip is None:
        return None
    _, person, objects = sample_shapes(clip)
    return person, objects


def asset(name: str) -> Path:
    """A photo shipped inside the ultralytics package (found without importing it)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the sample needs the ultralytics package for its photos; run `make venv`")
    return Path(spec.submodule_search_locations[0]) / "assets" / name


def pan_zoom(photo: np.ndarray, width: int, height: int, frames: int, *, seed: int) -> np.ndarray:
    """A (frames, height, width, 3) camera move between two random crops of `photo` with the output aspect."""
    rng = np.random.default_rng(seed)
    shrink = min(photo.shape[1] / width, photo.shape[0] / height) / 1.8
    if shrink > 1:  # pre-shrink with area averaging so the bilinear warp below does not alias
        photo = cv2.resize(photo, None, fx=1 / shrink, fy=1 / shrink, interpolation=cv2.INTER_AREA)
    photo_h, photo_w = photo.shape[:2]
    max_scale = min(photo_w / width, photo_h / height)  # source pixels per output pixel, whole crop fits

    def crop() -> np.ndarray:
        scale = max_scale * rng.uniform(0.55, 0.95)
        x0 = rng.uniform(0, photo_w - width * scale)
        y0 = rng.uniform(0, photo_h - height * scale)
        return np.array([x0, y0, scale])

    start, end = crop(), crop()
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i, t in enumerate(np.linspace(0.0, 1.0, frames)):
        x0, y0, scale = start + (end - start) * (3 * t * t - 2 * t * t * t)  # ease in and out
        warp = np.array([[1 / scale, 0, -x0 / scale], [0, 1 / scale, -y0 / scale]])
        out[i] = cv2.warpAffine(photo, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def shape_clip(frames: int, width: int, height: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey-level frames plus the true (frames, H, W) person and object masks (the person occludes the object)."""
    rng = np.random.default_rng(seed)
    video = np.full((frames, height, width, 3), BACKGROUND_VALUE, dtype=np.uint8)
    person = np.zeros((frames, height, width), dtype=bool)
    objects = np.zeros((frames, height, width), dtype=bool)
    p0, p1 = rng.uniform([0.2 * width, 0.25 * height], [0.8 * width, 0.75 * height], size=(2, 2))
    o0, o1 = rng.uniform([0.15 * width, 0.15 * height], [0.85 * width, 0.85 * height], size=(2, 2))
    axes = (round(rng.uniform(0.1, 0.13) * width), round(rng.uniform(0.22, 0.28) * height))
    half = (round(rng.uniform(0.06, 0.11) * width), round(rng.uniform(0.06, 0.12) * height))
    for i, t in enumerate(np.linspace(0.0, 1.0, frames)):
        ox, oy = (o0 + (o1 - o0) * t).round().astype(int)
        objects[i, max(oy - half[1], 0) : oy + half[1], max(ox - half[0], 0) : ox + half[0]] = True
        ellipse = np.zeros((height, width), dtype=np.uint8)
        cv2.ellipse(ellipse, tuple(int(v) for v in (p0 + (p1 - p0) * t).round()), axes, 15.0, 0, 360, 1, -1)
        person[i] = ellipse.astype(bool)
        objects[i] &= ~person[i]
        video[i][objects[i]] = OBJECT_VALUE
        video[i][person[i]] = PERSON_VALUE
    return video, person, objects


def write_video(path: Path, frames: np.ndarray, fps: int, *, lossless: bool = False, rotation: int = 0,
                codec: str = "libx264") -> None:
    """Encode RGB frames (yuv420p) as H.264, or VP9 with codec="libvpx-vp9" (for .webm, as SSv2 ships);
    `lossless` keeps the luma exact. The same frames give the same H.264 bytes: x264's macroblock tree is off,
    since with it the PyAV wheel's x264 encoded small frames (96x64) differently from run to run, 24 bitstreams
    in 60 encodes of one clip on this project's CPU (none at 340x256). A .webm's container bytes still differ
    (its packets do not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec == "libx264":
        options = {"qp": "0", "preset": "fast"} if lossless else {"crf": "20", "preset": "fast",
                                                                  "x264-params": "mbtree=0"}
    else:
        options = {"lossless": "1"} if lossless else {"crf": "30", "b": "0"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.codec_context.thread_count = 1
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_truth(path: Path, person: np.ndarray, objects: np.ndarray) -> None:
    """True masks of a shape clip as JSON: one person and one object COCO RLE per frame."""
    frames = [
        {"person": rle.encode(p[None])[0].decode(), "object": rle.encode(o[None])[0].decode()}
        for p, o in zip(person, objects)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"height": person.shape[1], "width": person.shape[2], "frames": frames}))


def read_truth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(person, object) (frames, H, W) bool stacks written by `write_truth`."""
    data = json.loads(Path(path).read_text())
    h, w = data["height"], data["width"]
    person = np.stack([rle.decode(f["person"].encode(), h, w) for f in data["frames"]])
    objects = np.stack([rle.decode(f["object"].encode(), h, w) for f in data["frames"]])
    return person, objects
