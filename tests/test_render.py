"""Render stage: every preset checked pixel-wise against the shape clips' true masks, then end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.datasets.sample import shape_clip, write_video
from pipeline.decode import DecodeOptions
from pipeline.executor import ExecOptions
from pipeline.masks import MasksRun, load_clip_masks, run_masks
from pipeline.render import RenderConfig, run_render
from pipeline.render.compose import PartnerFrames, composed, decoded
from pipeline.render.encode import EncodeOptions
from pipeline.render.kinds import IMAGENET_MEAN_RGB, MaskOptions, Variant
from pipeline.render.regions import RegionMasks, Regions
from pipeline.render.variants import resolve
from tests.conftest import write_kinetics_csv
from tests.test_masks_stage import config as masks_config


@pytest.fixture
def masked(shapes_dataset, tmp_path):
    """The shape clips with masks from the luma-key segmenter (exactly the truth): (root, truth, out, run_dir)."""
    root, truth = shapes_dataset
    out = tmp_path / "out"
    summary = run_masks(masks_config(root, out), progress=False)
    return root, truth, out, Path(summary.output)


def render_frames(root: Path, run_dir: Path, clip_id: str, variant: Variant, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(source frames, composed frames) of one clip, before encoding."""
    path = next(root.glob(f"*/{clip_id}.mp4"))
    clip = load_clip_masks(run_dir, clip_id)
    source = np.stack([frame for _, frame in decoded(path, DecodeOptions())])
    regions = RegionMasks(clip, clip.height, clip.width, variant.masks)
    frames = [f for f, _ in composed(path, regions, variant, decode=DecodeOptions(), frames=len(source), seed=0,
                                     clip_id=clip_id, **kwargs)]
    return source, np.stack(frames)


def expected(source: np.ndarray, person: np.ndarray, objects: np.ndarray, fills: dict[str, tuple]) -> np.ndarray:
    want = source.copy()
    background = ~(person | objects)
    for region, mask in (("background", background), ("person", person), ("objects", objects)):
        if region in fills:
            want[mask] = fills[region]
    return want


MEAN = tuple(round(v) for v in IMAGENET_MEAN_RGB)


@pytest.mark.parametrize("name, fills", [
    ("bg", {"background": (0, 0, 0)}),
    ("bg_obj", {"background": (0, 0, 0), "objects": (0, 0, 0)}),
    ("bg_obj2", {"background": (0, 0, 0), "objects": (0, 255, 0)}),
    ("person", {"person": (0, 0, 0)}),
    ("obj", {"objects": (0, 0, 0)}),
    ("human_only", {"background": MEAN, "objects": MEAN}),
])
def test_colour_presets_fill_exactly_the_true_regions(masked, name, fills):
    root, truth, _, run_dir = masked
    (variant,) = resolve([name])
    for clip_id, (person, objects) in truth.items():
        source, frames = render_frames(root, run_dir, clip_id, variant)
        assert person.any() and objects.any()
        np.testing.assert_array_equal(frames, expected(source, person, objects, fills), err_msg=f"{name} {clip_id}")


def test_background_only_removes_people_and_keeps_the_rest(masked):
    root, truth, _, run_dir = masked
    (variant,) = resolve(["background_only"])
    for clip_id, (person, _) in truth.items():
        source, frames = render_frames(root, run_dir, clip_id, variant)
        np.testing.assert_array_equal(frames[~person], source[~person])
        # the person (white) is gone: its pixels come from the background or the box seen in other frames
        assert frames[person].max() < 200, clip_id
        assert source[person].min() > 200


def test_swap_pastes_people_onto_the_partner_background_only_frames(masked):
    root, truth, _, run_dir = masked
    a, b = sorted(truth)[:2]  # different labels, same split (train)
    _, background_b = render_frames(root, run_dir, b, resolve(["background_only"])[0])
    nobody = Regions(person=np.zeros((64, 96), bool), objects=np.zeros((64, 96), bool))
    partner = PartnerFrames(((f, nobody) for f in background_b), len(background_b), len(truth[a][0]), (96, 64))
    source, frames = render_frames(root, run_dir, a, resolve(["swap"])[0], swap=partner)
    person = truth[a][0]
    np.testing.assert_array_equal(frames[person], source[person])
    for i in range(len(frames)):
        j = min(len(background_b) - 1, i * len(background_b) // len(frames))
        np.testing.assert_array_equal(frames[i][~person[i]], background_b[j][~person[i]])


def test_temporal_or_and_dilation_grow_the_regions(masked):
    root, truth, _, run_dir = masked
    clip_id = sorted(truth)[0]
    person = truth[clip_id][0]
    variant = resolve(["person"], defaults=MaskOptions(temporal=1, dilate=2))[0]
    source, frames = render_frames(root, run_dir, clip_id, variant)
    filled = (frames == 0).all(axis=3) & (source != 0).any(axis=3)
    for i in range(1, len(person) - 1):
        union = person[i - 1] | person[i] | person[i + 1]
        assert filled[i][union].all()  # every pixel of the ±1 union is filled…
        assert filled[i].sum() > union.sum()  # …and the dilation adds a rim around it
        assert not filled[i][:, :2].any() or union[:, :5].any()  # but not far from the masks


def test_score_and_area_filters_drop_instances(masked):
    root, truth, _, run_dir = masked
    clip_id = sorted(truth)[0]
    source, frames = render_frames(root, run_dir, clip_id, resolve(["person"], defaults=MaskOptions(min_area=10**6))[0])
    np.testing.assert_array_equal(frames, source)  # every instance is smaller than the threshold: nothing filled


def render_config(out: Path, names: list[str], **overrides) -> RenderConfig:
    fields = dict(dataset="kinetics400", out=out, variants=resolve(names), execution=ExecOptions(workers=0))
    return RenderConfig(**{**fields, **overrides})


def test_render_stage_writes_every_clip_and_reruns_nothing(masked):
    _, truth, out, run_dir = masked
    summary = run_render(render_config(out, ["bg", "swap"]), progress=False)
    bg, swap = summary.variants
    assert bg.by_status == {"ok": 5} and bg.computed == 3
    assert swap.by_status.get("ok", 0) >= 2 and sum(swap.by_status.values()) == 5
    files = sorted((out / "renders" / "kinetics400" / run_dir.name / "bg").rglob("*.mp4"))
    assert len(files) == 5
    assert files[0].parent.name in ("juggling_balls", "passing_American_football_in_game")
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded_frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        person, _ = truth[path.stem]
        assert (len(decoded_frames), stream.width, stream.height, float(stream.average_rate)) == (len(person), 96, 64, 12.0)
        video = np.stack(decoded_frames).astype(int)
        background = ~(person | truth[path.stem][1])
        assert np.abs(video[background]).mean() < 6  # black within encoding error…
        assert np.abs(video[person] - 255).mean() < 25  # …and the person kept

    before = {p: p.stat().st_mtime_ns for p in files}
    again = run_render(render_config(out, ["bg", "swap"]), progress=False)
    assert [v.computed for v in again.variants] == [0, 0]
    assert [v.skipped for v in again.variants] == [3, 3]
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_two_runs_give_byte_identical_renders(masked, tmp_path):
    _, _, out, _ = masked
    other = tmp_path / "other"
    shutil.copytree(out / "masks", other / "masks")
    for target in (out, other):
        run_render(render_config(target, ["bg_obj2", "swap"], encode=EncodeOptions(crf=28)), progress=False)

    def files(base: Path) -> dict[str, bytes]:
        renders = base / "renders" / "kinetics400"
        return {str(p.relative_to(renders)): p.read_bytes() for p in sorted(renders.rglob("*.mp4"))}

    assert files(out) == files(other) and len(files(out)) >= 7


def test_rawframes_format_and_dask_workers(masked):
    _, truth, out, run_dir = masked
    summary = run_render(render_config(out, ["person"], encode=EncodeOptions(format="rawframes", short_side=32),
                                       execution=ExecOptions(workers=2)), progress=False)
    assert summary.variants[0].by_status == {"ok": 5}
    folders = sorted(p for p in (out / "renders" / "kinetics400" / run_dir.name / "person").glob("*/*/*") if p.is_dir())
    assert len(folders) == 5
    for folder in folders:
        images = sorted(folder.iterdir())
        assert [p.name for p in images][:2] == ["img_00001.jpg", "img_00002.jpg"]
        assert len(images) == len(truth[folder.name][0])
        assert cv2.imread(str(images[0])).shape == (32, 48, 3)


def test_blur_and_seeded_noise_fills_touch_only_their_region(masked):
    root, truth, _, run_dir = masked
    clip_id = min(truth)
    person, objects = truth[clip_id]
    background = ~(person | objects)
    (blur,) = resolve(["b"], defines=["b:background=blur(2)"])
    source, frames = render_frames(root, run_dir, clip_id, blur)
    np.testing.assert_array_equal(frames[~background], source[~background])
    for i in range(len(frames)):
        blurred = cv2.GaussianBlur(source[i], (0, 0), 2.0)
        np.testing.assert_array_equal(frames[i][background[i]], blurred[background[i]])
    (noise,) = resolve(["n"], defines=["n:person=noise"])
    _, first = render_frames(root, run_dir, clip_id, noise)
    _, again = render_frames(root, run_dir, clip_id, noise)
    np.testing.assert_array_equal(first, again)  # seeded: the same every time
    np.testing.assert_array_equal(first[~person], source[~person])
    assert first[person].std() > 50  # uniform noise, not the white person


def planar_frames(root: Path, run_dir: Path, clip_id: str, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """(source yuv420p planes, planes composed on them) of one clip."""
    path = next(root.glob(f"*/{clip_id}.mp4"))
    clip = load_clip_masks(run_dir, clip_id)
    source = np.stack([frame for _, frame in decoded(path, DecodeOptions(pixels="yuv420p"))])
    regions = RegionMasks(clip, clip.height, clip.width, variant.masks)
    frames = [f for f, _ in composed(path, regions, variant, decode=DecodeOptions(), frames=len(source), seed=0,
                                     clip_id=clip_id, planes=True)]
    return source, np.stack(frames)


def block_mean(full: np.ndarray) -> np.ndarray:
    """2×2 block means of (N, H, W) values, rounded half up: the subsampling a chroma sample stands for."""
    total = full[:, 0::2, 0::2] + full[:, 0::2, 1::2] + full[:, 1::2, 0::2] + full[:, 1::2, 1::2]
    return (total + 2) // 4


@pytest.mark.parametrize("name", ["bg", "bg_obj2", "person", "human_only"])
def test_colour_fills_on_yuv_planes_fill_exactly_the_true_regions(masked, name):
    root, truth, _, run_dir = masked
    (variant,) = resolve([name])
    for clip_id, (person, objects) in truth.items():
        source, planes = planar_frames(root, run_dir, clip_id, variant)
        height = person.shape[1]
        regions = {"background": ~(person | objects), "person": person, "objects": objects}
        want_y = source[:, :height].astype(int)
        want_chroma = [np.repeat(np.repeat(source[:, height:].reshape(len(source), 2, height // 2, -1)[:, c],
                                           2, axis=1), 2, axis=2).astype(int) for c in (0, 1)]
        for region, fill in variant.fills().items():
            if fill.kind == "keep":
                continue
            yuv = cv2.cvtColor(np.full((2, 2, 3), fill.rgb, dtype=np.uint8), cv2.COLOR_RGB2YUV_I420).ravel()
            want_y[regions[region]] = yuv[0]
            for c in (0, 1):
                want_chroma[c][regions[region]] = yuv[4 + c]
        np.testing.assert_array_equal(planes[:, :height], want_y, err_msg=f"{name} {clip_id} luma")
        chroma = planes[:, height:].reshape(len(planes), 2, height // 2, -1)
        for c in (0, 1):
            np.testing.assert_array_equal(chroma[:, c], block_mean(want_chroma[c]), err_msg=f"{name} {clip_id} chroma")


@pytest.mark.parametrize("name", ["bg_obj2", "person"])
def test_yuv_planes_agree_with_the_rgb_path(masked, name):
    """What the encoder receives from the two paths: the same frame within a conversion's rounding, except chroma
    along mask edges (where the RGB path takes a block's top-left pixel and the planes its mix)."""
    root, truth, _, run_dir = masked
    (variant,) = resolve([name])
    for clip_id, (person, objects) in truth.items():
        _, rgb = render_frames(root, run_dir, clip_id, variant)
        _, planes = planar_frames(root, run_dir, clip_id, variant)
        via_rgb = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420) for frame in rgb]).astype(int)
        height = person.shape[1]
        assert np.abs(via_rgb[:, :height] - planes[:, :height]).max() <= 2
        whole = np.ones(person[:, 0::2, 0::2].shape, dtype=bool)  # blocks inside one region
        for mask in (person, objects):
            inside = mask[:, 0::2, 0::2].astype(int) + mask[:, 0::2, 1::2] + mask[:, 1::2, 0::2] + mask[:, 1::2, 1::2]
            whole &= inside % 4 == 0
        edges = ~whole
        for c in (0, 1):
            theirs = via_rgb[:, height:].reshape(len(rgb), 2, height // 2, -1)[:, c]
            ours = planes[:, height:].reshape(len(rgb), 2, height // 2, -1)[:, c].astype(int)
            assert np.abs(theirs - ours)[whole].max() <= 2
            assert edges.any() and whole.any()


def test_planar_renders_scale_and_odd_sizes_go_through_rgb(tmp_path, monkeypatch):
    """A colour variant scaled by the encoder (planes resized one by one), and a source of odd size (no 4:2:0
    planes to composite on), both rendered and both right."""
    from pipeline.render.encode import ClipWriter

    written = []  # (the odd-sized clip's, planes or RGB) of every frame handed to a writer
    write = ClipWriter.write
    monkeypatch.setattr(ClipWriter, "write", lambda self, frame: (written.append(("size1" in self._tmp.name,
                                                                                  frame.ndim)), write(self, frame))[1])
    root = tmp_path / "k400"
    rows, truth = [], {}
    for i, (width, height, codec) in enumerate([(96, 64, "libx264"), (95, 63, "libvpx-vp9")]):
        frames, person, box = shape_clip(8, width, height, seed=i)
        youtube_id = f"size{i}_xxxx"
        write_video(root / "train" / f"{youtube_id}_000000_000010.mp4", frames, 12, lossless=True, codec=codec)
        rows.append(("juggling balls", youtube_id, 0, 10))
        truth[f"{youtube_id}_000000_000010"] = (person, box)
    write_kinetics_csv(root, "train", rows)
    out = tmp_path / "out"
    run_masks(masks_config(root, out), progress=False)
    for short_side, sizes in ((None, {(96, 64), (94, 62)}), (32, {(48, 32)})):
        written.clear()
        summary = run_render(render_config(out, ["bg"], encode=EncodeOptions(short_side=short_side), overwrite=True),
                             progress=False)
        assert summary.variants[0].by_status == {"ok": 2}
        seen = set()
        for path in (out / "renders").rglob("*.mp4"):
            with av.open(str(path)) as container:
                video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)
            seen.add((video.shape[2], video.shape[1]))
            person, box = truth[path.stem]
            size = (video.shape[2], video.shape[1])
            background = np.stack([cv2.resize((~(p | b)).view(np.uint8), size, interpolation=cv2.INTER_AREA)
                                   for p, b in zip(person, box)]) == 1
            people = np.stack([cv2.resize(p.view(np.uint8), size, interpolation=cv2.INTER_AREA) for p in person]) == 1
            assert np.abs(video[background]).mean() < 6, path.name  # black…
            assert np.abs(video[people] - 255).mean() < 25, path.name  # …and the person kept
        assert seen == sizes
        assert set(written) == {(False, 2), (True, 3)}  # the even clip on planes, the odd one in RGB


def test_only_colour_variants_into_mp4_are_keyed_by_their_yuv_compositing():
    """Colour fills into mp4 now come from the YUV planes (other pixels than before): their renders are redone.
    Every other variant's renders are as they were, and keep their fingerprint."""
    for fmt, names in (("mp4", ["bg", "bg_obj2", "person", "human_only"]), ("mp4", ["background_only", "swap"]),
                       ("rawframes", ["bg", "person", "background_only"])):
        config = render_config(Path("."), names, encode=EncodeOptions(format=fmt))
        keyed = {variant.name: config.made_of(variant).get("composite") for variant in config.variants}
        planar = fmt == "mp4" and "bg" in names
        assert keyed == dict.fromkeys(names, "yuv420p" if planar else None), (fmt, keyed)
    # what the fingerprint of an untouched variant was before the planes came, so its renders are not redone
    assert render_config(Path("."), ["background_only"]).fingerprint(resolve(["background_only"])[0]) == "c0f4732b47"


def test_the_plates_sorting_network_sorts_as_numpy_does():
    from pipeline.render.compose import sort_network

    rng = np.random.default_rng(7)
    for n in range(1, 41):
        stack = rng.integers(0, 256, (n, 5, 4, 3), dtype=np.uint8)
        stack[:, 0] = 255  # ties, and the value hidden pixels take
        expected = np.sort(stack, axis=0)
        sort_network(stack)
        np.testing.assert_array_equal(stack, expected)


def test_the_inpainting_plate_is_the_lower_median_of_its_samples(masked):
    """Against the plate's definition, computed here the plain way: every frame's regions as `stream` gives
    them, every `step`-th frame sampled, hidden pixels ranked last, the lower median of the visible ones."""
    from pipeline.decode import DecodeOptions
    from pipeline.render.compose import background_plate, decoded, plate_step
    from pipeline.render.kinds import MaskOptions
    from pipeline.render.regions import RegionMasks

    _, _, _, run_dir = masked
    run = MasksRun(run_dir)
    for clip in run.clips():
        for options, holes in ((MaskOptions(), ["person"]), (MaskOptions(temporal=2, dilate=1), ["person", "objects"])):
            regions = RegionMasks(run.clip_masks(clip), clip.height, clip.width, options)
            for frames in (1, 5, clip.frames):
                step, samples, hidden = plate_step(frames), [], []
                for i, (_, frame, found) in enumerate(regions.stream(decoded(clip.path, DecodeOptions(), frames))):
                    if i % step == 0:
                        samples.append(frame)
                        hidden.append(np.logical_or.reduce([found.get(region) for region in holes]))
                stack, hidden = np.stack(samples), np.stack(hidden)
                stack[hidden] = 255
                stack.sort(axis=0)
                valid = (~hidden).sum(axis=0)
                pick = (np.maximum(valid, 1) - 1) // 2
                expected = np.take_along_axis(stack, pick[None, :, :, None].repeat(3, axis=3), axis=0)[0]
                never = valid == 0
                if never.any():
                    expected = cv2.inpaint(expected, never.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
                np.testing.assert_array_equal(background_plate(clip.path, regions, holes, DecodeOptions(), frames),
                                              expected)
