"""A spoken reply played through sounddevice on a real device: the PulseAudio null sink
`pocketomni_speaker`, recorded from its monitor with parec (independent of the code under test).

The chunks go to the `Player` as the chat yields them. The tiny model speaks slower than real time, so
the output pauses between chunks (the Player waits for the next one); each chunk plays whole, so
each is found in the recording, in order, and must correlate with what was sent."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from audio_env import SPEAKER, SPEAKER_MONITOR, Parec, align, audio_devices  # noqa: F401

import pocketomni as po
from pocketomni.audio.io import Player

R = 24000


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as m:
        yield m


def test_spoken_reply_plays_through_the_speaker(audio_devices, omni):  # noqa: F811
    chat = omni.chat(speech=True, speech_options=po.SpeechOptions(max_codes=160, seed=3), max_tokens=20)
    sent: list[np.ndarray] = []
    with Parec(SPEAKER_MONITOR, R) as rec:
        rec.wait_for_data()
        with Player(SPEAKER) as player:
            for ev in chat.send_sync("Say something."):
                if isinstance(ev, po.AudioChunk):
                    assert ev.sample_rate == player.sample_rate == R
                    sent.append(ev.samples)
                    assert player.write(ev.samples, timeout=30)
                elif isinstance(ev, po.Done):
                    done = ev
            player.finish()
            assert player.wait(timeout=60), "playback did not finish"
        time.sleep(0.2)
        recorded = rec.stop()
    assert done.usage.audio_codes == 160 and sum(s.size for s in sent) == 160 * 480
    lags, nccs = [], []
    for chunk in sent:
        if chunk.size < R // 20:  # too short to locate reliably on its own
            continue
        ncc, lag = align(chunk, recorded)
        nccs.append(ncc)
        lags.append(lag)
    print(f"\n[speech playback] {len(sent)} chunks, {done.timings.audio_seconds:.2f} s; NCC per chunk "
          f"{', '.join(f'{c:.4f}' for c in nccs)}; underruns {player.underruns}")
    assert len(nccs) >= 3
    assert min(nccs) >= 0.9
    assert all(b > a for a, b in itertools.pairwise(lags))  # played in order
