"""The live camera's parts without a model: the frame-size rule against the pixel budget (and that the
video processor keeps those sizes), the 2 fps recording grid, the sources and their typed errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from video_files import write_clip

from pocketomni.errors import CameraError, MediaError, OptionsError
from pocketomni.media.video import VideoConfig, prepare_video
from pocketomni.voice.camera import (
    CHUNK_FRAMES,
    PERIOD,
    CameraRecorder,
    FrameStream,
    PushCamera,
    VideoFileCamera,
    camera_frame_size,
    check_camera_pixels,
    prepend_still,
)

UNIT = 0.05  # seconds per grey level in the clock frames below


@pytest.mark.parametrize("min_pixels", [100352, 3136])
def test_frame_size_fits_the_budget_and_the_video_processor_keeps_it(min_pixels: int) -> None:
    cfg = VideoConfig(min_pixels=min_pixels)
    for h, w in [(480, 640), (640, 480), (720, 1280), (1080, 1920), (112, 160), (1000, 1000), (240, 1000)]:
        for budget in (100352, 125440, 150000, 224 * 224, 602112):
            if budget <= min_pixels:  # no room for the 28-pixel steps (the CameraError case below)
                continue
            fh, fw = camera_frame_size(h, w, budget, min_pixels)
            assert fh % 28 == 0 and fw % 28 == 0 and min_pixels <= fh * fw <= budget, (h, w, budget, fh, fw)
            assert abs(np.log(fw / fh / (w / h))) < 0.25, (h, w, budget, fh, fw)  # the shape is kept
            if fh * fw < budget * 0.7:  # as large as the budget allows, up to the 28-pixel steps
                assert (fh + 28) * (fw + 28) > budget, (h, w, budget, fh, fw)
            # what the vision tower gets from video=(frames, 2, ...): these very sizes
            frames = np.zeros((4, fh, fw, 3), np.uint8)
            assert prepare_video((frames, 2.0), config=cfg).frames.shape == (4, fh, fw, 3)


def test_budget_validation_is_typed() -> None:
    assert check_camera_pixels(125440, 100352, 602112) == 125440
    for bad in (True, 1.5e5, "big", None):
        with pytest.raises(OptionsError, match="integer"):
            check_camera_pixels(bad, 100352, 602112)
    with pytest.raises(OptionsError, match="video_min_pixels=50176"):
        check_camera_pixels(224 * 224, 100352, 602112)
    with pytest.raises(OptionsError, match="at most 602112"):
        check_camera_pixels(700000, 100352, 602112)
    with pytest.raises(CameraError, match="raise camera_pixels"):  # no 28-multiple shape between the limits
        camera_frame_size(480, 640, 100352, 100352)


def _clock_camera(t0: float):
    """A callable source whose flat frame shows when it was read (grey level = elapsed / UNIT)."""
    reads: list[float] = []

    def read() -> np.ndarray:
        now = time.monotonic()
        reads.append(now)
        return np.full((240, 320, 3), min(255, int((now - t0) / UNIT)), np.uint8)

    return read, reads


def test_recording_grid_follows_the_turn_audio() -> None:
    t0 = time.monotonic()
    read, _ = _clock_camera(t0)
    chunks: list[tuple[int, np.ndarray]] = []
    rec = CameraRecorder(read, 125440, 100352, on_chunk=lambda j, f: chunks.append((j, f)))
    try:
        time.sleep(1.3)  # idle: frames kept for the pre-roll
        audio_start = time.monotonic() - 0.42  # as a VAD reports it: 420 ms of pre-roll before detection
        rec.speech_started(audio_start)
        time.sleep(4.4)
        frames = rec.take(4.7)  # 4.7 s of audio: the reference's count for a 4.7 s clip at 2 fps is 8
    finally:
        rec.close()
    assert frames is not None and frames.shape == (8, 308, 392, 3) and frames.dtype == np.uint8
    shown = frames[:, 0, 0, 0].astype(float) * UNIT + t0  # when each frame was read (to UNIT)
    for k, t in enumerate(shown):
        grid = audio_start + k * PERIOD
        if grid < audio_start + 0.42:  # pre-roll: the frame showing then (read at most 0.5 s before)
            assert grid - PERIOD - UNIT <= t <= grid + UNIT, (k, t - grid)
        else:  # live: read at its grid time, never before
            assert t >= grid - UNIT, (k, t - grid)
    # the 2 s chunks went out as they completed, and they are the turn's frames
    assert [j for j, _ in chunks] == [0, 1] and all(c.shape[0] == CHUNK_FRAMES for _, c in chunks)
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), frames)
    assert rec.take(3.0) is None  # no turn open any more


def test_sources_iterator_push_pil_rgba_and_stream(tmp_path: Path) -> None:
    gen = (np.full((120, 160, 3), i, np.uint8) for i in range(1000))  # one frame per read (2 fps)
    rec = CameraRecorder(gen, 125440, 100352)
    rec.speech_started(time.monotonic())
    time.sleep(2.2)
    frames = rec.take(2.0)
    rec.close()
    assert frames is not None and frames.shape[0] == 4
    values = frames[:, 0, 0, 0].tolist()
    assert values == sorted(values) and len(set(values)) == 4  # successive frames of the generator

    push = PushCamera()
    rec = CameraRecorder(push, 125440, 100352)
    rec.speech_started(time.monotonic())
    time.sleep(0.7)
    push.push(Image.new("RGBA", (640, 480), (10, 200, 30, 255)))  # PIL, with alpha
    time.sleep(0.8)
    frames = rec.take(2.0)
    rec.close()
    assert frames is not None and frames.shape == (4, 308, 392, 3)
    assert (frames[-1] == np.array([10, 200, 30], np.uint8)).all()

    stream = FrameStream([np.full((90, 120, 4), v, np.uint8) for v in (50, 100, 150)], fps=4, loop=True)
    assert stream.wait_ready()
    seen = set()
    for _ in range(8):
        seen.add(int(stream.read()[0, 0, 0]))
        time.sleep(0.13)
    stream.close()
    assert seen == {50, 100, 150}  # played and looped in real time
    with pytest.raises(OptionsError, match="fps"):
        FrameStream([], fps=0)
    with pytest.raises(OptionsError, match="loop=True"):
        FrameStream(iter([]), fps=2, loop=True)


def test_video_file_camera_plays_the_file(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mp4", fps=10, seconds=2, size=(160, 112), step=12,
                      tone=np.zeros(32000, np.float32), rate=16000)
    cam = VideoFileCamera(path)
    assert cam.wait_ready() and cam.fps == 10
    first = int(cam.read()[0, 0, 0])
    time.sleep(0.6)
    later = int(cam.read()[0, 0, 0])
    cam.close()
    assert later > first  # brightness rises frame after frame: the file plays
    with pytest.raises(MediaError, match="not found"):
        VideoFileCamera(tmp_path / "absent.mp4")


def test_camera_errors_are_typed_and_stop_the_recorder() -> None:
    def broken() -> np.ndarray:
        raise OSError("device unplugged")

    errors: list[CameraError] = []
    rec = CameraRecorder(broken, 125440, 100352, on_error=errors.append)
    time.sleep(0.3)
    rec.speech_started(time.monotonic())
    assert rec.take(2.0) is None
    rec.close()
    assert len(errors) == 1 and isinstance(errors[0].__cause__, OSError) and "device unplugged" in str(errors[0])
    assert rec.error is errors[0]

    for bad, what in [(np.zeros((120, 160), np.uint8), "shape"), (np.zeros((120, 160, 3), np.float32), "float32"),
                      ("frame.png", "str")]:
        errors.clear()
        rec = CameraRecorder(lambda b=bad: b, 125440, 100352, on_error=errors.append)
        time.sleep(0.3)
        rec.close()
        assert len(errors) == 1 and isinstance(errors[0], CameraError) and what in str(errors[0]), errors


def test_prepend_still_covers_carried_audio() -> None:
    frames = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1) * np.ones((4, 28, 28, 3), np.uint8)
    out = prepend_still(frames, 1.7)  # 1.7 s more audio: 4 frames (even) of the first picture
    assert out.shape[0] == 8 and (out[:5, 0, 0, 0] == 0).all() and (out[5:, 0, 0, 0] == [1, 2, 3]).all()
    assert prepend_still(frames, 0.2) is frames
