"""Video through the public chat API on the tiny model: file / frames / frames+sound inputs, the
use_audio_in_video switch, typed errors before anything reaches llama.cpp, and the context limit."""

from __future__ import annotations

import importlib.util

import llama_cpp  # noqa: F401  (hard dependency: fail loudly if missing)
import numpy as np
import pytest
from video_files import write_clip

import pocketomni as po
from pocketomni.chat.conversation import user_message
from pocketomni.engine.positions import KIND_AUDIO, KIND_VIDEO, TokenIds
from pocketomni.engine.video_limits import overflow_advice, video_cost
from pocketomni.errors import ContextOverflowError, MediaError, OptionsError
from pocketomni.media.video import VideoConfig, prepare_video

IDS = TokenIds()
RATE = 16000


def frames(seconds: int, h: int = 280, w: int = 364, fps: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seconds)
    return (rng.random((seconds * fps, h, w, 3)) * 255).astype(np.uint8)


def sound(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base"), n_threads=1, n_ctx=1024) as o:
        yield o


def _done(events) -> po.Done:
    return next(ev for ev in events if isinstance(ev, po.Done))


def _kinds(chat) -> np.ndarray:
    return chat._session.history.kinds


def test_frames_with_sound_and_switch(omni):
    chat = omni.chat(max_tokens=3)
    _done(chat.send_sync("What happens?", video=(frames(4), 2, sound(4), RATE)))
    assert int((_kinds(chat) == KIND_VIDEO).sum()) == 4 * 10 * 13
    assert int((_kinds(chat) == KIND_AUDIO).sum()) == 100
    ids = chat.tokens
    assert ids[ids.index(IDS.vision_bos) + 1] == IDS.audio_bos  # interleaved layout
    part = chat.messages[-2].parts[0]
    assert part.kind == "video" and part.use_audio and "with sound" in part.label
    # the switch drops the sound: plain video layout, no audio rows
    quiet = omni.chat(max_tokens=3)
    _done(quiet.send_sync("And now?", video=(frames(4), 2, sound(4), RATE), use_audio_in_video=False))
    assert int((_kinds(quiet) == KIND_AUDIO).sum()) == 0 and IDS.audio_bos not in quiet.tokens
    assert quiet.messages[-2].parts[0].use_audio is False
    assert quiet.messages[-2].to_dict()["content"][0]["use_audio"] is False


def test_silent_frames_and_openai_messages(omni):
    chat = omni.chat(max_tokens=2)
    _done(chat.send_sync(messages=[{"role": "user", "content": [
        {"type": "video", "video": (frames(2), 2)}, {"type": "text", "text": "Describe."}]}]))
    assert int((_kinds(chat) == KIND_VIDEO).sum()) == 2 * 130 and IDS.audio_bos not in chat.tokens


@pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV (the 'video' extra) is not installed")
def test_video_file(omni, tmp_path):
    path = write_clip(tmp_path / "clip.mp4", fps=10, seconds=4, size=(160, 112), step=6, tone=sound(4), rate=RATE)
    chat = omni.chat(max_tokens=2)
    _done(chat.send_sync("What is this?", video=str(path)))
    v = prepare_video(path)
    assert int((_kinds(chat) == KIND_VIDEO).sum()) == v.n_video_tokens
    assert int((_kinds(chat) == KIND_AUDIO).sum()) == v.audio.n_tokens > 0


@pytest.mark.parametrize("kwargs, err, match", [
    ({"video": (frames(2),)}, OptionsError, "frames, fps"),
    ({"video": [frames(2)]}, OptionsError, "need their fps"),
    ({"video": 42}, OptionsError, "unsupported video input"),
    ({"video": (frames(2), 0)}, MediaError, "frame rate must be positive"),
    ({"video": (frames(2), 2), "use_audio_in_video": "yes"}, OptionsError, "True or False"),
    ({"video": "/nonexistent/clip.mp4"}, MediaError, "not found"),
    ({"video": (np.zeros((1, 56, 56, 3), np.uint8), 2)}, MediaError, "as an image"),
    ({"video": (frames(2), 2, sound(2), 0)}, MediaError, "sample rate 0 Hz"),
])
def test_bad_inputs_are_refused_before_decoding(omni, kwargs, err, match):
    chat = omni.chat(max_tokens=2)
    with pytest.raises(err, match=match):
        _done(chat.send_sync("x", **kwargs))
    assert chat.n_tokens == 0 and chat.messages == []


def test_messages_and_video_together_are_refused(omni):
    chat = omni.chat()
    with pytest.raises(OptionsError, match="not both"):
        chat.send_sync(messages=[{"role": "user", "content": "hi"}], video=(frames(2), 2))


def test_context_limit(omni):
    """n_ctx 1024 with 155 tokens per second (130 frame + 25 sound): 6 s fit, 8 s do not, and the error
    says how long the video may be; the chat is unchanged by the refused turn."""
    chat = omni.chat(max_tokens=1)
    with pytest.raises(ContextOverflowError) as e:
        _done(chat.send_sync("What happens?", video=(frames(8), 2, sound(8), RATE)))
    msg = str(e.value)
    assert "cut it to at most 6 s" in msg and "use_audio_in_video=False" in msg and "155 per second" in msg
    assert chat.n_tokens == 0
    done = _done(chat.send_sync("What happens?", video=(frames(6), 2, sound(6), RATE)))
    assert chat.n_tokens <= chat.n_ctx and done.usage.prompt_tokens > 6 * 155
    # and the silent version of 8 s is still too long, with the advice for frames only
    with pytest.raises(ContextOverflowError, match="cut it to at most") as e2:
        _done(omni.chat().send_sync("x", video=(frames(8), 2, sound(8), RATE), use_audio_in_video=False))
    assert "use_audio_in_video=False" not in str(e2.value)


def test_cost_and_advice_numbers():
    v = prepare_video((frames(6), 2, sound(6), RATE))
    c = video_cost(v)
    assert (c.seconds, c.frame_tokens, c.audio_tokens, c.tokens_per_second) == (6.0, 780, 150, 155.0)
    assert video_cost(v, use_audio=False).tokens == 780
    assert "at most 4 s" in overflow_advice([c], needed=1300, room=1000)  # 300 over: 6 - 300/155 = 4.06 s
    small = prepare_video((frames(4, 56, 84), 2), config=VideoConfig(min_pixels=56 * 56))
    assert video_cost(small).tokens_per_second == small.n_video_tokens / 4


def test_interrupted_video_prefill_rolls_back(omni):
    """Cancelling between the runs of an ordered (relabelling) prefill leaves the chat's cache as it was,
    including the relabelled cells; the next turn decodes normally."""
    from pocketomni.backend.batch import DecodeInterrupted

    chat = omni.chat(max_tokens=2)
    _done(chat.send_sync("Hello"))
    before, stored_before = chat.n_tokens, chat._session.ctx.stored_positions(0)
    sess = chat._session
    _, layout, prepared, _ = chat._plan([user_message("What?", video=(frames(4), 2, sound(4), RATE))])
    rows = omni.runtime.media.encode_all(prepared)
    calls = []
    with pytest.raises(DecodeInterrupted):
        sess.prefill(layout, rows, should_stop=lambda: calls.append(1) or len(calls) > 2)  # stop after chunk 0 audio was relabelled
    assert chat.n_tokens == before == sess.history.n
    np.testing.assert_array_equal(np.sort(sess.ctx.stored_positions(0), axis=0), np.sort(stored_before, axis=0))
    _done(chat.send_sync("Again?", video=(frames(2), 2, sound(2), RATE)))
    assert chat.n_tokens > before


def test_speech_reply_to_a_video_with_sound(omni):
    chat = omni.chat(speech=True, max_tokens=3, speech_options=po.SpeechOptions(temperature=0.0, max_codes=20))
    events = list(chat.send_sync("What happens?", video=(frames(2), 2, sound(2), RATE)))
    assert any(isinstance(ev, po.AudioChunk) for ev in events)


def test_speech_reply_to_a_silent_video(omni):
    chat = omni.chat(speech=True, max_tokens=3, speech_options=po.SpeechOptions(temperature=0.0, max_codes=20))
    events = list(chat.send_sync("What happens?", video=(frames(2), 2)))
    assert any(isinstance(ev, po.AudioChunk) for ev in events) and isinstance(events[-1], po.Done)
