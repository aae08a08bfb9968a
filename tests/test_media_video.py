"""Video frame sampling (2 fps, frame-count and pixel-budget rules), its sound track, and errors."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from video_files import write_clip

from pocketomni.engine.positions import KIND_AUDIO, KIND_VIDEO, TextSegment, build_prompt
from pocketomni.errors import FeatureUnavailableError, MediaError
from pocketomni.media.video import VideoConfig, frame_size, prepare_video, sample_indices, smart_nframes


@pytest.mark.parametrize(
    "total, fps, want",
    [
        (180, 30, 12),  # 6 s -> 12 frames at 2 fps
        (182, 25, 14),  # 7.28 s -> 14.56 -> 14
        (20, 5, 8),
        (5, 30, 4),  # short clip: at least 4 frames
        (3, 30, 2),  # ... but never more than it has, rounded down to 2
        (2, 30, 2),
        (10000, 30, 666),
        (30000, 30, 768),  # capped at 768 frames
        (7, 1, 6),  # 1 fps source: 14 wanted, capped at 7 -> 6
    ],
)
def test_frame_count_rule(total, fps, want):
    assert smart_nframes(total, fps) == want


def test_one_frame_is_refused():
    with pytest.raises(MediaError, match="as an image"):
        smart_nframes(1, 30)


def test_sample_indices_match_torch_linspace_round():
    import torch
    for total in list(range(2, 300)) + [997, 1800, 7201, 30000]:
        for n in sorted({2, 4, 6, 10, 14, 64, 128, 766, 768}):
            if n <= total:
                ref = torch.linspace(0, total - 1, n).round().long().numpy()
                np.testing.assert_array_equal(sample_indices(total, n), ref, err_msg=f"{total} {n}")


@pytest.mark.parametrize(
    "h, w, n, want",
    [
        (1080, 1920, 12, (560, 1008)),  # under 768*28*28 per frame
        (120, 160, 12, (280, 392)),  # upscaled to at least 128*28*28
        (1080, 1920, 768, (336, 644)),  # long video: per-frame share of the total budget
        (480, 640, 100, (476, 644)),
    ],
)
def test_frame_size_budget(h, w, n, want):
    assert frame_size(h, w, n) == want
    fh, fw = want
    assert fh % 28 == 0 and fw % 28 == 0 and 128 * 784 <= fh * fw <= 768 * 784


def test_token_budget_config():
    cfg = VideoConfig().with_token_budget(4096)
    for n in (4, 12, 24, 40):
        fh, fw = frame_size(720, 1280, n, cfg)
        assert n // 2 * (fh // 28) * (fw // 28) <= 4096
    # past the budget the reference's floor of 128*28*28 pixels per frame wins: 144 tokens per second here
    assert frame_size(720, 1280, 60, cfg) == (252, 448)


def _indexed_frames(total, h=56, w=84):
    """Frame i is a flat image of value i % 256, so resizing keeps it and sampling is visible."""
    return (np.arange(total, dtype=np.int64)[:, None, None, None] % 256 * np.ones((1, h, w, 3))).astype(np.uint8)


def test_frames_and_fps_input():
    frames = _indexed_frames(180)
    v = prepare_video((frames, 30.0))
    assert v.frames.shape == (12, 280, 392, 3) and v.grid_thw == (6, 20, 28)
    want_idx = sample_indices(180, 12)
    assert [int(f[0, 0, 0]) for f in v.frames] == [int(i) % 256 for i in want_idx]
    assert v.sample_fps == pytest.approx(2.0) and v.seconds_per_grid == pytest.approx(1.0)
    assert v.n_video_tokens == 6 * 20 * 28 // 4 and v.audio is None
    assert v.segment().audio_tokens is None


def test_frames_with_audio_gives_interleaved_prompt():
    frames = _indexed_frames(180)
    sound = (np.random.default_rng(0).standard_normal(44100 * 6) * 0.1).astype(np.float32)
    v = prepare_video((frames, 30, sound, 44100))
    assert v.audio is not None and v.audio.n_tokens == 150
    lay = build_prompt([TextSegment([1, 2]), v.segment(), TextSegment([3])])
    assert (lay.kinds == KIND_VIDEO).sum() == v.n_video_tokens and (lay.kinds == KIND_AUDIO).sum() == 150
    dropped = prepare_video((frames, 30, sound, 44100), use_audio=False)
    assert dropped.audio is None
    assert v.segment(use_audio=False).audio_tokens is None


def test_list_of_images_and_odd_fps():
    from PIL import Image

    frames = [Image.fromarray(f) for f in _indexed_frames(91)]
    v = prepare_video((frames, 25))
    n = smart_nframes(91, 25)
    assert v.frames.shape[0] == n == 6
    assert v.sample_fps == pytest.approx(6 / 91 * 25)
    assert v.seconds_per_grid == pytest.approx(2 / (6 / 91 * 25))


@pytest.mark.parametrize(
    "src, match",
    [
        ((_indexed_frames(1), 30), "at least 2"),
        ((np.zeros((0, 28, 28, 3), np.uint8), 30), "no frames"),
        ((_indexed_frames(10), 0), "positive"),
        ((_indexed_frames(10), "fast"), "frame rate"),
        ((np.zeros((4, 28, 28), np.uint8), 30), "shape"),
        ((_indexed_frames(10),), "frames, fps"),
        ("https://example.com/v.mp4", "offline"),
        (42, "unsupported"),
    ],
)
def test_bad_video_inputs(src, match):
    with pytest.raises(MediaError, match=match):
        prepare_video(src)


def test_mixed_frame_sizes_and_too_long():
    frames = [np.zeros((28, 28, 3), np.uint8)] * 5 + [np.zeros((56, 28, 3), np.uint8)] * 5
    with pytest.raises(MediaError, match="same size"):
        prepare_video((frames, 2.0))
    with pytest.raises(MediaError, match="at most 10 s"):
        prepare_video((_indexed_frames(40), 2.0), config=VideoConfig(max_seconds=10))


def test_file_needs_pyav(monkeypatch, tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00")
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(FeatureUnavailableError, match="pip install"):
        prepare_video(p)


@pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV (the 'video' extra) is not installed")
def test_file_with_sound_track(tmp_path):
    rate = 44100
    t = np.arange(rate * 3) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_clip(tmp_path / "clip.mp4", fps=10, seconds=3, size=(160, 120), step=8, tone=tone, rate=rate)
    v = prepare_video(path)
    assert v.frames.shape[0] == smart_nframes(30, 10) == 6
    assert v.grid_thw == (3, 20, 28)
    assert v.audio is not None and abs(v.audio.seconds - 3.0) < 0.1
    assert prepare_video(path, use_audio=False).audio is None
    with pytest.raises(MediaError):
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"not a video file at all" * 10)
        prepare_video(bad)
