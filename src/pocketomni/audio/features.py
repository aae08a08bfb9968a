"""Qwen2.5-Omni audio features: the reference's 128-bin log-mel spectrogram, in numpy.

The reference (a Whisper-style feature extractor configured by the Qwen2.5-Omni processor) pads every
clip with zeros to 300 s, takes a centred STFT (n_fft 400, hop 160, periodic Hann, reflect padding at
the edges of the padded signal), drops the last frame, applies a Slaney-normalised Slaney-scale mel
filterbank (0-8 kHz), takes log10 (floored at 1e-10), clamps at the global maximum minus 8, maps
x -> (x + 4) / 4, and keeps the first ceil(n_samples / 160) frames (its attention mask).

We compute only the frames that the clip can touch, which gives the same numbers: frames past the clip
see only padding zeros and sit at the floor, so they never raise the maximum.

Clips longer than 300 s: the reference silently truncates them. We instead split the clip into
consecutive 300 s segments (`split_segments` / `log_mel_segments`), each featurised exactly as the
reference would featurise it if it were passed as a separate audio input; `log_mel` itself refuses
longer clips with a `MediaError`. Each segment's mel length is a multiple of the encoder's 2 s window
except the last, so the concatenated token stream keeps the 2 s window grid.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pocketomni.audio.rates import INPUT_RATE
from pocketomni.errors import MediaError

SAMPLE_RATE = INPUT_RATE
N_FFT = 400
HOP = 160
N_MELS = 128
MAX_SECONDS = 300
MAX_SAMPLES = MAX_SECONDS * SAMPLE_RATE  # 4,800,000 samples
MAX_FRAMES = MAX_SAMPLES // HOP  # 30,000 mel frames
MIN_SAMPLES = 2 * HOP + 1  # 3 mel frames: the shortest clip that yields one audio token
_FLOOR = 1e-10
_FRAME_BLOCK = 4096  # frames per FFT block (bounds temporary memory for long clips)

__all__ = [
    "MAX_FRAMES",
    "MAX_SAMPLES",
    "SAMPLE_RATE",
    "clamp_log_mel",
    "clip_peak",
    "frames_touching",
    "log10_mel_frames",
    "log_mel",
    "log_mel_segments",
    "mel_filterbank",
    "n_audio_tokens",
    "n_frames",
    "split_segments",
]


def n_frames(n_samples: int) -> int:
    """Mel frames the reference keeps for a clip of `n_samples` (ceil(n / 160), capped at 30,000)."""
    return min(-(-int(n_samples) // HOP), MAX_FRAMES)


def n_audio_tokens(mel_frames: int) -> int:
    """Audio tokens the encoder emits for `mel_frames` mel frames: ((L-1)//2+1-2)//2+1."""
    after_conv = (int(mel_frames) - 1) // 2 + 1
    return max((after_conv - 2) // 2 + 1, 0)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = 200.0 * m / 3.0
    log = 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0)
    return np.where(m >= 15.0, log, lin)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, shape (n_fft//2+1, n_mels), float64, read-only."""
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    widths = np.diff(edges_hz)
    dist = edges_hz[None, :] - fft_hz[:, None]  # (bins, n_mels + 2)
    rising = -dist[:, :-2] / widths[:-1]
    falling = dist[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= 2.0 / (edges_hz[2:] - edges_hz[:-2])  # equal area per filter
    bank.setflags(write=False)
    return bank


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    w.setflags(write=False)
    return w


def _check_samples(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise MediaError(
            f"audio must be mono 1-D samples, got shape {x.shape}; average the channels first"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise MediaError(f"audio samples must be float (-1..1), got dtype {x.dtype}; convert them first")
    x = x.astype(np.float32, copy=False)
    if x.size < MIN_SAMPLES:
        raise MediaError(
            f"audio clip too short: {x.size} samples; at 16 kHz the model needs at least "
            f"{MIN_SAMPLES} samples (about 20 ms) to produce one audio token"
        )
    if not np.all(np.isfinite(x)):
        raise MediaError("audio contains NaN or infinite samples; clean or re-decode the clip")
    return x


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Reference log-mel of one mono 16 kHz float clip of at most 300 s: (128, ceil(n/160)) float32.

    Raises MediaError for clips that are empty, too short for one token, not mono, or longer than
    300 s (use `log_mel_segments` for long audio).
    """
    x = _check_samples(samples)
    n = x.size
    if n > MAX_SAMPLES:
        raise MediaError(
            f"audio clip is {n / SAMPLE_RATE:.1f} s; one clip holds at most {MAX_SECONDS} s. "
            "Use log_mel_segments() (the SDK does) to split it into 300 s segments"
        )
    keep = n_frames(n)
    # Frames t < n_touch overlap the clip; later ones see only zeros (log10 floor, never the maximum).
    n_touch = frames_touching(n)
    logmel = log10_mel_frames(x, 0, n_touch)
    return clamp_log_mel(logmel[:keep], clip_peak(logmel.max(), n_touch))


def frames_touching(n_samples: int) -> int:
    """Mel frames whose window overlaps a clip of `n_samples` (the ones that can set its maximum)."""
    return min((int(n_samples) + N_FFT // 2 - 1) // HOP + 1, MAX_FRAMES)


def clip_peak(frames_max: float, n_touch: int) -> float:
    """The clamp's reference maximum: the touching frames' maximum, and the log10 floor that the
    zero-padded tail of the reference's 300 s signal contributes (when the clip is shorter)."""
    peak = float(frames_max)
    if n_touch < MAX_FRAMES:
        peak = max(peak, float(np.log10(_FLOOR)))
    return peak


def clamp_log_mel(logmel: np.ndarray, peak: float) -> np.ndarray:
    """(frames, 128) float64 log10 mel -> the encoder's (128, frames) float32 features: clamped at
    peak - 8, mapped x -> (x + 4) / 4."""
    out = (np.maximum(logmel, peak - 8.0) + 4.0) / 4.0
    return np.ascontiguousarray(out.T, dtype=np.float32)


def log10_mel_frames(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Unclamped log10 mel of frames [start, stop) of the clip `x` as the reference frames it: x
    zero-padded to 300 s, reflect-padded by N_FFT/2 at both ends of that signal. Float64, (frames, 128).
    A frame reads clip samples [160 t - 200, 160 t + 200): it needs no zero padding once the clip holds
    160 t + 200 samples, so frames of a growing clip computed then keep their values (audio.live_mel)."""
    n = x.shape[0]
    half = N_FFT // 2
    idx = np.arange(HOP * start - half, HOP * (stop - 1) + half, dtype=np.int64)
    idx = np.where(idx < 0, -idx, idx)  # reflect at the left edge
    over = idx >= MAX_SAMPLES
    idx[over] = 2 * (MAX_SAMPLES - 1) - idx[over]  # reflect at the 300 s edge
    sig = np.zeros(idx.shape[0], dtype=np.float64)
    inside = idx < n
    sig[inside] = x[idx[inside]]
    frames = np.lib.stride_tricks.sliding_window_view(sig, N_FFT)[::HOP]
    assert frames.shape[0] == stop - start
    bank = mel_filterbank()
    win = _window()
    mel = np.empty((stop - start, N_MELS), dtype=np.float64)
    for s in range(0, stop - start, _FRAME_BLOCK):
        spec = np.fft.rfft(frames[s : s + _FRAME_BLOCK] * win, axis=-1)
        power = spec.real**2 + spec.imag**2
        mel[s : s + _FRAME_BLOCK] = power @ bank
    return np.log10(np.maximum(mel, _FLOOR))


def split_segments(samples: np.ndarray) -> list[np.ndarray]:
    """Split a clip into consecutive 300 s segments (views); the last one may be shorter.

    A tail shorter than the minimum one-token length is dropped (it carries under 20 ms of sound).
    """
    x = np.asarray(samples)
    segs = [x[i : i + MAX_SAMPLES] for i in range(0, max(x.shape[0], 1), MAX_SAMPLES)]
    if len(segs) > 1 and segs[-1].shape[0] < MIN_SAMPLES:
        segs.pop()
    return segs


def log_mel_segments(samples: np.ndarray) -> list[np.ndarray]:
    """Log-mels of a clip of any length: one (128, L_i) array per 300 s segment, as the reference would
    compute them if each segment were passed as its own audio input."""
    return [log_mel(seg) for seg in split_segments(samples)]
