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

__all__ = ["FEED_CODES", "MelStep", "RenderCounters", "ReplyRenderer", "eh_rows", "reply_options"]

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


@dataclasses.dataclass
class MelStep:
    """One render step between the halves of `ReplyRenderer.take`: the codes fed, the DiT's mel for them
    (None: no codes) and, at the end, the last mel frames (None before the reply's final step)."""

    codes: np.ndarray
    mel: np.ndarray | None
    last_mel: np.ndarray | None
    stream: SpeechStream


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
        self.dit_seconds = 0.0  # time spent in the DiT half of token2wav (take_mel)
        self.vocoder_seconds = 0.0  # and in the vocoder half (take_audio)
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
        step = self.take_mel(codes, final, every)
        return [] if step is None else self.take_audio(step)

    # take() in two halves for a pipeline that runs the DiT and the vocoder on two threads: take_mel's
    # steps go to take_audio one by one, in order (the output is the same as take()'s, bit for bit).

    def take_mel(self, codes: Sequence[int], final: bool, every: int) -> MelStep | None:
        """DiT half of take(): the step's mel, or None when nothing is rendered yet (or any more)."""
        # Codes beyond the DiT's table have no sound (the trained talker never emits them): skip them.
        self._pending += [c for c in codes if 0 <= c <= self._max_code]
        if self._flushed or (len(self._pending) < every and not final):
            return None
        self.open()
        stream = self._stream  # the vocoder half may drop self._stream (stopped) while this half runs
        assert stream is not None
        step = MelStep(np.asarray(self._pending, np.int64), None, None, stream)
        self._pending = []
        t = time.perf_counter()
        try:
            with stop_hook(self.should_stop):
                if step.codes.size:
                    step.mel = stream.feed_mel(step.codes)
                if final:
                    step.last_mel = stream.finish_mel()
        except RenderStopped:
            self._stopped()
            return None
        finally:
            self.dit_seconds += time.perf_counter() - t
        if final:
            self._flushed = True
            self._stream = None  # free the renderer's buffers now, not when the chat drops this reply
        return step

    def take_audio(self, step: MelStep) -> list[np.ndarray]:
        """Vocoder half of take(): the audio chunks of one take_mel() step."""
        if self.stopped:
            return []
        t = time.perf_counter()
        try:
            with stop_hook(self.should_stop):
                out = [step.stream.feed_audio(step.codes, step.mel)] if step.mel is not None else []
                if step.last_mel is not None:
                    out.append(step.stream.finish_audio(step.last_mel))
        except RenderStopped:
            self._stopped()
            return []
        finally:
            self.vocoder_seconds += time.perf_counter() - t
        out = [np.ascontiguousarray(a, np.float32) for a in out if a.size]
        if out and not self.t_first_audio:
            self.t_first_audio = time.perf_counter()
        self.samples += sum(a.size for a in out)
        return out

    def first_sound_step(self, step: MelStep) -> bool:
        """Whether `step` comes before any audio and may make the first: it fires the first chunk or
        carries the stream's mel (follows from the codes taken so far, not from timing)."""
        if self.samples:
            return False
        return step.stream.first_chunk_due(step.codes) or step.last_mel is not None or (
            step.mel is not None and step.mel.size > 0)

    def _stopped(self) -> None:
        self._flushed, self.stopped, self._stream = True, True, None

    @property
    def render_seconds(self) -> float:
        """Time spent in token2wav (both halves)."""
        return self.dit_seconds + self.vocoder_seconds

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
