"""An open user turn: audio fed while the user speaks is encoded and prefilled before the turn ends.

    turn = chat.begin_turn()                  # clamp="streaming" (the default) or "exact"
    for block in microphone:                  # any thread; never waits for the model
        turn.feed_audio(block)                # mono float32 at 16 kHz
    for ev in turn.finish_sync(text=None):    # or `async for ev in turn.finish()`: events as send()
        ...

The audio tower encodes 2 s windows independently (audio.tower) and audio tokens take sequential
positions, so each window is encoded as soon as its samples are in (audio.live_mel) and prefilled
into the chat's cache inside the still open user message: `<|im_start|>user\\n<|audio_bos|>` first,
then 50 audio rows per window. `finish` encodes the last partial window, prefills it with
`<|audio_eos|>`, the optional text, `<|im_end|>` and the assistant header, then replies exactly as
`chat.send(audio=[(clip, 16000)], text=text)` does. The prompt ids and positions are those of that
send (checked: a mismatch re-prefills the turn from its start).

Clamp modes (the log-mel clamp at the clip's maximum - 8 is the one step that sees the whole clip):
`streaming` (the default) clamps each window at the maximum heard so far and never goes back; `exact`
does the same, then at `finish` re-encodes and re-prefills from the first window the final maximum
changes, so the features are the whole clip's and the turn is `send`'s to float32 rounding. How often
exact has to go back and how far the modes are apart: benchmarks/results/live_clamp.md; why the
default is streaming: audio.live_mel.DEFAULT_CLAMP.

Threads and the chat: a worker thread per turn encodes and prefills. It takes the chat when the chat
is free (a reply still running or playing keeps it; the windows are encoded meanwhile and prefilled
when it ends) and holds it until `finish` or `abort`: other turns on the chat wait until then.
`chat.cancel()` does not touch an open turn before `finish` (it stops replies); `abort()` drops it and
rolls the cache back. A turn not finished leaves the chat as it was.

Video (a camera while the user speaks): `chat.begin_turn(video=True)`, then `feed_video(frames)` at the
model's 2 fps from the turn's first audio sample (frame k: what the camera showed k / 2 s in). The turn
lays out as `chat.send(video=(frames, 2, clip, 16000))` does: `<|vision_bos|><|audio_bos|>`, then per 2 s
chunk its 4 frames' rows (2 frame pairs: the vision tower encodes each pair on its own, so pair by pair
gives the whole video's rows) and its 2 s of audio rows; each chunk is prefilled once both are in. The
video sent is the frames fed (or `finish(frames=...)`: the whole recording, replacing them; `frames=()`:
no video after all). At `finish` the cache is checked against the one-piece layout (ids, positions,
rows); a video turn that differs is prefilled again from its start (its cells were relabelled by the
ordered decode, engine/ordered_decode.py, so it cannot be cut at a token), an audio turn from the
first token that differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketomni.audio.features import n_audio_tokens
from pocketomni.audio.live_mel import CLAMP_MODES, ClampMode, LiveLogMel, Window
from pocketomni.audio.rates import INPUT_RATE
from pocketomni.backend.batch import DecodeInterrupted
from pocketomni.chat.async_bridge import CancelFlag, ThreadStream
from pocketomni.chat.conversation import Message, Part, user_message
from pocketomni.chat.history_keeper import StoredMedia
from pocketomni.chat.turn_state import Prefilled, TurnAbandoned, TurnHold, TurnHooks
from pocketomni.engine.positions import (
    KIND_AUDIO,
    KIND_VIDEO,
    AudioSegment,
    PromptLayout,
    Segment,
    VideoSegment,
    build_prompt,
)
from pocketomni.errors import MediaError, OptionsError, PocketOmniError
from pocketomni.events import Event
from pocketomni.media.video import frame_array, frame_size, resize_frames

if TYPE_CHECKING:
    from pocketomni.audio.tower import AudioEncoder
    from pocketomni.backend.sampling import SamplingParams
    from pocketomni.chat.chat import Chat
    from pocketomni.options import GenerationOptions

__all__ = ["LiveTurn", "WindowTiming"]

POLL_SECONDS = 0.05  # how often a waiting worker retries a busy chat
LIVE_FPS = 2.0  # frames fed to a live turn: the model's video rate
CHUNK_PAIRS = 2  # frame pairs per 2 s chunk of the video+audio layout


@dataclass
class WindowTiming:
    """One 2 s window of a live turn (time.monotonic() stamps; 0.0 = not yet)."""

    index: int
    heard_at: float  # its samples were all fed
    encoded_at: float = 0.0
    prefilled_at: float = 0.0
    reencoded: bool = False  # exact mode redid it at finish (the clip's maximum changed its features)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _frame_list(frames: Any) -> list[np.ndarray]:
    """One frame, a (T, H, W, 3) array or a sequence of frames -> a list of (H, W, 3) uint8 frames."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        seq: list[Any] = list(frames)
    elif isinstance(frames, np.ndarray) or not isinstance(frames, (list, tuple)):
        seq = [frames]
    else:
        seq = list(frames)
    out = [frame_array(f) for f in seq]
    if out and len({f.shape for f in out}) != 1:
        raise MediaError(f"all frames of a video must have one size; got {sorted({f.shape for f in out})}")
    return out


class LiveTurn:
    """A user turn still being spoken, on `chat` (create with `chat.begin_turn()`)."""

    def __init__(self, chat: Chat, clamp: ClampMode, opts: GenerationOptions, params: SamplingParams,
                 hooks: TurnHooks, video: bool = False) -> None:
        if clamp not in CLAMP_MODES:
            raise OptionsError(f"clamp must be one of {', '.join(CLAMP_MODES)}, got {clamp!r}")
        if not isinstance(video, bool):
            raise OptionsError(f"video must be True or False, got {video!r}")
        chat._check_open()
        self.chat = chat
        self.clamp: ClampMode = clamp
        self.video = video
        self._opts, self._params, self._hooks = opts, params, hooks
        chat._model.folder.require("audio_in")
        if video:
            chat._model.folder.require("vision")
        self._encoder: AudioEncoder | None = None  # loaded by the worker: feed_audio's thread never waits
        self._mel = LiveLogMel()
        self._cond = threading.Condition()
        self._fed = 0  # samples fed (under _cond)
        self._finishing = self._aborted = self._closed = False
        self.timings: list[WindowTiming] = []
        self._windows: list[Window] = []
        self._rows: list[np.ndarray] = []  # encoded rows per window
        self._frames: list[np.ndarray] = []  # frames fed (under _cond)
        self._final_frames: list[np.ndarray] | None = None  # finish(frames=...): the whole video instead
        self._size: tuple[int, int] | None = None  # (height, width) the vision tower sees
        self._sized: list[np.ndarray] = []  # the frames at that size (worker)
        self._pairs: list[np.ndarray] = []  # encoded rows per frame pair (worker)
        self._cached: dict[int, list[np.ndarray]] = {}  # rows in the cache by kind, in prompt order
        self._held: TurnHold | None = None
        self._n0 = 0  # history length before the turn
        self._start_pos = 0
        self._head: list[Segment] = []  # prompt segments before the media
        self._n_head = 0  # ids of the head plus the media's bos tokens, once prefilled
        self._n_chunks_in = 0  # 2 s chunks (audio window, and its 4 frames in a video turn) in the cache
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._work, name="pocketomni-live-turn", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._fed

    @property
    def n_frames(self) -> int:
        """Video frames fed so far."""
        return len(self._frames)

    @property
    def samples(self) -> np.ndarray:
        """The clip fed so far (a copy)."""
        with self._cond:
            return self._mel.samples.copy()

    def feed_audio(self, samples: Any, sample_rate: int = INPUT_RATE) -> None:
        """Append mono float samples (resampled to 16 kHz when `sample_rate` differs). Returns at once;
        the worker encodes each 2 s window once it is complete."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if sample_rate != INPUT_RATE:
            from pocketomni.media.audio import resample

            x = resample(x, int(sample_rate), INPUT_RATE)
        with self._cond:
            self._check_feeding()
            self._mel.feed(x)
            self._fed = self._mel.n_samples
            self._cond.notify_all()

    def feed_video(self, frames: Any, fps: float = LIVE_FPS) -> None:
        """Append frames seen while the user speaks, at 2 fps from the turn's first audio sample: one
        (H, W, 3) uint8 frame or PIL image, a (T, H, W, 3) array or a list of frames, all of one size.
        Needs `chat.begin_turn(video=True)`. Returns at once; the worker encodes each frame pair and
        prefills each 2 s chunk (4 frames and 2 s of audio) once both are in."""
        if not self.video:
            raise OptionsError("this turn has no video: open it with chat.begin_turn(video=True) to feed frames")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps != LIVE_FPS:
            raise OptionsError(f"a live turn takes frames at the model's {LIVE_FPS:g} fps (frame k shows the "
                               f"camera k / {LIVE_FPS:g} s into the turn); got fps={fps!r}. Sample the camera at "
                               f"{LIVE_FPS:g} fps (pocketomni.voice.camera.CameraRecorder does)")
        new = _frame_list(frames)
        with self._cond:
            self._check_feeding()
            if new and self._frames and new[0].shape != self._frames[0].shape:
                raise MediaError(f"a {new[0].shape[1]}x{new[0].shape[0]} frame after "
                                 f"{self._frames[0].shape[1]}x{self._frames[0].shape[0]} ones: all frames of a "
                                 "video must have one size; resize it to the first frame's size")
            self._frames.extend(new)
            self._cond.notify_all()

    def finish(self, text: str | None = None, *, frames: Any = None) -> ThreadStream[Event]:
        """End the turn (optional typed text after the media) and stream the reply: the events of `send`.
        frames (video turns): the whole recording at 2 fps, sent instead of the frames fed (those that
        match are not encoded again); `()`: the turn goes without video."""
        self._end_feeding(frames)
        return ThreadStream(lambda flag: self._finish(text, flag))

    def finish_sync(self, text: str | None = None, *, frames: Any = None) -> Iterator[Event]:
        """The blocking twin of `finish`."""
        self._end_feeding(frames)
        return self._finish(text, CancelFlag())

    def abort(self) -> None:
        """Drop the turn: the worker stops, the cache is rolled back, the chat is free (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._aborted = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()
        self._release(rollback=True)

    @property
    def done(self) -> bool:
        """finish() or abort() was called."""
        return self._finishing or self._aborted

    # ------------------------------------------------------------------ worker

    def _check_feeding(self) -> None:
        if self._finishing or self._aborted:
            raise PocketOmniError("this turn has ended (finish() or abort() was called); begin a new one")

    def _end_feeding(self, frames: Any) -> None:
        final = None
        if frames is not None:
            if not self.video:
                raise OptionsError("frames= is for video turns: open the turn with chat.begin_turn(video=True)")
            final = _frame_list(frames) if len(frames) else []
        with self._cond:
            if self._finishing or self._aborted:
                raise PocketOmniError("finish() was already called on this turn (or it was aborted)")
            if self._mel.n_samples == 0:
                raise OptionsError("a live turn needs audio before finish(); feed_audio() first")
            self._final_frames = final
            self._finishing = True
            self._cond.notify_all()

    def _work(self) -> None:
        try:
            self._encoder = self.chat._model.media.live_audio_encoder()
            while True:
                with self._cond:
                    if self._aborted:
                        return
                    new = self._mel.windows()
                    frames = self._frames[len(self._sized):] if self._encoder is not None else []  # (stock audio: at finish)
                    finishing = self._finishing
                now = time.monotonic()
                for w in new:
                    self.timings.append(WindowTiming(w.index, now))
                    self._windows.append(w)
                    self._rows.append(self._encode(w))
                    self.timings[-1].encoded_at = time.monotonic()
                if frames:
                    self._encode_frames(frames)
                if self._held is None:
                    self._try_hold()  # also retried while the chat is busy with a reply
                if self._held is not None:
                    self._prefill_chunks()
                if finishing:
                    return
                if not new and not frames:
                    with self._cond:
                        if not self._aborted and not self._finishing:
                            self._cond.wait(POLL_SECONDS)
        except BaseException as e:  # noqa: BLE001 -- raised again by finish()
            self._error = e

    def _encode(self, w: Window) -> np.ndarray:
        if self._encoder is None or n_audio_tokens(w.features.shape[1]) == 0:
            return np.zeros((0, 0), np.float32)
        return self._encoder.encode(w.features)

    def _encode_frames(self, frames: list[np.ndarray]) -> None:
        """Bring new frames to the video frame size (prepare_video's rule) and encode each complete pair."""
        media = self.chat._model.media
        if self._size is None:
            h, w = frames[0].shape[:2]
            self._size = frame_size(h, w, 2 * CHUNK_PAIRS, media.video_config)
        self._sized.extend(resize_frames(frames, self._size))
        while 2 * len(self._pairs) + 2 <= len(self._sized):
            g = 2 * len(self._pairs)
            self._pairs.append(media.encode_frames(np.stack(self._sized[g : g + 2])))

    def _media_segment(self, n_audio: int, n_pairs: int) -> Segment:
        """The turn's media as a prompt segment (placeholder counts before anything is encoded)."""
        if not self.video:
            return AudioSegment(max(n_audio, 1))
        cfg = self.chat._model.media.image_config
        p = cfg.patch_size
        h, w = self._size or (2 * p, 2 * p)
        return VideoSegment((max(n_pairs, 1), h // p, w // p), cfg.temporal_patch_size / LIVE_FPS, max(n_audio, 1))

    def _try_hold(self) -> None:
        """Take the chat if it is free; then prefill the head: the turn's text before the media and the
        media's bos tokens (<|audio_bos|>, or <|vision_bos|><|audio_bos|>)."""
        if self._encoder is None:
            return  # stock audio: everything happens at finish
        try:
            held = TurnHold(self.chat, wait=False, flag=None).__enter__()
        except PocketOmniError:
            return
        self._held = held
        try:
            chat = self.chat
            chat._check_open()
            sess = chat._session
            self._n0 = sess.history.n
            self._start_pos = sess.next_pos
            seg = self._media_segment(1, 1)
            _, segments = chat._render([self._message(None, None, None)], [seg])
            self._head = segments[: segments.index(seg)]
            n = int(build_prompt(self._head).input_ids.size) + (2 if self.video else 1)
            layout = build_prompt(self._head + [seg], start_pos=self._start_pos)
            chat._check_room(layout.part(0, n))
            sess.prefill(layout.part(0, n), {})
            self._n_head = n
        except BaseException:
            self._release(rollback=True)
            raise

    def _ready_chunks(self) -> int:
        """2 s chunks complete so far: audio windows (and, in a video turn, their two frame pairs)."""
        n = len(self._rows)
        return min(n, len(self._pairs) // CHUNK_PAIRS) if self.video else n

    def _prefill_chunks(self) -> None:
        """Prefill the complete chunks not in the cache yet, in the one-piece layout's order."""
        stop = self._ready_chunks()
        if stop <= self._n_chunks_in:
            return
        rows = {KIND_AUDIO: [r for r in self._rows[:stop] if r.shape[0]]}
        if self.video:
            rows[KIND_VIDEO] = self._pairs[: CHUNK_PAIRS * stop]
        n_audio = sum(r.shape[0] for r in rows[KIND_AUDIO])
        layout = build_prompt(self._head + [self._media_segment(n_audio, CHUNK_PAIRS * stop)],
                              start_pos=self._start_pos)
        sess = self.chat._session
        done = sess.history.n - self._n0
        part = layout.part(done, layout.input_ids.size - (2 if self.video else 1))  # not the eos tokens
        new = {k: v[len(self._cached.get(k, [])):] for k, v in rows.items()}
        if part.input_ids.size:
            self.chat._check_room(part)
            sess.prefill(part, {k: _concat(v) for k, v in new.items() if v}, floor=self._start_pos)
        for k, v in new.items():
            self._cached.setdefault(k, []).extend(v)
        now = time.monotonic()
        for t in self.timings[self._n_chunks_in : stop]:
            t.prefilled_at = t.prefilled_at or now
        self._n_chunks_in = stop

    def _release(self, rollback: bool) -> None:
        """Give the chat back (rolling the cache back to before the turn when asked)."""
        with self._cond:
            held, self._held = self._held, None
            self._closed = True
        if held is None:
            return
        try:
            if rollback and self._n_head:
                self.chat._session.rollback(self._n0)
        finally:
            self._n_head = 0
            held.__exit__()

    # ------------------------------------------------------------------ finish

    def _message(self, text: str | None, clip: np.ndarray | None, frames: list[np.ndarray] | None) -> Message:
        tail = [Part("text", text=text)] if text else []
        if clip is None:  # rendering only: the template sees the media part and the text
            media = Part("video", label="live video") if self.video else Part("audio", label="live audio")
            return Message("user", (media, *tail))
        if frames:
            return user_message(text, video=(np.stack(frames), LIVE_FPS, clip, INPUT_RATE))
        return user_message(text, audio=[(clip, INPUT_RATE)])

    def _finish(self, text: str | None, flag: CancelFlag) -> Iterator[Event]:
        self._worker.join()
        chat = self.chat
        try:
            if self._error is not None:
                raise self._error
            held = self._held
            if held is None:
                try:
                    held = TurnHold(chat, wait=True, flag=flag).__enter__()
                except TurnAbandoned:
                    self._release(rollback=True)
                    return
                self._held = held
            chat._owner, chat._flag = threading.get_ident(), flag  # this thread runs the reply
        except BaseException:
            self._release(rollback=True)
            raise
        try:
            if not flag.is_set:
                yield from chat._run([], self._opts, self._params, flag, self._hooks,
                                     prefill=lambda f, h: self._complete(text, f))
        finally:
            self._release(rollback=True)  # a no-op once the turn is in the history

    def _final_audio_rows(self) -> np.ndarray:
        """Every window's rows, exact mode re-encoding those the clip's final maximum changes."""
        peak = self._mel.end()
        if self.clamp == "exact":
            for i, w in enumerate(self._windows):
                if not w.valid_for(peak):
                    self._windows[i] = self._mel.reclamp(w.index, peak)
                    self._rows[i] = self._encode(self._windows[i])
                    self.timings[i].reencoded = True
        for w in self._mel.rest(peak):
            self._windows.append(w)
            self._rows.append(self._encode(w))
        return _concat([r for r in self._rows if r.shape[0]])

    def _final_video_rows(self, frames: np.ndarray) -> np.ndarray:
        """Rows of the video's frames (as prepare_video sized them), reusing the pairs encoded live."""
        media = self.chat._model.media
        rows = []
        for g in range(0, frames.shape[0], 2):
            i = g // 2
            live = i < len(self._pairs) and g + 2 <= len(self._sized) and np.array_equal(
                frames[g : g + 2], np.stack(self._sized[g : g + 2]))
            rows.append(self._pairs[i] if live else media.encode_frames(frames[g : g + 2]))
        return _concat(rows)

    def _cached_agreement(self, layout: PromptLayout, rows: dict[int, np.ndarray]) -> int:
        """How many of the turn's cached tokens the final layout keeps: ids, positions and media rows equal."""
        hist = self.chat._session.history
        cached = hist.n - self._n0
        n = min(cached, int(layout.input_ids.size))
        same = hist.ids[self._n0 : self._n0 + n] == layout.input_ids[:n]
        same &= (hist.positions[:, self._n0 : self._n0 + n] == layout.positions[:, :n]).all(axis=0)
        for kind, pieces in self._cached.items():
            if not pieces:
                continue
            old, new = _concat(pieces), rows.get(kind, np.zeros((0, 0), np.float32))
            at = np.flatnonzero(layout.kinds[:n] == kind)
            k = min(at.size, old.shape[0], new.shape[0])
            if k:
                same[at[:k]] &= (old[:k] == new[:k]).all(axis=1)
            same[at[k:]] = False
        bad = np.flatnonzero(~same)
        return int(bad[0]) if bad.size else n

    def _complete(self, text: str | None, flag: CancelFlag) -> Prefilled | None:
        """The rest of the prompt: repairs, the last chunk, closing tokens, assistant header."""
        chat, sess = self.chat, self.chat._session
        t0 = time.perf_counter()
        clip = self._mel.samples.copy()
        frames = self._final_frames if self._final_frames is not None else self._frames if self.video else None
        msg = self._message(text, clip, frames)
        if self._encoder is None:  # stock mtmd audio: the whole clip now, as send() does
            return chat._prefill_turn([msg], flag, self._hooks)
        prepared = chat._model.media.prepare(msg.media[0])  # send()'s checks, and the video's frames and segment
        rows = {KIND_AUDIO: self._final_audio_rows()}
        segment = prepared.segment
        want = segment.audio_tokens if isinstance(segment, VideoSegment) else segment.n_tokens  # type: ignore[union-attr]
        if rows[KIND_AUDIO].shape[0] != want:
            raise PocketOmniError(f"the live turn's audio encoded to {rows[KIND_AUDIO].shape[0]} rows where sending "
                                  f"the clip gives {want}; send it with chat.send(audio=...) and report this")
        if prepared.video is not None:
            rows[KIND_VIDEO] = self._final_video_rows(prepared.video.frames)
        media_s = time.perf_counter() - t0
        msgs, segments = chat._render([msg], [segment])
        layout = build_prompt(segments, start_pos=self._start_pos)
        chat._check_room(layout.part(self._n_head, layout.input_ids.size))
        if flag.is_set:
            return None
        t_pre = time.perf_counter()
        if self._n_head == 0:  # the chat was busy until now: nothing of the turn is in the cache yet
            self._n0, self._start_pos = sess.history.n, sess.next_pos
            layout = build_prompt(segments, start_pos=self._start_pos)
            start = 0
        else:
            start = self._cached_agreement(layout, rows)
            if start < sess.history.n - self._n0:  # exact mode's repairs, or the video changed
                if self._cached.get(KIND_VIDEO):  # relabelled video cells: cannot cut inside the turn
                    start = 0
                sess.rollback(self._n0 + start)
        rest = layout.part(start, layout.input_ids.size)
        media = {}
        for kind, r in rows.items():
            skip = int(np.count_nonzero(layout.kinds[:start] == kind))
            if skip < r.shape[0]:
                media[kind] = r[skip:]
        try:
            logits = sess.prefill(rest, media, should_stop=lambda: flag.is_set, floor=self._start_pos)
        except DecodeInterrupted:
            sess.rollback(self._n0)
            self._n_head = 0
            return None
        now = time.monotonic()
        for t in self.timings:
            t.prefilled_at = t.prefilled_at if start and not t.reencoded and t.prefilled_at else now
        self._n_head = 0  # the turn is the chat's now: nothing to roll back
        stored = [StoredMedia(segment, rows)] if chat._keeper.trims else None
        return Prefilled(msgs, layout, logits, media_s, time.perf_counter() - t_pre, media=stored)

    # ------------------------------------------------------------------ figures

    @property
    def windows_prefilled(self) -> int:
        """2 s chunks in the cache so far: audio windows (with their 4 frames in a video turn)."""
        return self._n_chunks_in
