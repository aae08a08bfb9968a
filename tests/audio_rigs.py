"""One test rig per audio backend that can run here, so the contract tests (tests/test_audio_io_*.py)
run unchanged against each:

* "sounddevice": the real backend on the PulseAudio null sinks (tests/audio_env.py): the speaker's
  monitor is recorded with parec, clips reach the microphone through pacat.
* "android-standin": the Android backend (AudioRecord/AudioTrack through pyjnius) on the stand-in
  Java classes (tests/android_standin.py): it proves our calls and buffer handling, not a phone.

A rig gives `backend`, the device names `speaker` / `mic`, `listen(rate)` (a recording of what the
speaker played: `stop()` -> samples, `time_of(index)` -> monotonic time) and `say(samples, rate,
device_rate)` (plays a clip into the microphone; returns a handle with `wait()`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from android_standin import StandIn
from audio_env import MIC, SPEAKER, SPEAKER_MONITOR, Parec, pacat_play, require_audio

from pocketomni.audio.android_io import AndroidBackend
from pocketomni.audio.io import SoundDeviceBackend

RIGS = ("sounddevice", "android-standin")


class SoundDeviceRig:
    name = "sounddevice"
    speaker, mic = SPEAKER, MIC

    def __init__(self) -> None:
        require_audio()
        self.backend = SoundDeviceBackend()

    def listen(self, rate: int) -> Parec:
        rec = Parec(SPEAKER_MONITOR, rate)
        rec.wait_for_data()
        return rec

    def say(self, samples: np.ndarray, rate: int, device_rate: int | None = None) -> Any:
        return _Pacat(pacat_play(samples, rate))

    def close(self) -> None:
        pass


class _Pacat:
    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def wait(self) -> None:
        assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read() if self.proc.stderr else ""


class StandinSpeakerRecording:
    """What the stand-in's tracks played from now on, in the shape of audio_env.Parec."""

    def __init__(self, standin: StandIn, rate: int) -> None:
        self.standin, self.rate = standin, rate
        self.t0 = time.monotonic()

    def stop(self) -> np.ndarray:
        self.standin.flush_speaker()
        return self.standin.speaker.recording(self.t0, time.monotonic(), self.rate)

    def time_of(self, index: float) -> float:
        return self.t0 + index / self.rate

    def __enter__(self) -> StandinSpeakerRecording:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Said:
    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def wait(self) -> None:
        time.sleep(max(0.0, self.until - time.monotonic()))


class AndroidStandinRig:
    name = "android-standin"
    speaker, mic = "Pixel 8 (speaker)", "Pixel 8 (built-in mic)"

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.standin = StandIn()
        self.standin.install(monkeypatch)  # the fake `android.permissions` (the jnius one is passed in)
        self.backend = AndroidBackend(self.standin.jnius)

    def listen(self, rate: int) -> StandinSpeakerRecording:
        return StandinSpeakerRecording(self.standin, rate)

    def say(self, samples: np.ndarray, rate: int, device_rate: int | None = None) -> _Said:
        from pocketomni.media.audio import resample

        x = resample(np.asarray(samples, dtype=np.float32), rate, device_rate) if device_rate else samples
        self.standin.mic.say(x)
        return _Said(len(samples) / rate)

    def close(self) -> None:
        self.standin.check_threads()


@pytest.fixture(params=RIGS)
def rig(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Each audio backend that can run here (the Android one on the stand-in Java classes)."""
    r = SoundDeviceRig() if request.param == "sounddevice" else AndroidStandinRig(monkeypatch)
    yield r
    r.close()
