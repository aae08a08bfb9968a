"""A live camera for a VoiceSession: frames recorded at the model's 2 fps while the user speaks.

    cam = VideoFileCamera("walk.mp4")                     # or FrameStream(gen, fps), PushCamera(), a callable
    vs = po.VoiceSession(chat, camera=cam, camera_pixels=224 * 224 * 2)
    vs.set_camera(None)                                   # camera off (set_camera(cam) turns it on again)

A source is anything with `read()` returning the current frame (an (H, W, 3) or (H, W, 4) uint8 array or
a PIL image; None: no frame yet), a callable returning one, or an iterator of frames (one frame taken
per recorded frame). Adapters: `FrameStream` plays an iterable of frames in real time at its own frame
rate (a numpy generator, a decoded file), `VideoFileCamera` plays a video file (PyAV), `PushCamera` is
fed by the app (e.g. from a Kivy Camera widget's texture on the UI thread).

Timing: the recorder reads the source every 0.5 s. When the user starts speaking (VAD speech_start,
or push-to-talk) the grid is re-phased to the start of the turn's audio (its pre-roll included):
frame k is what the camera showed at audio_start + k / 2 s (sample and hold; pre-roll frames come from
the last seconds kept while idle). At the end of a D-second turn the session takes 2 * floor(D) frames
(the reference's frame count for a D-second clip at 2 fps, at least 2) and sends the turn as
`video=(frames, 2, audio, 16000)`: 2 s chunks of 4 frames interleaved with 2 s of the user's voice.
Every 4 frames (one 2 s chunk, complete at audio_start + 2 s * (j + 1)) `on_chunk(j, frames)` fires as
they are recorded: the point where a streamed (chunk by chunk) prefill takes them.

Size: each frame is resized (PIL bicubic) to multiples of 28 with at most `pixels` pixels (the
budget) and at least the model's video minimum, close to the source's aspect ratio, before it is
stored: the vision tower sees exactly these frames (prepare_video keeps such sizes).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from pocketomni.errors import CameraError, OptionsError

__all__ = ["CHUNK_FRAMES", "DEFAULT_PIXELS", "FPS", "CameraRecorder", "CameraSource", "FrameStream", "PushCamera", "VideoFileCamera", "as_camera",
           "camera_frame_size", "check_camera_pixels", "prepend_still", "vad_lead_seconds",
           "video_frame_limits"]

log = logging.getLogger("pocketomni.voice.camera")
FPS = 2.0  # the model's video frame rate
PERIOD = 1.0 / FPS
FACTOR = 28  # frame sides: multiples of patch 14 x merge 2
CHUNK_FRAMES = 4  # one 2 s chunk of the interleaved video+audio layout
MAX_FRAMES = 768  # the video processor's cap (VideoConfig.max_frames)
KEEP_SECONDS = 3.0  # frames kept while idle, for the pre-roll of the next turn
DEFAULT_PIXELS = 160 * 28 * 28  # per frame: 4:3 frames become 392x308 (154 tokens per second of video)
ASPECT_SLACK = 0.06  # log aspect-ratio error accepted for a larger frame


@runtime_checkable
class CameraSource(Protocol):
    """Anything with `read()`: the current frame, or None when there is none yet."""

    def read(self) -> Any: ...


class _Callback:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def read(self) -> Any:
        return self.fn()


class _Iterator:
    """One frame of the iterator per read (the recorder reads at 2 fps); exhausted: the last frame."""

    def __init__(self, it: Iterable[Any]) -> None:
        self.it, self.last = iter(it), None

    def read(self) -> Any:
        self.last = next(self.it, self.last)
        return self.last


class PushCamera:
    """A source the app feeds: `push(frame)` whenever the camera has a new picture (any thread)."""

    def __init__(self) -> None:
        self._frame: Any = None

    def push(self, frame: Any) -> None:
        self._frame = frame

    def read(self) -> Any:
        return self._frame


class FrameStream:
    """Plays an iterable of frames in real time at `fps` in a background thread; `read()` gives the
    frame showing now. `loop`: start over at the end (else the last frame stays). An exception from
    the iterable is raised by the next `read()` (the recorder reports it as a CameraError)."""

    def __init__(self, frames: Iterable[Any] | Callable[[], Iterable[Any]], fps: float, *, loop: bool = False) -> None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise OptionsError(f"fps={fps!r} must be a positive number of frames per second")
        if loop and not callable(frames) and iter(frames) is frames:  # type: ignore[arg-type]
            raise OptionsError("loop=True needs frames that can be iterated again: a list, or a function "
                               "returning a new iterator")
        self.fps, self.loop = float(fps), loop
        self._make = frames if callable(frames) else (lambda: frames)
        self._frame: Any = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._play, name="pocketomni-camera-stream", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        t0, i = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                n_before = i
                for frame in self._make():  # type: ignore[operator]
                    wait = t0 + i / self.fps - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                    self._frame = frame
                    self._ready.set()
                    i += 1
                if not self.loop or i == n_before:
                    return
        except Exception as e:  # noqa: BLE001 -- handed to the reader
            self._error = e
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until the first frame is showing (or the stream failed)."""
        return self._ready.wait(timeout)

    def read(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._frame

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class VideoFileCamera(FrameStream):
    """A video file played in real time as a live camera (PyAV: pip install 'pocketomni[video]')."""

    def __init__(self, path: str | os.PathLike[str], *, loop: bool = True) -> None:
        from pocketomni.media.video import iter_video_frames

        fps, first = iter_video_frames(path)  # checks the file now: typed errors at construction
        pending = [first]

        def frames() -> Iterator[np.ndarray]:
            return pending.pop() if pending else iter_video_frames(path)[1]

        self.path = os.fspath(path)
        super().__init__(frames, fps, loop=loop)


def as_camera(source: Any) -> CameraSource:
    """A camera source from an object with read(), a callable or an iterable of frames."""
    if isinstance(source, CameraSource):
        return source
    if callable(source):
        return _Callback(source)
    if isinstance(source, (Iterator, list, tuple)) or hasattr(source, "__iter__") and not isinstance(
            source, (str, bytes, np.ndarray)):
        return _Iterator(source)
    raise OptionsError(f"camera={type(source).__name__} is not a camera source: pass an object with read(), a "
                       "function returning the current frame, an iterator of frames, or a VideoFileCamera(path)")


# ---------------------------------------------------------------- size


def check_camera_pixels(pixels: Any, min_pixels: int, max_pixels: int) -> int:
    """The frame pixel budget, validated against the model's video frame limits."""
    if isinstance(pixels, bool) or not isinstance(pixels, int):
        raise OptionsError(f"camera_pixels={pixels!r} must be an integer number of pixels per frame "
                           f"(e.g. {min_pixels}, about {math.isqrt(min_pixels)}x{math.isqrt(min_pixels)})")
    if pixels < min_pixels:
        raise OptionsError(
            f"camera_pixels={pixels} is below this model's smallest video frame ({min_pixels} pixels): the "
            f"frames would be enlarged again. Pass camera_pixels >= {min_pixels}, or load the model with "
            f"Omni.load(..., video_min_pixels={pixels}) to allow smaller frames")
    if pixels > max_pixels:
        raise OptionsError(f"camera_pixels={pixels} exceeds the largest video frame ({max_pixels} pixels); "
                           f"pass at most {max_pixels}")
    return pixels


def camera_frame_size(height: int, width: int, pixels: int, min_pixels: int) -> tuple[int, int]:
    """(height, width), multiples of 28 with min_pixels <= area <= pixels, close to the aspect ratio."""
    if height <= 0 or width <= 0:
        raise CameraError(f"the camera gave an empty {width}x{height} frame")
    if max(height, width) / min(height, width) > 200:
        raise CameraError(f"the camera frames are {width}x{height}, an aspect ratio above 200:1; crop them")
    scale = math.sqrt(pixels / (height * width))
    h0 = max(FACTOR, math.floor(height * scale / FACTOR) * FACTOR)
    w0 = max(FACTOR, math.floor(width * scale / FACTOR) * FACTOR)
    aspect = width / height
    best: tuple[bool, float, int, tuple[int, int]] | None = None
    for h in (h0 - FACTOR, h0, h0 + FACTOR):  # the floor fit, and its neighbours when it misses the range
        for w in (w0 - FACTOR, w0, w0 + FACTOR):
            if h >= FACTOR and w >= FACTOR and min_pixels <= h * w <= pixels:
                err = abs(math.log(w / h / aspect))  # within 6 %: the larger frame, else the closer shape
                key = (err > ASPECT_SLACK, err if err > ASPECT_SLACK else 0.0, -h * w, (h, w))
                best = key if best is None or key < best else best
    if best is None:
        raise CameraError(
            f"no frame size for {width}x{height} camera frames fits between {min_pixels} and {pixels} pixels; "
            "raise camera_pixels (or load the model with a lower video_min_pixels)")
    return best[3]


def _rgb(frame: Any) -> np.ndarray:
    """An (H, W, 3) uint8 array from an array or PIL image; CameraError for anything else."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    if not isinstance(frame, np.ndarray):
        raise CameraError(f"the camera gave a {type(frame).__name__}; a frame must be an (H, W, 3) uint8 numpy "
                          "array or a PIL image")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise CameraError(f"the camera gave a {frame.dtype} frame of shape {frame.shape}; frames must be "
                          "(H, W, 3) (or RGBA (H, W, 4)) uint8 arrays: convert with np.asarray(img, np.uint8)")
    return frame[:, :, :3]


# ---------------------------------------------------------------- recorder


@dataclass
class _Turn:
    start: float  # time.monotonic() of the turn's first audio sample (grid time 0)
    next_k: int  # next grid frame the thread reads live
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    chunks_sent: int = 0


class CameraRecorder:
    """Reads a camera source at 2 fps on its own thread, keeps the last seconds, and records the
    frames of a turn on the audio's grid. Errors (a source raising, a bad frame) go to `on_error` as
    CameraError once, and the recorder stops reading (turns go on without video)."""

    def __init__(self, source: Any, pixels: int, min_pixels: int, *,
                 on_error: Callable[[CameraError], None] | None = None,
                 on_chunk: Callable[[int, np.ndarray], None] | None = None) -> None:
        self.source = as_camera(source)
        self.pixels, self.min_pixels = int(pixels), int(min_pixels)
        self.on_error, self.on_chunk = on_error, on_chunk
        self.error: CameraError | None = None
        self.latest: np.ndarray | None = None  # the last resized frame (a preview)
        self._kept: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=int(KEEP_SECONDS * FPS) + 2)
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        self._turn: _Turn | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._next = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="pocketomni-camera", daemon=True)
        self._thread.start()

    # -- the session's hooks
    def speech_started(self, audio_start: float) -> None:
        """The user started speaking; the turn's audio begins at `audio_start` (time.monotonic())."""
        now = time.monotonic()
        with self._lock:
            turn = _Turn(audio_start, max(0, math.ceil((now - audio_start) / PERIOD - 0.02)))  # 10 ms: "now" is live
            for k in range(turn.next_k):  # grid times already past: what the camera showed then
                f = self._held(audio_start + k * PERIOD)
                if f is not None:
                    turn.frames[k] = f
            self._turn = turn
        self._wake.set()

    def take(self, audio_seconds: float) -> np.ndarray | None:
        """End the turn: its 2 * floor(audio_seconds) frames (at least 2), (T, H, W, 3) uint8, or None
        when no turn was started or the camera gave no frame."""
        with self._lock:
            turn, self._turn = self._turn, None
            if turn is None or self.error is not None:  # a failed camera's last frames are stale
                return None
            n = min(MAX_FRAMES, max(2, 2 * math.floor(audio_seconds)))
            frames = [turn.frames.get(k) for k in range(n)]
        known = [f for f in frames if f is not None]
        if not known:
            return None
        first = known[0]
        out, last = [], first
        for f in frames:  # missing frames (camera switched on mid-turn, reads late or failed): hold
            last = f if f is not None else last
            out.append(last)
        if any(f.shape != first.shape for f in out):  # the source changed size mid-turn: the first size
            out = [f if f.shape == first.shape else _resize(f, first.shape[:2]) for f in out]
        return np.stack(out)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)  # the source stays open: its owner closes it (it may serve again)

    # -- internals
    def _held(self, t: float) -> np.ndarray | None:
        """The frame showing at time t: the last read at or before t, else the first one after it."""
        before = [f for ts, f in self._kept if ts <= t + 1e-3]
        if before:
            return before[-1]
        return self._kept[0][1] if self._kept else None

    def _grab(self) -> np.ndarray | None:
        try:
            raw = self.source.read()
            if raw is None:
                return None
            rgb = _rgb(raw)
            h, w = rgb.shape[:2]
            size = self._sizes.get((h, w))
            if size is None:
                size = self._sizes[(h, w)] = camera_frame_size(h, w, self.pixels, self.min_pixels)
            return _resize(rgb, size)
        except CameraError:
            raise
        except Exception as e:
            raise CameraError(f"the camera source failed: {type(e).__name__}: {e}; check the camera (or "
                              "turn it off with session.set_camera(None))") from e

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                turn = self._turn
                due = turn.start + turn.next_k * PERIOD if turn is not None else self._next
            wait = due - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            try:
                frame = self._grab()
            except CameraError as e:
                self.error = e
                log.warning("%s", e)
                if self.on_error is not None:
                    self.on_error(e)
                return
            now = time.monotonic()
            chunk: tuple[int, np.ndarray] | None = None
            with self._lock:
                if frame is not None:
                    self._kept.append((now, frame))
                    self.latest = frame
                if turn is not None and self._turn is turn:
                    held = frame if frame is not None else turn.frames.get(turn.next_k - 1, self.latest)
                    if held is not None:
                        turn.frames[turn.next_k] = held
                    turn.next_k += 1
                    chunk = self._complete_chunk(turn)
                self._next = max(due + PERIOD, now)
            if chunk is not None and self.on_chunk is not None:
                self.on_chunk(*chunk)

    def _complete_chunk(self, turn: _Turn) -> tuple[int, np.ndarray] | None:
        j = turn.chunks_sent
        ks = range(j * CHUNK_FRAMES, (j + 1) * CHUNK_FRAMES)
        if turn.next_k < ks[-1] + 1 or not all(k in turn.frames for k in ks):
            return None
        turn.chunks_sent += 1
        return j, np.stack([turn.frames[k] for k in ks])


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.BICUBIC))


def prepend_still(frames: np.ndarray, seconds: float) -> np.ndarray:
    """frames with their first frame repeated in front for `seconds` of extra audio (an even count)."""
    k = 2 * round(seconds * FPS / 2)
    return frames if k <= 0 else np.concatenate([np.repeat(frames[:1], k, axis=0), frames])


def vad_lead_seconds(vad: Any) -> float:
    """How long before its speech_start event a VAD's turn audio begins (pre-roll + the speech needed
    to start); 0 for a detector without those settings."""
    c = getattr(vad, "config", None)
    return (float(getattr(c, "pre_roll_ms", 0.0)) + float(getattr(c, "min_speech_ms", 0.0))) / 1000.0


def video_frame_limits(chat: Any) -> tuple[int, int]:
    """(min, max) pixels of one video frame for the chat's model (its VideoConfig; the reference's
    defaults for chats without a local model, e.g. remote ones)."""
    from pocketomni.media.video import VideoConfig

    cfg = getattr(getattr(getattr(chat, "_model", None), "media", None), "video_config", None)
    cfg = cfg if isinstance(cfg, VideoConfig) else VideoConfig()
    return cfg.min_pixels, cfg.max_pixels
