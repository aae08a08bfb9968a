"""Sound in and out on Android: `android.media.AudioRecord` / `AudioTrack` through pyjnius, behind the
audio contract (audio/contract.py). There is no PortAudio on Android; Kivy apps reach the platform's
audio this way (kivy/audiostream does the same in Java).

* Capture: 16 kHz mono 16-bit PCM from the `VOICE_COMMUNICATION` source, so the platform's echo
  canceller and noise suppressor run where the device has them (they are also switched on
  explicitly through `android.media.audiofx` when available: `AndroidRecorder.effects`). The
  RECORD_AUDIO permission is requested at run time (p4a's `android.permissions`) before the first
  recorder opens; a refusal raises FeatureUnavailableError (the app then takes typed turns).
* Playback: 24 kHz mono 16-bit PCM on the media stream (the loudspeaker or headphones; the voice-call
  stream would route to the earpiece), written without blocking so that `stop()` never waits
  behind a write: barge-in is `pause()` + `flush()`, which discards what the track still holds.
* Devices: "default" (index 0, the route Android picks) plus the routes `AudioManager.getDevices`
  lists (index = AudioDeviceInfo id); a chosen route is set with `setPreferredDevice`.
* Threads: every Java call runs on one thread the player or recorder owns, which detaches from the
  JVM when it ends (a thread that exits attached aborts the app on Android). The caller's threads
  (the voice session's, asyncio's workers) never touch Java.

pyjnius is imported lazily (`import_jnius`); tests inject a stand-in `jnius` module.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from pocketomni.audio.capture import BlockRecorder
from pocketomni.audio.devices import AudioDevice, Kind, match_device
from pocketomni.audio.rates import INPUT_RATE, OUTPUT_RATE
from pocketomni.audio.resample import StreamResampler
from pocketomni.errors import FeatureUnavailableError, OptionsError, PocketOmniError

__all__ = ["AndroidBackend", "AndroidPlayer", "AndroidRecorder", "import_jnius", "request_record_permission"]

T = TypeVar("T")
PERMISSION_TIMEOUT = 120.0  # seconds the user has to answer the RECORD_AUDIO dialog
CAPTURE_RATES = (48000, 44100)  # tried when the wanted capture rate is refused (44.1 kHz always works)
DEFAULT_NAME = "default"
# AudioDeviceInfo.getType() values worth naming (android.media.AudioDeviceInfo.TYPE_*)
DEVICE_TYPES = {1: "earpiece", 2: "speaker", 3: "wired headset", 4: "wired headphones", 7: "bluetooth sco",
                8: "bluetooth a2dp", 11: "usb device", 15: "built-in mic", 22: "usb headset", 26: "ble headset"}


def import_jnius() -> ModuleType:
    """Import pyjnius, turning its absence into a clear error."""
    try:
        import jnius  # type: ignore[import-not-found]
    except ImportError as exc:
        raise FeatureUnavailableError(
            "audio on Android needs pyjnius: add 'pyjnius' to the requirements in buildozer.spec"
        ) from exc
    return jnius


def to_pcm16(x: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes (clipped)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def from_pcm16(b: bytes | bytearray) -> np.ndarray:
    """little-endian int16 bytes -> float32 in [-1, 1)."""
    return np.frombuffer(bytes(b), dtype="<i2").astype(np.float32) / 32768.0


# ---------------------------------------------------------------- the Java thread


class JavaThread:
    """One thread that makes every Java call of a player or recorder, then detaches from the JVM.

    `call(fn)` runs `fn` there and returns its result (or raises its error). Between calls the
    thread runs `tick()`, which does the streaming work and returns how long to sleep (None: until
    woken by `wake()` or a call)."""

    def __init__(self, jnius: ModuleType, name: str, tick: Callable[[], float | None]) -> None:
        self._jnius = jnius
        self._tick = tick
        self._cond = threading.Condition()
        self._calls: collections.deque[tuple[Callable[[], Any], list[Any], threading.Event]] = collections.deque()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    calls, self._calls = self._calls, collections.deque()
                    closing = self._closing
                for fn, box, done in calls:
                    try:
                        box.append((True, fn()))
                    except BaseException as e:  # noqa: BLE001  (handed to the caller)
                        box.append((False, e))
                    done.set()
                if closing:
                    return
                delay = self._tick()
                with self._cond:
                    if not self._calls and not self._closing and delay != 0.0:
                        self._cond.wait(delay)
        finally:
            self._jnius.detach()

    def call(self, fn: Callable[[], T], timeout: float | None = 30.0) -> T:
        if threading.current_thread() is self._thread:
            return fn()
        box: list[Any] = []
        done = threading.Event()
        with self._cond:
            if self._closing:
                raise PocketOmniError("the audio device is closed; open a new one")
            self._calls.append((fn, box, done))
            self._cond.notify_all()
        if not done.wait(timeout):
            raise FeatureUnavailableError(f"the Android audio thread did not answer within {timeout} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self, fn: Callable[[], Any] | None = None) -> None:
        """Run `fn` (the release) as the last call, then end the thread."""
        if fn is not None and self._thread.is_alive():
            self.call(fn)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)


# ---------------------------------------------------------------- permission, devices


def request_record_permission(timeout: float = PERMISSION_TIMEOUT) -> None:
    """Ask for RECORD_AUDIO at run time (p4a's `android.permissions`) and wait for the answer.
    Without that module (not a p4a build) nothing is asked: AudioRecord then reports a refusal
    itself. Call it off the UI thread: the answer arrives on it."""
    try:
        from android.permissions import Permission, check_permission, request_permissions  # type: ignore
    except ImportError:
        return
    if check_permission(Permission.RECORD_AUDIO):
        return
    answered = threading.Event()
    granted: list[bool] = []

    def on_result(permissions: list[str], grants: list[bool]) -> None:
        granted.extend(bool(g) for p, g in zip(permissions, grants) if p == Permission.RECORD_AUDIO)
        answered.set()

    request_permissions([Permission.RECORD_AUDIO], on_result)
    if not answered.wait(timeout):
        raise FeatureUnavailableError(f"the microphone permission was not answered within {timeout:.0f} s")
    if not (granted and all(granted)):
        raise FeatureUnavailableError(
            "the microphone permission (RECORD_AUDIO) was denied: allow it in Settings > Apps > "
            "PocketOmni > Permissions, or type your messages"
        )


def _default_device() -> AudioDevice:
    return AudioDevice(index=0, name=DEFAULT_NAME, hostapi="Android", max_input_channels=1,
                       max_output_channels=1, default_samplerate=float(OUTPUT_RATE),
                       is_default_input=True, is_default_output=True)


class AndroidBackend:
    """Android's audio through pyjnius. `jnius` defaults to the real module (imported lazily)."""

    name = "android"

    def __init__(self, jnius: ModuleType | None = None) -> None:
        self._jnius_module = jnius

    @property
    def jnius(self) -> ModuleType:
        if self._jnius_module is None:
            self._jnius_module = import_jnius()
        return self._jnius_module

    # -- devices (one-off Java calls on a short-lived thread of their own, detached at its end)
    def _routes(self) -> list[tuple[AudioDevice, Any]]:
        jnius = self.jnius

        def query() -> list[tuple[AudioDevice, Any]]:
            try:
                activity = jnius.autoclass("org.kivy.android.PythonActivity").mActivity
            except Exception:  # noqa: BLE001  (JavaException: not a p4a app, only the default route)
                return []
            if activity is None:
                return []
            context = jnius.autoclass("android.content.Context")
            manager_cls = jnius.autoclass("android.media.AudioManager")
            manager = jnius.cast("android.media.AudioManager", activity.getSystemService(context.AUDIO_SERVICE))
            out = []
            for flag, source in ((manager_cls.GET_DEVICES_INPUTS, True), (manager_cls.GET_DEVICES_OUTPUTS, False)):
                for info in manager.getDevices(flag) or []:
                    kind = DEVICE_TYPES.get(int(info.getType()), f"type {int(info.getType())}")
                    product = info.getProductName()  # a CharSequence
                    product = product if isinstance(product, str) else str(product.toString())
                    dev = AudioDevice(index=int(info.getId()), name=f"{product} ({kind})", hostapi="Android",
                                      max_input_channels=1 if source else 0,
                                      max_output_channels=0 if source else 1,
                                      default_samplerate=float(OUTPUT_RATE),
                                      is_default_input=False, is_default_output=False)
                    out.append((dev, info))
            return out

        worker = JavaThread(jnius, "pocketomni-android-devices", lambda: None)
        try:
            return worker.call(query)
        finally:
            worker.close()

    def list_devices(self) -> list[AudioDevice]:
        return [_default_device()] + [d for d, _ in self._routes()]

    def find_device(self, device: int | str | None, kind: Kind) -> AudioDevice:
        return match_device(self.list_devices(), device, kind, "pocketomni.audio.android_io lists the routes")

    def _resolve(self, device: int | str | None, kind: Kind) -> tuple[AudioDevice, Any]:
        """The device and its AudioDeviceInfo (None for the default route)."""
        if device is None or (isinstance(device, str) and device.strip().lower() == DEFAULT_NAME) or device == 0:
            return _default_device(), None
        routes = self._routes()
        dev = match_device([_default_device()] + [d for d, _ in routes], device, kind, "")
        return dev, next((info for d, info in routes if d.index == dev.index), None)

    def has_input_device(self) -> bool:
        return True  # every phone has a microphone; a refused permission is reported at open

    def has_output_device(self) -> bool:
        return True

    def open_player(self, device: int | str | None = None, sample_rate: int = OUTPUT_RATE,
                    **options: Any) -> AndroidPlayer:
        dev, info = self._resolve(device, "output")
        return AndroidPlayer(self.jnius, dev, info, sample_rate, **options)

    def open_recorder(self, device: int | str | None = None, sample_rate: int = INPUT_RATE, *,
                      on_block: Callable[[np.ndarray], None] | None = None, **options: Any) -> AndroidRecorder:
        dev, info = self._resolve(device, "input")
        return AndroidRecorder(self.jnius, dev, info, sample_rate, on_block=on_block, **options)


# ---------------------------------------------------------------- playback


class AndroidPlayer:
    """The contract's Player over an `AudioTrack` (MODE_STREAM, 16-bit PCM, the media stream).

    `latency` is the track's buffer (seconds; at least Android's minimum for the rate). Writes into
    the track are non-blocking and at most `block_ms` long, so `stop()` waits for at most one of
    them. "Played" (wait(), underruns) is read from the track's playback head position.
    """

    def __init__(self, jnius: ModuleType, device: AudioDevice, route: Any = None, sample_rate: int = OUTPUT_RATE,
                 *, device_rate: int | None = None, block_ms: float = 20.0, queue_seconds: float = 1.0,
                 prebuffer_seconds: float = 0.2, latency: float = 0.1) -> None:
        if sample_rate <= 0 or block_ms <= 0 or queue_seconds <= 0 or latency <= 0:
            raise OptionsError("sample_rate, block_ms, queue_seconds and latency must be positive")
        if not 0 <= prebuffer_seconds < queue_seconds:
            raise OptionsError("prebuffer_seconds must be at least 0 and less than queue_seconds")
        self.device = device
        self.sample_rate = int(sample_rate)
        self.device_rate = int(device_rate or sample_rate)
        self._resampler = StreamResampler(self.sample_rate, self.device_rate)
        self._block = max(1, int(self.device_rate * block_ms / 1000))
        self._block_s = self._block / self.device_rate
        self._queue_limit = int(queue_seconds * self.device_rate)
        self._prebuffer = int(prebuffer_seconds * self.device_rate)
        self._lock = threading.Condition()
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._queued = self._offset = 0
        self._buffering = True
        self._ending = self._stopped = self._closed = False
        self._playing = False  # the track is in play()
        self._written = 0  # frames written to the track since its last flush
        self._done = threading.Event()
        self._done.set()
        self.underruns = 0
        self.played_seconds = 0.0
        self.error: str | None = None  # a write the track refused (the player then stops)
        self._track: Any = None
        self._java = JavaThread(jnius, "pocketomni-android-player", self._pump)
        try:
            self._java.call(lambda: self._open(jnius, route, latency))
        except BaseException:
            self._java.close()
            raise

    # -- Java thread
    def _open(self, jnius: ModuleType, route: Any, latency: float) -> None:
        track_cls = jnius.autoclass("android.media.AudioTrack")
        fmt = jnius.autoclass("android.media.AudioFormat")
        manager = jnius.autoclass("android.media.AudioManager")
        self._c = track_cls  # constants: WRITE_NON_BLOCKING, STATE_INITIALIZED
        channel, encoding = fmt.CHANNEL_OUT_MONO, fmt.ENCODING_PCM_16BIT
        min_bytes = int(track_cls.getMinBufferSize(self.device_rate, channel, encoding))
        if min_bytes <= 0:
            raise FeatureUnavailableError(
                f"Android cannot play {self.device_rate} Hz mono 16-bit audio (getMinBufferSize {min_bytes})")
        size = max(min_bytes, int(latency * self.device_rate) * 2)
        track = track_cls(manager.STREAM_MUSIC, self.device_rate, channel, encoding, size, track_cls.MODE_STREAM)
        if int(track.getState()) != int(track_cls.STATE_INITIALIZED):
            track.release()
            raise FeatureUnavailableError(f"Android refused an AudioTrack at {self.device_rate} Hz")
        if route is not None and not track.setPreferredDevice(route):
            track.release()
            raise OptionsError(f"Android refused the output route {self.device.name!r}")
        self._track = track

    def _pump(self) -> float | None:
        """Move queued audio into the track; notice the end of an utterance and underruns."""
        if self._track is None:
            return None
        with self._lock:
            if self._stopped:
                return None
            if self._buffering and self._chunks and (self._ending or self._queued >= self._prebuffer):
                self._buffering = False
            if not self._buffering and self._chunks:
                return self._write_block()
            head = int(self._track.getPlaybackHeadPosition())
            drained = head >= self._written
            if self._ending and not self._chunks:
                if not drained:
                    return min(self._block_s, (self._written - head) / self.device_rate)
                self._ending, self._buffering = False, True
                self._pause()
                self._done.set()
                self._lock.notify_all()
                return None
            if self._playing and not self._buffering and drained:
                self.underruns += 1  # the producer fell behind: wait for another prebuffer
                self._buffering = True
                self._pause()
            return self._block_s if self._playing else None

    def _write_block(self) -> float:
        head = self._chunks[0]
        n = min(self._block, head.size - self._offset)
        pcm = to_pcm16(head[self._offset : self._offset + n])
        wrote = int(self._track.write(pcm, 0, len(pcm), self._c.WRITE_NON_BLOCKING))
        if wrote < 0:
            self.error = f"AudioTrack.write failed with {wrote}"
            self._drop()
            self._stopped = True
            self._done.set()
            self._lock.notify_all()
            return 0.0
        frames = wrote // 2
        if frames:
            if not self._playing:
                self._track.play()
                self._playing = True
            self._offset += frames
            self._queued -= frames
            self._written += frames
            self.played_seconds += frames / self.device_rate
            if self._offset == head.size:
                self._chunks.popleft()
                self._offset = 0
            self._lock.notify_all()  # room in the queue
        return 0.0 if frames == n else self._block_s / 2  # the track is full: let it play

    def _pause(self) -> None:
        if self._playing:
            self._track.pause()
            self._playing = False

    def _silence(self) -> None:
        """pause() + flush(): what the track holds is discarded, not played."""
        if self._track is None:
            return
        self._track.pause()
        self._track.flush()
        self._playing = False
        self._written = 0

    def _drop(self) -> None:
        self._chunks.clear()
        self._queued = self._offset = 0
        self._ending = False
        self._buffering = True

    # -- caller thread
    def write(self, samples: np.ndarray, timeout: float | None = None) -> bool:
        """Queue a chunk of mono float32 samples at `sample_rate` (see the contract)."""
        if self._stopped:
            return False
        y = self._resampler.push(np.asarray(samples, dtype=np.float32).reshape(-1))
        return self._enqueue(y, timeout)

    def _enqueue(self, y: np.ndarray, timeout: float | None) -> bool:
        with self._lock:
            if self._closed:
                raise PocketOmniError("the Player is closed; open a new one")
            ok = self._lock.wait_for(lambda: self._stopped or self._queued < self._queue_limit, timeout)
            if not ok or self._stopped:
                return False
            if y.size:
                self._chunks.append(np.ascontiguousarray(y, dtype=np.float32))
                self._queued += y.size
            self._ending = False
            self._done.clear()
        self._java.wake()
        return True

    def finish(self) -> None:
        """No more audio in this utterance: wait() returns once it has played."""
        if self._stopped:
            return
        self._enqueue(self._resampler.flush(), None)
        with self._lock:
            self._ending = True  # the Java thread sets _done once the track has played it all
        self._java.wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def play(self, samples: np.ndarray, timeout: float | None = None) -> bool:
        self.resume()
        self.write(samples)
        self.finish()
        return self.wait(timeout)

    @property
    def is_playing(self) -> bool:
        return not self._stopped and not self._done.is_set()

    def stop(self) -> float:
        """Barge-in: queue dropped, the track paused and flushed; returns the seconds it took."""
        t0 = time.perf_counter()
        with self._lock:
            self._stopped = True
            self._drop()
            self._resampler = StreamResampler(self.sample_rate, self.device_rate)
            self._lock.notify_all()
        if not self._closed:
            self._java.call(self._silence)
        self._done.set()
        return time.perf_counter() - t0

    def resume(self) -> None:
        with self._lock:
            self._stopped = False

    def close(self) -> None:
        if self._closed:
            return
        self.stop()
        self._closed = True

        def release() -> None:
            if self._track is not None:
                self._track.release()
                self._track = None

        self._java.close(release)

    def __enter__(self) -> AndroidPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- capture


class AndroidRecorder(BlockRecorder):
    """The contract's Recorder over an `AudioRecord` (VOICE_COMMUNICATION, mono 16-bit PCM).

    The Java thread reads one block at a time (a blocking read of `block_ms`), so `stop()` returns
    within about one block. A capture rate the device refuses falls back to 48 / 44.1 kHz, resampled.
    """

    def __init__(self, jnius: ModuleType, device: AudioDevice, route: Any = None, sample_rate: int = INPUT_RATE,
                 *, device_rate: int | None = None, block_ms: float = 20.0,
                 on_block: Callable[[np.ndarray], None] | None = None, queue_seconds: float = 10.0,
                 latency: float = 0.2, permission_timeout: float = PERMISSION_TIMEOUT) -> None:
        if sample_rate <= 0 or block_ms <= 0 or queue_seconds <= 0 or latency <= 0:
            raise OptionsError("sample_rate, block_ms, queue_seconds and latency must be positive")
        self.device = device
        self.effects: list[str] = []  # audio effects switched on for this capture
        self._block_ms = block_ms
        self._record: Any = None
        self._recording = False  # wanted: blocks are delivered
        self._started = False  # the AudioRecord is recording (Java thread state)
        self._closed = False
        self.error: str | None = None  # a read the device refused (capture then stops)
        self._java = JavaThread(jnius, "pocketomni-android-recorder", self._pump)
        try:
            self._java.call(lambda: request_record_permission(permission_timeout), timeout=permission_timeout + 5)
            rate = self._java.call(lambda: self._open(jnius, route, int(sample_rate), device_rate, latency))
        except BaseException:
            self._java.close()
            raise
        super().__init__(sample_rate, rate, block_ms=block_ms, on_block=on_block, queue_seconds=queue_seconds)
        self._chunk_bytes = 2 * max(1, int(round(self.device_rate * block_ms / 1000)))

    # -- Java thread
    def _open(self, jnius: ModuleType, route: Any, want: int, forced: int | None, latency: float) -> int:
        record_cls = jnius.autoclass("android.media.AudioRecord")
        fmt = jnius.autoclass("android.media.AudioFormat")
        source = jnius.autoclass("android.media.MediaRecorder$AudioSource").VOICE_COMMUNICATION
        channel, encoding = fmt.CHANNEL_IN_MONO, fmt.ENCODING_PCM_16BIT
        rates = (forced,) if forced else (want,) + tuple(r for r in CAPTURE_RATES if r != want)
        tried = []
        for rate in rates:
            min_bytes = int(record_cls.getMinBufferSize(rate, channel, encoding))
            if min_bytes <= 0:
                tried.append(f"{rate} Hz (getMinBufferSize {min_bytes})")
                continue
            size = max(min_bytes, int(latency * rate) * 2)
            rec = record_cls(source, rate, channel, encoding, size)
            if int(rec.getState()) == int(record_cls.STATE_INITIALIZED):
                break
            rec.release()
            tried.append(f"{rate} Hz (not initialized)")
        else:
            raise FeatureUnavailableError(
                f"Android refused the microphone at {', '.join(tried)}: the RECORD_AUDIO permission may "
                "be missing, or another app holds the microphone"
            )
        if route is not None and not rec.setPreferredDevice(route):
            rec.release()
            raise OptionsError(f"Android refused the input route {self.device.name!r}")
        self._record = rec
        self._record_cls = record_cls
        session = rec.getAudioSessionId()
        for effect in ("AcousticEchoCanceler", "NoiseSuppressor"):
            cls = jnius.autoclass(f"android.media.audiofx.{effect}")
            if cls.isAvailable():
                fx = cls.create(session)
                if fx is not None and fx.setEnabled(True) == 0:  # AudioEffect.SUCCESS
                    self.effects.append(effect)
        return int(rate)

    def _pump(self) -> float | None:
        if not (self._recording and self._started):
            return None
        buf = bytearray(self._chunk_bytes)
        got = int(self._record.read(buf, 0, len(buf)))  # pyjnius copies the Java array back into buf
        if got < 0:
            self.error = f"AudioRecord.read failed with {got}"
            self._stop_java()
            return None
        if got and self._recording:
            self._deliver(from_pcm16(buf[: got - got % 2]))
        return 0.0

    def _start_java(self) -> None:
        self._record.startRecording()
        if int(self._record.getRecordingState()) != int(self._record_cls.RECORDSTATE_RECORDING):
            self._record.stop()
            raise FeatureUnavailableError("the microphone did not start: another app may be using it")
        self._started = self._recording = True

    def _stop_java(self) -> None:
        self._recording = False
        if self._started:
            self._started = False
            self._record.stop()

    # -- caller thread
    @property
    def capturing(self) -> bool:
        return self._recording

    def start(self) -> AndroidRecorder:
        if self._closed:
            raise PocketOmniError("the Recorder is closed; open a new one")
        if not self._recording:
            self._java.call(self._start_java)
        return self

    def stop(self) -> None:
        if not self._closed and self._recording:
            self._recording = False  # the block being read is dropped
            self._java.call(self._stop_java)

    def close(self) -> None:
        if self._closed:
            return
        self.stop()
        self._closed = True

        def release() -> None:
            if self._record is not None:
                self._record.release()
                self._record = None

        self._java.close(release)

    def __enter__(self) -> AndroidRecorder:
        return self.start()

