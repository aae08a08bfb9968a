"""A pipelined spoken reply: the thinker, the talker and token2wav run at once, each on its own threads.

    turn thread (thinker) --E+H rows, unbounded--> talker thread --codes, <= MAX_AHEAD_CODES--> renderer
    thread (token2wav) --audio chunks, <= MAX_AHEAD_CHUNKS--> back to the turn thread's event stream

`PipelinedReply` has `SpeechReply`'s interface (speech.py): `add_token()` queues the newest reply token's
E + H row and returns whatever audio is ready without waiting, so the text is never held back by speech;
`finish()` waits for the rest. llama.cpp and numpy release the GIL, so the stages overlap for real.

- Threads: the thinker's and the talker's llama.cpp contexts and OpenBLAS get the split of
  `cpu_split.split_threads` (or `SpeechOptions.threads`) for the reply, and their own counts back after.
- Back-pressure: the talker waits when it is MAX_AHEAD_CODES ahead of what token2wav has taken, and
  token2wav when MAX_AHEAD_CHUNKS of audio wait for the turn thread.
- Same output as the one-after-another path: the talker's sampling RNG belongs to the talker thread
  alone and sees the same rows in the same order; the renderer gets the codes in the same groups
  (`speech_render` module doc). Tokens, codes and audio are identical, whatever the timing.
- Stopping: `close()` or the turn's cancel flag stops each stage within one step (a code, a DiT block, a
  vocoder node) and joins its thread. A stage's exception is re-raised, as is, by the turn thread's
  next `add_token()` / `finish()`.

When to pipeline (`SpeechOptions.pipelined=None`): from 3 usable cores. On 2 cores one after another
(every stage on both cores) is faster, measured on an idle 2-core AMD EPYC with OpenBLAS's idle spin
shortened (pocketomni.blas_spin; benchmarks/results/spoken_turn.md, engines alternated): synthetic 3B,
60 tokens / 200 codes: first audio 4.57 vs 6.64 s pipelined (the bound from the stages alone: 3.72 s),
end of text 7.64 vs 7.36 s, whole turn 21.6 vs 26.6 s; tiny: first audio 0.24 vs 0.30 s. One thread per
stage costs the thinker and token2wav more than overlapping them gains. (Before the spin was shortened,
OpenBLAS's workers busy-waited through llama.cpp's decodes and the pipeline won by far: the earlier
sections of spoken_turn.md, taken on a machine loaded by other work, where two-thread teams also stall.)
With 3 or more cores the stages get their own cores (cpu_split) and the pipeline overlaps them. When
OpenBLAS kept its long spin (numpy imported before pocketomni), 2 cores pipeline too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketomni import blas_spin
from pocketomni.engine.cpu_split import CoreShare, StageThreads, split_threads, usable_cpus
from pocketomni.engine.speech_render import FEED_CODES, RenderCounters, ReplyRenderer, eh_rows, reply_options

if TYPE_CHECKING:
    from pocketomni.engine.speech import SpeechEngine, SpeechSettings
    from pocketomni.engine.thinker import ThinkerSession
    from pocketomni.options import SpeechOptions

__all__ = ["MAX_AHEAD_CHUNKS", "MAX_AHEAD_CODES", "PIPELINE_MIN_CPUS", "PipelinedReply", "stage_threads",
           "use_pipeline"]

PIPELINE_MIN_CPUS = 3  # pipelined=None runs the pipeline from this many usable cores (module doc)
MAX_AHEAD_CODES = 72  # two 36-code render steps: the talker makes the next step's codes while one renders
MAX_AHEAD_CHUNKS = 4  # rendered chunks waiting for the turn thread
POLL_SECONDS = 0.05  # a waiting stage re-checks the cancel flag this often (close() wakes it at once)
_END = object()


def use_pipeline(options: SpeechOptions) -> bool:
    """Whether a reply with these options runs pipelined (None: from the usable cores)."""
    if options.pipelined is not None:
        return options.pipelined
    cpus = usable_cpus()
    return cpus >= PIPELINE_MIN_CPUS or (cpus >= 2 and blas_spin.exponent() > blas_spin.SPIN_EXPONENT)


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
        self.renderer = ReplyRenderer(engine.token2wav, lambda: engine.speaker(settings.voice), settings.preset,
                                      settings.streaming, self.seed, self._stopped,
                                      (self.options.first_chunk_codes, self.options.first_chunk_future))
        self._started = self._closed = self._audio_done = False
        self._cores = CoreShare(self.threads, session.ctx, engine.talker.ctx)  # given back in close()
        self._workers = [threading.Thread(target=self._guard, args=(fn,), name=f"pocketomni-{name}", daemon=True)
                         for name, fn in (("talker", self._talk), ("token2wav", self._render))]
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
        out: list[np.ndarray] = []
        while (chunk := self._audio.get(lambda: True)) is not None and chunk is not _END:
            out.append(chunk)
        if chunk is _END:
            self._audio_done = True
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
        for ch in (self._rows, self._work, self._audio):
            ch.wake()
        for w in self._workers:
            w.join()
        self.renderer.close()
        self._cores.restore()

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
            for ch in (self._rows, self._work, self._audio):
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
        """Renderer thread: render requests in, audio chunks out."""
        r = self.renderer
        while True:
            item = self._work.get(self._stopped)
            if item is None:
                return
            if item is _END:
                self._audio.put(_END, self._stopped)
                return
            codes, final, every = item
            for chunk in r.take(codes, final, every):
                if not self._audio.put(chunk, self._stopped):
                    return
            if r.stopped:
                return

