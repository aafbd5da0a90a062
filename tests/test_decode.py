from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from pipeline.datasets.sample import shape_clip, write_video
from pipeline.decode import DecodeError, DecodeOptions, VideoDecoder, inference_size


def decode_all(path, **options):
    decoder = VideoDecoder(path, DecodeOptions(**options))
    batches = list(decoder)
    return decoder, batches


def test_decodes_every_frame_in_bounded_batches(tmp_path):
    frames, _, _ = shape_clip(23, 96, 64, seed=1)
    write_video(tmp_path / "a.mp4", frames, 12, lossless=True)
    decoder, batches = decode_all(tmp_path / "a.mp4", batch=5)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    info = decoder.info
    assert (info.frames, info.fps, info.width, info.height, info.rotation) == (23, 12.0, 96, 64, 0)
    assert info.duration == pytest.approx(23 / 12, abs=0.01)
    indices = np.concatenate([b.indices for b in batches])
    times = np.concatenate([b.times for b in batches])
    np.testing.assert_array_equal(indices, np.arange(23))
    np.testing.assert_allclose(times, np.arange(23) / 12, atol=1e-3)
    decoded = np.concatenate([b.frames for b in batches])
    assert np.abs(decoded.astype(int) - frames.astype(int)).max() <= 2  # lossless luma, grey chroma


def test_large_frames_come_in_fewer_a_batch_within_max_batch_mb(tmp_path):
    """640×480 RGB frames are 900 KiB: at most 2 of them reach 1 MiB (the one that passes it included), whatever
    the batch; the feeder packs by the same rule (`frames_within`)."""
    frames, _, _ = shape_clip(5, 640, 480, seed=0)
    write_video(tmp_path / "big.mp4", frames, 12)
    _, batches = decode_all(tmp_path / "big.mp4", batch=16, max_batch_mb=1)
    assert [len(b) for b in batches] == [2, 2, 1]
    _, batches = decode_all(tmp_path / "big.mp4", batch=16, max_batch_mb=2)
    assert [len(b) for b in batches] == [3, 2]


def test_rotation_metadata_gives_upright_frames(tmp_path):
    frames = np.zeros((3, 64, 96, 3), dtype=np.uint8)
    frames[:, :16, :24] = 255  # a marker in the coded top-left corner
    write_video(tmp_path / "rot.mp4", frames, 10, rotation=90)
    decoder, (batch,) = decode_all(tmp_path / "rot.mp4")
    assert decoder.info.rotation == 90
    assert (decoder.info.width, decoder.info.height) == (64, 96)
    assert (batch.width, batch.height) == (64, 96)
    assert batch.frames.shape == (3, 96, 64, 3)
    expected = np.rot90(frames[0], 1)  # 90° counter-clockwise moves top-left to bottom-left
    assert np.abs(batch.frames[0].astype(int) - expected.astype(int)).mean() < 3


def test_short_side_resize_keeps_aspect_and_source_size(tmp_path):
    frames, _, _ = shape_clip(4, 160, 120, seed=2)
    write_video(tmp_path / "a.mp4", frames, 10)
    _, (batch,) = decode_all(tmp_path / "a.mp4", short_side=60)
    assert batch.frames.shape == (4, 60, 80, 3)
    assert (batch.height, batch.width) == (120, 160)  # masks are stored at the source size
    assert inference_size(160, 120, None) == (160, 120)


def test_fps_resampling_follows_timestamps(tmp_path):
    frames, _, _ = shape_clip(30, 64, 48, seed=3)
    write_video(tmp_path / "a.mp4", frames, 30)
    _, batches = decode_all(tmp_path / "a.mp4", fps=10)
    indices = np.concatenate([b.indices for b in batches])
    np.testing.assert_array_equal(indices, np.arange(0, 30, 3))


def test_variable_frame_rate_keeps_real_timestamps(tmp_path):
    path = tmp_path / "vfr.mp4"
    pts_ms = [0, 40, 80, 200, 240, 500, 540]  # irregular gaps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for pts in pts_ms:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), pts % 255, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    decoder, batches = decode_all(path)
    times = np.concatenate([b.times for b in batches])
    np.testing.assert_allclose(times, np.array(pts_ms) / 1000, atol=2e-3)
    _, batches = decode_all(path, fps=5)  # one frame per 200 ms slot that has one
    np.testing.assert_allclose(np.concatenate([b.times for b in batches]), [0, 0.2, 0.5], atol=2e-3)


def test_corrupt_and_non_video_files_raise_decode_error_naming_the_file(tmp_path):
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DecodeError, match="broken.mp4"):
        decode_all(garbage)
    audio_only = tmp_path / "audio.wav"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(DecodeError, match="no video stream"):
        decode_all(audio_only)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_yuv420p_planes_are_the_rgb_frames_before_conversion(tmp_path, rotation):
    frames, _, _ = shape_clip(5, 96, 64, seed=4)
    frames[:, :16, :24] = (200, 40, 90)  # colour in the coded top-left corner: chroma that must turn too
    write_video(tmp_path / "a.mp4", frames, 10, rotation=rotation)
    _, (rgb,) = decode_all(tmp_path / "a.mp4")
    _, (planes,) = decode_all(tmp_path / "a.mp4", pixels="yuv420p")
    height, width = rgb.frames.shape[1:3]
    assert planes.frames.shape == (5, height * 3 // 2, width)
    converted = np.stack([cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420) for frame in planes.frames])
    assert np.abs(converted.astype(int) - rgb.frames.astype(int)).max() <= 6  # two conversions' rounding
    np.testing.assert_array_equal(planes.indices, rgb.indices)


def test_yuv420p_planes_need_an_even_size(tmp_path):
    frames, _, _ = shape_clip(3, 95, 63, seed=5)
    write_video(tmp_path / "odd.webm", frames, 10, codec="libvpx-vp9")
    with pytest.raises(ValueError, match="odd size"):
        decode_all(tmp_path / "odd.webm", pixels="yuv420p")


@pytest.mark.parametrize("rotation", [0, 90])
def test_frames_are_written_into_the_memory_given(tmp_path, rotation):
    """Each batch's frames land in an array `memory` hands out (a GPU's pinned memory), the same frames as without."""
    frames, _, _ = shape_clip(11, 96, 64, seed=3)
    write_video(tmp_path / "a.mp4", frames, 12, lossless=True, rotation=rotation)
    given = []

    def memory(shape):
        given.append(np.full(shape, 7, dtype=np.uint8))
        return given[-1]

    plain = list(VideoDecoder(tmp_path / "a.mp4", DecodeOptions(batch=4)))
    written = list(VideoDecoder(tmp_path / "a.mp4", DecodeOptions(batch=4), memory=memory))
    size = plain[0].frames.shape[1:]
    assert [b.frames.shape for b in written] == [b.frames.shape for b in plain] == [(4, *size)] * 2 + [(3, *size)]
    assert all(batch.frames is array for batch, array in zip(written, given, strict=True))
    for a, b in zip(written, plain):
        np.testing.assert_array_equal(a.frames, b.frames)


@pytest.mark.parametrize("options", [{}, {"short_side": 90}, {"pixels": "yuv420p", "short_side": 90}])
def test_frames_converted_on_one_thread_are_the_bytes_of_any_thread_count(tmp_path, options):
    """The decoder converts each frame on one thread (ONE_THREAD): the same bytes as PyAV's own default (every
    core, PyAV 17 on) and as other counts, so masks made before it are as current as masks made after."""
    from pipeline.decode import ONE_THREAD

    frames, _, _ = shape_clip(6, 320, 240, seed=4)
    write_video(tmp_path / "a.mp4", frames, 10)
    _, batches = decode_all(tmp_path / "a.mp4", **options)
    decoded = np.concatenate([b.frames for b in batches])
    pixels = options.get("pixels", "rgb24")
    size = {"width": 120, "height": 90} if options.get("short_side") else {}
    counts = [{}, *([{"threads": n} for n in (0, 3, 8)] if ONE_THREAD else [])]  # {}: PyAV's default
    with av.open(str(tmp_path / "a.mp4")) as container:
        raw = list(container.decode(container.streams.video[0]))
    for count in counts:
        np.testing.assert_array_equal(decoded, np.stack([f.to_ndarray(format=pixels, **size, **count) for f in raw]))
