"""Spoken replies: thinker reply tokens -> talker codes -> token2wav audio, interleaved.

`SpeechEngine` holds what every speech chat of a model shares: the talker (llama.cpp) and token2wav
(numpy), loaded on the first `omni.chat(speech=True)`. `SpeechReply` is one spoken reply, driven by
the chat's turn loop in the same thread:

    reply = engine.reply(settings, session)        # right after the thinker's prefill
    for each reply token the thinker decodes:      # (its E + H row is the session's newest history row)
        audio = reply.add_token()                  # talker: start or push, then the codes now possible;
                                                   # token2wav renders whatever chunk became complete
    reply.finish(should_stop)                      # text done: talker reads tts_text_eos / pad to its end

The talker needs the E + H of reply token k for code k, so codes keep pace with the text; token2wav
streams in `exact` mode (same waveform as one-shot; default for the `fast` preset) or `chunked` mode
(the reference's 36-code chunks with 24 past / 12 future codes; default for `reference`, whose exact
schedule would wait for ~430 codes). The first audio therefore arrives while the text is still being
written once the reply is long enough, and the rest after the text, as the talker finishes.
`SpeechReply` runs everything in the turn's thread; `speech_pipeline.PipelinedReply` (same interface,
same tokens, codes and audio) runs the talker and token2wav in threads of their own beside the thinker,
each with its share of the cores; `SpeechOptions.pipelined` chooses (default: from the machine).
Cancelling stops at the next token, code or DiT block.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketomni.engine.cpu_split import CoreShare, StageThreads
from pocketomni.engine.speech_render import FEED_CODES, RenderCounters, ReplyRenderer, eh_rows, reply_options
from pocketomni.errors import OptionsError, PocketOmniError
from pocketomni.options import SpeechOptions
from pocketomni.token2wav import Token2Wav, get_preset

if TYPE_CHECKING:
    from pocketomni.engine.model_folder import ModelFolder
    from pocketomni.engine.speech_pipeline import PipelinedReply
    from pocketomni.engine.talker import Talker
    from pocketomni.engine.thinker import Thinker, ThinkerSession
    from pocketomni.token2wav.dit import SpeakerCond

__all__ = [
    "FEED_CODES",
    "SPEECH_SYSTEM_PROMPT",
    "STREAMING_MODES",
    "SpeechEngine",
    "SpeechReply",
    "SpeechSettings",
    "check_system_prompt",
]

# The system prompt the model was trained to speak with (Qwen2.5-Omni model card and demos).
SPEECH_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
STREAMING_MODES = ("exact", "chunked")
DEFAULT_STREAMING = {"fast": "exact", "reference": "chunked"}
TALKER_EXTRA_CTX = 4096  # talker context = thinker context + room for this many codes


def check_system_prompt(system: str | None) -> None:
    """Warn when a speech chat's system prompt lacks the one the model speaks with."""
    if system is not None and SPEECH_SYSTEM_PROMPT not in system:
        warnings.warn(
            "this system prompt drops Qwen2.5-Omni's speech prompt; the model may not speak well. Keep "
            f"{SPEECH_SYSTEM_PROMPT!r} in it (pocketomni.engine.speech.SPEECH_SYSTEM_PROMPT), or pass system=None.",
            UserWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class SpeechSettings:
    """How a chat speaks.

    voice: speaker name ("Chelsie" or "Ethan" for Qwen2.5-Omni).
    preset: token2wav solver, "fast" (4 Euler steps, no guidance) or "reference" (10-point RK4, guidance 0.5).
    streaming: "exact" (streamed audio equals one-shot rendering) or "chunked" (the reference's
      36-code chunks; sooner first audio with heavy presets); default per preset.
    options: the talker's sampling and limits (SpeechOptions).
    """

    voice: str = "Chelsie"
    preset: str = "fast"
    streaming: str = "exact"
    options: SpeechOptions = field(default_factory=SpeechOptions)

    @classmethod
    def resolve(cls, voice: str | None = None, preset: str | None = None, options: Any = None,
                streaming: str | None = None) -> SpeechSettings:
        """Validate user arguments (None: defaults); the voice is checked against the model later."""
        if voice is not None and not isinstance(voice, str):
            raise OptionsError(f"voice must be a speaker name such as 'Chelsie', got {voice!r}")
        if preset is not None and not isinstance(preset, str):
            raise OptionsError(f"speech_preset must be 'fast' or 'reference', got {preset!r}")
        name = get_preset(preset or "fast").name  # OptionsError for unknown presets
        mode = streaming or DEFAULT_STREAMING.get(name, "exact")
        if mode not in STREAMING_MODES:
            raise OptionsError(f"unknown speech_streaming {mode!r}; use one of {', '.join(STREAMING_MODES)}")
        if options is None:
            opts = SpeechOptions()
        elif isinstance(options, SpeechOptions):
            opts = options
        elif isinstance(options, dict):
            opts = SpeechOptions.from_dict(options)
        else:
            raise OptionsError(f"speech_options must be SpeechOptions or a dict, got {type(options).__name__}")
        return cls(voice=voice or "Chelsie", preset=name, streaming=mode, options=opts)

    def override(self, changes: SpeechSettings | Mapping[str, Any]) -> SpeechSettings:
        """These settings with `changes` applied (for one turn): a whole SpeechSettings, or a mapping of
        voice / preset / streaming / options, where options may itself be a partial dict of
        SpeechOptions fields. A new preset without a streaming mode takes that preset's default."""
        if isinstance(changes, SpeechSettings):
            return SpeechSettings.resolve(changes.voice, changes.preset, changes.options, changes.streaming)
        if not isinstance(changes, Mapping):
            raise OptionsError(f"speech must be SpeechSettings or a dict, got {type(changes).__name__}")
        unknown = sorted(set(changes) - {"voice", "preset", "streaming", "options"})
        if unknown:
            raise OptionsError(f"unknown speech setting(s) {', '.join(unknown)}; use voice, preset, streaming, options")
        options = changes.get("options", self.options)
        if isinstance(options, Mapping):
            options = self.options.replace(**options)
        preset = changes.get("preset", self.preset)
        streaming = changes.get("streaming", self.streaming if "preset" not in changes else None)
        return SpeechSettings.resolve(changes.get("voice", self.voice), preset, options, streaming)


class SpeechEngine:
    """The talker and token2wav of one model; one spoken reply at a time (`hold`)."""

    def __init__(self, folder: ModelFolder, thinker: Thinker, *, n_ctx: int, n_threads: int | None = None,
                 kv_f32: bool = False, n_gpu_layers: int = 0) -> None:
        from pocketomni.engine.talker import Talker
        from pocketomni.engine.weights import load_token2wav

        folder.require("speech_out")
        weights = load_token2wav(folder.token2wav)  # type: ignore[arg-type]
        self.ids = weights.ids
        self._speakers = weights.speakers
        self.token2wav = Token2Wav.from_weights(weights.weights, weights.config)
        self.token2wav.prepare_presets()  # full size: 553 MB of modulation weights leave memory
        weights = dataclasses.replace(weights, weights={})  # the talker needs no vocoder tensors: free them
        self.talker: Talker = Talker(folder.talker, weights, n_threads, thinker_embed=thinker.model.embed_tokens,  # type: ignore[arg-type]
                                     n_ctx=n_ctx + TALKER_EXTRA_CTX, kv_f32=kv_f32, n_gpu_layers=n_gpu_layers)
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._spk_lock = threading.Lock()
        self._live: SpeechReply | PipelinedReply | None = None  # the reply of the holder, closed on release

    @property
    def voices(self) -> list[str]:
        """Speaker names this model has."""
        return sorted(self._speakers)

    def check_voice(self, voice: str) -> None:
        if voice not in self._speakers:
            raise OptionsError(f"unknown voice {voice!r}; this model has {', '.join(self.voices)}")

    def speaker(self, voice: str) -> SpeakerCond:
        """DiT conditioning of a voice (ECAPA runs once per voice, then cached)."""
        self.check_voice(voice)
        s = self._speakers[voice]
        with self._spk_lock:
            return self.token2wav.speaker(s.cond, s.ref_mel, name=voice)

    def hold(self, should_stop: Callable[[], bool]) -> _SpeechHold:
        """Context manager: this thread speaks next (waits for another chat's spoken reply)."""
        return _SpeechHold(self, should_stop)

    def reply(self, settings: SpeechSettings, session: ThinkerSession, seed: int | None = None,
              should_stop: Callable[[], bool] | None = None) -> SpeechReply | PipelinedReply:
        """A spoken reply for the turn whose prompt is now in `session` (call right after the prefill, in
        `hold`): pipelined or in turn as `settings.options.pipelined` says. `should_stop` (the turn's
        cancel flag) also stops its renders and background stages within one step."""
        from pocketomni.engine.speech_pipeline import PipelinedReply, use_pipeline

        if self._live is not None:
            self._live.close()
        reply: SpeechReply | PipelinedReply
        if use_pipeline(settings.options):
            reply = PipelinedReply(self, settings, session, seed, should_stop)
        else:
            reply = SpeechReply(self, settings, session, seed, should_stop)
        self._live = reply
        return reply

    def close(self) -> None:
        self.talker.close()


class _SpeechHold:
    def __init__(self, engine: SpeechEngine, should_stop: Callable[[], bool]) -> None:
        self.engine, self.should_stop, self.ok = engine, should_stop, False

    def __enter__(self) -> bool:
        e, me = self.engine, threading.get_ident()
        if e._owner == me:
            raise PocketOmniError("another chat of this model is speaking in this thread; finish iterating its "
                                  "reply (or close it) first")
        while not e._lock.acquire(timeout=0.05):
            if self.should_stop():
                return False
        e._owner, self.ok = me, True
        return True

    def __exit__(self, *exc: object) -> None:
        if self.ok:
            live, self.engine._live = self.engine._live, None
            try:
                if live is not None:  # a turn that ended early (error, abandoned generator): stop its stages
                    live.close()
            finally:
                self.engine._owner = None
                self.engine._lock.release()


class SpeechReply(RenderCounters):
    """One spoken reply, run by the chat's turn loop in the turn's thread (module doc). Counts codes and audio.
    `should_stop` also cuts a render short (within one DiT block)."""

    pipelined = False

    def __init__(self, engine: SpeechEngine, settings: SpeechSettings, session: ThinkerSession,
                 seed: int | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        self.engine, self.settings, self.session = engine, settings, session
        self.options = reply_options(settings.options, seed)
        self.seed: int = self.options.seed  # type: ignore[assignment]
        self.prompt_n = session.history.n
        self.codes: list[int] = []
        self.talker_seconds = 0.0  # time spent in the talker (prefill, steps, sampling)
        self._started = False
        self.renderer = ReplyRenderer(engine.token2wav, lambda: engine.speaker(settings.voice), settings.preset,
                                      settings.streaming, self.seed, should_stop,
                                      (self.options.first_chunk_codes, self.options.first_chunk_future))
        # SpeechOptions.threads pins the stages' threads here too (otherwise: the model's threads)
        self._cores = None if settings.options.threads is None else CoreShare(
            StageThreads(*settings.options.threads), session.ctx, engine.talker.ctx)

    def add_token(self) -> list[np.ndarray]:
        """The thinker just decoded a reply token: feed it to the talker and return new audio (maybe none)."""
        talker = self.engine.talker
        t = time.perf_counter()
        n = self.session.history.n
        row = eh_rows(self.session, n - 1, n)
        if not self._started:
            self.renderer.open()
            talker.start(eh_rows(self.session, 0, self.prompt_n), self.session.history.positions[:, : self.prompt_n],
                         self.settings.voice, row, self.options)
            self._started = True
        elif not talker.done:
            talker.push_reply(row)
        new = list(talker.codes())
        self.codes += new
        self.talker_seconds += time.perf_counter() - t
        return self.renderer.take(new, final=talker.done, every=1)  # codes keep pace with the (slower) text here

    def finish(self, should_stop: Callable[[], bool]) -> Iterator[np.ndarray]:
        """The text is complete: run the talker to its end, yielding audio as it is rendered.
        Returns early (audio cut) when `should_stop()` turns true."""
        if not self._started:
            return
        talker = self.engine.talker
        if not talker.done:
            talker.finish_reply()
        while not talker.done:
            if should_stop():
                return
            t = time.perf_counter()
            code = talker.next_code()
            self.talker_seconds += time.perf_counter() - t
            new = [] if code is None else [code]
            self.codes += new
            if new or talker.done:
                if should_stop():
                    return
                yield from self.renderer.take(new, final=talker.done, every=FEED_CODES)
        yield from self.renderer.take([], final=True, every=FEED_CODES)

    def close(self) -> None:
        """End the reply (nothing runs in the background here): free the renderer's buffers."""
        self.renderer.close()
        if self._cores is not None:
            self._cores.restore()

