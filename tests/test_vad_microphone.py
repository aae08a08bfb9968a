"""The voice-session pipeline on real devices: speech played into the virtual microphone over steady
room noise, captured by Recorder, turns found by the VAD as blocks arrive. Figures are printed
(pytest -s)."""

from __future__ import annotations

import time

import numpy as np
from audio_env import MIC, align, audio_devices, espeak, pacat_play, pink_noise, silence  # noqa: F401

from pocketomni.audio.io import INPUT_RATE, Recorder
from pocketomni.audio.vad import VoiceActivityDetector

R = INPUT_RATE
FRAME = 320


def span(clip: np.ndarray) -> tuple[float, float]:
    """First and last 20 ms frame of a clean clip within 40 dB of its loudest frame (seconds)."""
    n = clip.size // FRAME
    rms = np.sqrt(np.mean(clip[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1))
    on = np.nonzero(rms > rms.max() * 10 ** (-40 / 20))[0]
    return on[0] * FRAME / R, (on[-1] + 1) * FRAME / R


def test_vad_on_the_microphone_finds_the_turns(audio_devices: None) -> None:  # noqa: F811
    a = espeak("What is in the fridge?", R)
    b = espeak("And how long does the rice need?", R)
    speech = np.concatenate([a, silence(1.5, R), b, silence(1.2, R)])
    # room noise (about 25 dB below the speech) runs before the microphone opens and throughout
    room = pacat_play(pink_noise(speech.size / R + 8.0, R, 0.004, seed=5), R)
    try:
        time.sleep(0.5)
        vad = VoiceActivityDetector()
        events, captured = [], []
        with Recorder(MIC) as rec:
            t_end = time.monotonic() + 0.8 + speech.size / R + 10
            voice = None
            while time.monotonic() < t_end and len(events) < 4:
                blk = rec.read(timeout=1.0)
                if blk is None:
                    continue
                captured.append(blk)
                events += vad.feed(blk)
                if voice is None and len(captured) * FRAME >= 0.8 * R:  # 0.8 s of room noise first
                    voice = pacat_play(speech, R)
            assert voice is not None
            voice.wait(timeout=30)
    finally:
        room.terminate()
        room.wait(timeout=10)
    assert [e.kind for e in events] == ["speech_start", "speech_end"] * 2, [
        (e.kind, round(e.time, 3)) for e in events
    ]
    x = np.concatenate(captured)
    ncc, lag = align(speech[: x.size // 2], x)  # locate the speech clip in the capture (VAD time base)
    onset = lag / R
    sa, sb = span(a), span(b)
    off_b = (a.size + 1.5 * R) / R
    truth = [(sa[0], sa[1]), (off_b + sb[0], off_b + sb[1])]
    for k, (t_on, t_off) in enumerate(truth):
        start, end = events[2 * k].time - onset, events[2 * k + 1].time - onset
        print(
            f"\n[vad mic] turn {k}: start {start - t_on:+.3f} s, end {end - t_off:+.3f} s "
            f"(speech located, NCC {ncc:.3f})"
        )
        assert -0.06 <= start - t_on <= 0.1
        assert -0.3 <= end - t_off <= 0.06
        assert events[2 * k + 1].audio is not None
