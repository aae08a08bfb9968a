"""Waveform fidelity measures shared by the first-chunk tests and benchmarks/first_chunk.py."""

from __future__ import annotations

import numpy as np

SR = 24000


def snr_db(ours: np.ndarray, ref: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ours - ref|^2), in float64."""
    ref64 = np.asarray(ref, np.float64)
    err = np.asarray(ours, np.float64) - ref64
    return float(10 * np.log10(np.sum(ref64**2) / max(np.sum(err**2), 1e-300)))


def _mel_filters(n_fft: int, n_mels: int = 80, fmax: float = SR / 2) -> np.ndarray:
    """Triangular filters on the HTK mel scale, (n_mels, n_fft // 2 + 1)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)
    edges = hz(np.linspace(mel(0.0), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def log_mel(wav: np.ndarray, n_fft: int = 1024, hop: int = 240) -> np.ndarray:
    """Natural-log mel power spectrogram (frames, 80) with a Hann window, frames at 100 Hz."""
    x = np.asarray(wav, np.float64)
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    n = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft), axis=1)) ** 2
    return np.log(np.maximum(spec @ _mel_filters(n_fft).T, 1e-10))


def mel_distance(ours: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute log-mel difference (nats) between two waveforms of the same length."""
    a, b = log_mel(ours), log_mel(ref)
    return float(np.mean(np.abs(a - b)))
