"""The audio encoder's features for a clip that is still growing: 2 s windows as soon as they are heard.

The audio tower encodes 2 s windows (200 mel frames) independently (audio.tower), and a mel frame
depends only on the 400 samples around it (audio.features.log10_mel_frames), so a window's log-mel is
final once the clip holds 200 samples past its last frame. The one step that sees the whole clip is
the clamp at (the clip's maximum - 8). `LiveLogMel` computes the frames as samples arrive and gives
each complete window with the *running* maximum (over the frames up to the window's end); at the end
of the clip it gives the final maximum, the last (partial) window, and which windows' features the
final maximum changes:

* a window's clamped features equal the whole-clip ones iff its running maximum is the final one,
  or none of its values lies below final maximum - 8 (then neither threshold clamps anything);
* `ClampMode` "exact" re-encodes the windows this rule marks (the result is the whole-clip result),
  "streaming" keeps the running-maximum features (never re-encodes). Only values below the final
  maximum - 8 (80 dB under the loudest frame: near-silence, empty bands) can differ, each by at most
  (final maximum - running maximum) / 4 in feature units. benchmarks/live_clamp.py measures how far
  apart the modes are; DEFAULT_CLAMP says why streaming is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pocketomni.audio.features import (
    HOP,
    MAX_SAMPLES,
    MAX_SECONDS,
    N_FFT,
    clamp_log_mel,
    clip_peak,
    frames_touching,
    log10_mel_frames,
    n_frames,
)
from pocketomni.errors import MediaError

__all__ = ["CLAMP_MODES", "DEFAULT_CLAMP", "WINDOW_FRAMES", "ClampMode", "LiveLogMel", "Window"]

ClampMode = Literal["exact", "streaming"]
CLAMP_MODES = ("exact", "streaming")
# The default, from benchmarks/results/live_clamp.md (tiny model, 30 clips): `exact` had to redo the turn
# from its first window after the user stopped in 11 of 30 turns (4 of 5 recorded-speech turns, every
# quiet start), which gives back the latency live turns exist for; `streaming` changed the audio
# embeddings by <= 0.7 % (relative L2) and first-token logits by <= 1.4 % on speech at a steady level,
# 15 % / 12 % when the user starts 30 dB quieter than they end, with the same top token in all 30.
DEFAULT_CLAMP: ClampMode = "streaming"
WINDOW_FRAMES = 200  # the encoder's attention window: 2 * n_window mel frames (2 s)
CLAMP_RANGE = 8.0  # log10 units kept below the maximum


@dataclass(frozen=True)
class Window:
    """Window `index` (frames [200 i, 200 i + 200)): its features clamped at `peak` - 8."""

    index: int
    features: np.ndarray  # (128, frames) float32, ready for AudioEncoder.encode
    peak: float  # the maximum its clamp used
    low: float  # its smallest unclamped log10 value (decides whether a larger maximum changes it)

    def valid_for(self, final_peak: float) -> bool:
        """True when clamping at `final_peak` gives these same features."""
        return self.peak == final_peak or self.low >= final_peak - CLAMP_RANGE


class LiveLogMel:
    """Log-mel of a clip fed in pieces: `feed(samples)`, `windows()` (complete ones, once each), `end()`."""

    def __init__(self) -> None:
        self._buf = np.zeros(16000 * 8, np.float32)
        self.n_samples = 0
        self._log = np.zeros((0, 128), np.float64)  # unclamped log10 frames computed so far
        self._peaks: list[float] = []  # running maximum at the end of each complete window
        self._given = 0  # windows handed out by windows()
        self.ended = False

    def feed(self, samples: np.ndarray) -> None:
        """Append mono float32 samples at 16 kHz."""
        if self.ended:
            raise MediaError("this clip has ended; start a new turn for more audio")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise MediaError("audio contains NaN or infinite samples; clean or re-decode the clip")
        if self.n_samples + x.size > MAX_SAMPLES:
            raise MediaError(f"a live turn holds at most {MAX_SECONDS} s of audio; end the turn sooner")
        if self.n_samples + x.size > self._buf.size:
            self._buf = np.resize(self._buf, max(2 * self._buf.size, self.n_samples + x.size))
        self._buf[self.n_samples : self.n_samples + x.size] = x
        self.n_samples += x.size

    @property
    def samples(self) -> np.ndarray:
        """The clip so far (a view)."""
        return self._buf[: self.n_samples]

    def _compute(self, stop: int) -> None:
        """Frames up to `stop` (exclusive) into the log."""
        have = self._log.shape[0]
        if stop > have:
            new = log10_mel_frames(self.samples, have, stop)
            self._log = np.concatenate([self._log, new]) if have else new

    def _window(self, i: int, peak: float, stop: int | None = None) -> Window:
        seg = self._log[i * WINDOW_FRAMES : stop if stop is not None else (i + 1) * WINDOW_FRAMES]
        return Window(i, clamp_log_mel(seg, peak), peak, float(seg.min()))

    def windows(self) -> list[Window]:
        """Windows completed since the last call, clamped at their running maximum."""
        # frame t is final once the clip holds 160 t + 200 samples (no zero padding reaches it)
        final = max((self.n_samples - N_FFT // 2) // HOP + 1, 0) if not self.ended else 0
        n_full = final // WINDOW_FRAMES
        out = []
        while self._given < n_full:
            i = self._given
            self._compute((i + 1) * WINDOW_FRAMES)
            seg = self._log[i * WINDOW_FRAMES : (i + 1) * WINDOW_FRAMES]
            prev = self._peaks[-1] if self._peaks else clip_peak(-np.inf, 0)
            self._peaks.append(max(prev, float(seg.max())))
            out.append(self._window(i, self._peaks[-1]))
            self._given += 1
        return out

    def end(self) -> float:
        """The clip is complete: its final maximum (the reference's clamp maximum). Then `rest(peak)`
        gives the windows not handed out yet (the last one may be partial)."""
        self.ended = True
        n = self.n_samples
        if n < 2 * HOP + 1:
            raise MediaError(f"audio clip too short: {n} samples; the model needs at least {2 * HOP + 1} "
                             "(about 20 ms) for one audio token")
        touch = frames_touching(n)
        self._compute(touch)
        return clip_peak(float(self._log[:touch].max()), touch)

    def rest(self, peak: float) -> list[Window]:
        """After `end()`: the windows not given yet (the last one may be partial), clamped at `peak`."""
        keep = n_frames(self.n_samples)
        out = []
        for i in range(self._given, -(-keep // WINDOW_FRAMES)):
            out.append(self._window(i, peak, min((i + 1) * WINDOW_FRAMES, keep)))
        self._given = -(-keep // WINDOW_FRAMES)
        return out

    def reclamp(self, i: int, peak: float) -> Window:
        """Window i clamped at `peak` (exact mode's repair of a window given too early)."""
        return self._window(i, peak, min((i + 1) * WINDOW_FRAMES, n_frames(self.n_samples)))
