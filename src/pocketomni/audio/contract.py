"""The audio I/O contract every backend meets (sounddevice on desktops, AudioRecord/AudioTrack on
Android). The voice session and the app only use what is written here.

Player (`AudioBackend.open_player`): mono float32 at `sample_rate` (24 kHz, the talker's rate).
  write(samples, timeout) queues a chunk, blocking while `queue_seconds` wait; False (chunk dropped)
    on timeout or after stop(), until resume(): a producer still running after a barge-in cannot
    restart playback.
  finish() ends an utterance; wait(timeout) returns True once the device has played it (or it was
    stopped); play(samples) = resume + write + finish + wait; is_playing.
  stop() is the barge-in: queue dropped, what the device still buffers discarded (not played), the
    output silent when it returns; it returns the seconds it took (the stop latency the session
    reports). resume() accepts writes again. close() releases the device.
  Playback starts once `prebuffer_seconds` are queued (or at finish()); when a slow producer lets
    the queue run dry output pauses until that much is queued again (counted in `underruns`).
    `played_seconds`: audio handed to the device so far.
Recorder (`AudioBackend.open_recorder`): mono float32 blocks of `block_ms` at `sample_rate` (16 kHz,
  the audio encoder's rate), to `on_block` (backend audio thread) and to a queue: read(timeout),
  drain(), record(seconds); start()/stop()/close(); `block` (samples), `overflows`, `started_at`.
Devices: index, name (exact, else unique case-insensitive substring) or None (the default);
  `device` is the AudioDevice opened. No device at all raises FeatureUnavailableError (run text only);
  an unknown one OptionsError. A device that cannot run at `sample_rate` runs at its own rate
  (`device_rate`) and the audio is resampled on the fly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from pocketomni.audio.devices import AudioDevice

__all__ = ["AudioBackend", "AudioPlayer", "AudioRecorder"]


@runtime_checkable
class AudioPlayer(Protocol):
    device: AudioDevice
    sample_rate: int
    device_rate: int
    underruns: int
    played_seconds: float

    def write(self, samples: np.ndarray, timeout: float | None = None) -> bool: ...
    def finish(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def play(self, samples: np.ndarray, timeout: float | None = None) -> bool: ...
    @property
    def is_playing(self) -> bool: ...
    def stop(self) -> float: ...
    def resume(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class AudioRecorder(Protocol):
    device: AudioDevice
    sample_rate: int
    device_rate: int
    block: int
    overflows: int
    started_at: float | None

    @property
    def capturing(self) -> bool: ...
    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def read(self, timeout: float | None = None) -> np.ndarray | None: ...
    def drain(self) -> np.ndarray: ...
    def record(self, seconds: float) -> np.ndarray: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class AudioBackend(Protocol):
    """One platform's audio: its devices, and players and recorders on them."""

    name: str

    def list_devices(self) -> list[AudioDevice]: ...
    def find_device(self, device: int | str | None, kind: Literal["input", "output"]) -> AudioDevice: ...
    def has_input_device(self) -> bool: ...
    def has_output_device(self) -> bool: ...
    def open_player(self, device: int | str | None = None, sample_rate: int = ..., **options: Any) -> AudioPlayer: ...
    def open_recorder(self, device: int | str | None = None, sample_rate: int = ..., *,
                      on_block: Callable[[np.ndarray], None] | None = None, **options: Any) -> AudioRecorder: ...
