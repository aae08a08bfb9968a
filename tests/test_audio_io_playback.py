"""The Player contract on every audio backend that runs here (tests/audio_rigs.py): sounddevice on the
PulseAudio null sink `pocketomni_speaker`, recorded from its monitor with parec (independent of the
code under test), and the Android backend on the stand-in Java classes ("android-standin": what the
stand-in AudioTrack played). Measured figures are printed (pytest -s)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from audio_env import align, espeak, first_loud_index, last_loud_index, silence, tone
from audio_rigs import rig  # noqa: F401  (fixture)

from pocketomni.audio.rates import OUTPUT_RATE

R = OUTPUT_RATE
PHRASE = "Turn left at the next door, then walk three steps."


@pytest.mark.parametrize("device_rate", [None, 48000], ids=["native-24k", "resampled-48k"])
def test_player_output_reaches_the_speaker(rig: Any, device_rate: int | None) -> None:  # noqa: F811
    sent = np.concatenate(
        [silence(0.05, R), tone(1000, 0.3, R), silence(0.2, R), espeak(PHRASE, R), tone(1000, 0.2, R)]
    )
    with rig.listen(R) as rec:
        with rig.backend.open_player(rig.speaker, device_rate=device_rate) as player:
            assert player.device.name == rig.speaker
            assert player.device_rate == (device_rate or R)  # the pulse device accepts 24 kHz as is
            t_first = time.monotonic()
            for i in range(0, sent.size, R // 10):  # 100 ms chunks, as a speech stream arrives
                assert player.write(sent[i : i + R // 10], timeout=10)
            assert player.is_playing
            player.finish()
            assert player.wait(timeout=30), "playback did not finish"
            t_done = time.monotonic()
            assert not player.is_playing
        time.sleep(0.2)
        recorded = rec.stop()
    ncc, lag = align(sent, recorded)
    latency = rec.time_of(lag) - t_first
    tail = rec.time_of(lag + sent.size) - t_done
    print(
        f"\n[{rig.name} player {player.device_rate} Hz] NCC {ncc:.5f}; "
        f"first write -> signal at the monitor {latency * 1000:.1f} ms; "
        f"wait() returned {-tail * 1000:+.1f} ms after the last sample reached the monitor; "
        f"underruns {player.underruns}"
    )
    assert ncc >= 0.9
    # nothing cut at the end: the closing tone is there in full (to within 2 ms frames)
    end_sent = last_loud_index(sent, R, 0.05)
    end_heard = last_loud_index(recorded, R, 0.05) - round(lag)
    assert abs(end_heard - end_sent) <= R // 250, (
        f"playback ended {(end_sent - end_heard) / R * 1000:.1f} ms early"
    )


def test_player_stop_silences_output_quickly(rig: Any) -> None:  # noqa: F811
    long_tone = tone(440, 3.0, R)
    with rig.listen(R) as rec:
        with rig.backend.open_player(rig.speaker) as player:
            assert player.write(long_tone)  # one 3 s chunk: accepted at once into the empty queue
            time.sleep(0.6)
            t_stop = time.monotonic()
            took = player.stop()
            assert not player.is_playing and player.wait(0)
            assert player.write(tone(440, 0.1, R)) is False  # a late producer cannot restart playback
            time.sleep(0.5)
            player.resume()
            assert player.play(tone(2000, 0.2, R), timeout=10)  # the next utterance plays
        time.sleep(0.2)
        recorded = rec.stop()
    start = first_loud_index(recorded, R, 0.01)
    stop_t = rec.time_of(start) + 0.6  # search for the cut from shortly before the stop call
    cut_region = recorded[: int((stop_t - rec.time_of(0) + 0.5) * R)]
    end = last_loud_index(cut_region, R, 0.01)
    played = (end - start) / R
    silent_after = rec.time_of(end) - t_stop
    print(
        f"\n[{rig.name} player stop] stop() took {took * 1000:.2f} ms; "
        f"monitor silent {silent_after * 1000:+.1f} ms after the call; "
        f"played {played:.3f} s of a 3 s tone"
    )
    assert 0.2 < played < 2.0, f"the tone was not cut: {played:.3f} s of 3 s played"
    # the 2 kHz tone after resume() is there, and the 440 Hz tail of the stopped tone is not
    later = recorded[end + int(0.1 * R) :]
    spec = np.abs(np.fft.rfft(later))
    f = np.fft.rfftfreq(later.size, 1 / R)
    assert spec[np.abs(f - 2000) < 20].max() > 20 * spec[np.abs(f - 440) < 20].max()


def test_player_rides_out_a_producer_slower_than_real_time(rig: Any) -> None:  # noqa: F811
    """Chunks of 100 ms arriving every 150 ms (as speech from a model slower than real time): the
    queue runs dry, output pauses and resumes, and every chunk is still played once, in full."""
    n_chunks = 10
    sine = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(n_chunks * R // 10) / R)).astype(np.float32)
    chunks = np.split(sine, n_chunks)  # 100 whole periods each: pauses fall between periods
    with rig.listen(R) as rec:
        with rig.backend.open_player(rig.speaker, prebuffer_seconds=0.15) as player:
            for chunk in chunks:
                assert player.write(chunk)
                time.sleep(0.15)
            player.finish()
            assert player.wait(timeout=10)
        time.sleep(0.2)
        recorded = rec.stop()
    f = R // 500  # 2 ms frames
    n = recorded.size // f
    rms = np.sqrt(np.mean(recorded[: n * f].reshape(n, f).astype(np.float64) ** 2, axis=1))
    loud_seconds = np.count_nonzero(rms > 0.1) * f / R
    print(
        f"\n[{rig.name} player slow producer] underruns {player.underruns}; "
        f"tone at the monitor {loud_seconds:.3f} s of 1.0 s"
    )
    assert player.underruns >= 1
    assert abs(player.played_seconds - n_chunks * 0.1) < 1e-6
    assert abs(loud_seconds - n_chunks * 0.1) <= 0.02  # a 2 ms frame may straddle each pause edge
