"""Voice-activity detection in numpy: finds where the user starts speaking and where the turn ends.

Why numpy and not a packaged model (e.g. silero-vad's ONNX file):
* silero needs onnxruntime (a 6-15 MB wheel per platform, none for python-for-android, so the phone
  app would lose hands-free mode) plus a ~2 MB model file; this detector needs nothing beyond numpy.
* It costs about 0.3 ms of (mostly interpreter) time per 20 ms frame, 1-2 % of one core, so it can
  run beside generation without stealing the model's cores; it is deterministic and starts instantly.
* What it gives up: it tells *signal above a tracked noise floor* from noise, not speech from other
  sounds. Steady noise (fans, hum, road noise, hiss) does not trigger it; a door slam, music or a TV
  will, and so does the onset of a new steady noise, for at most `noise_window_ms` until the floor
  has caught up. For end-of-turn detection with a person close to the microphone that is enough; a
  caller who needs more can pass any object with the same `feed()`/`flush()` API to the voice session.

How it works, per 20 ms frame (16 kHz):
1. Hann window, 512-point FFT, energies in seven bands from 250 to 7500 Hz (formants up to 4 kHz,
   fricatives above; hum and rumble below 250 Hz are ignored).
2. Noise floor per band: the minimum over the last `noise_window_ms` of a recursive average of the
   band energy (minimum statistics). It follows a falling noise level at once and a rising one
   within the window; speech does not raise it because speech has gaps in every band.
3. Frame score: mean SNR (dB over the floor) of the three strongest bands, on energies averaged over
   two frames. A frame is active when the score passes `start_snr_db` (or `keep_snr_db` once speech
   is under way: hysteresis) and the frame is louder than `min_level_dbfs`. Steady white, pink and
   hum noise scores below 7 dB (measured over 90 s of noise), hence the 9 / 6 dB defaults.
4. speech_start once `min_speech_ms` of active frames accumulate (pauses up to 100 ms allowed), dated
   at the first of them; speech_end after `end_silence_ms` without two active frames in a row (a lone
   noise blip does not hold the turn open), dated at the end of the last active frame, carrying the
   utterance audio (with `pre_roll_ms` before and `post_roll_ms` after).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from pocketomni.audio.rates import INPUT_RATE
from pocketomni.errors import OptionsError

__all__ = ["VadConfig", "VadEvent", "VoiceActivityDetector", "detect_speech"]

_BAND_EDGES_HZ = (250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 7500.0)
_N_FFT = 512
_TOP_BANDS = 3
_FLOOR_SMOOTH = 0.3  # weight of the new frame in the average the noise floor is taken from
_MAX_GAP_MS = 100.0  # pauses tolerated while speech_start is pending (stop closures, short words)
_EPS = 1e-12


@dataclass(frozen=True)
class VadConfig:
    """Detector settings; times in milliseconds, levels in dB."""

    sample_rate: int = INPUT_RATE
    frame_ms: float = 20.0
    min_speech_ms: float = 120.0  # active audio needed before speech_start
    end_silence_ms: float = 700.0  # silence that ends the turn
    start_snr_db: float = 9.0  # frame score to start speech
    keep_snr_db: float = 6.0  # frame score that keeps speech going
    noise_window_ms: float = 1500.0  # minimum-statistics window of the noise floor
    min_level_dbfs: float = -65.0  # quieter frames never count as speech (RMS; full-scale sine = -3)
    pre_roll_ms: float = 300.0  # audio kept before the detected start
    post_roll_ms: float = 100.0  # audio kept after the detected end
    max_utterance_s: float = 60.0  # a turn longer than this is ended (and a new one may start)

    def __post_init__(self) -> None:
        if self.sample_rate < 8000:
            raise OptionsError(
                f"VAD sample_rate must be at least 8000 Hz (band edges reach 4 kHz), got {self.sample_rate}"
            )
        if not 5.0 <= self.frame_ms <= 32.0:
            raise OptionsError(
                f"VAD frame_ms must be in 5..32 (the FFT is {_N_FFT} points), got {self.frame_ms}"
            )
        if self.sample_rate * self.frame_ms / 1000 > _N_FFT:
            raise OptionsError(
                f"VAD frame of {self.frame_ms} ms at {self.sample_rate} Hz exceeds {_N_FFT} samples"
            )
        for name in ("min_speech_ms", "end_silence_ms", "noise_window_ms", "max_utterance_s"):
            if getattr(self, name) <= 0:
                raise OptionsError(f"VAD {name} must be positive, got {getattr(self, name)}")
        for name in ("pre_roll_ms", "post_roll_ms"):
            if getattr(self, name) < 0:
                raise OptionsError(f"VAD {name} must not be negative, got {getattr(self, name)}")
        if self.keep_snr_db > self.start_snr_db:
            raise OptionsError(
                "VAD keep_snr_db must not exceed start_snr_db (it is the lower, hysteresis threshold)"
            )


@dataclass(frozen=True)
class VadEvent:
    """A detected boundary. `time` is seconds from the first sample fed; `audio` (speech_end only)
    is the utterance, mono float32 at the detector's sample rate."""

    kind: Literal["speech_start", "speech_end"]
    time: float
    audio: np.ndarray | None = None


class VoiceActivityDetector:
    """Streaming detector: `feed()` blocks of any length, get `VadEvent`s back."""

    def __init__(self, config: VadConfig | None = None, **overrides: float) -> None:
        known = {f.name for f in fields(VadConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise OptionsError(f"unknown VAD option(s) {sorted(unknown)}; known: {sorted(known)}")
        base = config or VadConfig()
        self.config = VadConfig(**{**{f.name: getattr(base, f.name) for f in fields(VadConfig)}, **overrides})
        c = self.config
        self.frame = int(round(c.sample_rate * c.frame_ms / 1000))
        self._window = np.hanning(self.frame).astype(np.float32)
        freqs = np.fft.rfftfreq(_N_FFT, 1.0 / c.sample_rate)
        lo, hi = np.array(_BAND_EDGES_HZ[:-1]), np.array(_BAND_EDGES_HZ[1:])
        self._bands = ((freqs[None, :] >= lo[:, None]) & (freqs[None, :] < hi[:, None])).astype(np.float32)
        self._floor_len = max(1, int(round(c.noise_window_ms / c.frame_ms)))
        self._to_frames = lambda ms: max(1, int(round(ms / c.frame_ms)))
        self._max_gap = self._to_frames(_MAX_GAP_MS)
        self.reset()

    def reset(self) -> None:
        """Forget everything (noise floor included)."""
        c = self.config
        self._pending = np.zeros(0, dtype=np.float32)
        self._n_frames = 0
        self._prev: np.ndarray | None = None  # band energies of the previous frame
        self._slow: np.ndarray | None = None  # recursive average the noise floor is taken from
        self._history = np.zeros((self._floor_len, len(_BAND_EDGES_HZ) - 1), dtype=np.float64)
        self._filled = 0
        self.in_speech = False
        self.last_score = 0.0  # dB, for meters and debugging
        self._run_start = -1  # first active frame of a pending start
        self._run_active = 0
        self._run_gap = 0
        self._last_active = -1  # last active frame inside speech
        self._prev_active = False
        self._speech_start = 0
        pre = self._to_frames(c.pre_roll_ms) if c.pre_roll_ms > 0 else 0
        self._recent: collections.deque[np.ndarray] = collections.deque(
            maxlen=pre + 2 * self._to_frames(c.min_speech_ms) + self._max_gap + 4
        )
        self._utterance: list[np.ndarray] = []
        self._utt_first = 0  # frame index of _utterance[0]
        self._taken = 0  # frames of _utterance handed out by take_audio()

    @property
    def noise_floor_db(self) -> float:
        """Current noise floor, dB (summed over the bands); -inf before any frame."""
        if self._filled == 0:
            return float("-inf")
        floor = self._history[: self._filled].min(axis=0)
        return float(10 * np.log10(floor.sum() + _EPS))

    def _score(self, frame: np.ndarray) -> tuple[float, bool]:
        """Frame SNR score in dB and whether the frame is loud enough to be speech at all."""
        spec = np.fft.rfft(frame * self._window, _N_FFT)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        energy = (self._bands @ power).astype(np.float64) + _EPS
        # two-frame average: halves the spread of noise frames, and unlike a recursive smoother it
        # lets a loud frame go after one frame (no drawn-out turn ends)
        smooth = energy if self._prev is None else 0.5 * (energy + self._prev)
        self._prev = energy
        # the floor tracks a slower average: its minimum sits closer to the mean noise level
        w = max(_FLOOR_SMOOTH, 1.0 / (self._n_frames + 1))  # a plain running mean while warming up
        self._slow = energy if self._slow is None else (1 - w) * self._slow + w * energy
        self._history[self._n_frames % self._floor_len] = self._slow
        self._filled = min(self._filled + 1, self._floor_len)
        floor = self._history[: self._filled].min(axis=0)
        snr = 10 * np.log10(smooth / floor)
        score = float(np.mean(np.sort(snr)[-_TOP_BANDS:]))
        level = 10 * np.log10(float(np.mean(frame.astype(np.float64) ** 2)) + _EPS)
        return score, level >= self.config.min_level_dbfs

    def _time(self, frame_index: int) -> float:
        return frame_index * self.frame / self.config.sample_rate

    def _end(self, i: int) -> VadEvent:
        """Close the utterance whose last active frame is `_last_active`."""
        c = self.config
        post = self._to_frames(c.post_roll_ms) if c.post_roll_ms > 0 else 0
        stop = min(self._last_active + 1 + post, self._utt_first + len(self._utterance))
        audio = np.concatenate(self._utterance[: stop - self._utt_first])
        ev = VadEvent("speech_end", self._time(self._last_active + 1), audio)
        self.in_speech = False
        self._utterance = []
        self._taken = 0
        self._run_start, self._run_active, self._run_gap = -1, 0, 0
        return ev

    def _step(self, frame: np.ndarray) -> list[VadEvent]:
        c = self.config
        i = self._n_frames
        score, loud = self._score(frame)
        self._n_frames += 1
        self.last_score = score
        self._recent.append(frame)
        events: list[VadEvent] = []
        if self.in_speech:
            self._utterance.append(frame)
            active = loud and score >= c.keep_snr_db
            if active and self._prev_active:  # a lone noise blip does not hold the turn open
                self._last_active = i
            self._prev_active = active
            if i - self._last_active >= self._to_frames(c.end_silence_ms):
                events.append(self._end(i))
            elif (i + 1 - self._speech_start) * c.frame_ms >= c.max_utterance_s * 1000:
                self._last_active = i
                events.append(self._end(i))
            return events
        if loud and score >= (c.start_snr_db if self._run_active == 0 else c.keep_snr_db):
            if self._run_start < 0:
                self._run_start = i
            self._run_active += 1
            self._run_gap = 0
        elif self._run_start >= 0:
            self._run_gap += 1
            if self._run_gap > self._max_gap:
                self._run_start, self._run_active, self._run_gap = -1, 0, 0
        if self._run_active >= self._to_frames(c.min_speech_ms):
            self.in_speech = True
            self._speech_start = self._run_start
            self._last_active = i
            self._prev_active = True
            pre = self._to_frames(c.pre_roll_ms) if c.pre_roll_ms > 0 else 0
            first = max(0, self._run_start - pre, i + 1 - len(self._recent))
            self._utterance = list(self._recent)[first - (i + 1 - len(self._recent)) :]
            self._utt_first = first
            self._taken = 0
            events.append(VadEvent("speech_start", self._time(self._run_start)))
        return events

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Process mono float32 samples at `config.sample_rate`; returns the events they completed."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = buf.size // self.frame
        events: list[VadEvent] = []
        for k in range(n):
            events.extend(self._step(buf[k * self.frame : (k + 1) * self.frame]))
        self._pending = buf[n * self.frame :].copy()
        return events

    def take_audio(self) -> np.ndarray:
        """While speech is under way: the utterance's samples not taken yet that are sure to be in its
        speech_end audio (up to the post-roll after the last active frame). Their concatenation is a
        prefix of that audio, so a listener can start on the turn before it ends."""
        if not self.in_speech:
            return np.zeros(0, np.float32)
        c = self.config
        post = self._to_frames(c.post_roll_ms) if c.post_roll_ms > 0 else 0
        sure = min(self._last_active + 1 + post, self._utt_first + len(self._utterance)) - self._utt_first
        if sure <= self._taken:
            return np.zeros(0, np.float32)
        out = np.concatenate(self._utterance[self._taken : sure])
        self._taken = sure
        return out

    def flush(self) -> list[VadEvent]:
        """End of input: closes an utterance still open."""
        if not self.in_speech:
            return []
        return [self._end(self._n_frames)]


def detect_speech(
    samples: np.ndarray, config: VadConfig | None = None, **overrides: float
) -> list[tuple[float, float]]:
    """(start, end) seconds of every utterance in a whole clip."""
    vad = VoiceActivityDetector(config, **overrides)
    events = vad.feed(samples) + vad.flush()
    starts = [e.time for e in events if e.kind == "speech_start"]
    ends = [e.time for e in events if e.kind == "speech_end"]
    return list(zip(starts, ends))
