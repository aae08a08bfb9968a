"""A live camera in a VoiceSession on the tiny model, with real (PulseAudio) devices: espeak-ng speech
is played into the virtual microphone while a camera source plays a moving scene. The spoken turn goes
to the model as video at 2 fps with the user's voice as its sound track, exactly as
chat.send(video=(frames, 2, audio, 16000)); hands-free, its 2 s chunks (4 frames and 2 s of voice) are
encoded and prefilled while the user speaks, and with the exact clamp the result is the one-piece
send's (ids, positions, reply); frames keep to the pixel budget; camera failures are typed and the
session keeps answering."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
from audio_env import MIC_SINK, audio_devices, espeak, pacat_play, silence  # noqa: F401 (fixture)
from test_voice_session import Log

import pocketomni as po
from pocketomni.engine.positions import KIND_AUDIO, KIND_VIDEO, TokenIds
from pocketomni.errors import CameraError
from pocketomni.voice.camera import FrameStream
from pocketomni.voice.session import ReplyDone, UserTurn, VoiceError

R = 16000
QUESTION = "What is in front of me right now?"
LONG_QUESTION = "What is in front of me right now? Tell me about the red square and where it is going."
IDS = TokenIds()


@pytest.fixture(scope="module")
def folder(converted_tiny):
    return converted_tiny("base", "f32")


@pytest.fixture(scope="module")
def omni(folder):
    with po.Omni.load_sync(folder, n_threads=1) as o:
        yield o


def scene(h: int = 480, w: int = 640) -> Iterator[np.ndarray]:
    """A red square crossing a grey gradient, one position per frame."""
    base = np.broadcast_to(np.linspace(40, 200, w, dtype=np.float32)[None, :, None], (h, w, 3)).astype(np.uint8)
    for i in range(60):
        f = base.copy()
        x = (i * 9) % (w - 80)
        f[150:230, x:x + 80] = (220, 30, 30)
        yield f


def camera() -> FrameStream:
    cam = FrameStream(scene, fps=10, loop=True)
    assert cam.wait_ready()
    return cam


def say(text: str = QUESTION) -> np.ndarray:
    clip = espeak(text, R)
    pacat_play(np.concatenate([clip, silence(0.3, R)]), R, MIC_SINK)
    return clip


def spoken_turn(vs: po.VoiceSession, log: Log, n: int, text: str = QUESTION) -> tuple[UserTurn, ReplyDone]:
    say(text)
    log.wait(lambda lg: len(lg.of(ReplyDone)) >= n, 180, f"reply {n}")
    return log.of(UserTurn)[n - 1], log.of(ReplyDone)[n - 1]


def video_tokens(frames: np.ndarray) -> int:
    t, h, w, _ = frames.shape
    return t // 2 * (h // 28) * (w // 28)


def test_camera_turn_is_the_video_with_its_voice_track(omni, audio_devices: None) -> None:  # noqa: F811
    budget = 150000
    chat = omni.chat(max_tokens=12)
    log = Log()
    with po.VoiceSession(chat, on_event=log, camera=camera(), camera_pixels=budget, clamp="exact") as vs:
        time.sleep(1.0)  # the VAD learns the noise floor
        turn, done = spoken_turn(vs, log, 1, LONG_QUESTION)
        live = vs.last_live
    assert not log.of(VoiceError), log.of(VoiceError)
    # streamed: chunks of frames and voice were in the cache before the user stopped speaking
    assert live is not None and live.video and live.n_frames >= 4 * live.windows_prefilled >= 4
    assert all(0 < t.prefilled_at for t in live.timings[: live.windows_prefilled])
    frames, audio = turn.frames, turn.audio
    assert turn.video and not turn.image and frames is not None and audio is not None
    # 2 fps over the spoken turn: the reference's frame count for a clip of this length
    assert frames.shape[0] == max(2, 2 * math.floor(audio.size / R)) and frames.dtype == np.uint8
    t, h, w, _ = frames.shape
    assert h % 28 == 0 and w % 28 == 0 and h * w <= budget and abs(w / h - 4 / 3) < 0.1
    assert len({f.tobytes() for f in frames}) > 1  # a live scene: the square moved between frames
    # in the history: one video part with the voice as its sound track, no separate audio
    user = chat.messages[0]
    assert [(p.kind, p.use_audio) for p in user.parts] == [("video", True)]
    assert f"{t} frames at 2.0 fps, with sound" in user.parts[0].label
    kinds = chat._session.history.kinds
    assert int((kinds == KIND_VIDEO).sum()) == video_tokens(frames)  # the vision tower saw these frames
    assert int((kinds == KIND_AUDIO).sum()) > 0
    ids = chat.tokens
    assert ids[ids.index(IDS.vision_bos) + 1] == IDS.audio_bos  # interleaved 2 s chunks
    # the same recording sent in one piece: same prompt ids, same TMRoPE positions, same (greedy) reply
    ref = omni.chat(max_tokens=12)
    ref_done = next(ev for ev in ref.send_sync(video=(frames, 2, audio, R)) if isinstance(ev, po.Done))
    n = len(ref.tokens) - ref_done.usage.reply_tokens
    assert chat.tokens[:n] == ref.tokens[:n]
    pos, ref_pos = chat._session.history.positions, ref._session.history.positions
    np.testing.assert_array_equal(pos[:, :n], ref_pos[:, :n])
    assert ref_done.text == done.done.text and chat.tokens == ref.tokens
    np.testing.assert_array_equal(pos, ref_pos)
    print(f"\n[camera turn] {turn.audio_seconds:.2f} s of voice, {t} frames {w}x{h} (budget {budget} px): "
          f"{video_tokens(frames)} video tokens, {live.windows_prefilled} chunks streamed (windows redone: "
          f"{[x.index for x in live.timings if x.reencoded]}); first text {done.first_text_latency * 1000:.0f} ms "
          "after the turn")


def test_phone_budget_below_the_reference_minimum(folder, omni, audio_devices: None) -> None:  # noqa: F811
    budget = 224 * 224
    with pytest.raises(po.OptionsError, match="video_min_pixels"):
        po.VoiceSession(omni.chat(), input_device=False, output_device=False, camera_pixels=budget)
    with pytest.raises(po.OptionsError, match="video_min_pixels"):
        po.Omni.load_sync(folder, video_min_pixels=10)
    with po.Omni.load_sync(folder, n_threads=1, video_min_pixels=28 * 28 * 4) as small:
        chat = small.chat(max_tokens=6)
        log = Log()
        with po.VoiceSession(chat, on_event=log, camera=camera(), camera_pixels=budget) as vs:
            time.sleep(1.0)
            turn, _ = spoken_turn(vs, log, 1)
        frames = turn.frames
        assert frames is not None and frames.shape[1] * frames.shape[2] <= budget
        assert int((chat._session.history.kinds == KIND_VIDEO).sum()) == video_tokens(frames)
        print(f"\n[camera phone budget] {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}: "
              f"{video_tokens(frames) / (frames.shape[0] / 2):.0f} video tokens per second")


def test_camera_failures_are_typed_and_the_session_keeps_answering(omni, audio_devices: None) -> None:  # noqa: F811
    reads = iter(range(3))

    def failing() -> np.ndarray:  # works for three reads, then the device goes away
        if next(reads, None) is None:
            raise OSError("camera unplugged")
        return np.zeros((240, 320, 3), np.uint8)

    chat = omni.chat(max_tokens=6)
    log = Log()
    with po.VoiceSession(chat, on_event=log, camera=failing) as vs:
        log.wait(lambda lg: lg.of(VoiceError), 10, "the camera failure")
        err = log.of(VoiceError)[0].error
        assert isinstance(err, CameraError) and isinstance(err.__cause__, OSError) and "unplugged" in str(err)
        time.sleep(1.0)
        turn, done = spoken_turn(vs, log, 1)  # audio only now
        assert not turn.video and turn.frames is None and done.done.text
        vs.set_camera(lambda: np.zeros((240, 320), np.uint8))  # a grey (H, W) frame: wrong shape
        log.wait(lambda lg: len(lg.of(VoiceError)) >= 2, 10, "the frame shape error")
        err = log.of(VoiceError)[1].error
        assert isinstance(err, CameraError) and "(240, 320)" in str(err) and "(H, W, 3)" in str(err)
        vs.set_camera(camera())  # a working camera again: camera turns resume
        time.sleep(1.0)
        turn, done = spoken_turn(vs, log, 2)
        assert turn.video and turn.frames is not None and done.done.text
    assert [[p.kind for p in m.parts] for m in chat.messages if m.role == "user"] == [["audio"], ["video"]]
