"""A stand-in for the Android Java classes the audio backend calls (audio/android_io.py), behind a
fake `jnius` module (autoclass, cast, detach) and a fake p4a `android.permissions`.

It proves OUR side: the calls, their argument types (as pyjnius would convert them: Python ints for
`int`, bytes/bytearray for `byte[]`, the array copied back into a mutable argument after the call),
the buffer handling and the threads (every Java call on a backend thread that detaches before it
ends). It does not prove the phone: the timing model is a simple real-time clock.

Semantics modelled after the Android reference (android.media.AudioTrack / AudioRecord):
* AudioTrack (MODE_STREAM): a ring of `bufferSizeInBytes`; while playing, frames leave it at the
  sample rate (the "speaker" hears them, with their times); write(..., WRITE_NON_BLOCKING) takes
  what fits; pause() stops consumption; flush() discards the unplayed frames, and only acts when
  the track is paused or stopped; the playback head resets on flush.
* AudioRecord: frames become available at the sample rate after startRecording(); read(byte[], off,
  size) blocks until `size` bytes are there and fills them from the microphone (what the test said
  into it, else silence); the state is uninitialized without the RECORD_AUDIO permission or at a
  rate the device refuses.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECORD_AUDIO = "android.permission.RECORD_AUDIO"


def _int(*xs: Any) -> None:
    for x in xs:  # pyjnius converts Python ints (bool is not an int here) to Java int
        if type(x) is not int:
            raise TypeError(f"a Java int argument got {type(x).__name__} {x!r}")


def _bytes_arg(x: Any) -> bytes:
    if not isinstance(x, (bytes, bytearray)):
        raise TypeError(f"a Java byte[] argument got {type(x).__name__}")
    return bytes(x)


@dataclass
class Speaker:
    """What the tracks played: (monotonic time of the first frame, float32 frames at `rate`)."""

    segments: list[tuple[float, int, np.ndarray]] = field(default_factory=list)

    def recording(self, t0: float, t1: float, rate: int) -> np.ndarray:
        """A monitor of the speaker from t0 to t1 at `rate` (runs of another rate are resampled)."""
        from pocketomni.media.audio import resample

        runs: list[tuple[float, int, list[np.ndarray], float]] = []  # (start, rate, parts, end)
        for t, r, x in sorted(self.segments, key=lambda s: s[0]):
            if runs and runs[-1][1] == r and abs(runs[-1][3] - t) < 0.5 / r:
                runs[-1][2].append(x)
                runs[-1] = (runs[-1][0], r, runs[-1][2], t + x.size / r)
            else:
                runs.append((t, r, [x], t + x.size / r))
        n = max(0, int((t1 - t0) * rate))
        out = np.zeros(n, dtype=np.float32)
        for t, r, parts, _ in runs:
            x = np.concatenate(parts)
            if r != rate:
                x = resample(x, r, rate)
            i = int(round((t - t0) * rate))
            lo, hi = max(i, 0), min(i + x.size, n)
            if hi > lo:
                out[lo:hi] = x[lo - i : hi - i]
        return out


class Mic:
    """What the microphone hears: clips said into it, at the recorder's rate, then silence."""

    def __init__(self) -> None:
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()

    def say(self, samples: np.ndarray) -> None:
        with self._lock:
            self._pending.append(np.asarray(samples, dtype=np.float32).copy())

    def take(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        filled = 0
        with self._lock:
            while filled < n and self._pending:
                head = self._pending[0]
                k = min(n - filled, head.size)
                out[filled : filled + k] = head[:k]
                filled += k
                if k == head.size:
                    self._pending.popleft()
                else:
                    self._pending[0] = head[k:]
        return out


class StandIn:
    """The Java world: classes for autoclass, the permission, the speaker and the microphone."""

    def __init__(self, *, permission: bool | None = True, refused_capture_rates: tuple[int, ...] = (),
                 routes: bool = True) -> None:
        self.permission_answer = permission  # None: the dialog is never answered
        self.permission_granted = False
        self.permission_requests = 0
        self.refused_capture_rates = set(refused_capture_rates)
        self.speaker = Speaker()
        self.mic = Mic()
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []  # (thread name, "Class.method", args)
        self.detached: set[int] = set()  # thread idents that called jnius.detach()
        self.threads: dict[int, threading.Thread] = {}
        self.tracks: list[Any] = []
        self.records: list[Any] = []
        self.effects: list[Any] = []
        self._lock = threading.Lock()
        self.classes = self._make_classes(routes)
        self.jnius = types.ModuleType("jnius")
        self.jnius.autoclass = self._autoclass  # type: ignore[attr-defined]
        self.jnius.cast = self._cast  # type: ignore[attr-defined]
        self.jnius.detach = self._detach  # type: ignore[attr-defined]
        self.permissions = self._make_permissions()

    # -- bookkeeping
    def log(self, what: str, *args: Any) -> None:
        t = threading.current_thread()
        with self._lock:
            self.calls.append((t.name, what, args))
            self.threads[t.ident or 0] = t

    def _detach(self) -> None:
        with self._lock:
            self.detached.add(threading.get_ident())

    def _autoclass(self, name: str) -> Any:
        self.log("autoclass", name)
        if name not in self.classes:
            raise AssertionError(f"autoclass of a class the stand-in does not model: {name}")
        return self.classes[name]

    def _cast(self, name: str, obj: Any) -> Any:
        self.log("cast", name)
        if name != "android.media.AudioManager" or not isinstance(obj, self.classes[name]):
            raise AssertionError(f"cast to {name} of {obj!r}")
        return obj

    def methods(self, prefix: str = "") -> list[str]:
        return [w for _, w, _ in self.calls if w.startswith(prefix)]

    def check_threads(self) -> None:
        """Every Java call came from a backend thread, and every such thread detached and ended."""
        with self._lock:
            names = {n for n, _, _ in self.calls}
            threads = dict(self.threads)
        bad = sorted(n for n in names if not n.startswith("pocketomni-android-"))
        assert not bad, f"Java called from threads that are not the backend's: {bad}"
        for ident, t in threads.items():
            t.join(timeout=5)
            assert not t.is_alive(), f"thread {t.name} still runs"
            assert ident in self.detached, f"thread {t.name} ended without jnius.detach()"

    def install(self, monkeypatch: Any) -> None:
        """Make `import jnius` and `from android.permissions import ...` find the stand-in."""
        android = types.ModuleType("android")
        android.__path__ = []  # type: ignore[attr-defined]
        android.permissions = self.permissions  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "jnius", self.jnius)
        monkeypatch.setitem(sys.modules, "android", android)
        monkeypatch.setitem(sys.modules, "android.permissions", self.permissions)

    # -- android.permissions (p4a)
    def _make_permissions(self) -> types.ModuleType:
        mod = types.ModuleType("android.permissions")
        world = self

        class Permission:
            RECORD_AUDIO = RECORD_AUDIO

        def check_permission(p: str) -> bool:
            world.log("check_permission", p)
            return p == RECORD_AUDIO and world.permission_granted

        def request_permissions(perms: list[str], callback: Any = None) -> None:
            world.log("request_permissions", tuple(perms))
            world.permission_requests += 1
            if world.permission_answer is None:
                return

            def answer() -> None:  # the dialog answers later, on the UI thread
                time.sleep(0.05)
                world.permission_granted = bool(world.permission_answer)
                if callback is not None:
                    callback(list(perms), [world.permission_granted for _ in perms])

            threading.Thread(target=answer, name="android-ui", daemon=True).start()

        mod.Permission = Permission  # type: ignore[attr-defined]
        mod.check_permission = check_permission  # type: ignore[attr-defined]
        mod.request_permissions = request_permissions  # type: ignore[attr-defined]
        return mod

    # -- the classes
    def _make_classes(self, routes: bool) -> dict[str, Any]:
        world = self

        class AudioFormat:
            CHANNEL_IN_MONO = 16
            CHANNEL_OUT_MONO = 4
            ENCODING_PCM_16BIT = 2
            ENCODING_PCM_FLOAT = 4

        class AudioSource:
            DEFAULT, MIC, VOICE_RECOGNITION, VOICE_COMMUNICATION = 0, 1, 6, 7

        class AudioDeviceInfo:
            def __init__(self, ident: int, kind: int, product: str, source: bool) -> None:
                self._id, self._type, self._product, self._source = ident, kind, product, source

            def getId(self) -> int:
                world.log("AudioDeviceInfo.getId")
                return self._id

            def getType(self) -> int:
                world.log("AudioDeviceInfo.getType")
                return self._type

            def getProductName(self) -> Any:
                world.log("AudioDeviceInfo.getProductName")
                return types.SimpleNamespace(toString=lambda: self._product)  # a CharSequence

            def isSource(self) -> bool:
                return self._source

        inputs = [AudioDeviceInfo(10, 15, "Pixel 8", True), AudioDeviceInfo(12, 3, "USB-C headset", True)]
        outputs = [AudioDeviceInfo(11, 2, "Pixel 8", False), AudioDeviceInfo(13, 1, "Pixel 8", False),
                   AudioDeviceInfo(14, 3, "USB-C headset", False)]

        class AudioManager:
            STREAM_VOICE_CALL, STREAM_MUSIC = 0, 3
            GET_DEVICES_INPUTS, GET_DEVICES_OUTPUTS = 1, 2

            def getDevices(self, flags: int) -> list[Any]:
                world.log("AudioManager.getDevices", flags)
                _int(flags)
                return list(inputs if flags == 1 else outputs if flags == 2 else [])

        class Context:
            AUDIO_SERVICE = "audio"

        class Activity:
            def getSystemService(self, name: str) -> Any:
                world.log("Activity.getSystemService", name)
                assert name == "audio"
                return AudioManager()

        class PythonActivity:
            mActivity = Activity() if routes else None

        def check_format(rate: int, channel: int, encoding: int, want_channel: int) -> int:
            _int(rate, channel, encoding)
            if channel != want_channel or encoding not in (2, 4) or not 4000 <= rate <= 192000:
                return -2  # ERROR_BAD_VALUE
            return 0

        class AudioTrack:
            MODE_STATIC, MODE_STREAM = 0, 1
            STATE_UNINITIALIZED, STATE_INITIALIZED = 0, 1
            PLAYSTATE_STOPPED, PLAYSTATE_PAUSED, PLAYSTATE_PLAYING = 1, 2, 3
            WRITE_BLOCKING, WRITE_NON_BLOCKING = 0, 1

            @staticmethod
            def getMinBufferSize(rate: int, channel: int, encoding: int) -> int:
                world.log("AudioTrack.getMinBufferSize", rate, channel, encoding)
                err = check_format(rate, channel, encoding, AudioFormat.CHANNEL_OUT_MONO)
                return err or 2 * (rate // 50)  # 20 ms

            def __init__(self, stream: int, rate: int, channel: int, encoding: int, size: int, mode: int) -> None:
                world.log("AudioTrack.<init>", stream, rate, channel, encoding, size, mode)
                _int(stream, rate, channel, encoding, size, mode)
                assert encoding == AudioFormat.ENCODING_PCM_16BIT and mode == self.MODE_STREAM
                self.stream, self.rate, self.size = stream, rate, size
                self.capacity = size // 2
                self.state = self.STATE_INITIALIZED
                self.playstate = self.PLAYSTATE_STOPPED
                self.route: Any = None
                self.released = False
                self._frames = np.zeros(0, dtype=np.float32)  # written, not yet played
                self._head = 0  # frames played since the last flush
                self._clock = 0.0  # time up to which consumption has been accounted
                self._lock = threading.Lock()
                world.tracks.append(self)

            def _advance(self) -> None:
                """Frames leave the buffer at the sample rate while playing; _clock is when the
                next one plays."""
                if self.playstate != self.PLAYSTATE_PLAYING or not self._frames.size:
                    return
                n = min(self._frames.size, int((time.monotonic() - self._clock) * self.rate))
                if n > 0:
                    world.speaker.segments.append((self._clock, self.rate, self._frames[:n].copy()))
                    self._frames = self._frames[n:]
                    self._head += n
                    self._clock += n / self.rate

            def _alive(self) -> None:
                assert not self.released, "a call on a released AudioTrack"

            def getState(self) -> int:
                world.log("AudioTrack.getState")
                return self.state

            def setPreferredDevice(self, info: Any) -> bool:
                world.log("AudioTrack.setPreferredDevice", info)
                self.route = info
                return isinstance(info, AudioDeviceInfo) and not info.isSource()

            def play(self) -> None:
                world.log("AudioTrack.play")
                self._alive()
                with self._lock:
                    self._advance()
                    self.playstate = self.PLAYSTATE_PLAYING
                    self._clock = time.monotonic()

            def pause(self) -> None:
                world.log("AudioTrack.pause")
                self._alive()
                with self._lock:
                    self._advance()
                    if self.playstate == self.PLAYSTATE_PLAYING:
                        self.playstate = self.PLAYSTATE_PAUSED

            def flush(self) -> None:
                world.log("AudioTrack.flush")
                self._alive()
                with self._lock:
                    if self.playstate == self.PLAYSTATE_PLAYING:
                        return  # no-op unless paused or stopped
                    self._frames = np.zeros(0, dtype=np.float32)
                    self._head = 0

            def stop(self) -> None:
                world.log("AudioTrack.stop")
                raise AssertionError("the backend should pause()+flush(), not stop() (which plays the rest)")

            def write(self, data: Any, offset: int, size: int, mode: int) -> int:
                world.log("AudioTrack.write", len(data), offset, size, mode)
                self._alive()
                raw = _bytes_arg(data)
                _int(offset, size, mode)
                assert mode in (self.WRITE_BLOCKING, self.WRITE_NON_BLOCKING)
                assert 0 <= offset and offset + size <= len(raw) and size % 2 == 0
                with self._lock:
                    self._advance()
                    room = self.capacity - self._frames.size
                    if mode == self.WRITE_BLOCKING and room * 2 < size:
                        raise AssertionError("a blocking write that would wait: the backend must not block")
                    take = min(size // 2, room)
                    x = np.frombuffer(raw[offset : offset + 2 * take], dtype="<i2").astype(np.float32) / 32768.0
                    if not self._frames.size:
                        self._clock = max(self._clock, time.monotonic())
                    self._frames = np.concatenate([self._frames, x])
                    return 2 * take

            def getPlaybackHeadPosition(self) -> int:
                world.log("AudioTrack.getPlaybackHeadPosition")
                with self._lock:
                    self._advance()
                    return self._head

            def release(self) -> None:
                world.log("AudioTrack.release")
                with self._lock:
                    self._advance()
                    self.released = True

        class AudioRecord:
            STATE_UNINITIALIZED, STATE_INITIALIZED = 0, 1
            RECORDSTATE_STOPPED, RECORDSTATE_RECORDING = 1, 3
            ERROR_INVALID_OPERATION = -3

            @staticmethod
            def getMinBufferSize(rate: int, channel: int, encoding: int) -> int:
                world.log("AudioRecord.getMinBufferSize", rate, channel, encoding)
                err = check_format(rate, channel, encoding, AudioFormat.CHANNEL_IN_MONO)
                return err or 2 * (rate // 25)  # 40 ms

            def __init__(self, source: int, rate: int, channel: int, encoding: int, size: int) -> None:
                world.log("AudioRecord.<init>", source, rate, channel, encoding, size)
                _int(source, rate, channel, encoding, size)
                self.source, self.rate, self.size = source, rate, size
                ok = world.permission_granted and rate not in world.refused_capture_rates
                self.state = self.STATE_INITIALIZED if ok else self.STATE_UNINITIALIZED
                self.recordstate = self.RECORDSTATE_STOPPED
                self.route: Any = None
                self.released = False
                self._t0 = 0.0
                self._read = 0  # frames delivered since startRecording
                world.records.append(self)

            def getState(self) -> int:
                world.log("AudioRecord.getState")
                return self.state

            def getAudioSessionId(self) -> int:
                world.log("AudioRecord.getAudioSessionId")
                return 4242

            def setPreferredDevice(self, info: Any) -> bool:
                world.log("AudioRecord.setPreferredDevice", info)
                self.route = info
                return isinstance(info, AudioDeviceInfo) and info.isSource()

            def startRecording(self) -> None:
                world.log("AudioRecord.startRecording")
                assert self.state == self.STATE_INITIALIZED and not self.released
                self.recordstate = self.RECORDSTATE_RECORDING
                self._t0 = time.monotonic()
                self._read = 0

            def getRecordingState(self) -> int:
                world.log("AudioRecord.getRecordingState")
                return self.recordstate

            def read(self, buf: Any, offset: int, size: int) -> int:
                world.log("AudioRecord.read", len(buf), offset, size)
                java = bytearray(_bytes_arg(buf))  # pyjnius makes a Java copy of the argument
                _int(offset, size)
                if self.recordstate != self.RECORDSTATE_RECORDING:
                    return self.ERROR_INVALID_OPERATION
                frames = size // 2
                due = self._t0 + (self._read + frames) / self.rate
                time.sleep(max(0.0, due - time.monotonic()))  # a blocking read returns when filled
                x = world.mic.take(frames)
                pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()
                java[offset : offset + len(pcm)] = pcm
                self._read += frames
                try:  # ... and copies the Java array back into a mutable Python argument
                    buf[:] = java
                except TypeError:
                    pass
                return len(pcm)

            def stop(self) -> None:
                world.log("AudioRecord.stop")
                self.recordstate = self.RECORDSTATE_STOPPED

            def release(self) -> None:
                world.log("AudioRecord.release")
                self.released = True
                self.recordstate = self.RECORDSTATE_STOPPED

        class Effect:
            def __init__(self, kind: str, session: int) -> None:
                self.kind, self.session, self.enabled = kind, session, False
                world.effects.append(self)

            def setEnabled(self, on: bool) -> int:
                world.log(f"{self.kind}.setEnabled", on)
                assert type(on) is bool
                self.enabled = on
                return 0

        def effect_class(kind: str) -> Any:
            class Fx:
                @staticmethod
                def isAvailable() -> bool:
                    world.log(f"{kind}.isAvailable")
                    return True

                @staticmethod
                def create(session: int) -> Effect:
                    world.log(f"{kind}.create", session)
                    _int(session)
                    return Effect(kind, session)

            return Fx

        return {
            "android.media.AudioFormat": AudioFormat,
            "android.media.MediaRecorder$AudioSource": AudioSource,
            "android.media.AudioManager": AudioManager,
            "android.media.AudioTrack": AudioTrack,
            "android.media.AudioRecord": AudioRecord,
            "android.media.audiofx.AcousticEchoCanceler": effect_class("AcousticEchoCanceler"),
            "android.media.audiofx.NoiseSuppressor": effect_class("NoiseSuppressor"),
            "android.content.Context": Context,
            "org.kivy.android.PythonActivity": PythonActivity,
        }

    def flush_speaker(self) -> None:
        """Account for what the tracks have played up to now."""
        for t in self.tracks:
            with t._lock:
                t._advance()
