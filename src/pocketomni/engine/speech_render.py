"""The parts of a spoken reply that both engines share (speech.py runs them in turn, speech_pipeline.py
in threads): the talker's E + H input rows, the reply's seed, and `ReplyRenderer`, the token2wav side.

The renderer takes the talker's codes in the groups the talker made them (`take(codes, final, every)`:
render once `every` codes are pending, or everything at `final`). Both engines hand it the same groups
in the same order, and a stream's output depends only on that sequence, never on timing: so they give
the same waveform bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pocketomni.errors import InternalError
from pocketomni.token2wav import SAMPLE_RATE
from pocketomni.token2wav.stop import RenderStopped, stop_hook

if TYPE_CHECKING:
    from pocketomni.engine.thinker import ThinkerSession
    from pocketomni.options import SpeechOptions
    from pocketomni.token2wav import Token2Wav
    from pocketomni.token2wav.dit import SpeakerCond
    from pocketomni.token2wav.streaming import SpeechStream

__all__ = ["FEED_CODES", "RenderCounters", "ReplyRenderer", "eh_rows", "reply_options"]

FEED_CODES = 12  # codes handed to token2wav at a time after the text (one DiT block); every render point is kept


def reply_options(options: SpeechOptions, seed: int | None) -> SpeechOptions:
    """The talker options of one reply, with its seed fixed (given, the options', or a fresh one)."""
    if seed is None:
        seed = options.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))  # type: ignore[operator]
    return dataclasses.replace(options, seed=seed)


def eh_rows(session: ThinkerSession, start: int, stop: int) -> np.ndarray:
    """The talker's input E + H for history rows [start, stop) of a speech chat's thinker session."""
    hidden = session.history.hidden
    if hidden is None:
        raise InternalError("a speech reply on a chat that keeps no hidden states")
    return session.input_embeddings(start, stop) + hidden[start:stop].astype(np.float32)


class ReplyRenderer:
    """Codes -> audio chunks for one reply (module doc). `should_stop` ends a render within one DiT block
    or vocoder step; the stream is then dropped and `stopped` is true."""

    def __init__(self, token2wav: Token2Wav, speaker: Callable[[], SpeakerCond], preset: str, mode: str,
                 seed: int, should_stop: Callable[[], bool] | None = None, first_chunk: tuple[int, int] = (0, 0)) -> None:
        self._t2w, self._speaker = token2wav, speaker
        self.first_chunk = first_chunk  # (codes, future codes) of the short first chunk (0: none)
        self.preset, self.mode, self.seed = preset, mode, seed
        self.should_stop = should_stop
        self.samples = 0
        self.t_first_audio = 0.0
        self.render_seconds = 0.0  # time spent in token2wav
        self.stopped = False
        self._pending: list[int] = []
        self._stream: SpeechStream | None = None
        self._opened = self._flushed = False
        self._max_code = token2wav.dit.cfg.num_embeds  # codes the DiT knows: 0..num_embeds

    def open(self) -> None:
        """Create the stream (speaker conditioning first: ECAPA runs once per voice)."""
        if not self._opened:
            self._stream = self._t2w.stream(self._speaker(), self.preset, mode=self.mode, seed=self.seed,
                                            first_chunk_codes=self.first_chunk[0],
                                            first_chunk_future=self.first_chunk[1])
            self._opened = True

    @property
    def flushed(self) -> bool:
        """True once the final audio was rendered (or the render was stopped): later calls do nothing."""
        return self._flushed

    def take(self, codes: Sequence[int], final: bool, every: int) -> list[np.ndarray]:
        """Add the talker's new codes; render when `every` are pending or at `final`; new audio chunks."""
        # Codes beyond the DiT's table have no sound (the trained talker never emits them): skip them.
        self._pending += [c for c in codes if 0 <= c <= self._max_code]
        if self._flushed or (len(self._pending) < every and not final):
            return []
        self.open()
        assert self._stream is not None
        t = time.perf_counter()
        try:
            with stop_hook(self.should_stop):
                out = [self._stream.feed(np.asarray(self._pending, np.int64))] if self._pending else []
                self._pending = []
                if final:
                    out.append(self._stream.finish())
        except RenderStopped:
            out, final, self.stopped = [], True, True
        finally:
            self.render_seconds += time.perf_counter() - t
        if final:
            self._flushed = True
            self._stream = None  # free the renderer's buffers now, not when the chat drops this reply
        out = [np.ascontiguousarray(a, np.float32) for a in out if a.size]
        if out and not self.t_first_audio:
            self.t_first_audio = time.perf_counter()
        self.samples += sum(a.size for a in out)
        return out

    def close(self) -> None:
        """Drop the stream (a reply cut short)."""
        self._flushed, self._stream = True, None

    @property
    def audio_seconds(self) -> float:
        return self.samples / SAMPLE_RATE


class RenderCounters:
    """The audio counters of a spoken reply (both engines), read from its `renderer`."""

    renderer: ReplyRenderer

    @property
    def samples(self) -> int:
        return self.renderer.samples

    @property
    def t_first_audio(self) -> float:
        return self.renderer.t_first_audio

    @property
    def render_seconds(self) -> float:
        return self.renderer.render_seconds

    @property
    def audio_seconds(self) -> float:
        return self.renderer.audio_seconds
