"""VoiceSession on real (PulseAudio) devices and the converted tiny model: espeak-ng speech is played
into the virtual microphone with pacat; the session's VAD, Recorder and chat run for real.
Measured figures are printed (pytest -s)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from audio_env import (  # noqa: F401 (audio_devices is a fixture)
    MIC,
    MIC_SINK,
    SPEAKER_MONITOR,
    Parec,
    align,
    audio_devices,
    espeak,
    first_loud_index,
    last_loud_index,
    pacat_play,
    silence,
)

import pocketomni as po
from pocketomni.audio.vad import VadConfig
from pocketomni.voice.session import (
    BargeIn,
    Listening,
    OutputStatus,
    ReplyDone,
    SessionClosed,
    UserSpeaking,
    UserTurn,
)

R = 16000
QUESTION = "What is on the kitchen counter?"
INTERRUPTION = "Wait, stop, stop please."


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as o:
        yield o


def _say(text: str) -> np.ndarray:
    """Play speech into the virtual microphone (returns the clip played, without its silent tail)."""
    clip = espeak(text, R)
    pacat_play(np.concatenate([clip, silence(0.3, R)]), R, MIC_SINK)
    return clip


class Log:
    """Events from a session callback, with arrival times; wait for a condition."""

    def __init__(self) -> None:
        self.items: list[tuple[float, object]] = []
        self.cond = threading.Condition()

    def __call__(self, ev: object) -> None:
        with self.cond:
            self.items.append((time.monotonic(), ev))
            self.cond.notify_all()

    def of(self, cls: type) -> list:
        with self.cond:
            return [e for _, e in self.items if isinstance(e, cls)]

    def wait(self, pred, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self), timeout):
                kinds = [type(e).__name__ for _, e in self.items if not isinstance(e, po.TextDelta)]
                raise AssertionError(f"timed out waiting for {what}; events so far: {kinds}")


def _heard(sent: np.ndarray, turn_audio: np.ndarray) -> float:
    """NCC of the spoken part of `sent` (leading/trailing silence cut) found in a turn's audio."""
    core = sent[first_loud_index(sent, R, 0.01): last_loud_index(sent, R, 0.01)]
    return align(core, np.concatenate([silence(0.5, R), turn_audio, silence(0.5, R)]))[0]


def _replay(chat: po.Chat, audio: np.ndarray) -> str:
    """The reply text of a live turn fed `audio` at once, on a fresh chat."""
    turn = chat.begin_turn()
    turn.feed_audio(audio)
    return list(turn.finish_sync())[-1].text


def _user_label_samples(msg: po.Message) -> int:
    label = next(p.label for p in msg.parts if p.kind == "audio")
    return int(label.split("(")[1].split()[0])  # "audio (N samples at 16000 Hz)"


def test_hands_free_turn_through_the_async_api(omni, audio_devices: None) -> None:  # noqa: F811
    chat = omni.chat(max_tokens=24)

    async def run() -> tuple[list[object], np.ndarray]:
        async with po.VoiceSession(chat) as vs:
            events: list[object] = []

            async def consume() -> None:
                async for ev in vs:
                    events.append(ev)
                    if isinstance(ev, ReplyDone):
                        return

            task = asyncio.create_task(consume())
            await asyncio.sleep(1.0)  # the VAD learns the noise floor
            clip = _say(QUESTION)
            await asyncio.wait_for(task, 180)
        return events, clip

    events, clip = asyncio.run(run())
    kinds = [type(e) for e in events if not isinstance(e, po.TextDelta)]
    assert kinds == [OutputStatus, Listening, UserSpeaking, UserTurn, ReplyDone], kinds
    status = events[0]
    assert not status.speaking and "speech=False" in status.reason
    turn = next(e for e in events if isinstance(e, UserTurn))
    done = events[-1]
    text = "".join(e.text for e in events if isinstance(e, po.TextDelta))
    assert text == done.done.text and text and not done.interrupted
    # the model heard the question as it was spoken: the turn holds the whole clip
    assert turn.audio is not None and turn.audio.size == round(turn.audio_seconds * R)
    ncc = _heard(clip, turn.audio)
    assert ncc >= 0.9, f"the turn's audio does not match the question (NCC {ncc:.3f}; {kinds}, {turn.audio_seconds})"
    hist = chat.messages
    assert [m.role for m in hist] == ["user", "assistant"]
    assert [p.kind for p in hist[0].parts] == ["audio"] and _user_label_samples(hist[0]) == turn.audio.size
    assert hist[1].text == done.done.text and not hist[1].interrupted
    # and the reply is what a chat turn on the same audio gives (greedy; the session listened while the
    # user spoke: a live turn with the default clamp, test_live_turn.py compares it with send())
    assert _replay(omni.chat(max_tokens=24), turn.audio) == done.done.text
    print(f"\n[voice hands-free] turn {turn.audio_seconds:.2f} s for a {clip.size / R:.2f} s question; "
          f"NCC {ncc:.4f}; first text {done.first_text_latency * 1000:.0f} ms after the end of the turn")


def test_barge_in_cancels_the_reply_and_keeps_it_as_interrupted(omni, audio_devices: None) -> None:  # noqa: F811
    chat = omni.chat(max_tokens=3000)  # a long reply: still running when the user speaks over it
    log = Log()
    with po.VoiceSession(chat, on_event=log):
        time.sleep(1.0)
        _say(QUESTION)
        log.wait(lambda lg: lg.of(UserTurn) and lg.of(po.TextDelta), 120, "the reply to start")
        spoken = _say(INTERRUPTION)
        log.wait(lambda lg: len(lg.of(ReplyDone)) >= 2, 300, "the reply to the interruption")
    log.wait(lambda lg: lg.of(SessionClosed), 10, "SessionClosed")
    barge = log.of(BargeIn)
    t0 = log.items[0][0]
    assert len(barge) == 1, [(round(t - t0, 2), type(e).__name__, getattr(e, "audio_seconds", ""))
                             for t, e in log.items if not isinstance(e, po.TextDelta)]
    assert barge[0].source == "voice" and not barge[0].was_playing  # text only: no player
    first, second = log.of(ReplyDone)
    assert first.interrupted and first.done.finish_reason == "cancelled"
    assert 0 < first.done.usage.reply_tokens < 3000
    assert not second.interrupted
    turns = log.of(UserTurn)
    assert len(turns) == 2
    ncc = _heard(spoken, turns[1].audio)
    assert ncc >= 0.9, f"the second turn is not the interruption (NCC {ncc:.3f})"
    hist = chat.messages
    assert [(m.role, m.interrupted) for m in hist] == [("user", False), ("assistant", True), ("user", False),
                                                       ("assistant", False)]
    assert hist[1].text == first.done.text
    # the barge-in came from the second speech_start, before the second turn ended
    t_barge = next(t for t, e in log.items if isinstance(e, BargeIn))
    t_turn2 = [t for t, e in log.items if isinstance(e, UserTurn)][1]
    assert t_barge < t_turn2
    t_cancel = next(t for t, e in log.items if isinstance(e, ReplyDone))
    print(f"\n[voice barge-in, text] detection -> generation cancelled {(t_cancel - barge[0].detected_at) * 1000:.0f} ms "
          f"after {first.done.usage.reply_tokens} reply tokens")


def test_push_to_talk_with_an_image_and_a_typed_turn(omni, audio_devices: None) -> None:  # noqa: F811
    chat = omni.chat(max_tokens=16)
    log = Log()
    image = (np.random.default_rng(0).random((56, 84, 3)) * 255).astype(np.uint8)
    with po.VoiceSession(chat, hands_free=False, on_event=log) as vs:
        time.sleep(0.5)
        vs.press()  # a tap: too short to be a turn
        vs.release()
        vs.attach_image(image)
        vs.press()
        clip = _say(QUESTION)
        time.sleep(clip.size / R + 0.6)  # hold while speaking (pacat adds up to 0.2 s)
        vs.release()
        log.wait(lambda lg: len(lg.of(ReplyDone)) >= 1, 120, "the push-to-talk reply")
        vs.submit(text="Thanks!")
        log.wait(lambda lg: len(lg.of(ReplyDone)) >= 2, 120, "the typed turn's reply")
        vs.hands_free = True
        with pytest.raises(po.PocketOmniError, match="push-to-talk"):
            vs.press()
    turns = log.of(UserTurn)
    assert len(turns) == 2 and turns[0].image and turns[1].text == "Thanks!" and turns[1].audio is None
    ncc = _heard(clip, turns[0].audio)
    assert ncc >= 0.9, f"the push-to-talk turn does not hold the question (NCC {ncc:.3f})"
    hist = chat.messages
    assert [p.kind for p in hist[0].parts] == ["image", "audio"]
    assert hist[2].role == "user" and hist[2].text == "Thanks!"
    assert [e.hands_free for e in log.of(Listening)][-1] is True


def test_speech_chat_without_an_output_device_runs_text_only(omni, audio_devices: None) -> None:  # noqa: F811
    if not omni.capabilities.speech_out:
        pytest.fail("the tiny model folder should support speech (talker + token2wav files)")
    chat = omni.chat(speech=True, max_tokens=6, speech_options={"max_codes": 40})
    log = Log()
    with po.VoiceSession(chat, input_device=False, output_device=False, on_event=log) as vs:
        assert vs.recorder is None and vs.player is None
        vs.submit(text="Hello!")
        log.wait(lambda lg: lg.of(ReplyDone), 300, "the reply")
    status = log.of(OutputStatus)[0]
    assert not status.speaking and "output_device=False" in status.reason
    chunks = log.of(po.AudioChunk)
    done = log.of(ReplyDone)[0]
    assert chunks and done.first_audio_latency == 0.0  # audio came as events; nothing was played
    assert abs(sum(c.duration for c in chunks) - done.done.timings.audio_seconds) < 1e-6


def test_bad_arguments_are_rejected(omni) -> None:
    chat = omni.chat()
    with pytest.raises(po.OptionsError, match="16000"):
        po.VoiceSession(chat, vad=VadConfig(sample_rate=8000))
    vs = po.VoiceSession(chat, input_device=False, output_device=False)
    with pytest.raises(po.OptionsError, match="audio or text"):
        vs.submit()


def test_a_turn_with_a_camera_clip(omni) -> None:
    """A short clip as the turn's visual context: the model sees its frames (not its sound: the
    user's voice is the turn's audio), and the history keeps video then audio."""
    chat = omni.chat(max_tokens=4)
    log = Log()
    frames = (np.random.default_rng(1).random((4, 56, 84, 3)) * 255).astype(np.uint8)  # 2 s at 2 fps
    with po.VoiceSession(chat, input_device=False, output_device=False, on_event=log) as vs:
        with pytest.raises(po.OptionsError, match="attach_video"):
            vs.attach_video(frames)  # frames alone: the rate is missing
        vs.submit(espeak(QUESTION, R), R, video=(frames, 2.0))
        log.wait(lambda lg: lg.of(ReplyDone), 120, "the reply")
        vs.attach_video((frames, 2.0))
        vs.attach_video(None)  # cleared: the next turn has no clip
        vs.submit(text="And now?")
        log.wait(lambda lg: len(lg.of(ReplyDone)) >= 2, 120, "the second reply")
    turns = log.of(UserTurn)
    assert turns[0].video and not turns[0].image and not turns[1].video
    assert not log.of(ReplyDone)[0].interrupted
    hist = chat.messages
    assert [p.kind for p in hist[0].parts] == ["video", "audio"]
    assert [p.kind for p in hist[2].parts] == ["text"]


LONG_QUESTION = "What is on the kitchen counter? Tell me about the cups, the plates and the bowls next to the sink."


def _spoken_turn(omni, live: bool) -> dict:
    """One hands-free spoken turn with a spoken reply on the null sinks: the microphone and the speaker
    are recorded (parec), so end of user speech -> first sound is measured on the sound itself."""
    chat = omni.chat(speech=True, max_tokens=12,
                     speech_options=po.SpeechOptions(temperature=0.0, max_codes=100, seed=3))
    log = Log()
    with Parec(MIC, R) as mic, Parec(SPEAKER_MONITOR, R) as spk:
        mic.wait_for_data()
        spk.wait_for_data()
        with po.VoiceSession(chat, on_event=log, live=live) as vs:
            time.sleep(1.0)  # the VAD learns the noise floor
            t_say = time.monotonic()
            clip = _say(LONG_QUESTION)
            log.wait(lambda lg: lg.of(ReplyDone), 180, "the spoken reply")
            time.sleep(0.3)
            live_turn = vs.last_live
            silence_s = vs.vad.config.end_silence_ms / 1000
        heard, played = mic.stop(), spk.stop()
    start = int((t_say - mic.time_of(0)) * R)  # skip anything recorded before the question
    end_speech = mic.time_of(start + last_loud_index(heard[start:], R, 0.01))
    first_sound = spk.time_of(first_loud_index(played, R, 0.01))
    turn, done = log.of(UserTurn)[0], log.of(ReplyDone)[0]
    assert not done.interrupted and done.done.usage.audio_codes > 0
    assert _heard(clip, turn.audio) >= 0.9
    return {"chat": chat, "turn": turn, "done": done, "live": live_turn, "silence": silence_s,
            "speech_to_sound": first_sound - end_speech, "clip_s": clip.size / R}


def test_a_hands_free_turn_is_encoded_while_the_user_speaks(omni, audio_devices: None) -> None:  # noqa: F811
    on = _spoken_turn(omni, live=True)
    live, turn = on["live"], on["turn"]
    assert live is not None and live.clamp == "streaming"
    # windows were encoded and prefilled while the question was still being spoken (before its end
    # was even detected), and the reply is the one the whole clip gives
    early = [w for w in live.timings if w.prefilled_at and w.prefilled_at < turn.ended_at - on["silence"]]
    assert len(early) >= 2, [(w.index, w.encoded_at - turn.ended_at, w.prefilled_at - turn.ended_at, w.reencoded)
                             for w in live.timings]
    fresh = omni.chat(speech=True, max_tokens=12, speech_options=po.SpeechOptions(temperature=0.0, max_codes=100, seed=3))
    assert _replay(fresh, turn.audio) == on["done"].done.text
    off = _spoken_turn(omni, live=False)
    assert off["live"] is None
    print(f"\n[voice live] {on['clip_s']:.1f} s question, VAD end-of-turn silence {on['silence']:.2f} s; "
          f"end of user speech -> first sound: live {on['speech_to_sound']:.2f} s, whole clip at the end "
          f"{off['speech_to_sound']:.2f} s; end of turn detected -> first audio to the player: live "
          f"{on['done'].first_audio_latency:.2f} s, whole clip {off['done'].first_audio_latency:.2f} s; "
          f"windows before the end: {len(early)}")
