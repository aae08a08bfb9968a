"""po.save_wav (stdlib wave, 16-bit PCM) and `pocketomni chat --wav / --speak` on the tiny model."""

from __future__ import annotations

import time
import wave

import numpy as np
import pytest

import pocketomni as po
from pocketomni.cli.main import main
from pocketomni.media.audio import decode_audio


def _read(path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
        return np.frombuffer(frames, "<i2"), w.getframerate(), w.getnchannels(), w.getsampwidth()


def test_save_wav_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.5 * np.sin(np.arange(24000) * 0.05) + 0.1 * rng.standard_normal(24000)).astype(np.float32)
    x[:3] = [1.0, -1.0, 0.0]
    path = po.save_wav(tmp_path / "a.wav", x)
    pcm, rate, ch, width = _read(path)
    assert (rate, ch, width, pcm.size) == (24000, 1, 2, x.size)
    assert pcm[:3].tolist() == [32767, -32767, 0]
    back = pcm / 32767.0
    assert np.abs(back - x).max() <= 0.5 / 32767 + 1e-7  # rounding to the nearest step only
    frames, r = decode_audio(path.read_bytes())  # our own reader agrees
    assert r == 24000 and np.abs(np.asarray(frames).reshape(-1) - x).max() < 1e-4

    chunks = [po.AudioChunk(x[:1000]), po.AudioChunk(x[1000:])]  # a turn's events work as well
    assert np.array_equal(_read(po.save_wav(tmp_path / "b.wav", chunks))[0], pcm)
    y = np.array([2.0, -3.0, 0.25], np.float64)  # clipped, any float dtype, other rates
    pcm, rate, _, _ = _read(po.save_wav(tmp_path / "c.wav", y, sample_rate=16000))
    assert rate == 16000 and pcm.tolist() == [32767, -32767, 8192]


@pytest.mark.parametrize(
    ("samples", "kw", "match"),
    [
        (np.zeros((100, 2), np.float32), {}, "mono"),
        (np.array([0.0, np.nan], np.float32), {}, "NaN"),
        (np.zeros(10, np.int16), {}, "floating point"),
        (np.zeros(10, np.float32), {"sample_rate": 0}, "sample_rate"),
        ([po.AudioChunk(np.zeros(5, np.float32), 16000)], {}, "sample_rate=24000"),
        (["not audio"], {}, "AudioChunk"),
    ],
)
def test_save_wav_rejects_bad_input(tmp_path, samples, kw, match):
    with pytest.raises(po.OptionsError, match=match):
        po.save_wav(tmp_path / "x.wav", samples, **kw)


def test_chat_cli_writes_the_spoken_reply(converted_tiny, tmp_path, capsys):
    folder = converted_tiny("base", "f32")
    out = tmp_path / "reply.wav"
    args = ["chat", str(folder), "--max-tokens", "6", "--threads", "1", "--wav", str(out), "--stats", "--max-codes", "60",
            "--voice", "Ethan"]
    assert main([*args, "--prompt", "Hello"]) == 0
    text, err = capsys.readouterr()
    assert text.strip() and "speech" in err and "real-time factor" in err
    pcm, rate, _, _ = _read(out)
    assert rate == 24000 and pcm.size == 60 * 480 and np.abs(pcm).max() > 300
    assert main(["chat", str(folder), "--voice", "Ethan", "--prompt", "Hi"]) == 2  # needs --speak or --wav
    assert "--speak or --wav" in capsys.readouterr().err


def test_chat_cli_speaks_through_the_speaker(converted_tiny, tmp_path, capsys, monkeypatch):
    import io
    import sys

    from audio_env import SPEAKER_MONITOR, Parec, align, require_audio

    require_audio()
    folder = converted_tiny("base", "f32")
    out = tmp_path / "spoken.wav"
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nAgain\n"))  # two replies: spoken.wav, spoken-2.wav
    with Parec(SPEAKER_MONITOR, 24000) as rec:
        rec.wait_for_data()
        assert main(["chat", str(folder), "--max-tokens", "6", "--threads", "1", "--speak", "--wav", str(out),
                     "--max-codes", "90"]) == 0
        time.sleep(0.3)
        recorded = rec.stop()
    err = capsys.readouterr().err
    assert err.count("[spoken reply written to") == 2 and (tmp_path / "spoken-2.wav").is_file()
    sent = _read(out)[0] / 32767.0
    ncc, _ = align(sent[: 24000 // 10], recorded)  # the first 0.1 s (one chunk: it plays without a pause)
    print(f"\n[chat --speak] NCC of the reply's first 0.1 s at the speaker monitor {ncc:.4f}")
    assert ncc >= 0.9
