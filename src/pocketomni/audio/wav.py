"""Write speech to a WAV file with the standard library: mono 16-bit PCM."""

from __future__ import annotations

import os
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pocketomni.audio.rates import OUTPUT_RATE
from pocketomni.errors import OptionsError
from pocketomni.events import AudioChunk

__all__ = ["save_wav"]


def _samples(samples: np.ndarray | Iterable[AudioChunk], sample_rate: int) -> np.ndarray:
    if isinstance(samples, np.ndarray):
        x = samples
    else:
        parts = list(samples)
        if not all(isinstance(p, AudioChunk) for p in parts):
            raise OptionsError("samples must be a float array or a list of AudioChunk events")
        if any(p.sample_rate != sample_rate for p in parts):
            raise OptionsError(f"the AudioChunks are not all at sample_rate={sample_rate}")
        x = np.concatenate([p.samples for p in parts]) if parts else np.zeros(0, np.float32)
    x = np.asarray(x)
    if x.ndim != 1 and not (x.ndim == 2 and 1 in x.shape):
        raise OptionsError(f"save_wav writes mono audio: expected a 1-D array, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise OptionsError(f"samples must be floating point in [-1, 1], got {x.dtype}")
    x = x.reshape(-1)
    if not np.all(np.isfinite(x)):
        raise OptionsError("samples contain NaN or inf")
    return x


def save_wav(path: str | os.PathLike[str], samples: np.ndarray | Iterable[AudioChunk],
             sample_rate: int = OUTPUT_RATE) -> Path:
    """Write mono float samples in [-1, 1] (or a turn's AudioChunk events) as a 16-bit PCM WAV file.

    Values outside [-1, 1] are clipped. Returns the path written.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 384000:
        raise OptionsError(f"sample_rate={sample_rate!r} must be an integer between 1000 and 384000")
    x = _samples(samples, sample_rate)
    pcm = np.round(np.clip(x.astype(np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    p = Path(path)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return p
