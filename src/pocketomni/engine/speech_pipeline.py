"""A pipelined spoken reply: the thinker, the talker and token2wav run at once, each on its own threads.

    turn thread (thinker) --E+H rows, unbounded--> talker thread --codes, <= MAX_AHEAD_CODES--> renderer
    thread (token2wav's DiT) [--mel steps, <= MAX_AHEAD_MEL_STEPS--> vocoder thread] --audio chunks,
    <= MAX_AHEAD_CHUNKS--> back to the turn thread's event stream

`PipelinedReply` has `SpeechReply`'s interface (speech.py): `add_token()` queues the newest reply token's
E + H row and returns whatever audio is ready without waiting, so the text is not held back by speech
(but see first_audio_first below); `finish()` waits for the rest. llama.cpp and numpy release the GIL,
so the stages overlap for real.

- Threads: the thinker's and the talker's llama.cpp contexts and OpenBLAS get the split of
  `cpu_split.split_threads` (or `SpeechOptions.threads`) for the reply, and their own counts back after.
  Up to 4 cores the vocoder gets a thread of its own beside the DiT (one BLAS thread each: two products
  at 1 thread use two cores better than one at 2 threads; `vocoder_thread`).
- Spare cores (default split only; threads set in the options stay as set): a stage that runs alone takes
  the cores the others leave (`cpu_split.alone_threads`): the thinker while token2wav has no step
  running, the talker after the text while token2wav waits, token2wav's last step (the text and the DiT
  done) and, with first_audio_first, its steps before the first sound. The decoders' counts follow
  timing (llama.cpp splits a product by rows, so the tokens and codes do not change: tested);
  token2wav's follow the codes alone, so its audio is the same in every run (see `_products`).
- first_audio_first (`SpeechOptions.first_audio_first`; None: when the stages' threads outnumber the
  cores): until the first sound, the thinker waits whenever token2wav is rendering, so the first chunk
  gets the cores instead of sharing one with the thinker (as the one-after-another path does); after
  it the text never waits. 2-core AMD EPYC, synthetic 3B (spoken_turn.md, 3b-fast-spare-cores, medians
  of 3): first audio 5.24 s with it, 6.38 s without.
- Back-pressure: the talker waits when it is MAX_AHEAD_CODES ahead of what token2wav has taken, the
  DiT when MAX_AHEAD_MEL_STEPS wait for the vocoder, and token2wav when MAX_AHEAD_CHUNKS of audio wait
  for the turn thread.
- Same output as the one-after-another path: the talker's sampling RNG belongs to the talker thread
  alone and sees the same rows in the same order; the renderer gets the codes in the same groups
  (`speech_render` module doc). Tokens and codes are identical; the audio is identical in every run of
  one split, and within float rounding of the one-after-another path's (its products run at other
  thread counts; SNR >= 100 dB, tested).
- Stopping: `close()` or the turn's cancel flag stops each stage within one step (a code, a DiT block, a
  vocoder node) and joins its thread. A stage's exception is re-raised, as is, by the turn thread's
  next `add_token()` / `finish()`.

When to pipeline (`SpeechOptions.pipelined=None`): from 3 usable cores. On 2 cores the pipeline now about
ties one after another (every stage on both cores) but does not beat it, measured on a 2-core AMD EPYC
(benchmarks/results/spoken_turn.md, 3b-fast-spare-cores, four engines alternated, medians of 3, noisy:
load 0.1 -> 1.7): synthetic 3B, 60 tokens / 200 codes: whole turn 20.98 s pipelined vs 20.07 s, first
audio 5.24 vs 4.60 s, end of text 8.33 vs 7.75 s; RTF 1.47x vs 1.40x the best possible overlap of the
stages (their work at the most efficient thread count over 2 cores); a second run (3b-fast-spare-cores-2,
load 1.2): 18.50 vs 18.70 s, first audio 4.37 s both, 1.29x vs 1.30x. With one render thread and no
spare cores the pipeline lost by more (first audio 6.64 vs 4.57 s, turn 26.6 vs 21.6 s, an earlier
section): on 2 cores the stages' extra CPU when they share cores (37.7 s of CPU against 30.0 s for the
same work one after another on the same threads) eats what overlapping gains. So 2 cores stay one after
another, unless OpenBLAS kept its long idle spin (numpy imported before pocketomni; pocketomni.blas_spin),
where two-thread products stall beside llama.cpp and the pipeline wins. With 3 or more cores the stages
get their own cores (cpu_split) and the pipeline overlaps them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketomni import blas_spin
from pocketomni.engine.cpu_split import (
    CoreShare,
    StageThreads,
    alone_threads,
    set_blas_threads,
    split_threads,
    usable_cpus,
)
from pocketomni.engine.speech_render import (
    FEED_CODES,
    MelStep,
    RenderCounters,
    ReplyRenderer,
    eh_rows,
    reply_options,
)

if TYPE_CHECKING:
    from pocketomni.engine.speech import SpeechEngine, SpeechSettings
    from pocketomni.engine.thinker import ThinkerSession
    from pocketomni.options import SpeechOptions

__all__ = ["MAX_AHEAD_CHUNKS", "MAX_AHEAD_CODES", "PIPELINE_MIN_CPUS", "PipelinedReply", "stage_threads",
           "use_pipeline"]

PIPELINE_MIN_CPUS = 3  # pipelined=None runs the pipeline from this many usable cores (module doc)
MAX_AHEAD_CODES = 72  # two 36-code render steps: the talker makes the next step's codes while one renders
MAX_AHEAD_CHUNKS = 4  # rendered chunks waiting for the turn thread
MAX_AHEAD_MEL_STEPS = 2  # DiT steps waiting for the vocoder (when it has a thread of its own)
POLL_SECONDS = 0.05  # a waiting stage re-checks the cancel flag this often (close() wakes it at once)
_END = object()


def use_pipeline(options: SpeechOptions) -> bool:
    """Whether a reply with these options runs pipelined (None: from the usable cores)."""
    if options.pipelined is not None:
        return options.pipelined
    cpus = usable_cpus()
    return cpus >= PIPELINE_MIN_CPUS or (cpus >= 2 and blas_spin.exponent() > blas_spin.SPIN_EXPONENT)


def first_audio_first(cpus: int, threads: StageThreads) -> bool:
    """Whether the text waits for token2wav until the first audio: when the stages' threads outnumber the
    cores, a first chunk rendered beside the thinker shares a core with it and comes later (module doc)."""
    return threads.thinker + threads.talker + threads.token2wav * (1 + threads.vocoder_thread) > cpus


def stage_threads(options: SpeechOptions) -> StageThreads:
    """The thread split of a pipelined reply: the options' or the machine's default."""
    return StageThreads(*options.threads) if options.threads is not None else split_threads(usable_cpus())


class _Channel:
    """A FIFO between two threads, bounded by the summed size of its items (an item larger than the
    bound still passes when the channel is empty). put/get give up when `stopped()` turns true."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self._items: deque[tuple[Any, int]] = deque()
        self._size = 0
        self._cond = threading.Condition()

    def put(self, item: Any, stopped: Callable[[], bool], size: int = 1) -> bool:
        with self._cond:
            while self._items and self._size + size > self.capacity:
                if stopped():
                    return False
                self._cond.wait(POLL_SECONDS)
            self._items.append((item, size))
            self._size += size
            self._cond.notify_all()
            return True

    def get(self, stopped: Callable[[], bool], timeout: float | None = None) -> Any:
        """The next item; None when stopped (or after `timeout` seconds without one)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if stopped() or (end is not None and time.monotonic() >= end):
                    return None
                self._cond.wait(POLL_SECONDS if end is None else max(0.0, min(POLL_SECONDS, end - time.monotonic())))
            item, size = self._items.popleft()
            self._size -= size
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class PipelinedReply(RenderCounters):
    """One spoken reply with the talker and token2wav in background threads (module doc)."""

    pipelined = True

    def __init__(self, engine: SpeechEngine, settings: SpeechSettings, session: ThinkerSession,
                 seed: int | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        self.engine, self.settings, self.session = engine, settings, session
        self.options = reply_options(settings.options, seed)
        self.seed: int = self.options.seed  # type: ignore[assignment]
        self.threads = stage_threads(settings.options)
        self.prompt_n = session.history.n
        self.codes: list[int] = []  # appended by the talker thread
        self.talker_seconds = 0.0  # busy time of the talker thread (prefill, steps, sampling)
        self._outer = should_stop or (lambda: False)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._rows = _Channel(float("inf"))  # the thinker never waits for the talker
        self._work = _Channel(MAX_AHEAD_CODES)  # (codes, final, every) render requests, sized in codes
        self._audio = _Channel(MAX_AHEAD_CHUNKS)
        self._mel = _Channel(MAX_AHEAD_MEL_STEPS)  # DiT -> vocoder, when the vocoder has its own thread
        self.renderer = ReplyRenderer(engine.token2wav, lambda: engine.speaker(settings.voice), settings.preset,
                                      settings.streaming, self.seed, self._stopped,
                                      (self.options.first_chunk_codes, self.options.first_chunk_future))
        self._started = self._closed = self._audio_done = False
        self._cores = CoreShare(self.threads, session.ctx, engine.talker.ctx)  # given back in close()
        # Idle cores go to the stage that runs alone (module doc): the thinker while token2wav waits,
        # one half of token2wav once the text is done and the other half waits. Threads set in the options
        # stay as set.
        pinned = settings.options.threads is not None
        self._alone = None if pinned else alone_threads(usable_cpus(), self.threads)
        self._thinker_batch = session.ctx.threads[1]
        self._thinker_n, self._talker_n = self.threads.thinker, self.threads.talker
        self._products_lock = threading.Lock()
        self._busy = {"dit": False, "vocoder": False}  # token2wav's halves running a step
        self._first_audio_first_on = (first_audio_first(usable_cpus(), self.threads)
                                      if settings.options.first_audio_first is None else settings.options.first_audio_first)
        self._busy_lock = threading.Lock()
        stages = [("talker", self._talk), ("token2wav", self._render)]
        if self.threads.vocoder_thread:
            stages.append(("vocoder", self._vocode))
        self._workers = [threading.Thread(target=self._guard, args=(fn,), name=f"pocketomni-{name}", daemon=True)
                         for name, fn in stages]
        for w in self._workers:
            w.start()

    # ------------------------------------------------------------------ turn thread

    def add_token(self) -> list[np.ndarray]:
        """The thinker just decoded a reply token: queue its E + H row; return the audio ready now."""
        self._check()
        n = self.session.history.n
        row = eh_rows(self.session, n - 1, n)
        if not self._started:
            prompt = eh_rows(self.session, 0, self.prompt_n)
            positions = np.array(self.session.history.positions[:, : self.prompt_n])
            self._rows.put(("start", prompt, positions, row), self._stopped)
            self._started = True
        else:
            self._rows.put(("row", row), self._stopped)
        out = self._first_audio_first()
        self._thinker_threads()
        while (chunk := self._audio.get(lambda: True)) is not None and chunk is not _END:
            out.append(chunk)
        if chunk is _END:
            self._audio_done = True
        return out

    def _first_audio_first(self) -> list[np.ndarray]:
        """Few cores (`first_audio_first`): before the first audio, the text waits while token2wav renders,
        which then has the cores to itself; returns the chunks that came meanwhile."""
        out: list[np.ndarray] = []
        if not self._first_audio_first_on or self.renderer.t_first_audio:
            return out
        if not self._rendering():
            return out
        while not self._stopped() and not out:
            chunk = self._audio.get(self._stopped, timeout=POLL_SECONDS)
            if chunk is _END:
                self._audio_done = True
                break
            if chunk is not None:
                out.append(chunk)
            elif not self._rendering():
                break  # token2wav idle again without audio (waiting for codes): the text goes on
        return out

    def finish(self, should_stop: Callable[[], bool]) -> Iterator[np.ndarray]:
        """The text is complete: yield the rest of the audio as it is rendered. Returns early (audio cut)
        when `should_stop()` turns true."""
        if not self._started:
            self.close()
            return
        self._rows.put(("end",), self._stopped)
        while not self._audio_done:
            self._check()
            if should_stop():
                self.close()
                return
            chunk = self._audio.get(lambda: self._stop.is_set() or should_stop(), timeout=POLL_SECONDS)
            if chunk is _END:
                break
            if chunk is not None:
                yield chunk
        self.close()
        self._check()

    def close(self) -> None:
        """Stop every stage within one step, join the threads, give the cores back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for ch in self._channels:
            ch.wake()
        for w in self._workers:
            w.join()
        self.renderer.close()
        self._cores.restore()

    def _rendering(self) -> bool:
        """Whether a token2wav half is running a step."""
        with self._busy_lock:
            return self._busy["dit"] or self._busy["vocoder"]

    def _decoder_threads(self, share: int) -> int:
        """A decoder's threads for its next step: its share while token2wav renders, else the spare cores."""
        return share if self._rendering() else self._alone or share

    def _thinker_threads(self) -> None:
        """The thinker's threads for its next token (`_decoder_threads`)."""
        n = self._decoder_threads(self.threads.thinker)
        if n != self._thinker_n:
            self._thinker_n = n
            self.session.ctx.set_threads(n, self._thinker_batch)

    def _set_busy(self, half: str, busy: bool) -> None:
        """Mark a token2wav half busy or idle (the decoders' threads and a waiting thinker follow it)."""
        with self._busy_lock:
            self._busy[half] = busy
        if not busy:
            self._audio.wake()  # a thinker waiting for the first audio re-checks at once

    @contextmanager
    def _products(self, alone: bool, lock: bool = False) -> Iterator[None]:
        """Run a render step's products: with the spare cores if it runs alone (`_render_alone`), else with
        token2wav's share. OpenBLAS has one count per process, and 1- and 2-thread products round apart:
        a step with the spare cores holds a lock that the DiT half's steps take (`lock`), so no product
        runs with a count another thread set for itself, and every run computes the same audio."""
        n = self._alone if alone and self._alone else self.threads.token2wav
        if n == self.threads.token2wav:
            with self._products_lock if lock else nullcontext():
                yield
            return
        with self._products_lock:
            set_blas_threads(n)
            try:
                yield
            finally:
                set_blas_threads(self.threads.token2wav)

    def _render_alone(self, step: MelStep | None, final: bool) -> bool:
        """Whether a vocoder step (or, without a vocoder thread, a whole render step) runs alone: the last
        one (the text and the DiT are done), and with first_audio_first the steps before the first sound
        (the thinker waits; the DiT has no product to run before its first step's codes, more than a
        first chunk's)."""
        if final:
            return True
        return bool(step is not None and self._first_audio_first_on and self.renderer.first_sound_step(step))

    def _talker_threads(self) -> None:
        """The talker's threads for its next code after the text (`_decoder_threads`)."""
        n = self._decoder_threads(self.threads.talker)
        if n != self._talker_n:
            self._talker_n = n
            self.engine.talker.ctx.set_threads(n)

    @property
    def _channels(self) -> tuple[_Channel, ...]:
        return self._rows, self._work, self._mel, self._audio

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            self.close()
            raise err

    # ------------------------------------------------------------------ stages

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._outer()

    def _guard(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except BaseException as e:  # noqa: BLE001 -- handed to the turn thread
            if self._error is None and not self._stop.is_set():
                self._error = e
            self._stop.set()
            for ch in self._channels:
                ch.wake()

    def _talk(self) -> None:
        """Talker thread: rows in, render requests out, in the groups SpeechReply makes them."""
        talker = self.engine.talker
        started = False
        while True:
            msg = self._rows.get(self._stopped)
            if msg is None:
                return
            kind = msg[0]
            if kind == "end":
                break
            t = time.perf_counter()
            if kind == "start":
                talker.start(msg[1], msg[2], self.settings.voice, msg[3], self.options)
                started = True
            elif talker.done:
                continue
            else:
                talker.push_reply(msg[1])
            new: list[int] = []
            while not talker.done and talker.ready:  # as Talker.codes(), checking the flag per code
                if self._stopped():
                    return
                code = talker.next_code()
                if code is not None:
                    new.append(code)
            self.codes += new
            self.talker_seconds += time.perf_counter() - t
            if (new or talker.done) and not self._send(new, talker.done, 1):
                return
        if not started:
            self._work.put(_END, self._stopped, 0)
            return
        if not talker.done:
            talker.finish_reply()
        while not talker.done:
            if self._stopped():
                return
            self._talker_threads()
            t = time.perf_counter()
            code = talker.next_code()
            self.talker_seconds += time.perf_counter() - t
            new = [] if code is None else [code]
            self.codes += new
            if (new or talker.done) and not self._send(new, talker.done, FEED_CODES):
                return
        if self._send([], True, FEED_CODES):
            self._work.put(_END, self._stopped, 0)

    def _send(self, codes: list[int], final: bool, every: int) -> bool:
        return self._work.put((codes, final, every), self._stopped, len(codes))

    def _render(self) -> None:
        """Renderer thread: render requests in, audio chunks out (or, with a vocoder thread, mel steps)."""
        r = self.renderer
        split = self.threads.vocoder_thread
        out = self._mel if split else self._audio
        while True:
            item = self._work.get(self._stopped)
            if item is None:
                return
            if item is _END:
                out.put(_END, self._stopped)
                return
            self._set_busy("dit", True)
            try:
                if split:
                    with self._products(False, lock=True):
                        step = r.take_mel(*item)
                else:
                    with self._products(self._render_alone(None, item[1])):
                        chunks = r.take(*item)
            finally:
                self._set_busy("dit", False)
            if split:
                if step is not None and not self._mel.put(step, self._stopped):
                    return
            else:
                for chunk in chunks:
                    if not self._audio.put(chunk, self._stopped):
                        return
            if r.stopped:
                return

    def _vocode(self) -> None:
        """Vocoder thread (vocoder_thread): the DiT's mel steps in, audio chunks out."""
        r = self.renderer
        while True:
            step = self._mel.get(self._stopped)
            if step is None:
                return
            if step is _END:
                self._audio.put(_END, self._stopped)
                return
            self._set_busy("vocoder", True)
            try:
                with self._products(self._render_alone(step, step.last_mel is not None)):
                    chunks = r.take_audio(step)
            finally:
                self._set_busy("vocoder", False)
            for chunk in chunks:
                if not self._audio.put(chunk, self._stopped):
                    return
            if r.stopped:
                return
