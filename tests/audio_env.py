"""Helpers for tests on real audio devices (PulseAudio null sinks started by scripts/services.sh).

Devices (see scripts/services.sh): the speaker sink `pocketomni_speaker` (its `.monitor` records what
was played), the sink `pocketomni_mic_in` that tests play into, and `pocketomni_mic`, its monitor
remapped as a microphone. Speech comes from espeak-ng; playback into / capture from the sinks uses
PulseAudio's own pacat/parec, independent of the SDK code under test.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

SPEAKER = "pocketomni_speaker"
SPEAKER_MONITOR = "pocketomni_speaker.monitor"
MIC_SINK = "pocketomni_mic_in"
MIC = "pocketomni_mic"

_FIX = "run `source scripts/services.sh` first (scripts/test.sh does), after `bash scripts/system_deps.sh`"


def require_audio() -> None:
    """Skip when POCKETOMNI_SKIP_AUDIO=1; otherwise fail with the reason when the devices are missing."""
    if os.environ.get("POCKETOMNI_SKIP_AUDIO") == "1":
        pytest.skip("POCKETOMNI_SKIP_AUDIO=1: tests on real audio devices are skipped")
    for tool in ("pactl", "parec", "pacat", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: {_FIX}")
    if not os.environ.get("PULSE_SERVER"):
        pytest.fail(f"PULSE_SERVER is not set: {_FIX}")
    try:
        out = subprocess.run(
            ["pactl", "list", "short", "sources"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pactl timed out: PulseAudio at {os.environ['PULSE_SERVER']} does not answer; {_FIX}")
    if out.returncode != 0:
        pytest.fail(f"PulseAudio is not reachable ({out.stderr.strip()}); {_FIX}")
    names = {line.split("\t")[1] for line in out.stdout.splitlines() if "\t" in line}
    missing = {SPEAKER_MONITOR, MIC} - names
    if missing:
        pytest.fail(f"PulseAudio lacks {sorted(missing)}; {_FIX}")


@pytest.fixture
def audio_devices() -> None:
    """Fixture form of require_audio()."""
    require_audio()


# ---------------------------------------------------------------- signals


@functools.lru_cache(maxsize=16)
def _espeak_cached(text: str, rate: int, voice: str, wpm: int) -> np.ndarray:
    from pocketomni.media.audio import decode_audio, resample, to_mono

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text],
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        frames, src_rate = decode_audio(wav.read_bytes())
    return resample(to_mono(frames), src_rate, rate)


def espeak(text: str, rate: int, voice: str = "en-us", wpm: int = 150) -> np.ndarray:
    """Speech made by espeak-ng, mono float32 at `rate`."""
    return _espeak_cached(text, rate, voice, wpm).copy()


def tone(freq: float, seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    """A sine with 5 ms raised-cosine edges."""
    t = np.arange(int(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    ramp = int(0.005 * rate)
    w = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    x[:ramp] *= w
    x[-ramp:] *= w[::-1]
    return x.astype(np.float32)


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), dtype=np.float32)


def pink_noise(seconds: float, rate: int, rms: float, seed: int = 0) -> np.ndarray:
    """Steady 1/f noise of the given RMS (shaped in the frequency domain)."""
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spec /= np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, n)
    return (x * rms / np.sqrt(np.mean(x**2))).astype(np.float32)


# ---------------------------------------------------------------- PulseAudio tools


class Parec:
    """Records a PulseAudio source with parec (float32 mono at `rate`) in a background thread and
    estimates when each sample was captured (time.monotonic clock)."""

    def __init__(self, source: str, rate: int) -> None:
        self.rate = rate
        self._parts: list[bytes] = []
        self._arrivals: list[tuple[float, int]] = []  # (arrival time, bytes received so far)
        self._proc = subprocess.Popen(
            [
                "parec",
                f"--device={source}",
                "--raw",
                "--format=float32le",
                f"--rate={rate}",
                "--channels=1",
                "--latency-msec=10",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fd = self._proc.stdout.fileno()  # type: ignore[union-attr]
        total = 0
        while True:
            b = os.read(fd, 4096)
            if not b:
                break
            total += len(b)
            self._parts.append(b)
            self._arrivals.append((time.monotonic(), total))

    def wait_for_data(self, timeout: float = 5.0) -> None:
        """Return once samples flow (parec is connected)."""
        deadline = time.monotonic() + timeout
        while not self._arrivals:
            if time.monotonic() > deadline or self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.poll() is not None else ""  # type: ignore[union-attr]
                raise RuntimeError(f"parec delivered nothing: {err}")
            time.sleep(0.01)

    def stop(self) -> np.ndarray:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)
        data = b"".join(self._parts)
        return np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4").astype(np.float32)

    def time_of(self, index: int) -> float:
        """Upper-bound estimate of the monotonic time at which sample `index` was captured: every
        chunk arrives after its last sample was captured, so the tightest bound wins."""
        t0 = min(t - (n // 4) / self.rate for t, n in self._arrivals)
        return t0 + index / self.rate

    def __enter__(self) -> Parec:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self.stop()


def pacat_play(
    samples: np.ndarray, rate: int, sink: str = MIC_SINK, timeout: float = 60.0
) -> subprocess.Popen:
    """Start playing float32 mono samples into a sink with pacat; returns the process (wait() on it)."""
    proc = subprocess.Popen(
        [
            "pacat",
            "--playback",
            f"--device={sink}",
            "--raw",
            "--format=float32le",
            f"--rate={rate}",
            "--channels=1",
            "--latency-msec=200",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    data = np.asarray(samples, dtype="<f4").tobytes()

    def feed() -> None:
        try:
            proc.stdin.write(data)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    return proc


# ---------------------------------------------------------------- analysis


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c[k] = sum_i a[i] * b[i + k] for k = 0 .. len(b) - len(a)."""
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    c = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    return c[: len(b) - len(a) + 1]


def _fractional_shift(x: np.ndarray, delta: float) -> np.ndarray:
    """x(t + delta) by a frequency-domain phase shift (circular; the edges are near silence here)."""
    n = len(x)
    f = np.fft.rfftfreq(n)
    return np.fft.irfft(np.fft.rfft(x) * np.exp(2j * np.pi * f * delta), n)


def align(sent: np.ndarray, recorded: np.ndarray) -> tuple[float, float]:
    """Find `sent` in `recorded`: (normalized cross-correlation after sub-sample alignment, lag in
    samples of recorded). NCC = <s, r> / (|s| |r|) over the aligned span of len(sent)."""
    s = np.asarray(sent, dtype=np.float64)
    r = np.asarray(recorded, dtype=np.float64)
    if len(r) < len(s):
        raise AssertionError(f"recording ({len(r)} samples) is shorter than the signal sent ({len(s)})")
    # The lag is where the *normalized* correlation peaks: the raw one favours loud passages, and a short
    # snippet of the tiny model's repetitive speech half-matches louder ones later in the recording.
    raw = _xcorr(s, r)
    e = np.concatenate([[0.0], np.cumsum(r * r)])
    energy = e[len(s) :] - e[: len(r) - len(s) + 1]  # |r[k : k + len(s)]|^2 per lag k
    c = np.where(energy > 1e-9 * energy.max(), raw / np.sqrt(np.maximum(energy, 1e-30)), 0.0)
    k = int(np.argmax(c))
    frac = 0.0
    if 0 < k < len(c) - 1:  # parabolic peak refinement
        y0, y1, y2 = c[k - 1], c[k], c[k + 1]
        den = y0 - 2 * y1 + y2
        frac = float(0.5 * (y0 - y2) / den) if den != 0 else 0.0
    lo, hi = max(0, k - 64), min(len(r), k + len(s) + 64)
    seg = _fractional_shift(r[lo:hi], frac)[k - lo : k - lo + len(s)]
    ncc = float(np.dot(s, seg) / (np.linalg.norm(s) * np.linalg.norm(seg) + 1e-30))
    return ncc, k + frac


def last_loud_index(x: np.ndarray, rate: int, threshold: float, frame_ms: float = 2.0) -> int:
    """Index just past the last `frame_ms` frame whose RMS exceeds `threshold` (0 if none)."""
    f = max(1, int(rate * frame_ms / 1000))
    n = len(x) // f
    rms = np.sqrt(np.mean(np.asarray(x[: n * f], dtype=np.float64).reshape(n, f) ** 2, axis=1))
    loud = np.nonzero(rms > threshold)[0]
    return int((loud[-1] + 1) * f) if loud.size else 0


def first_loud_index(x: np.ndarray, rate: int, threshold: float, frame_ms: float = 2.0) -> int:
    """Index of the first `frame_ms` frame whose RMS exceeds `threshold` (-1 if none)."""
    f = max(1, int(rate * frame_ms / 1000))
    n = len(x) // f
    rms = np.sqrt(np.mean(np.asarray(x[: n * f], dtype=np.float64).reshape(n, f) ** 2, axis=1))
    loud = np.nonzero(rms > threshold)[0]
    return int(loud[0] * f) if loud.size else -1
