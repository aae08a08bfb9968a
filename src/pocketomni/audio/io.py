"""Sound in and out through sounddevice (PortAudio): a streaming `Player`, a `Recorder`, and
`SoundDeviceBackend`, the desktop backend of the audio contract (audio/contract.py; on Android
audio/android_io.py meets the same contract, audio/backend.py picks one per platform).

* `Player` plays float32 mono chunks (24 kHz by default, the talker's rate) as they arrive, from a
  small queue, and can be stopped at once for barge-in: `stop()` drops the queue and aborts the
  stream, which discards what PortAudio and the sound server still hold.
* `Recorder` captures mono float32 blocks (16 kHz by default, the audio encoder's rate) into a queue
  and/or hands them to a callback.
* Devices are chosen by index or name (exact name first, then a unique case-insensitive substring);
  `None` is the system default (see `audio_devices`). A device that cannot run at the wanted rate
  runs at its own and the audio is resampled on the fly (`StreamResampler`).
* No device at all is a normal situation: check `has_output_device()` and run text only; opening a
  `Player` there raises FeatureUnavailableError.

sounddevice is imported lazily; a missing PortAudio library gives an actionable error.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pocketomni.audio.capture import BlockRecorder
from pocketomni.audio.devices import (
    AudioDevice,
    Kind,
    find_device,
    has_input_device,
    has_output_device,
    import_sounddevice,
    list_devices,
    pick_rate,
)
from pocketomni.audio.rates import INPUT_RATE, OUTPUT_RATE
from pocketomni.audio.resample import StreamResampler
from pocketomni.errors import FeatureUnavailableError, OptionsError, PocketOmniError

__all__ = [
    "INPUT_RATE",
    "OUTPUT_RATE",
    "AudioDevice",
    "Player",
    "Recorder",
    "SoundDeviceBackend",
    "StreamResampler",
    "find_device",
    "has_input_device",
    "has_output_device",
    "list_devices",
]



# ---------------------------------------------------------------- playback


class Player:
    """Streams mono float32 audio to an output device.

    `write()` queues chunks (blocking while more than `queue_seconds` wait), `finish()` marks the end
    of an utterance and `wait()` returns once the device has played it; `play()` does all three.
    `stop()` silences the output at once (barge-in) and drops everything queued. Usable as a context
    manager; the stream stays open between utterances.

    `latency` is the device buffer PortAudio keeps filled (seconds, or "low"/"high"). The 0.1 s
    default rides out scheduling hiccups on a busy machine; it does not slow barge-in, because
    `stop()` aborts the stream and the buffered audio is discarded, not played.

    Playback starts once `prebuffer_seconds` are queued (or at `finish()`); when a producer slower
    than real time lets the queue run dry, output pauses until that much is queued again, so a slow
    stream plays as a few clean pauses instead of many clicks (each counted in `underruns`).
    """

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = OUTPUT_RATE,
        *,
        device_rate: int | None = None,
        block_ms: float = 20.0,
        queue_seconds: float = 1.0,
        prebuffer_seconds: float = 0.2,
        latency: str | float = 0.1,
    ) -> None:
        if sample_rate <= 0 or block_ms <= 0 or queue_seconds <= 0:
            raise OptionsError("sample_rate, block_ms and queue_seconds must be positive")
        if not 0 <= prebuffer_seconds < queue_seconds:
            raise OptionsError("prebuffer_seconds must be at least 0 and less than queue_seconds")
        sd = import_sounddevice()
        self._sd = sd
        self.device = find_device(device, "output")
        self.sample_rate = int(sample_rate)
        self.device_rate = (
            int(device_rate) if device_rate else pick_rate(sd, self.device, "output", self.sample_rate, 1)
        )
        self._resampler = StreamResampler(self.sample_rate, self.device_rate)
        self._queue_limit = int(queue_seconds * self.device_rate)
        self._prebuffer = int(prebuffer_seconds * self.device_rate)
        self._buffering = True  # holding output until _prebuffer samples are queued
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._queued = 0  # device-rate samples waiting in _chunks
        self._offset = 0  # samples of _chunks[0] already played
        self._lock = threading.Condition()
        self._ending = False  # finish() called: stop the stream when the queue runs dry
        self._stopped = False  # stop() called: drop writes until resume()
        self._end_time = 0.0  # time.monotonic() at which the last sample written will have played
        self._cb_stopped = False  # the callback ended the stream (restart it for the next write)
        self._done = threading.Event()
        self._done.set()
        self.underruns = 0  # callbacks that found the queue empty mid-utterance
        self.played_seconds = 0.0  # audio handed to the device so far
        try:
            self._stream = sd.OutputStream(
                device=self.device.index,
                samplerate=self.device_rate,
                channels=1,
                dtype="float32",
                blocksize=max(1, int(self.device_rate * block_ms / 1000)),
                latency=latency,
                callback=self._callback,
                finished_callback=self._finished,
            )
        except Exception as exc:
            raise FeatureUnavailableError(
                f"cannot open output device {self.device.name!r} at {self.device_rate} Hz ({exc}); "
                "pick another device (pocketomni.audio.io.list_devices())"
            ) from exc

    # -- audio thread
    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            if self._buffering and (self._ending or self._queued >= self._prebuffer):
                self._buffering = False
            while not self._buffering and filled < frames and self._chunks:
                head = self._chunks[0]
                n = min(frames - filled, head.size - self._offset)
                out[filled : filled + n] = head[self._offset : self._offset + n]
                filled += n
                self._offset += n
                if self._offset == head.size:
                    self._chunks.popleft()
                    self._offset = 0
            self._queued -= filled
            ending = self._ending and not self._chunks
            if filled < frames and not ending and not self._buffering:
                self.underruns += 1
                self._buffering = True
            self._lock.notify_all()
        out[filled:] = 0.0
        self.played_seconds += filled / self.device_rate
        if filled:  # when the last real sample will leave the device, on the monotonic clock
            ahead = time_info.outputBufferDacTime - time_info.currentTime
            self._end_time = time.monotonic() + max(0.0, ahead) + filled / self.device_rate
        if ending and time.monotonic() >= self._end_time:
            # The last sample has been played; the device holds only silence now. (Stopping right
            # after the last block instead loses what the device still buffers on some hosts.)
            with self._lock:
                if self._ending and not self._chunks:
                    self._buffering = True  # the next utterance prebuffers again
                    self._cb_stopped = True
                    self._done.set()
                    raise self._sd.CallbackStop

    def _finished(self) -> None:
        with self._lock:  # a write may already have started the next utterance
            if not self._chunks:
                self._done.set()

    # -- caller thread
    def _ensure_running(self) -> None:
        if self._stream.active and not self._cb_stopped:
            return
        if not self._stream.stopped:
            self._stream.stop()  # after CallbackStop the stream is inactive but not stopped
        self._cb_stopped = False
        self._stream.start()

    def write(self, samples: np.ndarray, timeout: float | None = None) -> bool:
        """Queue a chunk of mono float32 samples at `sample_rate`; blocks while the queue is full.
        Returns False, dropping the chunk, when `timeout` ran out or after `stop()` (until `resume()`),
        so a producer still running after a barge-in cannot restart playback."""
        if self._stopped:
            return False
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        y = self._resampler.push(x)
        return self._enqueue(y, timeout)

    def _enqueue(self, y: np.ndarray, timeout: float | None) -> bool:
        with self._lock:
            if self._stream.closed:
                raise PocketOmniError("the Player is closed; open a new one")
            ok = self._lock.wait_for(lambda: self._stopped or self._queued < self._queue_limit, timeout)
            if not ok or self._stopped:
                return False
            if y.size:
                self._chunks.append(np.ascontiguousarray(y, dtype=np.float32))
                self._queued += y.size
            self._ending = False
            self._done.clear()
            start = self._queued >= self._prebuffer
        if start:
            self._ensure_running()
        return True

    def finish(self) -> None:
        """No more audio in this utterance: playback ends (and `wait()` returns) when it has played."""
        if self._stopped:
            return
        tail = self._resampler.flush()
        self._enqueue(tail, None)
        with self._lock:
            self._ending = True
            if not self._chunks and not self._stream.active:
                self._done.set()  # nothing was written
                return
        self._ensure_running()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the finished utterance has been played (or stopped); False on timeout.

        "Played" uses the DAC time PortAudio reports for the last sample, not the moment the last
        block was handed over: the device still holds about `latency` seconds at that point."""
        return self._done.wait(timeout)

    def play(self, samples: np.ndarray, timeout: float | None = None) -> bool:
        """Play a whole clip (resuming after a `stop()`) and wait until the device has played it."""
        self.resume()
        self.write(samples)
        self.finish()
        return self.wait(timeout)

    @property
    def is_playing(self) -> bool:
        """True from the first write of an utterance until it has played or been stopped."""
        return not self._stopped and not self._done.is_set()

    def stop(self) -> float:
        """Barge-in: drop the queue and discard what the device still holds; later writes are dropped
        until `resume()`. Returns the seconds the call took (the output is silent once it returns)."""
        t0 = time.perf_counter()
        with self._lock:
            self._stopped = True
            self._buffering = True
            self._chunks.clear()
            self._queued = self._offset = 0
            self._ending = False
            self._resampler = StreamResampler(self.sample_rate, self.device_rate)
            self._lock.notify_all()
        if not self._stream.closed and not self._stream.stopped:
            self._stream.abort()
        self._done.set()
        return time.perf_counter() - t0

    def resume(self) -> None:
        """Accept writes again after `stop()` (the next utterance)."""
        with self._lock:
            self._stopped = False
            self._end_time = 0.0

    def close(self) -> None:
        """Stop and release the device."""
        if not self._stream.closed:
            self.stop()
            self._stream.close()

    def __enter__(self) -> Player:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- capture


class Recorder(BlockRecorder):
    """Captures mono float32 blocks of `block_ms` at `sample_rate` from an input device.

    Blocks go to a queue (`read()`, iteration) and, when given, to `on_block(block)`, which runs on
    the audio thread and must return quickly. When the consumer falls behind by more than
    `queue_seconds` the oldest blocks are dropped (counted in `overflows`).
    """

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = INPUT_RATE,
        *,
        device_rate: int | None = None,
        block_ms: float = 20.0,
        on_block: Callable[[np.ndarray], None] | None = None,
        queue_seconds: float = 10.0,
        latency: str | float = "low",
    ) -> None:
        if sample_rate <= 0:
            raise OptionsError("sample_rate, block_ms and queue_seconds must be positive")
        sd = import_sounddevice()
        self.device = find_device(device, "input")
        rate = int(device_rate) if device_rate else pick_rate(sd, self.device, "input", int(sample_rate), 1)
        super().__init__(sample_rate, rate, block_ms=block_ms, on_block=on_block, queue_seconds=queue_seconds)
        try:
            self._stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.device_rate,
                channels=1,
                dtype="float32",
                blocksize=max(1, int(round(self.device_rate * block_ms / 1000))),
                latency=latency,
                callback=self._callback,
            )
        except Exception as exc:
            raise FeatureUnavailableError(
                f"cannot open input device {self.device.name!r} at {self.device_rate} Hz ({exc}); "
                "pick another device (pocketomni.audio.io.list_devices())"
            ) from exc

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self._deliver(indata[:, 0], bool(status and status.input_overflow))

    @property
    def capturing(self) -> bool:
        return not self._stream.stopped

    def start(self) -> Recorder:
        """Start capturing."""
        self._stream.start()
        return self

    def stop(self) -> None:
        """Stop capturing (blocks already captured stay readable)."""
        if not self._stream.closed and not self._stream.stopped:
            self._stream.stop()

    def close(self) -> None:
        """Stop and release the device."""
        if not self._stream.closed:
            self.stop()
            self._stream.close()

    def __enter__(self) -> Recorder:
        return self.start()


# ---------------------------------------------------------------- the backend


class SoundDeviceBackend:
    """The desktop backend (Linux, macOS, Windows): PortAudio through sounddevice."""

    name = "sounddevice"

    def list_devices(self) -> list[AudioDevice]:
        return list_devices()

    def find_device(self, device: int | str | None, kind: Kind) -> AudioDevice:
        return find_device(device, kind)

    def has_input_device(self) -> bool:
        return has_input_device()

    def has_output_device(self) -> bool:
        return has_output_device()

    def open_player(self, device: int | str | None = None, sample_rate: int = OUTPUT_RATE,
                    **options: Any) -> Player:
        return Player(device, sample_rate, **options)

    def open_recorder(self, device: int | str | None = None, sample_rate: int = INPUT_RATE, *,
                      on_block: Callable[[np.ndarray], None] | None = None, **options: Any) -> Recorder:
        return Recorder(device, sample_rate, on_block=on_block, **options)
