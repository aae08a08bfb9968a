"""VoiceSession: a spoken conversation on a Chat -- microphone in, speaker out, barge-in.

    chat = omni.chat(speech=True, voice="Chelsie")          # speech=False: text replies only
    async with po.VoiceSession(chat) as vs:                 # hands-free: the VAD ends each turn
        async for ev in vs:
            if isinstance(ev, po.TextDelta):
                print(ev.text, end="")

The turn is sent to the model as audio (the model hears it; there is no separate recognizer). In
hands-free mode the session listens while the user speaks: from the VAD's speech_start on, the audio
goes into a live turn (`chat.begin_turn()`, pocketomni.chat.live_turn) whose 2 s windows are encoded
and prefilled as they are heard, also while a reply is still playing, so at the end of the turn only
the last partial window and the assistant header remain (`live=False`: the whole clip at the end). The
reply streams to the speaker as AudioChunks arrive. When the user starts speaking over a reply
(or presses push-to-talk, or calls `interrupt()`), playback stops at once and generation is
cancelled; the partial reply stays in the chat's history, marked interrupted.

Threads: PortAudio's callbacks fill the Recorder's queue; a capture thread runs the VAD (and
barge-in, so it never waits for the model); a turn thread runs the chat and feeds the Player; a
dispatch thread hands events, in order, to listeners (`on_event=` callbacks, `add_listener`) and
to `async for` consumers. Callbacks run on that dispatch thread: GUI code should re-post them to
its own loop (Kivy: `Clock.schedule_once`).

No echo cancellation: on a device whose speaker feeds its own microphone, use headphones, push-to-talk
or `barge_in=False`, or the reply will interrupt itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pocketomni.audio.rates import INPUT_RATE
from pocketomni.audio.vad import VadConfig, VoiceActivityDetector
from pocketomni.errors import FeatureUnavailableError, OptionsError, PocketOmniError
from pocketomni.events import AudioChunk, Done, TextDelta
from pocketomni.voice.camera import (
    CHUNK_FRAMES,
    DEFAULT_PIXELS,
    FPS,
    CameraRecorder,
    check_camera_pixels,
    prepend_still,
    vad_lead_seconds,
    video_frame_limits,
)
from pocketomni.voice.events import (
    BargeIn,
    Listening,
    OutputStatus,
    ReplyDone,
    SessionClosed,
    UserSpeaking,
    UserTurn,
    VoiceError,
    VoiceEvent,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from pocketomni.audio.contract import AudioBackend, AudioPlayer, AudioRecorder
    from pocketomni.audio.live_mel import ClampMode
    from pocketomni.chat.chat import Chat
    from pocketomni.chat.live_turn import LiveTurn

__all__ = ["BargeIn", "Listening", "OutputStatus", "ReplyDone", "SessionClosed", "UserSpeaking", "UserTurn",
           "VoiceError", "VoiceEvent", "VoiceSession"]

log = logging.getLogger("pocketomni.voice.session")
RATE = INPUT_RATE  # capture rate: the audio encoder's
MIN_TURN_SECONDS = 0.2  # shorter push-to-talk presses are ignored (a tap, not a question)
PTT_PRE_ROLL_SECONDS = 0.25  # audio kept from just before a push-to-talk press


@dataclass(frozen=True)
class _Subscribe:
    callback: Callable[[Any], None]


@dataclass
class _Turn:
    audio: np.ndarray | None
    text: str | None
    visual: tuple[str, Any] | None  # ("images", [image]), ("video", clip) or ("camera", frames): seen with this turn
    epoch: int
    ended_at: float = field(default_factory=time.monotonic)
    live: LiveTurn | None = None  # hands-free: the turn heard so far, encoded as it comes
    ended: threading.Event | None = None  # set when a live turn's speech ended (or it was dropped)


# ---------------------------------------------------------------- session


class VoiceSession:
    """A voice conversation on `chat`. Start with `start()` / `with` / `async with`; stop with `close()`.

    input_device / output_device: index, name, None (system default) or False (none: no capture,
      `submit()` only / text-only replies). Replies are spoken only when the chat has speech=True and
      an output device opens; otherwise the session says so with an OutputStatus(speaking=False).
    vad: a VadConfig, or a detector with feed()/reset() returning VadEvents (default VadConfig()).
    hands_free: True: the VAD ends each turn; False: push-to-talk (`press()` / `release()`).
    barge_in: the user's voice over a reply stops it (needs headphones or no acoustic echo).
    options: GenerationOptions / dict for every turn (default: the chat's).
    on_event: a callback for every event (runs on the session's dispatch thread).
    audio_backend: where the devices come from (pocketomni.audio.backend.audio_backend(); default:
      the platform's, AudioRecord/AudioTrack on Android, sounddevice elsewhere).
    camera: a live camera source (pocketomni.voice.camera): spoken turns are sent as video at 2 fps
      with the user's voice as its sound track (hands-free live turns take each 2 s chunk of frames
      and voice while the user speaks); `set_camera()` switches it at any time.
    camera_pixels: pixels per camera frame at most (default 160*28*28: 4:3 frames become 392x308, 154
      tokens per second of video), at least the model's smallest video frame (Omni video_min_pixels).
    live: hands-free turns are encoded and prefilled while the user speaks (needs a VAD with
      take_audio(), as VoiceActivityDetector has); False: the whole clip after the turn ends.
    clamp: the live turns' log-mel clamp mode, "exact" or "streaming" (default: Chat.begin_turn's).
    """

    def __init__(self, chat: Chat, input_device: int | str | None | Literal[False] = None,
                 output_device: int | str | None | Literal[False] = None, *, vad: Any = None,
                 hands_free: bool = True, barge_in: bool = True, options: Any = None,
                 on_event: Callable[[Any], None] | None = None, audio_backend: AudioBackend | None = None,
                 camera: Any = None, camera_pixels: int | None = None,
                 live: bool = True, clamp: ClampMode | None = None) -> None:
        self.chat = chat
        self._audio = audio_backend
        self.input_device, self.output_device = input_device, output_device
        if vad is None or isinstance(vad, VadConfig):
            vad = VoiceActivityDetector(vad or VadConfig(sample_rate=RATE))
        if not hasattr(vad, "feed") or not hasattr(vad, "reset"):
            raise OptionsError("vad must be a VadConfig or a detector with feed() and reset() (see pocketomni.audio.vad)")
        if getattr(getattr(vad, "config", None), "sample_rate", RATE) != RATE:
            raise OptionsError(f"the VAD must run at {RATE} Hz, the capture rate")
        self.vad = vad
        self.barge_in = barge_in
        self.options = options
        self.live = bool(live) and hasattr(vad, "take_audio")
        self.clamp = clamp
        self._open: _Turn | None = None  # the live turn the user is speaking now
        self._queued = 0  # submitted turns not yet done (a live turn counts once its speech ended)
        self._hands_free = bool(hands_free)
        self._listeners: list[Callable[[Any], None]] = [on_event] if on_event else []
        self._sticky: dict[type, Any] = {}  # latest OutputStatus / Listening dispatched, for new listeners
        self._dispatched_close = False
        self._events: queue.Queue[Any] = queue.Queue()
        self._turns: queue.Queue[_Turn | None] = queue.Queue()
        self._lock = threading.RLock()
        self._epoch = 0  # bumped by every barge-in: turns of an older epoch are stopped or dropped
        self._replying = False  # from a turn's submission until its audio has played
        self._visual: tuple[str, Any] | None = None  # camera context for the next turn
        self._ptt: list[np.ndarray] | None = None  # blocks captured while push-to-talk is held
        self._ptt_started = 0.0
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=int(PTT_PRE_ROLL_SECONDS * 50) + 1)
        self._carry: np.ndarray | None = None  # audio of a turn dropped before the model took it
        self.recorder: AudioRecorder | None = None
        self.player: AudioPlayer | None = None
        self.speaking = False
        self.barge_ins: list[BargeIn] = []  # every barge-in so far (latency figures)
        self.last_live: LiveTurn | None = None  # the live turn of the last reply (its window timings)
        self._threads: list[threading.Thread] = []
        self._started = self._closed = False
        self._video_limits = video_frame_limits(chat)
        default_pixels = max(DEFAULT_PIXELS, self._video_limits[0] * 5 // 4)  # room for the 28-pixel steps
        self.camera_pixels = check_camera_pixels(default_pixels if camera_pixels is None else camera_pixels,
                                                 *self._video_limits)
        self.camera: CameraRecorder | None = None
        if camera is not None:
            self.set_camera(camera)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Open the devices and start listening. Raises FeatureUnavailableError without a microphone."""
        if self._started:
            return self
        if self._audio is None:
            from pocketomni.audio.backend import audio_backend

            self._audio = audio_backend()
        audio = self._audio
        if self.input_device is not False:
            self.recorder = audio.open_recorder(self.input_device, RATE)
        try:
            self.speaking, reason = self._open_output(audio)
        except BaseException:
            if self.recorder is not None:
                self.recorder.close()
            raise
        self._started = True
        self._emit(OutputStatus(self.speaking, reason))
        for name, target in (("dispatch", self._dispatch_loop), ("turns", self._turn_loop),
                             ("capture", self._capture_loop)):
            if name == "capture" and self.recorder is None:
                continue
            t = threading.Thread(target=target, name=f"pocketomni-voice-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.recorder is not None:
            self.recorder.start()
        self._emit(Listening(self._hands_free))
        return self

    def _open_output(self, audio: AudioBackend) -> tuple[bool, str]:
        if not getattr(self.chat, "speech", False):
            return False, "text only: the chat was created with speech=False (use omni.chat(speech=True))"
        if self.output_device is False:
            return False, "text only: no output device was requested (output_device=False)"
        if self.output_device is None and not audio.has_output_device():
            return False, "text only: there is no output device (speaker) on this system"
        try:
            self.player = audio.open_player(self.output_device, queue_seconds=120.0)
        except (FeatureUnavailableError, OptionsError) as e:
            return False, f"text only: {e}"
        return True, f"speaking on {self.player.device.name}"

    def close(self) -> None:
        """Stop listening and speaking, cancel a running reply, release the devices (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._epoch += 1
        self.chat.cancel()
        if self.player is not None:
            self.player.stop()
        self._drop_open()
        self._turns.put(None)
        self.set_camera(None)
        me = threading.current_thread()  # close() may be called from a listener (the dispatch thread)
        for t in self._threads:
            if t.name.endswith(("capture", "turns")) and t is not me:
                t.join(timeout=30)
        for dev in (self.recorder, self.player):
            if dev is not None:
                dev.close()
        self._emit(SessionClosed())
        self._events.put(None)
        for t in self._threads:
            if t is not me:
                t.join(timeout=5)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------------ controls

    @property
    def hands_free(self) -> bool:
        return self._hands_free

    @hands_free.setter
    def hands_free(self, on: bool) -> None:
        """Switch between hands-free (VAD) and push-to-talk; a turn in progress is dropped."""
        with self._lock:
            self._hands_free = bool(on)
            self._ptt = None
            self.vad.reset()
            self._drop_open()
        self._emit(Listening(self._hands_free))

    @property
    def replying(self) -> bool:
        """True while a reply is being generated or played."""
        return self._replying

    def press(self) -> None:
        """Push-to-talk pressed: interrupts a reply and starts collecting the user's turn."""
        if self._hands_free:
            raise PocketOmniError("press()/release() are for push-to-talk; set session.hands_free = False first")
        now = time.monotonic()
        self._barge("push_to_talk", now)
        with self._lock:
            self._ptt = list(self._recent)
            self._ptt_started = now
        if self.camera is not None:
            self.camera.speech_started(now - PTT_PRE_ROLL_SECONDS)
        self._emit(UserSpeaking(now))

    def release(self) -> None:
        """Push-to-talk released: the audio since `press()` (plus a short pre-roll) becomes the user's turn.
        A press shorter than MIN_TURN_SECONDS is a tap, not a turn."""
        with self._lock:
            blocks, self._ptt = self._ptt, None
            held = time.monotonic() - self._ptt_started
        if blocks is None:
            return
        if held < MIN_TURN_SECONDS or not blocks:
            self._emit(Listening(self._hands_free))
            return
        self._queue_turn(np.concatenate(blocks))

    def interrupt(self) -> None:
        """Stop the reply now (a stop button): playback stops, generation is cancelled."""
        self._barge("interrupt", time.monotonic())

    def set_camera(self, source: Any) -> None:
        """A live camera (a source of pocketomni.voice.camera: VideoFileCamera, FrameStream, PushCamera, a
        callable or an iterator of frames) recorded while the user speaks; None turns it off. Its
        failures arrive as VoiceError events carrying a CameraError; turns then go on without video."""
        new = None if source is None else CameraRecorder(
            source, self.camera_pixels, self._video_limits[0],
            on_error=lambda e: self._emit(VoiceError(f"camera off: {e}", e)), on_chunk=self._camera_chunk)
        with self._lock:
            old, self.camera = self.camera, new
        if old is not None:
            old.close()

    def attach_image(self, image: Any) -> None:
        """An image (path, bytes, PIL image or array) the model sees with the next user turn; None clears it."""
        with self._lock:
            self._visual = None if image is None else ("images", [image])

    def attach_video(self, video: Any) -> None:
        """A short clip the model sees with the next user turn (a camera's last seconds): a file path or
        (frames, fps); None clears it. Its own sound is not used: the user's turn is the audio."""
        if video is not None and not isinstance(video, (str, os.PathLike, tuple)):
            raise OptionsError("attach_video takes a file path or (frames, fps)")
        with self._lock:
            self._visual = None if video is None else ("video", video)

    def submit(self, audio: Any = None, sample_rate: int = RATE, *, text: str | None = None,
               image: Any = None, video: Any = None) -> None:
        """Queue a turn without the microphone: a mono clip (array at `sample_rate`) and/or text, with
        an optional image or video clip (as `attach_image` / `attach_video`)."""
        if audio is None and text is None:
            raise OptionsError("submit() needs audio or text")
        clip = None
        if audio is not None:
            from pocketomni.media.audio import resample, to_mono

            clip = resample(to_mono(np.asarray(audio, dtype=np.float32)), int(sample_rate), RATE)
        if image is not None:
            self.attach_image(image)
        if video is not None:
            self.attach_video(video)
        self._queue_turn(clip, text)

    @property
    def history(self) -> list[Any]:
        """The chat's messages (interrupted replies carry interrupted=True)."""
        return self.chat.messages

    # ------------------------------------------------------------------ events out

    def add_listener(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(event)` for every later event (on the dispatch thread). It first gets the
        current OutputStatus and Listening state, in stream order (no event twice, none missed)."""
        with self._lock:
            running = self._started and not self._dispatched_close
            if not running:
                self._listeners.append(callback)
                replay = list(self._sticky.values()) + ([SessionClosed()] if self._dispatched_close else [])
        if running:
            self._events.put(_Subscribe(callback))  # joins at this point of the stream
        else:
            for ev in replay:
                self._call(callback, ev)

    def remove_listener(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    async def events(self) -> AsyncIterator[Any]:
        """Async iterator of the session's events, ending after SessionClosed."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()

        def put(ev: Any) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the loop is gone
                pass

        self.add_listener(put)
        try:
            while True:
                ev = await q.get()
                yield ev
                if isinstance(ev, SessionClosed):
                    return
        finally:
            self.remove_listener(put)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.events()

    def _emit(self, ev: Any) -> None:
        self._events.put(ev)

    @staticmethod
    def _call(cb: Callable[[Any], None], ev: Any) -> None:
        try:
            cb(ev)
        except Exception:  # a listener's bug must not stop the session
            log.exception("voice session listener failed on %r", type(ev).__name__)

    def _dispatch_loop(self) -> None:
        while True:
            ev = self._events.get()
            if ev is None:
                return
            if isinstance(ev, _Subscribe):
                with self._lock:
                    self._listeners.append(ev.callback)
                for old in list(self._sticky.values()):
                    self._call(ev.callback, old)
                continue
            if isinstance(ev, (OutputStatus, Listening)):
                self._sticky[type(ev)] = ev
            with self._lock:
                listeners = list(self._listeners)
                self._dispatched_close = isinstance(ev, SessionClosed)
            for cb in listeners:
                self._call(cb, ev)

    # ------------------------------------------------------------------ capture thread

    def _capture_loop(self) -> None:
        rec = self.recorder
        assert rec is not None
        while not self._closed:
            blk = rec.read(timeout=0.1)
            if blk is None:
                continue
            with self._lock:
                self._recent.append(blk)
                if not self._hands_free:
                    if self._ptt is not None:
                        self._ptt.append(blk)
                    continue
            try:
                for ev in self.vad.feed(blk):
                    self._on_vad(ev)
                self._feed_open()
            except Exception as e:  # noqa: BLE001 -- reported, capture goes on
                self._emit(VoiceError(f"voice activity detection failed: {e}", e))

    def _on_vad(self, ev: Any) -> None:
        now = time.monotonic()
        if ev.kind == "speech_start":
            if self.camera is not None:
                self.camera.speech_started(now - vad_lead_seconds(self.vad))
            if self.barge_in:
                self._barge("voice", now)
            self._emit(UserSpeaking(now))
            if self.live:
                self._open_live()
        elif ev.kind == "speech_end" and ev.audio is not None:
            audio = np.asarray(ev.audio, dtype=np.float32)
            with self._lock:
                turn, self._open = self._open, None
            if turn is not None and turn.live is not None:
                self._end_live(turn, audio)
            else:
                self._queue_turn(audio)

    # ------------------------------------------------------------------ live turns (hands-free)

    def _open_live(self) -> None:
        """speech_start: a live turn takes the audio from here on (queued now, so turns stay in order)."""
        self._drop_open()
        try:
            kw: dict[str, Any] = {} if self.clamp is None else {"clamp": self.clamp}
            video = self.camera is not None and self.chat._model.folder.vision  # frames stream in with the voice
            live = self.chat.begin_turn(options=self.options, video=video, **kw)
        except PocketOmniError as e:
            self._emit(VoiceError(f"cannot listen while you speak ({e}); the turn is sent when it ends", e))
            self.live = False
            return
        turn = _Turn(None, None, None, self._epoch, live=live, ended=threading.Event())
        with self._lock:
            self._open = turn
        self._turns.put(turn)

    def _feed_open(self) -> None:
        turn = self._open
        if turn is None or turn.live is None:
            return
        x = self.vad.take_audio()
        if x.size:
            turn.live.feed_audio(x)

    def _camera_chunk(self, j: int, frames: np.ndarray) -> None:
        """The camera's 2 s chunk j of the turn being spoken (camera thread): into its live turn, in order.
        A chunk that does not follow (the turn began later, one was missed, the size changed) is left
        out; finish() then gets the whole recording and encodes what is missing."""
        turn = self._open
        live = None if turn is None else turn.live
        if live is None or not live.video or live.done or live.n_frames != CHUNK_FRAMES * j:
            return
        try:
            live.feed_video(frames)
        except PocketOmniError as e:
            log.debug("camera chunk %d not streamed: %s", j, e)

    def _end_live(self, turn: _Turn, audio: np.ndarray) -> None:
        """speech_end: the rest of the utterance goes in; the turn is submitted."""
        live = turn.live
        assert live is not None and turn.ended is not None
        fed = live.n_samples
        if fed <= audio.size and not live.done:
            live.feed_audio(audio[fed:])  # (a mismatch makes _run_turn send the whole clip instead)
        with self._lock:
            if self._closed:
                return
            turn.visual = self._take_visual(audio)  # a camera turn: the recording, checked against the chunks fed
            turn.audio, turn.epoch, turn.ended_at = audio, self._epoch, time.monotonic()
            self._replying = True
            self._queued += 1
        self._emit_user_turn(turn)
        turn.ended.set()

    def _drop_open(self) -> None:
        """The turn being spoken is dropped (VAD reset, session closed)."""
        with self._lock:
            turn, self._open = self._open, None
        if turn is not None and turn.live is not None:
            turn.live.abort()
            assert turn.ended is not None
            turn.ended.set()

    def _barge(self, source: str, detected_at: float) -> None:
        """Stop playback first (the audible part), then cancel generation; report the latency."""
        with self._lock:
            if not self._replying:
                return
            self._epoch += 1
        player = self.player
        was_playing = player is not None and player.is_playing
        if player is not None:
            player.stop()
        stop_s = time.monotonic() - detected_at
        self.chat.cancel()
        ev = BargeIn(detected_at, stop_s, was_playing, source)
        self.barge_ins.append(ev)
        self._emit(ev)

    def _queue_turn(self, audio: np.ndarray | None, text: str | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._replying = True
            self._queued += 1
            turn = _Turn(audio, text, self._take_visual(audio), self._epoch)
        self._emit_user_turn(turn)
        self._turns.put(turn)

    def _take_visual(self, audio: np.ndarray | None) -> tuple[str, Any] | None:
        """What the next turn sees (under the lock): an attachment, else the camera's frames of this turn."""
        visual, self._visual = self._visual, None
        camera = self.camera
        if camera is not None and audio is not None:  # always end the camera's turn; attachments win
            frames = camera.take(audio.size / RATE)
            visual = visual or (None if frames is None else ("camera", frames))
        return visual

    def _emit_user_turn(self, turn: _Turn) -> None:
        audio, visual = turn.audio, turn.visual
        kind = visual[0] if visual else None
        self._emit(UserTurn(0.0 if audio is None else audio.size / RATE, kind == "images", turn.text, turn.ended_at,
                            audio, video=kind in ("video", "camera"),
                            frames=visual[1] if visual is not None and kind == "camera" else None))

    # ------------------------------------------------------------------ turn thread

    def _turn_loop(self) -> None:
        if self.live:  # load the audio encoder now rather than while the user's first turn is heard
            try:
                self.chat._model.media.live_audio_encoder()
            except PocketOmniError:
                self.live = False
        while True:
            turn = self._turns.get()
            if turn is None or self._closed:
                return
            if turn.ended is not None:  # a live turn: wait until the user has finished speaking
                while not turn.ended.wait(0.1):
                    if self._closed:
                        return
                if turn.audio is None:  # dropped while being spoken
                    continue
            try:
                self._run_turn(turn)
            except Exception as e:  # noqa: BLE001 -- reported; the session keeps listening
                self._emit(VoiceError(f"the reply failed: {e}", e))
            with self._lock:
                self._queued -= 1
                self._replying = self._queued > 0
            if not self._closed and not self._replying:
                self._emit(Listening(self._hands_free))

    def _run_turn(self, turn: _Turn) -> None:
        audio = turn.audio
        live = turn.live
        camera = turn.visual is not None and turn.visual[0] == "camera"
        if live is not None and (self._carry is not None or turn.epoch != self._epoch or live.done
                                 or (turn.visual is not None and not (camera and live.video))
                                 or live.n_samples != (0 if audio is None else audio.size)):
            live.abort()  # it cannot take what goes before its audio: the whole clip, as without live turns
            live = None
        if self._carry is not None and audio is not None:  # a turn cut short by more speech: join them
            if turn.visual is not None and turn.visual[0] == "camera":  # the camera held still over the carry
                turn.visual = ("camera", prepend_still(turn.visual[1], self._carry.size / RATE + 0.2))
            audio = np.concatenate([self._carry, np.zeros(RATE // 5, np.float32), audio])
        self._carry = None
        if turn.epoch != self._epoch:  # barged in on before it started: keep its audio for the next turn
            self._carry = audio
            return
        player = self.player if self.speaking else None
        if player is not None:
            player.resume()
        kwargs: dict[str, Any] = {"text": turn.text}
        if audio is not None:
            kwargs["audio"] = [(audio, RATE)]
        if turn.visual is not None:
            kind, value = turn.visual
            if kind == "camera":  # the user's voice is the video's sound track (2 s chunks interleaved)
                assert audio is not None
                kwargs["video"] = (value, FPS, audio, RATE)
                del kwargs["audio"]
            else:
                kwargs[kind] = value
            if kind == "video":
                kwargs["use_audio_in_video"] = False
        if self.options is not None:
            kwargs["options"] = self.options
        t_text = t_audio = 0.0
        done: Done | None = None
        self.last_live = live
        if live is None:
            events = self.chat.send_sync(**kwargs)
        elif live.video:  # the camera's recording (none: the camera failed or went off)
            events = live.finish_sync(frames=turn.visual[1] if camera and turn.visual else ())
        else:
            events = live.finish_sync()
        for ev in events:
            if turn.epoch != self._epoch:
                self.chat.cancel()  # the turn now holds the chat, so this reaches it
            if isinstance(ev, TextDelta):
                t_text = t_text or time.monotonic()
            elif isinstance(ev, AudioChunk):
                if player is not None and turn.epoch == self._epoch and player.write(ev.samples):
                    t_audio = t_audio or time.monotonic()
            elif isinstance(ev, Done):
                done = ev
                continue
            self._emit(ev)
        if done is None:
            return
        if done.finish_reason == "cancelled" and done.usage.prompt_tokens == 0 and audio is not None:
            self._carry = audio  # cancelled before the model took it: nothing entered the history
        self._emit(ReplyDone(done, done.finish_reason == "cancelled",
                             t_text - turn.ended_at if t_text else 0.0, t_audio - turn.ended_at if t_audio else 0.0))
        if player is not None and turn.epoch == self._epoch:
            player.finish()
            while not player.wait(0.05) and turn.epoch == self._epoch and not self._closed:
                pass
