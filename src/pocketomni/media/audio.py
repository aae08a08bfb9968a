"""Audio -> float32 mono 16 kHz samples, the way the reference pipeline loads audio (numpy only).

The reference loads files with ``librosa.load(path, sr=16000)``: libsndfile decodes to float32
(integer PCM scaled by 1/2^(bits-1)), channels are averaged, and soxr's "HQ" resampler converts
to 16 kHz with ``ceil(n * 16000 / rate)`` output samples. We do the same steps:

* WAV (PCM 8/16/24/32-bit, float 32/64-bit, WAVE_FORMAT_EXTENSIBLE) is parsed with the standard
  library alone. MP3, FLAC, OGG and other formats are decoded with ``soundfile`` (libsndfile, which
  is what librosa uses) or, when only the video extra is installed, with PyAV.
* Resampling is a Kaiser-windowed sinc (polyphase, 64 zero crossings, 120 dB stopband, cutoff at
  94.5 % of the output Nyquist), zero phase like soxr.

Inputs: a path, raw bytes of a file, a ``data:audio/...;base64,`` URL, or ``(array, sample_rate)``
with the array (n,), (n, channels) or (channels, n) when channels <= 8 < n.
Limits: at least 321 samples at 16 kHz (20 ms: one LLM token) and at most ``MAX_SECONDS``
(30 minutes; clips over 300 s are split into segments by the feature extractor).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.audio.rates import INPUT_RATE
from pocketomni.engine.positions import audio_tokens_from_samples
from pocketomni.errors import FeatureUnavailableError, MediaError

__all__ = [
    "MAX_SECONDS",
    "MIN_SAMPLES",
    "SAMPLE_RATE",
    "AudioConfig",
    "AudioInput",
    "PreparedAudio",
    "clip_tokens",
    "decode_audio",
    "load_audio",
    "prepare_audio",
    "resample",
    "to_mono",
]

SAMPLE_RATE = INPUT_RATE
MAX_SECONDS = 1800.0
MIN_SAMPLES = 321  # 3 mel frames at hop 160: the shortest clip that yields one LLM token
SEGMENT_SAMPLES = 300 * SAMPLE_RATE  # one reference audio input holds at most 300 s

AudioInput = str | os.PathLike | bytes | bytearray | memoryview | tuple[Any, float]

_ZEROS = 96  # zero crossings of the sinc on each side (at the lower of the two rates)
_ROLLOFF = 0.9565  # cutoff over the lower Nyquist: transition 0.913..1.0 like soxr HQ
_BETA = 12.93  # Kaiser beta for ~126 dB (20-bit) stopband
_BLOCK = 1024  # output rows per matrix product (keeps the window copy in cache)


@dataclass(frozen=True)
class AudioConfig:
    """Loading limits; the defaults are the documented SDK limits."""

    max_seconds: float = MAX_SECONDS
    min_samples: int = MIN_SAMPLES


@dataclass
class PreparedAudio:
    """A clip ready for the audio feature extractor."""

    samples: np.ndarray  # (n,) float32, mono, 16 kHz
    n_tokens: int  # LLM tokens of this clip (clips over 300 s: sum over 300 s segments)
    source_rate: int  # sample rate before resampling

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE


# ---------------------------------------------------------------- WAV (standard library only)

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def _read_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """(frames, channels) float32 and rate for PCM/float WAV; None for other WAV codecs."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise MediaError("not a RIFF/WAVE file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            payload = body  # a streamed WAV may announce more than it holds: keep what is there
            break
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16 or payload is None:
        raise MediaError("the WAV file has no 'fmt ' or 'data' chunk: it is truncated or corrupt")
    tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag not in (_PCM, _FLOAT):
        return None
    width = bits // 8
    if channels < 1 or rate < 1 or bits % 8 or block != width * channels:
        raise MediaError(f"the WAV header is inconsistent ({channels} ch, {bits} bit, block {block})")
    n = len(payload) // block
    raw = np.frombuffer(payload[: n * block], dtype=np.uint8)
    if tag == _FLOAT and bits in (32, 64):
        x = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    elif tag == _PCM and bits == 8:
        x = (raw.astype(np.float32) - 128.0) / 128.0
    elif tag == _PCM and bits in (16, 32):
        x = raw.view("<i2" if bits == 16 else "<i4").astype(np.float64) / float(1 << (bits - 1))
        x = x.astype(np.float32)
    elif tag == _PCM and bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)  # sign lands in bit 31
        x = (v.astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise MediaError(f"{bits}-bit {'float' if tag == _FLOAT else 'PCM'} WAV is not supported; convert to 16-bit")
    return x.reshape(n, channels), int(rate)


# ---------------------------------------------------------------- other formats (optional libraries)


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile  # type: ignore[import-not-found]

    try:
        x, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own LibsndfileError / RuntimeError
        raise MediaError(f"cannot decode the audio ({exc}); convert it to WAV, FLAC or MP3") from exc
    return x, int(rate)


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av  # type: ignore[import-not-found]

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise MediaError("the file has no audio stream")
            stream = container.streams.audio[0]
            parts, rate = [], stream.codec_context.sample_rate
            for frame in container.decode(stream):
                a = frame.to_ndarray()
                if frame.format.is_planar:
                    a = a.T  # (samples, channels)
                else:
                    a = a.reshape(-1, len(frame.layout.channels))
                if np.issubdtype(a.dtype, np.integer):
                    a = a.astype(np.float64) / float(np.iinfo(a.dtype).max + 1)
                parts.append(a.astype(np.float32))
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"cannot decode the audio ({exc}); convert it to WAV, FLAC or MP3") from exc
    if not parts:
        raise MediaError("the audio stream holds no samples")
    return np.concatenate(parts), int(rate)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _looks_like_audio(data: bytes) -> bool:
    """Magic numbers of the compressed formats a decoder library would handle."""
    head = data[:12]
    return (
        head[:3] == b"ID3"
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)  # MPEG audio frame sync
        or head[:4] in (b"fLaC", b"OggS", b"RIFF", b"FORM", b"\x1aE\xdf\xa3")
        or head[4:8] == b"ftyp"
    )


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode file bytes to ((frames, channels) float32, sample_rate). Raises MediaError."""
    if not data:
        raise MediaError("the audio is empty (0 bytes); pass a recording with sound in it")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        wav = _read_wav(data)
        if wav is not None:
            return wav
    if _have("soundfile"):
        return _decode_soundfile(data)
    if _have("av"):
        return _decode_av(data)
    if not _looks_like_audio(data):
        raise MediaError("the data is not a recognizable audio file (WAV, MP3, FLAC, OGG, M4A); check the input")
    raise FeatureUnavailableError(
        "decoding this audio format (MP3, FLAC, OGG, compressed WAV) needs the 'soundfile' package: "
        "pip install soundfile  (or pass a PCM WAV file, or (numpy_array, sample_rate))"
    )


# ---------------------------------------------------------------- resampling


def _kaiser_sinc(u: np.ndarray, cutoff: float) -> np.ndarray:
    """Low-pass impulse response at offsets u (input samples): cutoff * sinc(cutoff * u) * Kaiser."""
    half = _ZEROS / cutoff
    t = np.clip(u / half, -1.0, 1.0)
    win = np.i0(_BETA * np.sqrt(1.0 - t * t)) / np.i0(_BETA)
    return np.where(np.abs(u) < half, cutoff * np.sinc(cutoff * u) * win, 0.0)


@lru_cache(maxsize=8)
def _filter_bank(up: int, down: int) -> tuple[np.ndarray, int]:
    """(up, 2W) taps: row p holds h(p/up - d) for d = -W+1 .. W, and W."""
    cutoff = min(1.0, up / down) * _ROLLOFF
    w = math.ceil(_ZEROS / cutoff) + 1
    d = np.arange(-w + 1, w + 1, dtype=np.float64)
    u = np.arange(up, dtype=np.float64)[:, None] / up - d[None, :]
    return _kaiser_sinc(u, cutoff), w


def resample(x: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a 1-D signal; ceil(n * target / orig) samples, float32, zero phase."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if int(orig_rate) != orig_rate or int(target_rate) != target_rate or orig_rate <= 0 or target_rate <= 0:
        raise MediaError(f"sample rates must be positive integers (got {orig_rate} -> {target_rate})")
    orig_rate, target_rate = int(orig_rate), int(target_rate)
    if orig_rate == target_rate:
        return x.astype(np.float32)
    g = math.gcd(orig_rate, target_rate)
    up, down = target_rate // g, orig_rate // g
    n_out = int(np.ceil(x.shape[0] * (float(target_rate) / orig_rate)))  # librosa's length rule
    taps, w = _filter_bank(up, down)
    pad = np.zeros(x.shape[0] + 2 * w + down + 2, dtype=np.float64)
    pad[w : w + x.shape[0]] = x
    y = np.empty(n_out, dtype=np.float64)
    stride = pad.strides[0]
    for j in range(min(up, n_out)):
        # outputs j, j+up, j+2up, ... share one phase; their input windows advance by `down`
        phase, base = (j * down) % up, (j * down) // up
        rows = (n_out - 1 - j) // up + 1
        for r0 in range(0, rows, _BLOCK):
            r1 = min(rows, r0 + _BLOCK)
            start = r0 * down + base + 1
            win = np.lib.stride_tricks.as_strided(
                pad[start:], shape=(r1 - r0, 2 * w), strides=(down * stride, stride), writeable=False
            )
            y[j + r0 * up : j + r1 * up : up] = np.ascontiguousarray(win) @ taps[phase]
    return y.astype(np.float32)


def to_mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32 by averaging channels, as librosa does."""
    x = np.asarray(x, dtype=np.float32)
    return x if x.ndim == 1 else np.mean(x, axis=1, dtype=np.float32)


# ---------------------------------------------------------------- public entry points


def _array_input(arr: Any, rate: Any) -> tuple[np.ndarray, int]:
    try:
        a = np.asarray(arr)
    except Exception as exc:
        raise MediaError(f"audio must be a numpy array of samples ({exc})") from exc
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == np.bool_:
        raise MediaError(f"audio array dtype {a.dtype} is not supported; pass float32 in -1..1 or int16 PCM")
    if a.ndim == 2 and a.shape[0] <= 8 < a.shape[1]:
        a = a.T  # (channels, n) -> (n, channels)
    if a.ndim not in (1, 2):
        raise MediaError(f"audio array must be (n,) or (n, channels); got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64) / float(np.iinfo(a.dtype).max + 1)
    try:
        r = float(rate)
    except (TypeError, ValueError) as exc:
        raise MediaError(f"the sample rate must be a number of Hz, got {rate!r}") from exc
    if not r.is_integer() or r < 1000 or r > 768000:
        raise MediaError(f"sample rate {rate!r} Hz is not supported; pass an integer rate in 1000..768000")
    return a.astype(np.float32), int(r)


def _read_source(src: AudioInput) -> tuple[np.ndarray, int]:
    if isinstance(src, tuple):
        if len(src) != 2:
            raise MediaError("pass audio arrays as (samples, sample_rate)")
        return _array_input(*src)
    if isinstance(src, np.ndarray):
        raise MediaError("a bare array has no sample rate; pass (samples, sample_rate), e.g. (audio, 16000)")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_audio(bytes(src))
    if isinstance(src, str) and src.startswith("data:"):
        head, sep, payload = src.partition(",")
        if not sep or ";base64" not in head:
            raise MediaError("an audio data URL must look like 'data:audio/wav;base64,<data>'")
        try:
            return decode_audio(base64.b64decode(payload))
        except binascii.Error as exc:
            raise MediaError(f"the audio data URL holds invalid base64 ({exc})") from exc
    if isinstance(src, str) and src.startswith(("http://", "https://")):
        raise MediaError("PocketOmni runs offline and does not download audio; save the file and pass its path")
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise MediaError(f"audio file not found: {path}; check the path")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MediaError(f"cannot read {path}: {exc}") from exc
        try:
            return decode_audio(data)
        except MediaError as exc:
            raise MediaError(f"{path}: {exc}") from exc
    raise MediaError(f"unsupported audio input {type(src).__name__}; pass a path, bytes or (array, sample_rate)")


def load_audio(src: AudioInput, config: AudioConfig | None = None) -> np.ndarray:
    """Decode, average channels and resample to 16 kHz: (n,) float32. Raises MediaError."""
    return prepare_audio(src, config).samples


def prepare_audio(src: AudioInput, config: AudioConfig | None = None) -> PreparedAudio:
    """load_audio plus the clip's token count and original rate."""
    cfg = config or AudioConfig()
    frames, rate = _read_source(src)
    if frames.shape[0] == 0 or (frames.ndim == 2 and frames.shape[1] == 0):
        raise MediaError("the audio has no samples (zero length); pass a recording with sound in it")
    seconds = frames.shape[0] / rate
    if seconds > cfg.max_seconds:
        raise MediaError(
            f"the audio lasts {seconds:.0f} s; PocketOmni accepts at most {cfg.max_seconds:.0f} s per clip. "
            "Cut it into shorter clips (or raise AudioConfig.max_seconds if your context window allows it)"
        )
    mono = to_mono(frames)
    if not np.isfinite(mono).all():
        raise MediaError("the audio holds NaN or infinite samples; clean the signal first")
    samples = resample(mono, rate, SAMPLE_RATE)
    if samples.shape[0] < cfg.min_samples:
        raise MediaError(
            f"the audio is too short ({samples.shape[0] / SAMPLE_RATE * 1000:.1f} ms); the model needs at least "
            f"{cfg.min_samples / SAMPLE_RATE * 1000:.0f} ms of sound"
        )
    return PreparedAudio(samples=samples, n_tokens=clip_tokens(samples.shape[0]), source_rate=rate)


def clip_tokens(n_samples: int) -> int:
    """LLM tokens of a 16 kHz clip; past 300 s the clip counts as consecutive 300 s segments, a tail
    shorter than MIN_SAMPLES dropped (as audio_features.split_segments does)."""
    full, tail = divmod(int(n_samples), SEGMENT_SAMPLES)
    tokens = full * audio_tokens_from_samples(SEGMENT_SAMPLES)
    if tail and (tail >= MIN_SAMPLES or full == 0):
        tokens += audio_tokens_from_samples(tail)
    return tokens
