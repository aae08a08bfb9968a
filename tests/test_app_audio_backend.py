"""The demo app picks its audio backend per platform (injected: "android" / "linux" / ..., or detected
from python-for-android's environment), and on Android a whole spoken turn runs through the
AudioRecord/AudioTrack backend: here on the stand-in Java classes (tests/android_standin.py), which
proves the app's and the SDK's side of it, not a phone."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from android_standin import StandIn
from audio_env import align, espeak, silence

import pocketomni as po
from pocketomni.audio.android_io import AndroidBackend
from pocketomni.audio.io import SoundDeviceBackend
from pocketomni.voice.session import OutputStatus, ReplyDone, UserTurn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "kivy_demo"))
from engine import Conversation, Engine


class Events:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, ev: Any) -> None:
        with self.cond:
            self.items.append(ev)
            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float, what: str) -> Any:
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self.items), timeout):
                raise AssertionError(f"timed out waiting for {what}: {[type(e).__name__ for e in self.items]}")
            return pred(self.items)


def _engine(**kw: Any) -> Engine:
    return Engine(lambda fn: fn(), **kw)  # post runs at once (no Kivy clock here)


def test_app_picks_the_backend_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    for platform, cls in (("android", AndroidBackend), ("linux", SoundDeviceBackend),
                          ("darwin", SoundDeviceBackend), ("win32", SoundDeviceBackend)):
        e = _engine(platform=platform)
        try:
            assert e.platform == platform and isinstance(e.audio, cls)
        finally:
            e.shutdown()
    monkeypatch.setenv("ANDROID_ARGUMENT", "/data/user/0/org.pocketomni.pocketomni_demo/files/app")  # p4a sets it
    e = _engine()
    try:
        assert e.platform == "android" and isinstance(e.audio, AndroidBackend)
    finally:
        e.shutdown()


def test_app_spoken_turn_on_android_standin(converted_tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    standin = StandIn()
    standin.install(monkeypatch)  # `import jnius` and `android.permissions` find the stand-in
    events = Events()
    engine = _engine(platform="android", n_threads=1, max_tokens=8)
    engine.speech_options = {"max_codes": 40}
    engine.on_event = events
    done: list[Any] = []
    try:
        engine.load(str(converted_tiny("base", "f32")), done.append, done.append)
        deadline = time.monotonic() + 300
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done and not isinstance(done[0], BaseException), done
        assert done[0].speech_out
        notes: list[Any] = []
        engine.start_conversation(Conversation(speech=True, hands_free=True), notes.append, notes.append)
        status = events.wait(lambda items: [e for e in items if isinstance(e, OutputStatus)], 300, "OutputStatus")
        assert notes == [""], notes  # the microphone opened: no "type your messages" note
        assert status[0].speaking and status[0].reason == "speaking on default"
        time.sleep(1.0)  # the VAD learns the (silent) noise floor
        clip = espeak("What is on the kitchen counter?", 16000)
        standin.mic.say(np.concatenate([clip, silence(0.8, 16000)]))
        turn = events.wait(lambda items: [e for e in items if isinstance(e, UserTurn)], 120, "the user's turn")[0]
        reply = events.wait(lambda items: [e for e in items if isinstance(e, ReplyDone)], 300, "the reply")[0]
        chunks = [e.samples for e in events.items if isinstance(e, po.AudioChunk)]
        deadline = time.monotonic() + 60
        while engine.session.replying and time.monotonic() < deadline:  # until the reply has played
            time.sleep(0.05)
        assert not engine.session.replying, "the reply's audio did not finish playing"
    finally:
        engine.shutdown()
    ncc, _ = align(clip[800:-800], np.concatenate([silence(0.5, 16000), turn.audio, silence(0.5, 16000)]))
    assert ncc >= 0.9, f"the turn is not the question said into the stand-in microphone (NCC {ncc:.3f})"
    assert not reply.interrupted and chunks
    # the reply's speech went out through the stand-in AudioTrack, whole and in order
    spoken = np.concatenate(chunks)
    heard = standin.speaker.recording(min(t for t, _, _ in standin.speaker.segments) - 0.5, time.monotonic(), 24000)
    ncc, _ = align(spoken, heard)
    assert ncc >= 0.99, f"the speaker did not play the reply (NCC {ncc:.4f})"
    assert standin.records[0].source == 7 and standin.tracks[0].stream == 3
    standin.check_threads()
