"""A short first chunk in front of a streamed utterance: sound after N codes instead of the stream's lag.

The exact stream (streaming.py) cannot emit audio before `evaluations x blocks_ahead` DiT blocks plus the
vocoder's 36-frame lag exist (fast preset: 66 codes, first emitted at the 72-code step), and the chunked
stream waits for one 36-code chunk plus 12 future codes (49). `FirstChunk` renders codes [0, N) on their
own as soon as they exist: one-shot DiT on that window (the last F codes serve only as future context,
with the utterance's own noise) and the vocoder on its mel with the window's end padded. It keeps the
window's first (N - F) codes of audio, then hands over to the main stream, which still runs from the
first code, so everything after the seam is the main stream's audio unchanged:

    samples [0, S)        first chunk,              S = (N - F) * samples_per_code
    samples [S, S + X)    raised-cosine cross-fade from the first chunk to the main stream
    samples [S + X, ...)  the main stream (exact mode: equal to one-shot rendering)

The output is a function of the codes alone (not of how they were fed): the first chunk is rendered from
codes[:N] whenever the N-th code arrives, main-stream audio produced before that is held back, and an
utterance that ends with fewer than N codes is just the main stream. The first chunk costs one one-shot
DiT solve and one vocoder pass over N codes on top of the main stream's work.

Choice of the default (SpeechOptions: N = 24, F = 12), from benchmarks/results/first_chunk.md (tiny
random-weight token2wav with the real block layout; fast preset; 5 seeds): against one-shot rendering
the first chunk's own audio is at 40-48 dB SNR and 0.003-0.007 nats of log-mel distance, ~100x below
the 0.38-0.42 between two renderings of the same codes with different noise. Six future codes lose
~9 dB (30-37 dB), and 24 reach 69-82 dB but delay the sound by 12 codes more (N = 36); the context the
DiT lacks is its own look-ahead (one 12-code block per layer that looks ahead, per solver evaluation),
so F = 12 is the first whole block. N = 24 is a third of today's 72 codes (Qwen's own decoder fires at
48) and gives 12 codes (0.24 s) of sound. Random weights say how context truncation propagates in this
network, not how a trained voice sounds at the seam: re-measure on real weights when they are at hand.

Between the first chunk and the main stream's next audio there is a wait: the exact stream's audio reaches
code (codes fed - 66) at its 36-code steps, so after an N-code first chunk the next sound needs about
N - F + 66 codes. Whether that gap is heard depends on how fast the codes come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pocketomni.errors import OptionsError

if TYPE_CHECKING:
    from pocketomni.token2wav.bigvgan import BigVGAN

F32 = np.float32

# Cross-fade at the seam, in samples: one code (20 ms at 24 kHz), capped by the future context.
CROSSFADE_SAMPLES = 480


def check_first_chunk(codes: int, future: int) -> None:
    """Validate first-chunk sizes (codes == 0: no first chunk)."""
    for name, v in (("first_chunk_codes", codes), ("first_chunk_future", future)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise OptionsError(f"{name}={v!r} must be an integer >= 0")
    if codes and future >= codes:
        raise OptionsError(
            f"first_chunk_future ({future}) must be smaller than first_chunk_codes ({codes}): the first chunk "
            "keeps the audio of its first (codes - future) codes; use first_chunk_codes=0 to turn it off."
        )


class FirstChunk:
    """Splices an early, independently rendered first chunk onto a main stream's audio (module doc).

    `feed(codes, main)` / `finish(main)` take the new codes and the main stream's new samples and return
    the samples to play. With `codes == 0` the main stream passes through unchanged.
    """

    def __init__(
        self,
        solve: Callable[[np.ndarray], np.ndarray],
        vocoder: BigVGAN,
        frames_per_code: int,
        codes: int,
        future: int,
        crossfade: int = CROSSFADE_SAMPLES,
    ):
        """`solve(codes)`: the one-shot mel (frames, mel_dim) of an utterance's first codes, with its noise."""
        check_first_chunk(codes, future)
        self.solve, self.vocoder = solve, vocoder
        self.n, self.future = int(codes), int(future)
        per_code = frames_per_code * vocoder.cfg.hop
        self.seam = (self.n - self.future) * per_code
        self.crossfade = min(int(crossfade), self.future * per_code) if self.n else 0
        k = np.arange(self.crossfade, dtype=np.float64)
        self.ramp = (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / max(self.crossfade, 1))).astype(F32)
        self.state = "waiting" if self.n else "off"
        self.codes = np.zeros(0, np.int64)
        self.head = np.zeros(0, F32)  # first-chunk audio [0, seam + crossfade)
        self.held: list[np.ndarray] = []  # main audio that arrived before the decision
        self.main_pos = 0  # main-stream samples consumed so far

    def render_head(self, codes: np.ndarray) -> np.ndarray:
        """The first chunk's audio [0, seam + crossfade) for the first N codes."""
        mel = self.solve(codes[: self.n])
        return self.vocoder.vocode(mel)[: self.seam + self.crossfade]

    def due(self, new_codes: int) -> bool:
        """Whether feed() with `new_codes` more codes renders the first chunk."""
        return self.state == "waiting" and self.codes.size + new_codes >= self.n

    def feed(self, codes: np.ndarray, main: np.ndarray) -> np.ndarray:
        if self.state == "waiting":
            self.codes = np.concatenate([self.codes, np.asarray(codes, np.int64).reshape(-1)])
            self.held.append(main)
            if self.codes.size < self.n:
                return np.zeros(0, F32)
            self.head = self.render_head(self.codes)
            self.state = "fired"
            held, self.held = np.concatenate(self.held), []
            return np.concatenate([self.head[: self.seam], self._splice(held)])
        return self._splice(main)

    def finish(self, main: np.ndarray) -> np.ndarray:
        if self.state == "waiting":  # the utterance is shorter than the first chunk: main stream only
            self.state = "off"
            held, self.held = self.held + [main], []
            return np.concatenate(held)
        return self._splice(main)

    def _splice(self, main: np.ndarray) -> np.ndarray:
        if self.state == "off":
            return main
        a = self.main_pos
        self.main_pos += main.size
        lo = max(a, self.seam)  # main samples before the seam are replaced by the first chunk
        if self.main_pos <= lo:
            return np.zeros(0, F32)
        seg = np.array(main[lo - a :], dtype=F32)
        nb = min(max(self.seam + self.crossfade - lo, 0), seg.size)
        if nb:
            w = self.ramp[lo - self.seam : lo - self.seam + nb]
            seg[:nb] = self.head[lo : lo + nb] * (F32(1) - w) + seg[:nb] * w
        return seg
