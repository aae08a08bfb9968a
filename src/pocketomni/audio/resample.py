"""Chunk-by-chunk resampling that reproduces `pocketomni.media.audio.resample` on the whole signal."""

from __future__ import annotations

import math

import numpy as np

from pocketomni.media.audio import resample

__all__ = ["StreamResampler"]


class StreamResampler:
    """Resamples a stream chunk by chunk with exactly the output of one `resample()` on the whole
    signal: each output sample is computed once all input under its filter kernel has arrived
    (a delay of about 100 input samples at the lower rate); `flush()` emits the tail."""

    def __init__(self, orig_rate: int, target_rate: int) -> None:
        self.orig, self.target = int(orig_rate), int(target_rate)
        g = math.gcd(self.orig, self.target)
        self.up, self.down = self.target // g, self.orig // g
        # resample()'s kernel spans 96 zero crossings at 0.9565 of the lower Nyquist: <= 102 input
        # samples each side (more when downsampling); a few spare samples keep us on the safe side.
        self.half = math.ceil(100.5 / min(1.0, self.target / self.orig)) + 4
        self.buf = np.zeros(0, dtype=np.float64)
        self.start = 0  # absolute input index of buf[0]; a multiple of `down`
        self.n_in = 0
        self.n_out = 0  # outputs emitted so far

    def _emit(self, upto: int) -> np.ndarray:
        if upto <= self.n_out or self.buf.size == 0:
            return np.zeros(0, dtype=np.float32)
        y = resample(self.buf, self.orig, self.target)
        base = self.start * self.up // self.down  # output index of y[0]
        out = y[self.n_out - base : upto - base]
        self.n_out = upto
        # keep the input the next output still needs (its kernel starts `half` samples back)
        need = (self.n_out * self.down) // self.up - self.half
        cut = max(0, (need - self.start) // self.down * self.down)
        if cut:
            self.buf = self.buf[cut:]
            self.start += cut
        return out.astype(np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add input; return the outputs that are now final."""
        if self.up == self.down:
            return np.asarray(x, dtype=np.float32).reshape(-1)
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        self.buf = np.concatenate([self.buf, x])
        self.n_in += x.size
        m = self.n_in - self.half  # inputs 0..m-1 have their full right-hand context
        return self._emit(-(-m * self.up // self.down) if m > 0 else 0)

    def flush(self) -> np.ndarray:
        """End of stream: the remaining outputs (as the one-shot resample pads with zeros)."""
        if self.up == self.down:
            return np.zeros(0, dtype=np.float32)
        out = self._emit(-(-self.n_in * self.up // self.down))
        self.buf, self.start, self.n_in, self.n_out = np.zeros(0), 0, 0, 0
        return out
