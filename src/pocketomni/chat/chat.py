"""Chat: one conversation on a loaded model. Its history lives in its own llama.cpp context.

    chat = omni.chat(system=None)
    async for ev in chat.send("What is in this picture?", images=["cat.jpg"]):   # or chat.send_sync(...)
        ...

A turn: render the new messages with the model's chat template (only the part after the cached
reply), load and resize the media, lay out tokens and TMRoPE positions, check the context window,
encode the media, prefill, then sample and decode reply tokens one at a time. Nothing changes in the
chat until the prefill starts, so a bad input leaves the chat as it was. Cancelling keeps the partial
reply in the history, marked interrupted.

Speech chats also feed each decoded reply token to a `speech.SpeechReply` (talker + token2wav) and
yield its `AudioChunk`s between the `TextDelta`s; after the text, the rest of the speech, then `Done`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketomni.audio.live_mel import DEFAULT_CLAMP, ClampMode
from pocketomni.backend.batch import DecodeInterrupted
from pocketomni.backend.sampling import SamplingParams
from pocketomni.chat.async_bridge import CancelFlag, ThreadStream
from pocketomni.chat.conversation import (
    Message,
    Part,
    parse_messages,
    render_turn,
    user_message,
)
from pocketomni.chat.decoding import LogitsProcessor, ReplyText, TokenChooser, check_logits_processors
from pocketomni.chat.history_keeper import HistoryKeeper, mark_all_dropped
from pocketomni.chat.history_policy import HistoryPolicy
from pocketomni.chat.store import SavedChat, read_chat_file, write_chat_file
from pocketomni.chat.turn_state import Prefilled, PrefillStep, TurnAbandoned, TurnHold, TurnHooks
from pocketomni.closing import Closable
from pocketomni.engine.positions import KIND_TEXT, Segment, TextSegment, build_prompt
from pocketomni.engine.thinker import MEDIA_TOKEN_IDS, ThinkerSession, sampling_params
from pocketomni.engine.video_limits import overflow_advice, video_cost
from pocketomni.errors import ContextOverflowError, MediaError, ModelFileError, OptionsError, PocketOmniError
from pocketomni.events import AudioChunk, Done, Event, HistoryTrimmed, Progress, TextDelta, Timings, Usage
from pocketomni.options import GenerationOptions, check_text, resolve_options

if TYPE_CHECKING:
    from pocketomni.chat.live_turn import LiveTurn
    from pocketomni.engine.runtime import ModelRuntime
    from pocketomni.engine.speech import SpeechEngine, SpeechReply, SpeechSettings
    from pocketomni.engine.speech_pipeline import PipelinedReply

__all__ = ["Chat"]

def _strip_sources(m: Message) -> Message:
    """The message as kept in history: media as labels only (frees decoded pixels / samples)."""
    return Message(m.role, tuple(p if p.kind == "text" else Part(p.kind, label=p.label, use_audio=p.use_audio)
                                for p in m.parts), m.interrupted)


class Chat(Closable):
    """One conversation. Create with `Omni.chat()`; several chats on one model never see each other."""

    def __init__(self, model: ModelRuntime, *, system: str | None = None, speech: bool = False,
                 options: GenerationOptions | None = None, speech_settings: SpeechSettings | None = None,
                 context_policy: HistoryPolicy | str | Mapping[str, Any] | None = None) -> None:
        """context_policy: what a full context does (chat/history_policy.py): "trim" (default: old turns
        are dropped and the cache rebuilt, so the chat goes on forever), "error" (ContextOverflowError),
        or a HistoryPolicy / dict of its fields (headroom, keep, min_turns, media_turns)."""
        if system is not None and not isinstance(system, str):
            raise OptionsError(f"system must be a string or None, got {type(system).__name__}")
        if system is not None:
            check_text(system, "the system prompt")
        if speech and speech_settings is None:
            from pocketomni.engine.speech import SpeechSettings

            speech_settings = SpeechSettings()
        policy = HistoryPolicy.resolve(context_policy)
        self._model = model
        self.system = system
        self.speech = speech
        self.speech_settings = speech_settings if speech else None
        self._last_speech: SpeechReply | PipelinedReply | None = None  # the last turn's spoken reply (codes, timings)
        self.options = options or GenerationOptions()
        self._session: ThinkerSession = model.thinker.session(keep_hidden=speech)
        self._keeper = HistoryKeeper(policy, model.thinker)
        self._messages: list[Message] = []  # every message; those not `dropped` are in the cache
        self._published: tuple[Message, ...] = ()  # _messages as of the last turn's end (see messages)
        self._pending: list[int] = []  # reply tokens sampled but not yet decoded into the cache
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread running a turn (a suspended send_sync holds the chat)
        self._flag: CancelFlag | None = None
        self._live: list[LiveTurn] = []  # open live turns (begin_turn), aborted by close()
        model.register(self)

    # ------------------------------------------------------------------ public API

    def send(self, text: str | None = None, *, images: Any = None, audio: Any = None, video: Any = None,
             use_audio_in_video: bool = True, messages: Sequence[Mapping[str, Any]] | None = None,
             options: Any = None, on_progress: Callable[[Progress], None] | None = None,
             logits_processors: Sequence[LogitsProcessor] | None = None,
             speech: SpeechSettings | Mapping[str, Any] | None = None, **overrides: Any) -> ThreadStream[Event]:
        """Stream one turn: TextDelta events, then Done. `async for ev in chat.send(...)`.

        images, audio, video: one input or a list (or tuple) of inputs. images: paths, bytes, PIL
        images or numpy arrays; audio: paths (wav/mp3/flac), bytes or (array, sample_rate); video: a
        file path (needs PyAV: pip install av), (frames, fps) or (frames, fps, audio, sample_rate),
        sampled at 2 fps with its sound track interleaved in 2 s chunks unless use_audio_in_video=False.
        The turn holds the videos, the images, then the audio clips, then the text. A misspelt argument
        (image=) is named as such.
        messages: OpenAI-style messages to append instead (the last one a user message).
        options / keyword overrides: GenerationOptions fields (max_tokens, temperature, ...).
        on_progress: called with `Progress` while media are encoded and the prompt is prefilled (from
        the worker thread: keep it short; in an async app hand it to the loop with call_soon_threadsafe).
        logits_processors: functions fn(token_ids, logits) -> logits applied before sampling each reply
        token, in order (pocketomni.chat.decoding explains them; e.g. to ban tokens).
        speech: for a speech chat, this turn's speech settings: a SpeechSettings or changes such as
        {"voice": "Ethan", "options": {"max_codes": 500}} (the chat's settings stay as they are).
        Breaking out of the loop or cancelling the task stops decoding within one token.
        """
        new, opts, params = self._request(text, images, audio, messages, options, overrides, video,
                                          use_audio_in_video)
        hooks = TurnHooks(on_progress, check_logits_processors(logits_processors), self._turn_speech(speech))
        return ThreadStream(lambda flag: self._turn(new, opts, params, flag, wait=True, hooks=hooks))

    def send_sync(self, text: str | None = None, *, images: Any = None, audio: Any = None, video: Any = None,
                  use_audio_in_video: bool = True, messages: Sequence[Mapping[str, Any]] | None = None,
                  options: Any = None, on_progress: Callable[[Progress], None] | None = None,
                  logits_processors: Sequence[LogitsProcessor] | None = None,
                  speech: SpeechSettings | Mapping[str, Any] | None = None, **overrides: Any) -> Iterator[Event]:
        """The blocking twin of `send`: a generator of the same events, run in the calling thread."""
        new, opts, params = self._request(text, images, audio, messages, options, overrides, video,
                                          use_audio_in_video)
        hooks = TurnHooks(on_progress, check_logits_processors(logits_processors), self._turn_speech(speech))
        return self._turn(new, opts, params, CancelFlag(), wait=True, hooks=hooks)

    def begin_turn(self, clamp: ClampMode = DEFAULT_CLAMP, *, options: Any = None,
                   on_progress: Callable[[Progress], None] | None = None,
                   logits_processors: Sequence[LogitsProcessor] | None = None,
                   speech: SpeechSettings | Mapping[str, Any] | None = None, video: bool = False,
                   **overrides: Any) -> LiveTurn:
        """Open a user turn that is still being spoken: `feed_audio()` while the user talks (each 2 s
        window is encoded and prefilled at once), then `finish(text=None)` streams the reply like
        `send`. clamp: "streaming" or "exact", how the log-mel clamp treats audio not heard yet
        (pocketomni.chat.live_turn explains both). video=True: a camera turn, `feed_video()` frames at
        2 fps too; it goes as `send(video=(frames, 2, clip, 16000))`, prefilled chunk by chunk.
        Other arguments as for `send`."""
        from pocketomni.chat.live_turn import LiveTurn

        _check_argument_names(overrides)
        opts = resolve_options(self.options, options, overrides)
        params = sampling_params(opts)
        hooks = TurnHooks(on_progress, check_logits_processors(logits_processors), self._turn_speech(speech))
        turn = LiveTurn(self, clamp, opts, params, hooks, video)
        self._live = [t for t in self._live if not t.done] + [turn]
        return turn

    def cancel(self) -> None:
        """Stop the running turn (if any) within one token; safe from any thread."""
        flag = self._flag
        if flag is not None:
            flag.set()

    @property
    def messages(self) -> list[Message]:
        """The conversation so far (media as labels); messages and media a full context trimmed away
        are kept, marked `dropped=True` (see `context_policy`). Never waits for a running turn: while another
        thread runs one, the history as it was when the last turn ended; a cancelled turn that is still
        stopping (within one token) is waited for, so its partial reply is there."""
        flag = self._flag
        if self._owner == threading.get_ident() or (flag is not None and flag.is_set):
            with self._snapshot():
                return list(self._messages)
        return list(self._published)

    @property
    def tokens(self) -> list[int]:
        """Token ids in this chat's KV cache, in order (media placeholders included)."""
        with self._snapshot():
            return self._session.history.ids.tolist()

    @property
    def n_tokens(self) -> int:
        """Context cells in use."""
        return self._session.n_used

    @property
    def n_ctx(self) -> int:
        """Context window of this chat, in tokens."""
        return self._session.n_ctx

    @property
    def context_policy(self) -> HistoryPolicy:
        """What this chat does when its context fills up (chat/history_policy.py)."""
        return self._keeper.policy

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        with self._hold():
            self._session.clear()
            self._messages.clear()
            self._pending.clear()
            self._keeper.clear()

    def fork(self) -> Chat:
        """An independent copy of this chat (same history and cache) that continues separately."""
        with self._hold():
            other = Chat(self._model, system=self.system, speech=self.speech, options=self.options,
                         speech_settings=self.speech_settings, context_policy=self.context_policy)
            try:
                other._session.copy_from(self._session)
                other._keeper.copy_from(self._keeper)
            except BaseException:
                other.close()
                raise
            other._messages = list(self._messages)
            other._published = tuple(other._messages)
            other._pending = list(self._pending)
            return other

    def save(self, path: str | Path) -> None:
        """Write the chat (history, cache, options) to one file, atomically."""
        with self._hold():
            write_chat_file(Path(path), self._saved())

    async def asave(self, path: str | Path) -> None:
        """`save(path)` in a worker thread."""
        await asyncio.to_thread(self.save, path)

    async def afork(self) -> Chat:
        """`fork()` in a worker thread."""
        return await asyncio.to_thread(self.fork)

    async def areset(self) -> None:
        """`reset()` in a worker thread (waits for a turn that is still stopping)."""
        await asyncio.to_thread(self.reset)

    def _saved(self) -> SavedChat:
        """This chat as a chat file's contents (caller holds the turn lock)."""
        st = self.speech_settings
        header = {
            "model": self._session.thinker.model.path.name,
            "system": self.system,
            "speech": self.speech,
            "speech_settings": None if st is None else {
                "voice": st.voice, "preset": st.preset, "streaming": st.streaming,
                "options": dataclasses.asdict(st.options)},
            "options": dataclasses.asdict(self.options),
            "context_policy": self.context_policy.to_dict(),
            "messages": [m.to_dict() for m in self._messages],
            "pending": [int(t) for t in self._pending],
        }
        return SavedChat(header, self._session.history.arrays(), self._session.get_state())

    @classmethod
    def restore(cls, model: ModelRuntime, path: str | Path) -> Chat:
        """A new chat on `model` continuing exactly where the one saved in `path` stopped."""
        saved = read_chat_file(Path(path))
        header = saved.header
        opts = GenerationOptions.from_dict(header.get("options") or {})
        speech = bool(header.get("speech"))
        if speech:  # refuse now, not on every later turn
            model.folder.require("speech_out")
        settings = None
        if speech and isinstance(header.get("speech_settings"), dict):
            from pocketomni.engine.speech import SpeechSettings

            d = header["speech_settings"]
            settings = SpeechSettings.resolve(d.get("voice"), d.get("preset"), d.get("options"), d.get("streaming"))
        chat = cls(model, system=header.get("system"), speech=speech, options=opts, speech_settings=settings,
                   context_policy=header.get("context_policy"))
        try:
            if chat.speech and "hidden" not in saved.arrays:
                raise ModelFileError(f"{path} has no hidden states for a speech chat; it is corrupt")
            chat._session.set_state(saved.kv_state, saved.arrays)
            chat._messages = [Message.from_dict(m) for m in header.get("messages", [])]
            chat._published = tuple(chat._messages)
            chat._pending = [int(t) for t in header.get("pending", [])]
        except BaseException:
            chat.close()
            raise
        return chat

    def close(self) -> None:
        """Free this chat's context (idempotent); open live turns are aborted."""
        self.cancel()
        for t in self._live:
            t.abort()
        with self._hold():
            self._session.close()
            self._model.unregister(self)

    @property
    def closed(self) -> bool:
        return self._session.ctx.closed

    def __repr__(self) -> str:
        return f"Chat({len(self._messages)} messages, {self.n_tokens if not self.closed else 0}/{self.n_ctx} tokens)"

    # ------------------------------------------------------------------ internals

    def _request(self, text: Any, images: Any, audio: Any, messages: Any, options: Any,
                 overrides: Mapping[str, Any], video: Any = None,
                 use_audio_in_video: bool = True) -> tuple[list[Message], GenerationOptions, SamplingParams]:
        _check_argument_names(overrides)
        opts = resolve_options(self.options, options, overrides)
        params = sampling_params(opts)
        if messages is not None:
            if text is not None or images is not None or audio is not None or video is not None:
                raise OptionsError("pass either messages=[...] or text/images/audio/video, not both")
            new = parse_messages(messages)
        else:
            new = [user_message(text, images, audio, video, use_audio_in_video)]
        return new, opts, params

    def _turn_speech(self, speech: SpeechSettings | Mapping[str, Any] | None) -> SpeechSettings | None:
        """Validated per-turn speech settings (before any work)."""
        if speech is None:
            return None
        if self.speech_settings is None:
            raise OptionsError("speech= needs a speech chat: omni.chat(speech=True)")
        settings = self.speech_settings.override(speech)
        self._model.check_voice(settings.voice)
        return settings

    def _snapshot(self) -> Any:
        """Consistent reads: wait for another thread's turn; inside this thread's own turn, read as is."""
        return contextlib.nullcontext() if self._owner == threading.get_ident() else self._hold()

    def _hold(self, wait: bool = True, flag: CancelFlag | None = None) -> TurnHold:
        return TurnHold(self, wait, flag)

    def _check_open(self) -> None:
        if self._session.ctx.closed:
            raise PocketOmniError("this chat is closed (or its model was closed); start a new one with omni.chat()")

    def _context(self) -> list[Message]:
        """The messages in the cache (the history without what a trim dropped)."""
        return [m for m in self._messages if not m.dropped]

    def _render(self, new: list[Message], media_segments: Sequence[Segment]) -> tuple[list[Message], list[Segment]]:
        """The turn's messages (with the system prompt on a first turn) and its prompt segments, the
        media parts standing as `media_segments` (in order). Changes nothing."""
        th = self._model.thinker
        msgs = list(new)
        if not self._context() and self.system is not None and msgs[0].role != "system":
            msgs.insert(0, Message("system", (Part("text", text=self.system),)))
        elif self.speech and msgs[0].role == "system":
            from pocketomni.engine.speech import check_system_prompt

            check_system_prompt("".join(p.text or "" for p in msgs[0].parts if p.kind == "text"))
        media = [p for m in msgs for p in m.media]
        cached, shown = self._context(), msgs
        if cached and cached[-1].role != "assistant":  # a trim kept only system messages: not cached, render them
            shown, cached = cached + msgs, []
        pieces = render_turn(th.template, cached, shown, media)  # the caller's text stays plain text
        segments: list[Segment] = []
        head = list(self._pending)
        it = iter(media_segments)
        for piece in pieces:
            if not isinstance(piece, Part):
                ids = th.tokenize_prompt(piece)
                if any(t in MEDIA_TOKEN_IDS for t in ids):
                    raise MediaError("the text contains <|IMAGE|>, <|AUDIO|> or <|VIDEO|>; remove them and pass media as "
                                     "images=[...] / audio=[...] / video=...")
                segments.append(TextSegment(head + ids))
                head = []
            else:
                if head:
                    segments.append(TextSegment(head))
                    head = []
                segments.append(next(it))
        return msgs, segments

    def _plan(self, new: list[Message], opts: GenerationOptions | None = None
              ) -> tuple[list[Message], Any, list[Any], HistoryTrimmed | None]:
        """Render, load media, lay out tokens and check the context window. Changes nothing, unless the
        turn does not fit and the context policy trims the history first (then the event says so)."""
        prepared = [self._model.media.prepare(p) for m in new for p in m.media]

        def lay_out() -> tuple[list[Message], Any]:
            msgs, segments = self._render(new, [p.segment for p in prepared])
            return msgs, build_prompt(segments, start_pos=self._session.next_pos)

        msgs, layout = lay_out()
        trimmed = None
        if self._keeper.trims:  # leave the reply room too (up to the policy's headroom), trimming if need be
            n_new = int(layout.input_ids.size)
            want = min((opts or self.options).max_tokens, self.context_policy.headroom_for(self.n_ctx))
            if n_new + want > self._session.room:
                keep = int(self.context_policy.keep * self.n_ctx)  # the same hysteresis as after a reply
                trimmed = self._trim(target=min(keep, self.n_ctx - n_new - want), limit=self.n_ctx - n_new - 1,
                                     before_turn=True)
                if trimmed is not None:
                    msgs, layout = lay_out()
        self._check_room(layout, prepared)
        return msgs, layout, prepared, trimmed

    def _check_room(self, layout: Any, prepared: Sequence[Any] = ()) -> None:
        """ContextOverflowError unless the turn's new tokens and one reply token fit the free context."""
        n_new = int(layout.input_ids.size)
        room = self._session.room
        if n_new + 1 > room:
            n_media = int(np.count_nonzero(layout.kinds != KIND_TEXT))
            raise ContextOverflowError(
                f"this turn needs {n_new} tokens ({n_media} of them for media) plus room for a reply, but only "
                f"{room} of the {self.n_ctx}-token context are free. Send less text or media, downscale images "
                "(or load with Omni.load(..., image_max_pixels=...)), call chat.reset() / start a new chat, or load "
                "the model with a larger n_ctx." + overflow_advice(
                    [video_cost(p.video, p.segment.audio_tokens is not None) for p in prepared if p.video is not None],
                    n_new + 1, room)
            )

    def _trim(self, *, target: int, limit: int, before_turn: bool) -> HistoryTrimmed | None:
        """Apply the context policy: drop old turns / media and rebuild the cache (caller holds the chat).
        Does nothing when even dropping everything droppable would not get under `limit`."""
        t0 = time.perf_counter()
        new, plan = self._keeper.plan(self._messages, target, limit)
        if plan.empty or (before_turn and plan.cost > limit):
            return None  # nothing to drop, or a turn that cannot fit anyway: the caller's error, history intact
        try:
            event = self._keeper.apply(self._session, self._messages, new, plan, before_turn=before_turn, t0=t0)
        except BaseException:
            self._messages = mark_all_dropped(self._messages)  # the cache is empty now
            self._pending = []
            self._keeper.clear()
            raise
        self._messages = new
        self._pending = []  # the rebuilt cache holds every kept reply whole
        return event

    def _after_reply(self, finish: str) -> HistoryTrimmed | None:
        """Right after a reply: trim when less than the policy's headroom is free (not after a cancelled
        turn: the user is talking, and the next turn trims if it must)."""
        if not self._keeper.trims or finish == "cancelled":
            return None
        headroom = self.context_policy.headroom_for(self.n_ctx)
        if self._session.room >= headroom:
            return None
        target = int(self.context_policy.keep * self.n_ctx)
        return self._trim(target=min(target, self.n_ctx - headroom), limit=self.n_ctx - headroom, before_turn=False)

    def _turn(self, new: list[Message], opts: GenerationOptions, params: SamplingParams, flag: CancelFlag,
              wait: bool, hooks: TurnHooks | None = None) -> Iterator[Event]:
        hooks = hooks or TurnHooks()
        try:
            held = self._hold(wait=wait, flag=flag).__enter__()
        except TurnAbandoned:
            return
        try:
            if flag.is_set:
                return
            self._flag = flag
            yield from self._run(new, opts, params, flag, hooks)
        finally:
            held.__exit__()

    def _run(self, new: list[Message], opts: GenerationOptions, params: SamplingParams,
             flag: CancelFlag, hooks: TurnHooks, prefill: PrefillStep | None = None) -> Iterator[Event]:
        if not self.speech:
            yield from self._run_turn(new, opts, params, flag, None, hooks, prefill)
            return
        t0 = time.perf_counter()
        self._check_open()
        engine = self._model.speech_engine()
        with engine.hold(lambda: flag.is_set) as ok:  # the talker speaks for one chat at a time
            if not ok:
                yield Done(text="", finish_reason="cancelled", timings=Timings(total_seconds=time.perf_counter() - t0))
                return
            yield from self._run_turn(new, opts, params, flag, engine, hooks, prefill)

    def _prefill_turn(self, new: list[Message], flag: CancelFlag, hooks: TurnHooks,
                      opts: GenerationOptions | None = None) -> Prefilled | None:
        """Plan (trimming the history if the policy says so), encode the media and prefill a turn; None
        when cancelled first (the cache is as it was, or as a trim left it)."""
        sess = self._session
        msgs, layout, prepared, trimmed = self._plan(new, opts)
        t_media = time.perf_counter()
        progress = hooks.progress
        media_rows = self._model.media.encode_all(
            prepared, should_stop=lambda: flag.is_set,
            progress=None if progress is None else lambda d, n: progress(Progress("encode", d, n)))
        media_s = time.perf_counter() - t_media if prepared else 0.0
        if flag.is_set:  # cancelled before the cache changed: the turn never happened
            return None
        t_pre = time.perf_counter()
        try:
            logits = sess.prefill(layout, media_rows, should_stop=lambda: flag.is_set,
                                  progress=None if progress is None else lambda d, n: progress(Progress("prefill", d, n)))
        except DecodeInterrupted:  # rolled back: the turn never happened
            return None
        return Prefilled(msgs, layout, logits, media_s, time.perf_counter() - t_pre,
                         media=self._keeper.items(prepared, media_rows), trimmed=trimmed)

    def _run_turn(self, new: list[Message], opts: GenerationOptions, params: SamplingParams,
                  flag: CancelFlag, engine: SpeechEngine | None, hooks: TurnHooks,
                  prefill: PrefillStep | None = None) -> Iterator[Event]:
        t0 = time.perf_counter()
        self._check_open()
        th, sess = self._model.thinker, self._session
        done = self._prefill_turn(new, flag, hooks, opts) if prefill is None else prefill(flag, hooks)
        if done is None:  # cancelled before the turn entered the cache: it never happened
            yield Done(text="", finish_reason="cancelled", timings=Timings(total_seconds=time.perf_counter() - t0))
            return
        msgs, layout, logits, media_s, prefill_s = done.msgs, done.layout, done.logits, done.media_s, done.prefill_s
        if done.trimmed is not None:
            yield done.trimmed
        self._pending = []
        first = len(self._messages)
        self._messages += [_strip_sources(m) for m in msgs]
        self._keeper.record(first, msgs, done.media, self._messages)
        self._messages.append(Message("assistant", ()))
        reply_at = len(self._messages) - 1
        talk: SpeechReply | PipelinedReply | None = None
        if engine is not None:
            assert self.speech_settings is not None
            talk = engine.reply(hooks.speech or self.speech_settings, sess, should_stop=lambda: flag.is_set)
            self._last_speech = talk
        t_audio = 0.0

        choose = TokenChooser(params, opts.seed, lambda: sess.history.ids, hooks.logits_processors)
        shown = ReplyText(th.model.text_stream(), opts.stop)
        reply: list[int] = []
        finish, t_first, n_steps = "cancelled", 0.0, 0
        try:
            while not flag.is_set:
                tok = choose(logits)
                if not t_first:
                    t_first = time.perf_counter()
                if th.is_eog(tok):
                    finish = "stop"
                    break
                reply.append(tok)
                self._pending = [tok]
                piece, hit = shown.push(tok)
                if piece:
                    yield TextDelta(piece)
                if hit:
                    finish = "stop_string"
                    break
                if len(reply) >= opts.max_tokens or sess.room < 1:
                    finish = "length"
                    break
                if flag.is_set:
                    break
                logits = sess.step(tok)
                self._pending = []
                n_steps += 1
                if talk is not None:  # the talker reads this token; token2wav renders what is complete
                    for wav in talk.add_token():
                        t_audio = t_audio or time.perf_counter()
                        yield AudioChunk(wav)
            tail = shown.flush() if finish in ("stop", "length") else ""
        except BaseException:
            sess.reconcile()  # e.g. KeyboardInterrupt inside a decode: keep the cache equal to the history
            raise
        finally:
            text = shown.text
            self._messages[reply_at] = Message("assistant", (Part("text", text=text),) if text else (),
                                               interrupted=finish == "cancelled")
        t_text = time.perf_counter()
        if tail:
            yield TextDelta(tail)
        if talk is not None and finish != "cancelled":
            for wav in talk.finish(lambda: flag.is_set):
                t_audio = t_audio or time.perf_counter()
                yield AudioChunk(wav)
            if flag.is_set:  # the text is complete (kept as is); the speech was cut
                finish = "cancelled"
        if talk is not None:
            talk.close()  # a pipelined reply's threads end here (within one step when cut short)
        t_end = time.perf_counter()
        n_new = int(layout.input_ids.size)
        decode_s = t_text - t_first if t_first else 0.0
        audio_s = talk.audio_seconds if talk is not None else 0.0
        trimmed = self._after_reply(finish)  # rebuild now, not when the user has just stopped talking
        if trimmed is not None:
            yield trimmed
        self._published = tuple(self._messages)  # final before Done: a reader woken by Done sees this turn
        yield Done(
            text=text,
            finish_reason=finish,
            usage=Usage(prompt_tokens=n_new, media_tokens=int(np.count_nonzero(layout.kinds != KIND_TEXT)),
                        reply_tokens=len(reply), audio_codes=len(talk.codes) if talk is not None else 0),
            timings=Timings(
                time_to_first_token=(t_first - t0) if t_first else 0.0,
                time_to_first_audio=(t_audio - t0) if t_audio else 0.0,
                audio_seconds=audio_s,
                # seconds of work per second of speech, from the first reply token to the last sample
                real_time_factor=(t_end - t_first) / audio_s if audio_s > 0 and t_first else 0.0,
                prefill_tokens_per_second=n_new / prefill_s if prefill_s > 0 else 0.0,
                decode_tokens_per_second=n_steps / decode_s if decode_s > 0 and n_steps else 0.0,
                media_encode_seconds=media_s,
                total_seconds=t_end - t0,
            ),
            tokens=tuple(int(t) for t in reply),
        )


SEND_ARGUMENTS = ("text", "images", "audio", "video", "use_audio_in_video", "messages", "options")


def _check_argument_names(overrides: Mapping[str, Any]) -> None:
    """A keyword that is neither a send() argument nor a generation option but looks like a send()
    argument (image=, videos=) is a typo: say which, instead of 'unknown generation option'."""
    fields = {f.name for f in dataclasses.fields(GenerationOptions)}
    for key in overrides:
        if key in fields:
            continue
        near = difflib.get_close_matches(key, SEND_ARGUMENTS, n=1, cutoff=0.7)
        if near:
            raise OptionsError(f"send() has no argument {key!r}; did you mean {near[0]}=...?")
