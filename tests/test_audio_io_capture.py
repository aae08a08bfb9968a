"""The Recorder contract on every audio backend that runs here (tests/audio_rigs.py): sounddevice,
where a clip played into the null sink `pocketomni_mic_in` with pacat is captured from the remapped
source `pocketomni_mic`, and the Android backend on the stand-in Java classes ("android-standin": the
clip is said into the stand-in microphone). Measured figures are printed (pytest -s)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from audio_env import align, espeak, silence, tone
from audio_rigs import rig  # noqa: F401  (fixture)

from pocketomni.audio.rates import INPUT_RATE

R = INPUT_RATE
PHRASE = "Please tell me what is on the table in front of me."


@pytest.mark.parametrize("device_rate", [None, 48000], ids=["native-16k", "resampled-48k"])
def test_recorder_captures_the_microphone(rig: Any, device_rate: int | None) -> None:  # noqa: F811
    sent = np.concatenate([tone(1000, 0.3, R), silence(0.2, R), espeak(PHRASE, R)])
    seen: list[np.ndarray] = []
    with rig.backend.open_recorder(rig.mic, device_rate=device_rate, on_block=seen.append) as rec:
        assert rec.device.name == rig.mic
        assert rec.device_rate == (device_rate or R)
        deadline = time.monotonic() + 5
        while rec.started_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.started_at is not None, "the microphone delivered nothing"
        time.sleep(0.2)
        t_play = time.monotonic()
        rig.say(sent, R, rec.device_rate).wait()
        time.sleep(0.3)
        rec.stop()
        captured = rec.drain()
    assert all(b.dtype == np.float32 and b.shape == (rec.block,) for b in seen)
    assert rec.block == 320  # 20 ms at 16 kHz
    np.testing.assert_array_equal(np.concatenate(seen), captured)  # callback and queue got the same blocks
    ncc, lag = align(sent, captured)
    latency = rec.started_at + lag / R - t_play
    print(
        f"\n[{rig.name} recorder {rec.device_rate} Hz] NCC {ncc:.5f}; "
        f"pacat start -> clip in the capture {latency * 1000:.1f} ms "
        f"(includes pacat start-up); overflows {rec.overflows}"
    )
    assert ncc >= 0.9


def test_recorder_record_returns_the_requested_length(rig: Any) -> None:  # noqa: F811
    with rig.backend.open_recorder(rig.mic, block_ms=10) as rec:
        x = rec.record(0.5)
    assert x.dtype == np.float32 and x.shape == (8000,)
    assert rec.block == 160
