"""What every capture backend shares: device-rate audio in, fixed blocks at the wanted rate out.

`BlockRecorder` resamples what the device delivers (`StreamResampler`), cuts it into blocks of
`block_ms`, hands each block to `on_block` (on the backend's audio thread) and to a bounded queue
(`read()`, `drain()`, `record()`). A backend subclasses it, feeds `_deliver()` from its audio thread
and implements `start()`, `stop()`, `close()` and `capturing`.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pocketomni.audio.resample import StreamResampler
from pocketomni.errors import FeatureUnavailableError, OptionsError

__all__ = ["BlockRecorder"]


class BlockRecorder:
    """Mono float32 blocks of `block_ms` at `sample_rate`, from a device running at `device_rate`.

    When the consumer falls behind by more than `queue_seconds` the oldest blocks are dropped
    (counted in `overflows`, with the device's own overruns).
    """

    device: Any  # the backend's AudioDevice (has .name)

    def __init__(self, sample_rate: int, device_rate: int, *, block_ms: float,
                 on_block: Callable[[np.ndarray], None] | None, queue_seconds: float) -> None:
        if sample_rate <= 0 or device_rate <= 0 or block_ms <= 0 or queue_seconds <= 0:
            raise OptionsError("sample_rate, block_ms and queue_seconds must be positive")
        self.sample_rate = int(sample_rate)
        self.device_rate = int(device_rate)
        self.block = max(1, int(round(self.sample_rate * block_ms / 1000)))
        self._resampler = StreamResampler(self.device_rate, self.sample_rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self._blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(1, int(queue_seconds * 1000 / block_ms)))
        self._on_block = on_block
        self.overflows = 0  # blocks dropped (consumer too slow) plus device-side overruns
        self.started_at: float | None = None  # time.monotonic() of the first captured sample

    # -- audio thread
    def _deliver(self, samples: np.ndarray, device_overrun: bool = False) -> None:
        """Take mono float32 samples at device_rate (called by the backend's audio thread)."""
        if self.started_at is None:
            self.started_at = time.monotonic() - samples.size / self.device_rate
        if device_overrun:
            self.overflows += 1
        y = self._resampler.push(samples)
        buf = np.concatenate([self._pending, y]) if self._pending.size else y
        n = buf.size // self.block * self.block
        for i in range(0, n, self.block):
            blk = buf[i : i + self.block].copy()
            if self._on_block is not None:
                self._on_block(blk)
            try:
                self._blocks.put_nowait(blk)
            except queue.Full:
                self.overflows += 1
                try:
                    self._blocks.get_nowait()
                except queue.Empty:
                    pass
                self._blocks.put_nowait(blk)
        self._pending = buf[n:].copy()

    # -- backend
    @property
    def capturing(self) -> bool:
        """True while the device is capturing."""
        raise NotImplementedError

    def start(self) -> BlockRecorder:
        """Start capturing."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop capturing (blocks already captured stay readable)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop and release the device."""
        raise NotImplementedError

    # -- consumer
    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next block, or None when none arrived within `timeout` seconds."""
        try:
            return self._blocks.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> np.ndarray:
        """All blocks captured and not yet read, joined."""
        parts = []
        while True:
            try:
                parts.append(self._blocks.get_nowait())
            except queue.Empty:
                break
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def record(self, seconds: float) -> np.ndarray:
        """Capture `seconds` of audio (starting the stream if needed) and return it."""
        n = int(round(seconds * self.sample_rate))
        if not self.capturing:
            self.start()
        parts, got = [], 0
        deadline = time.monotonic() + seconds + 5.0
        while got < n and time.monotonic() < deadline:
            blk = self.read(timeout=0.5)
            if blk is not None:
                parts.append(blk)
                got += blk.size
        if got < n:
            raise FeatureUnavailableError(
                f"the input device {self.device.name!r} delivered {got} of {n} samples; "
                "it may be in use or stalled"
            )
        return np.concatenate(parts)[:n]

    def __enter__(self) -> BlockRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
