"""Audio decoding (stdlib WAV), mono 16 kHz resampling quality, token counts and error cases."""

from __future__ import annotations

import importlib.util
import io
import struct
import wave

import numpy as np
import pytest

from pocketomni.engine.positions import audio_tokens_from_samples
from pocketomni.errors import FeatureUnavailableError, MediaError, PocketOmniError
from pocketomni.media.audio import (
    MAX_SECONDS,
    AudioConfig,
    clip_tokens,
    decode_audio,
    load_audio,
    prepare_audio,
    resample,
)


def _wav_int(samples: np.ndarray, rate: int, width: int) -> bytes:
    """samples: (n, channels) integer PCM already in the target width's range."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            raw = (samples + 128).astype(np.uint8).tobytes()
        elif width == 3:
            v = samples.astype(np.int32).reshape(-1)
            raw = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], -1).astype(np.uint8).tobytes()
        else:
            raw = samples.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
        w.writeframes(raw)
    return buf.getvalue()


def _wav_float(samples: np.ndarray, rate: int, extensible: bool = False) -> bytes:
    data = samples.astype("<f4").tobytes()
    ch = samples.shape[1]
    if extensible:
        fmt = struct.pack("<HHIIHHHHIH14s", 0xFFFE, ch, rate, rate * 4 * ch, 4 * ch, 32, 22, 32, 0, 3,
                          b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    else:
        fmt = struct.pack("<HHIIHH", 3, ch, rate, rate * 4 * ch, 4 * ch, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _sine(freq, rate, seconds, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


# ------------------------------------------------------------------ WAV decoding (stdlib only)

@pytest.mark.parametrize("width, scale", [(1, 128), (2, 32768), (3, 8388608), (4, 2147483648)])
def test_pcm_wav_scaling_like_libsndfile(width, scale):
    rng = np.random.default_rng(width)
    hi = scale - 1
    pcm = rng.integers(-scale, hi, size=(1000, 2))
    pcm[0] = [-scale, hi]
    x, rate = decode_audio(_wav_int(pcm, 22050, width))
    assert rate == 22050 and x.dtype == np.float32 and x.shape == (1000, 2)
    np.testing.assert_array_equal(x, (pcm / scale).astype(np.float32))


@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav_and_extra_chunks(extensible):
    s = np.random.default_rng(0).uniform(-1, 1, size=(500, 1)).astype(np.float32)
    x, rate = decode_audio(_wav_float(s, 48000, extensible))
    assert rate == 48000
    np.testing.assert_array_equal(x, s)


def test_stereo_file_is_averaged_and_resampled(tmp_path):
    left, right = _sine(440, 44100, 1.0), _sine(440, 44100, 1.0, amp=0.1)
    pcm = np.round(np.stack([left, right], 1) * 32767).astype(np.int64)
    p = tmp_path / "a.wav"
    p.write_bytes(_wav_int(pcm, 44100, 2))
    got = load_audio(p)
    want = resample(((pcm[:, 0] / 32768).astype(np.float32) + (pcm[:, 1] / 32768).astype(np.float32)) / 2, 44100)
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert got.shape == (16000,)


def test_16khz_mono_passes_through_unchanged():
    x = np.random.default_rng(0).uniform(-1, 1, 8000).astype(np.float32)
    np.testing.assert_array_equal(load_audio((x, 16000)), x)


# ------------------------------------------------------------------ resampling quality

@pytest.mark.parametrize("rate", [8000, 11025, 22050, 24000, 32000, 44100, 48000, 96000])
def test_resampled_sines_match_analytic(rate):
    freqs = [(100, 0.2), (1000, 0.2), (3000.5, 0.2)] + ([(7000, 0.2)] if rate > 16000 else [])
    x = sum(_sine(f, rate, 2.0, a) for f, a in freqs)
    y = resample(x.astype(np.float32), rate)
    assert y.dtype == np.float32 and y.shape[0] == int(np.ceil(x.shape[0] * 16000 / rate))
    t = np.arange(y.shape[0]) / 16000
    want = sum(a * np.sin(2 * np.pi * f * t) for f, a in freqs)
    edge = 300  # the first/last filter half-width sees the zero padding
    assert np.max(np.abs(y - want)[edge:-edge]) < 1e-6


@pytest.mark.parametrize("rate, freq", [(44100, 8600), (48000, 9000), (48000, 15000), (22050, 10000)])
def test_stopband_rejects_tones_above_8khz(rate, freq):
    y = resample(_sine(freq, rate, 2.0, 1.0).astype(np.float32), rate)
    rms = np.sqrt(np.mean(y[300:-300].astype(np.float64) ** 2))
    assert rms < 1e-5  # > 100 dB below the input's 0.707


def test_dc_gain_and_lengths():
    y = resample(np.full(44100, 0.5, np.float32), 44100)
    np.testing.assert_allclose(y[300:-300], 0.5, atol=1e-6)
    for n, rate in [(1, 44100), (441, 44100), (442, 44100), (48000, 48000 * 3), (12345, 22050), (99, 8000)]:
        assert resample(np.zeros(n, np.float32), rate).shape[0] == int(np.ceil(n * (16000 / rate)))


def test_odd_rates_and_int_arrays():
    x = _sine(500, 44056, 1.0)
    y = resample(x.astype(np.float32), 44056)
    t = np.arange(y.shape[0]) / 16000
    assert np.max(np.abs(y - 0.5 * np.sin(2 * np.pi * 500 * t))[300:-300]) < 1e-6
    pcm = (x * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio((pcm, 44056)), resample(pcm / 32768.0, 44056), atol=1e-7)
    chans_first = np.stack([x, x]).astype(np.float32)  # (2, n)
    np.testing.assert_allclose(load_audio((chans_first, 44056)), y, atol=1e-7)


def test_token_count():
    a = prepare_audio((np.zeros(48077, np.float32), 16000))
    assert a.n_tokens == audio_tokens_from_samples(48077) == 75  # 301 mel frames
    assert a.source_rate == 16000 and a.seconds == pytest.approx(48077 / 16000)
    assert clip_tokens(300 * 16000) == 7500
    assert clip_tokens(301 * 16000) == 7500 + 25  # past 300 s: consecutive 300 s segments
    assert clip_tokens(300 * 16000 + 320) == 7500  # a tail under 20 ms is dropped
    long = prepare_audio((np.zeros(301 * 16000, np.float32), 16000))
    assert long.n_tokens == 7525


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize(
    "src, err, match",
    [
        ((np.zeros(0, np.float32), 16000), MediaError, "zero length"),
        ((np.zeros((0, 2), np.float32), 16000), MediaError, "zero length"),
        ((np.zeros(100, np.float32), 16000), MediaError, "too short"),
        ((np.array([0.0, np.nan] * 500, np.float32), 16000), MediaError, "NaN"),
        ((np.zeros(1000, np.float32), 44100.5), MediaError, "sample rate"),
        ((np.zeros(1000, np.float32), 0), MediaError, "sample rate"),
        ((np.zeros(1000, np.float32), "fast"), MediaError, "sample rate"),
        ((np.zeros((4, 4, 4), np.float32), 16000), MediaError, "shape"),
        ((np.array(["a"] * 400), 16000), MediaError, "dtype"),
        (np.zeros(1000, np.float32), MediaError, "sample rate"),
        ("/no/such/clip.wav", MediaError, "not found"),
        (b"", MediaError, "empty"),
        ("https://example.com/a.mp3", MediaError, "offline"),
        ((np.zeros(10),), MediaError, "sample_rate"),
        (3.5, MediaError, "unsupported"),
    ],
)
def test_bad_inputs(src, err, match):
    with pytest.raises(err, match=match):
        prepare_audio(src)


def test_zero_length_and_corrupt_wav():
    with pytest.raises(MediaError, match="zero length"):
        load_audio(_wav_int(np.zeros((0, 1), np.int64), 16000, 2))
    with pytest.raises(MediaError, match="truncated|corrupt"):
        load_audio(b"RIFF\x00\x00\x00\x00WAVEjunk")


def test_garbage_bytes_are_a_pocketomni_error():
    with pytest.raises(PocketOmniError):
        load_audio(b"definitely not audio, just some text" * 10)


def test_over_long_audio_is_refused():
    assert MAX_SECONDS == 1800.0
    cfg = AudioConfig(max_seconds=2.0)
    prepare_audio((np.zeros(32000, np.float32), 16000), cfg)
    with pytest.raises(MediaError, match="at most 2 s"):
        prepare_audio((np.zeros(32001 * 3, np.float32), 48000), cfg)


def test_compressed_formats_need_a_decoder(monkeypatch):
    import pocketomni.media.audio as audio_mod

    monkeypatch.setattr(audio_mod, "_have", lambda name: False)
    with pytest.raises(FeatureUnavailableError, match="pip install soundfile"):
        load_audio(b"fLaC" + b"\x00" * 100)
    with pytest.raises(MediaError, match="not a recognizable audio file"):
        load_audio(b"plain text, not audio" * 5)


@pytest.mark.skipif(importlib.util.find_spec("soundfile") is None, reason="soundfile (runtime dependency) missing")
@pytest.mark.parametrize("fmt", ["FLAC", "MP3", "OGG"])
def test_compressed_formats_decode_with_soundfile(tmp_path, fmt):
    import soundfile

    x = _sine(440, 44100, 1.0, 0.5).astype(np.float32)
    p = tmp_path / f"a.{fmt.lower()}"
    soundfile.write(str(p), x, 44100, format=fmt)
    ref, rate = soundfile.read(str(p), dtype="float32", always_2d=True)
    got = load_audio(p)
    np.testing.assert_allclose(got, resample(ref.mean(axis=1), rate), atol=1e-7)
    assert abs(got.shape[0] - 16000) < 1200  # codec padding aside, ~1 s
