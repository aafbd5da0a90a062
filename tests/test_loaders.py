"""On-the-fly variants: MaskedClips gives, frame for frame, what the render stage composes; random access by
row group; per-sample fills seeded by (seed, epoch, index); the same samples in DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.decode import DecodeOptions
from pipeline.errors import InputError
from pipeline.loaders import ClipComposer, ClipSource, MaskedClips, MasksIndex, Sampling
from pipeline.loaders.mmaction import MaskVariant
from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.masks import MasksRun, load_clip_masks, run_masks
from pipeline.render import run_render
from pipeline.render.backdrops import still_index
from pipeline.render.compose import composed, partner_frames
from pipeline.render.kinds import MaskOptions
from pipeline.render.regions import RegionMasks
from pipeline.render.variants import resolve
from tests.test_masks_stage import config as masks_config
from tests.test_render import render_config

WINDOWS = Sampling(clip_len=4, frame_interval=3, num_clips=2, test_mode=True)


@pytest.fixture
def cached(shapes_dataset, tmp_path):
    """Masks of the shape clips and the `original` variant's manifest (links only): (out, run_dir, manifest)."""
    root, _ = shapes_dataset
    out = tmp_path / "out"
    run_dir = Path(run_masks(masks_config(root, out), progress=False).output)
    run_render(render_config(out, ["original", "scuba"]), progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, min_coverage=0.0, min_frames_frac=0.0))
    return out, run_dir, out / "manifests" / "kinetics400" / run_dir.name / "original"


def rendered(run_dir: Path, clip_id: str, variant, *, key: str | None = None, partner: str | None = None) -> np.ndarray:
    """Every frame of a clip as the render stage composes it before encoding."""
    run = MasksRun(run_dir)
    clips = {clip.clip_id: clip for clip in run.clips()}
    clip = clips[clip_id]
    swap = partner_frames(clips[partner], run.clip_masks(clips[partner]), clip, options=variant.masks,
                          decode_fps=None, seed=0) if partner else None
    regions = RegionMasks(run.clip_masks(clip), clip.height, clip.width, variant.masks)
    return np.stack([frame for frame, _ in composed(clip.path, regions, variant, decode=DecodeOptions(),
                                                    frames=clip.frames, seed=0, clip_id=clip_id, key=key, swap=swap)])


@pytest.mark.parametrize("names, defines", [
    (["bg", "human_only", "background_only", "person"], []),
    (["grown", "noisy", "blurred"], ["grown:background=#102030;objects=inpaint", "noisy:person=noise",
                                     "blurred:background=blur(3)"]),
])
def test_every_sampled_frame_equals_the_render_composition(cached, names, defines):
    out, run_dir, manifest = cached
    masks = MaskOptions(temporal=1, dilate=2) if defines else MaskOptions()
    for variant in resolve(names, defaults=masks, defines=defines):
        clips = MaskedClips(manifest, variant=variant, sampling=WINDOWS, size=None)
        assert len(clips) == 5
        for i in range(len(clips)):
            sample = clips[i]
            want = rendered(run_dir, sample.clip_id, variant)[sample.positions.numpy()]
            got = sample.frames.reshape(-1, *want.shape[1:]).numpy()
            assert np.array_equal(got, want), (variant.name, sample.clip_id)


def test_static_still_and_swap_variants_match_their_renders(cached):
    out, run_dir, _ = cached
    scuba_manifest = out / "manifests" / "kinetics400" / run_dir.name / "scuba"
    scuba, scufo, swap = resolve(["scuba", "scufo", "swap_centred"],
                                 defines=["swap_centred:background=swap;objects=swap;swap_align=centroid"])
    clips = MaskedClips(scuba_manifest, variant=scuba, sampling=WINDOWS, size=None)
    for i in range(len(clips)):
        sample = clips[i]
        assert sample.clip_id.endswith("__0")  # the render's key, from the scuba manifest
        source = sample.clip_id.rsplit("__", 1)[0]
        want = rendered(run_dir, source, scuba, key=sample.clip_id)[sample.positions.numpy()]
        assert np.array_equal(sample.frames.reshape(want.shape).numpy(), want)
    still = MaskedClips(scuba_manifest, variant=scufo, sampling=WINDOWS, size=None)[0]
    assert len(set(still.positions.tolist())) == 1  # one seeded frame, repeated
    source = still.clip_id.rsplit("__", 1)[0]
    want = rendered(run_dir, source, scufo, key=still.clip_id)[still.positions.numpy()]
    assert np.array_equal(still.frames.reshape(want.shape).numpy(), want)
    pairs = MaskedClips(out / "manifests" / "kinetics400" / run_dir.name / "original", variant=swap,
                        sampling=WINDOWS, size=None)
    assert len(pairs) > 0
    for entry, i in zip(pairs.entries, range(len(pairs))):
        sample = pairs[i]
        want = rendered(run_dir, entry.clip_id, swap, partner=entry.partner)[sample.positions.numpy()]
        assert np.array_equal(sample.frames.reshape(want.shape).numpy(), want)


def test_the_last_frames_take_the_temporal_window_render_gives_them(cached):
    _, run_dir, _ = cached
    (variant,) = resolve(["grown"], defines=["grown:background=#102030;objects=blur(2)"],
                         defaults=MaskOptions(temporal=2, dilate=1))
    index = MasksIndex(MasksRun(run_dir))
    for clip_id, clip in index.clips.items():
        positions = [clip.frames - 1, clip.frames - 2, 0, 1]
        source = ClipSource(clip=clip, masks=index.masks(clip_id), key=clip_id)
        got = ClipComposer(source, variant, decode_fps=None, seed=0).frames(positions)
        assert np.array_equal(got, rendered(run_dir, clip_id, variant)[positions]), clip_id


def test_a_manifest_older_than_the_masks_is_refused(cached, tmp_path):
    _, run_dir, manifest = cached
    table = pq.read_table(manifest / "manifest.parquet")
    for column, value in (("masks_digest", "0" * 16), ("label_index", 7)):
        rows = table.to_pylist()
        rows[0][column] = value
        folder = tmp_path / column
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "manifest.parquet")
        with pytest.raises(InputError, match="changed since"):
            MaskedClips(folder, variant="bg", masks=run_dir)


def test_a_variant_takes_its_own_keys_from_another_variants_manifest(cached):
    out, run_dir, _ = cached
    scuba_manifest = out / "manifests" / "kinetics400" / run_dir.name / "scuba"
    plain = MaskedClips(scuba_manifest, variant="bg", sampling=WINDOWS, size=None)
    assert sorted(entry.key for entry in plain.entries) == sorted(MasksIndex(MasksRun(run_dir)).clips)
    twice = MaskedClips(out / "manifests" / "kinetics400" / run_dir.name / "original", variant="scuba")
    assert all(entry.key == f"{entry.clip_id}__0" for entry in twice.entries) and len(twice) == 5


def test_masks_are_read_by_row_group_and_a_recomputed_shard_is_refused(cached, monkeypatch):
    _, run_dir, _ = cached
    index = MasksIndex(MasksRun(run_dir))
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("a whole masks file was read"))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("a whole masks file was read"))
    for clip_id in index.clips:
        got = index.masks(clip_id)
        monkeypatch.undo()
        want = load_clip_masks(run_dir, clip_id)
        monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("a whole masks file was read"))
        assert got is not None and got.table.equals(want.table.select(got.table.column_names))
    monkeypatch.undo()
    clip_id = next(iter(index.clips))
    path = index.locations[clip_id].path
    path.write_bytes(path.read_bytes())  # the same bytes, rewritten: another mtime
    with pytest.raises(InputError, match="changed since"):
        index.masks(clip_id)


def test_random_fills_are_drawn_per_sample_or_per_frame_from_seed_epoch_and_index(cached):
    _, _, manifest = cached
    (variant,) = resolve(["bg"])
    train = Sampling(clip_len=4, frame_interval=2)

    def background_colours(clips, i):
        sample = clips[i]
        frames = sample.frames[0].numpy()
        person = MaskedClips(manifest, variant="original", sampling=train, size=None)
        person.set_epoch(clips.epoch)
        source = person[i].frames[0].numpy()
        changed = np.any(frames != source, axis=-1)  # the filled background
        return [tuple(frame[mask][0]) for frame, mask in zip(frames, changed)], sample.positions

    per_clip = MaskedClips(manifest, variant=variant, sampling=train, size=None, random_fill="clip", seed=3)
    colours, positions = background_colours(per_clip, 1)
    assert len(set(colours)) == 1 and colours[0] != (0, 0, 0)
    again, same_positions = background_colours(per_clip, 1)
    assert again == colours and torch.equal(positions, same_positions)  # the same (seed, epoch, index)
    per_clip.set_epoch(1)
    assert background_colours(per_clip, 1)[0] != colours  # a new epoch draws anew
    per_frame = MaskedClips(manifest, variant=variant, sampling=train, size=None, random_fill="frame", seed=3)
    assert len(set(background_colours(per_frame, 1)[0])) > 1


def test_dataloader_workers_give_the_samples_of_the_main_process(cached):
    _, _, manifest = cached
    clips = MaskedClips(manifest, variant="human_only", sampling=Sampling(clip_len=4, frame_interval=2), size=32,
                        random_fill="clip", seed=7)
    clips.set_epoch(2)
    batches = list(torch.utils.data.DataLoader(clips, batch_size=2, num_workers=2))
    frames = torch.cat([batch.frames for batch in batches])
    assert frames.shape == (5, 1, 4, 32, 32, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames, torch.stack([clips[i].frames for i in range(len(clips))]))
    assert [label for batch in batches for label in batch.label.tolist()] == [e.label for e in clips.entries]


def test_sampling_windows_stay_inside_the_clip():
    rng = np.random.default_rng(0)
    for frames in (1, 5, 12, 100):
        for sampling in (Sampling(clip_len=4, frame_interval=3, num_clips=3), WINDOWS):
            positions = sampling.positions(frames, rng)
            assert positions.shape == (sampling.num_clips * sampling.clip_len,)
            assert positions.min() >= 0 and positions.max() < frames
    test = Sampling(clip_len=8, frame_interval=2, num_clips=2, test_mode=True)
    assert test.positions(100, rng).tolist() == test.positions(100, np.random.default_rng(9)).tolist()
    assert test.positions(100, rng)[::8].tolist() == [21, 63]  # two windows of 16 frames, centred in halves


def test_bad_input_is_a_clear_error(cached, tmp_path):
    _, _, manifest = cached
    with pytest.raises(InputError, match="no manifest"):
        MaskedClips(tmp_path / "nowhere", variant="bg")
    with pytest.raises(InputError, match="no listed clips"):
        MaskedClips(manifest, variant="bg", split="test")


def decode_at(path: Path, positions: list[int]) -> list[np.ndarray]:
    """What mmaction2's PyAVDecode hands the next transform: RGB frames at `frame_inds`."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return [frames[p] for p in positions]


@pytest.mark.parametrize("name", ["human_only", "background_only", "scuba", "scufo"])
def test_mmaction2_transform_composes_the_decoded_frames_as_render_does(cached, name):
    out, run_dir, manifest = cached
    (variant,) = resolve([name])
    transform = MaskVariant(run_dir, name)
    links = sorted((out / "renders" / "kinetics400" / run_dir.name / "original").rglob("*.mp4"))
    assert len(links) == 5 and all(link.is_symlink() for link in links)
    for i, link in enumerate(links):
        clip_id = link.stem
        positions = WINDOWS.positions(transform.index.clip(clip_id).frames, np.random.default_rng(i))
        by = {"filename": str(link)} if i % 2 else {"filename": str(link.resolve())}  # by name, or by link target
        results = {**by, "imgs": decode_at(link, positions.tolist()), "frame_inds": positions, "start_index": 0,
                   "label": 1}
        returned = transform(results)
        assert returned is results and returned["label"] == 1 and returned["frame_inds"] is positions
        key = f"{clip_id}__0" if variant.static else None
        want = rendered(run_dir, clip_id, variant, key=key)
        if variant.still:
            positions = [min(still_index(seed=0, key=key, frames=len(want)), len(want) - 1)] * len(positions)
        want = want[positions]
        assert np.array_equal(np.stack(returned["imgs"]), want)


def test_mmaction2_transform_refuses_what_it_cannot_match(cached, tmp_path):
    _, run_dir, _ = cached
    transform = MaskVariant(run_dir, "bg")
    with pytest.raises(KeyError, match="not a clip of"):
        transform({"filename": str(tmp_path / "elsewhere.mp4"), "imgs": [], "frame_inds": np.array([])})
    clip_id = next(iter(transform.index.clips))
    small = {"filename": f"{clip_id}.mp4", "imgs": [np.zeros((8, 8, 3), np.uint8)], "frame_inds": np.array([0])}
    with pytest.raises(ValueError, match="right after the decode step"):
        transform(small)
    frames = transform.index.clip(clip_id).frames
    past = {"filename": f"{clip_id}.mp4", "imgs": [np.zeros((8, 8, 3), np.uint8)], "frame_inds": np.array([frames])}
    with pytest.raises(ValueError, match=f"masks hold {frames} frames"):
        transform(past)
    transform.index.rotation[clip_id] = 90
    with pytest.raises(ValueError, match="use MaskedClips"):
        transform(small)


def test_mmaction2_pipeline_runs_the_transform_after_its_decoder(cached):
    """With mmaction2 installed (optional): its own PyAV decoding, then MaskVariant from the registry."""
    registry = pytest.importorskip("mmaction.registry", reason="mmaction2 not installed (optional)")
    import mmaction.datasets.transforms  # noqa: F401 - registers mmaction2's transforms
    from mmengine.dataset import Compose

    import pipeline.loaders.mmaction  # noqa: F401 - registers MaskVariant

    out, run_dir, _ = cached
    link = sorted((out / "renders" / "kinetics400" / run_dir.name / "original").rglob("*.mp4"))[0]
    steps = [dict(type="PyAVInit"), dict(type="SampleFrames", clip_len=4, frame_interval=2, num_clips=1, test_mode=True),
             dict(type="PyAVDecode"), dict(type="MaskVariant", masks=str(run_dir), variant="human_only")]
    pipeline = Compose([registry.TRANSFORMS.build(step) for step in steps])
    results = pipeline(dict(filename=str(link), label=0, start_index=0, modality="RGB"))
    want = rendered(run_dir, link.stem, resolve(["human_only"])[0])[results["frame_inds"]]
    assert np.array_equal(np.stack(results["imgs"]), want)
