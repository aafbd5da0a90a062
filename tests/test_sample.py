"""The generated sample dataset: Kinetics layout, real photos, exact truth, byte-identical on every machine."""

import hashlib

import cv2
import numpy as np

from pipeline.datasets import list_clips
from pipeline.datasets.sample import CLIPS, asset, pan_zoom, read_truth, write_video
from pipeline.decode import VideoDecoder


def test_sample_is_deterministic_kinetics_layout_with_exact_truth(tmp_path):
    listing = list_clips("sample", None, tmp_path / "a")
    clips, again = listing.clips, list_clips("sample", None, tmp_path / "b").clips
    assert len(clips) == len(CLIPS) == 10
    assert listing.classes == ("celebrating (zidane photo)", "moving shapes (synthetic)", "waiting for a bus")
    assert {c.split for c in clips} == {"train", "val"}
    assert sorted({(c.label, c.label_index) for c in clips}) == [
        ("celebrating (zidane photo)", 0), ("moving shapes (synthetic)", 1), ("waiting for a bus", 2),
    ]
    for one, two in zip(clips, again):  # what masks depend on: the decoded pixels
        frames_one = np.concatenate([b.frames for b in VideoDecoder(one.path)])
        frames_two = np.concatenate([b.frames for b in VideoDecoder(two.path)])
        np.testing.assert_array_equal(frames_one, frames_two, err_msg=f"{one.clip_id} differs between generations")
    root = tmp_path / "a" / "data" / "sample"
    for clip in (c for c in clips if "shapes" in c.clip_id):
        person, box = read_truth(root / "truth" / f"{clip.clip_id}.json")
        frames = np.concatenate([b.frames for b in VideoDecoder(clip.path)])
        assert len(frames) == len(person)
        grey = frames.mean(axis=3)
        np.testing.assert_array_equal(grey > 190, person)  # lossless: the truth is exactly what is on screen
        np.testing.assert_array_equal(np.abs(grey - 128) < 32, box)


def test_the_same_frames_encode_to_the_same_bytes_at_the_small_sizes_tests_make(tmp_path):
    """x264's macroblock tree gave 24 bitstreams in 60 encodes of one 96x64 clip (written with it on)."""
    photo = cv2.cvtColor(cv2.imread(str(asset("zidane.jpg"))), cv2.COLOR_BGR2RGB)
    frames = pan_zoom(photo, 96, 64, 30, seed=1)
    digests = set()
    for i in range(12):
        write_video(tmp_path / f"{i}.mp4", frames, 25)
        digests.add(hashlib.sha256((tmp_path / f"{i}.mp4").read_bytes()).hexdigest())
    assert len(digests) == 1
