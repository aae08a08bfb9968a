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

Video (a camera while the user speaks) fits the same object: a `feed_video(frames, fps)` would add
2 s chunks of frames, and the turn would lay out as `chat.send(video=(frames, fps, audio, rate))`
does: `<|vision_bos|><|audio_bos|>`, then per 2 s chunk its video rows then its audio rows, each chunk
prefilled once both its frames and its 2 s of audio are in (positions from engine.positions'
`_video_with_audio`, which are per-chunk too). Not implemented yet: `feed_video` raises.
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
from pocketomni.engine.positions import KIND_AUDIO, AudioSegment, PromptLayout, Segment, build_prompt
from pocketomni.errors import FeatureUnavailableError, OptionsError, PocketOmniError
from pocketomni.events import Event

if TYPE_CHECKING:
    from pocketomni.audio.tower import AudioEncoder
    from pocketomni.backend.sampling import SamplingParams
    from pocketomni.chat.chat import Chat
    from pocketomni.options import GenerationOptions

__all__ = ["LiveTurn", "WindowTiming"]

POLL_SECONDS = 0.05  # how often a waiting worker retries a busy chat


@dataclass
class WindowTiming:
    """One 2 s window of a live turn (time.monotonic() stamps; 0.0 = not yet)."""

    index: int
    heard_at: float  # its samples were all fed
    encoded_at: float = 0.0
    prefilled_at: float = 0.0
    reencoded: bool = False  # exact mode redid it at finish (the clip's maximum changed its features)


def _slice(layout: PromptLayout, a: int, b: int) -> PromptLayout:
    return PromptLayout(layout.input_ids[a:b], layout.positions[:, a:b], layout.kinds[a:b],
                        int(layout.positions[0, a:b].max()) + 1 if b > a else layout.decode_start,
                        layout.next_block_start)


class LiveTurn:
    """A user turn still being spoken, on `chat` (create with `chat.begin_turn()`)."""

    def __init__(self, chat: Chat, clamp: ClampMode, opts: GenerationOptions, params: SamplingParams,
                 hooks: TurnHooks) -> None:
        if clamp not in CLAMP_MODES:
            raise OptionsError(f"clamp must be one of {', '.join(CLAMP_MODES)}, got {clamp!r}")
        chat._check_open()
        self.chat = chat
        self.clamp: ClampMode = clamp
        self._opts, self._params, self._hooks = opts, params, hooks
        chat._model.folder.require("audio_in")
        self._encoder: AudioEncoder | None = None  # loaded by the worker: feed_audio's thread never waits
        self._mel = LiveLogMel()
        self._cond = threading.Condition()
        self._fed = 0  # samples fed (under _cond)
        self._finishing = self._aborted = self._closed = False
        self.timings: list[WindowTiming] = []
        self._windows: list[Window] = []
        self._rows: list[np.ndarray] = []  # encoded rows per window
        self._held: TurnHold | None = None
        self._n0 = 0  # history length before the turn
        self._start_pos = 0
        self._head: list[Segment] = []  # prompt segments before the audio
        self._n_head = 0  # ids of the head plus <|audio_bos|>, once prefilled
        self._n_windows_in = 0  # windows whose rows are in the cache
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._work, name="pocketomni-live-turn", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._fed

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
            if self._finishing or self._aborted:
                raise PocketOmniError("this turn has ended (finish() or abort() was called); begin a new one")
            self._mel.feed(x)
            self._fed = self._mel.n_samples
            self._cond.notify_all()

    def feed_video(self, frames: Any, fps: float) -> None:
        """Frames seen while the user speaks (see the module notes). Not implemented yet."""
        raise FeatureUnavailableError("live turns take audio only for now; send video with chat.send(video=...)")

    def finish(self, text: str | None = None) -> ThreadStream[Event]:
        """End the turn (optional typed text after the audio) and stream the reply: the events of `send`."""
        self._end_feeding()
        return ThreadStream(lambda flag: self._finish(text, flag))

    def finish_sync(self, text: str | None = None) -> Iterator[Event]:
        """The blocking twin of `finish`."""
        self._end_feeding()
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

    def _end_feeding(self) -> None:
        with self._cond:
            if self._finishing or self._aborted:
                raise PocketOmniError("finish() was already called on this turn (or it was aborted)")
            if self._mel.n_samples == 0:
                raise OptionsError("a live turn needs audio before finish(); feed_audio() first")
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
                    finishing = self._finishing
                now = time.monotonic()
                for w in new:
                    self.timings.append(WindowTiming(w.index, now))
                    self._windows.append(w)
                    self._rows.append(self._encode(w))
                    self.timings[-1].encoded_at = time.monotonic()
                if self._held is None:
                    self._try_hold()  # also retried while the chat is busy with a reply
                if self._held is not None:
                    self._prefill_windows()
                if finishing:
                    return
                if not new:
                    with self._cond:
                        if not self._aborted and not self._finishing:
                            self._cond.wait(POLL_SECONDS)
        except BaseException as e:  # noqa: BLE001 -- raised again by finish()
            self._error = e

    def _encode(self, w: Window) -> np.ndarray:
        if self._encoder is None or n_audio_tokens(w.features.shape[1]) == 0:
            return np.zeros((0, 0), np.float32)
        return self._encoder.encode(w.features)

    def _try_hold(self) -> None:
        """Take the chat if it is free; then prefill the head: the turn's text before the audio, <|audio_bos|>."""
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
            _, segments = chat._render([self._message(None, None)], [AudioSegment(1)])
            at = next(i for i, s in enumerate(segments) if isinstance(s, AudioSegment))
            self._head = segments[:at]
            layout = build_prompt(self._head + [AudioSegment(1)], start_pos=self._start_pos)
            n = int(layout.input_ids.size) - 2  # up to and including <|audio_bos|>
            chat._check_room(_slice(layout, 0, n))
            sess.prefill(_slice(layout, 0, n), {})
            self._n_head = n
        except BaseException:
            self._release(rollback=True)
            raise

    def _layout(self, n_rows: int) -> PromptLayout:
        """Head + <|audio_bos|> + n_rows audio rows (+ <|audio_eos|>, which callers slice off)."""
        return build_prompt(self._head + [AudioSegment(max(n_rows, 1))], start_pos=self._start_pos)

    def _prefill_windows(self, upto: int | None = None) -> None:
        """Prefill the encoded windows not in the cache yet (all, or those before `upto`)."""
        stop = len(self._rows) if upto is None else upto
        if stop <= self._n_windows_in:
            return
        done_rows = sum(r.shape[0] for r in self._rows[: self._n_windows_in])
        new_rows = [r for r in self._rows[self._n_windows_in : stop] if r.shape[0]]
        if not new_rows:
            self._n_windows_in = stop
            return
        rows = np.concatenate(new_rows) if len(new_rows) > 1 else new_rows[0]
        layout = self._layout(done_rows + rows.shape[0])
        part = _slice(layout, self._n_head + done_rows, self._n_head + done_rows + rows.shape[0])
        self.chat._check_room(part)
        self.chat._session.prefill(part, {int(part.kinds[0]): rows})
        now = time.monotonic()
        for t in self.timings[self._n_windows_in : stop]:
            t.prefilled_at = t.prefilled_at or now
        self._n_windows_in = stop

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

    def _message(self, text: str | None, clip: np.ndarray | None) -> Message:
        if clip is None:  # rendering only: the template sees an audio part and the text
            parts = [Part("audio", label="live audio")] + ([Part("text", text=text)] if text else [])
            return Message("user", tuple(parts))
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

    def _complete(self, text: str | None, flag: CancelFlag) -> Prefilled | None:
        """The rest of the prompt: exact-mode repairs, the last window, closing tokens, assistant header."""
        chat, sess = self.chat, self.chat._session
        t0 = time.perf_counter()
        clip = self._mel.samples.copy()
        msg = self._message(text, clip)
        if self._encoder is None:  # stock mtmd audio: the whole clip now, as send() does
            return chat._prefill_turn([msg], flag, self._hooks)
        peak = self._mel.end()
        first_bad = len(self._windows)
        if self.clamp == "exact":
            for i, w in enumerate(self._windows):
                if not w.valid_for(peak):
                    self._windows[i] = self._mel.reclamp(w.index, peak)
                    self._rows[i] = self._encode(self._windows[i])
                    self.timings[i].reencoded = True
                    first_bad = min(first_bad, i)
        for w in self._mel.rest(peak):
            self._windows.append(w)
            self._rows.append(self._encode(w))
        media_s = time.perf_counter() - t0
        rows = [r for r in self._rows if r.shape[0]]
        n_rows = sum(r.shape[0] for r in rows)
        audio = AudioSegment(n_rows)
        msgs, segments = chat._render([msg], [audio])
        layout = build_prompt(segments, start_pos=self._start_pos)
        chat._check_room(_slice(layout, self._n_head, layout.input_ids.size))
        if flag.is_set:
            return None
        t_pre = time.perf_counter()
        if self._n_head == 0:  # the chat was busy until now: nothing of the turn is in the cache yet
            self._n0, self._start_pos = sess.history.n, sess.next_pos
            layout = build_prompt(segments, start_pos=self._start_pos)
            start = 0
        else:
            if first_bad < self._n_windows_in:  # exact mode: windows already in the cache changed
                self._n_windows_in = first_bad
                sess.rollback(self._n0 + self._n_head + sum(r.shape[0] for r in self._rows[:first_bad]))
            start = self._n_head + sum(r.shape[0] for r in self._rows[: self._n_windows_in])
            cached = sess.history.ids[self._n0 :]
            same = (cached.size == start and np.array_equal(cached, layout.input_ids[:start])
                    and np.array_equal(sess.history.positions[:, self._n0 :], layout.positions[:, :start]))
            if not same:  # cannot happen unless the template renders the audio's prefix differently
                sess.rollback(self._n0)
                start = 0
        rest = _slice(layout, start, layout.input_ids.size)
        n_tail = int(np.count_nonzero(rest.kinds == KIND_AUDIO))
        tail = np.concatenate(rows)[n_rows - n_tail :] if n_tail else None
        try:
            logits = sess.prefill(rest, {KIND_AUDIO: tail} if tail is not None else {}, should_stop=lambda: flag.is_set)
        except DecodeInterrupted:
            sess.rollback(self._n0)
            self._n_head = 0
            return None
        now = time.monotonic()
        for t in self.timings:
            t.prefilled_at = t.prefilled_at if not t.reencoded and t.prefilled_at else now
        self._n_head = 0  # the turn is the chat's now: nothing to roll back
        stored = [StoredMedia(audio, {KIND_AUDIO: np.concatenate(rows)})] if rows and chat._keeper.trims else None
        return Prefilled(msgs, layout, logits, media_s, time.perf_counter() - t_pre, media=stored)

    # ------------------------------------------------------------------ figures

    @property
    def windows_prefilled(self) -> int:
        """Windows whose rows are in the cache so far."""
        return self._n_windows_in
