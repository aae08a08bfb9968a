"""Incremental codes -> mel -> waveform rendering.

Two DiT schedules share the flattened solver (`solver.SolverPlan`) and the streaming vocoder:

* `exact` (wavefront): every solver evaluation k_i is computed as soon as its input
  y_i = x0 + sum_j A_ij k_j exists, layer by layer (`layer_front.LayerFront`): each layer outputs the
  frames whose look-ahead block exists and keeps only the blocks later steps read, so every layer row
  is computed once, as in one-shot rendering (the previous windowed schedule recomputed context: 1.42x
  the one-shot DiT work at 36-code steps). The result equals the one-shot mel up to float rounding;
  steps still cost more time than one long pass because their matrix products have fewer rows
  (benchmarks/results/token2wav_roofline.md). Latency: each evaluation needs blocks_ahead more blocks
  of codes (fast preset: 4 blocks = 48 codes; reference preset: 36 blocks = 432 codes, i.e. hardly
  streaming).
* `chunked`: the reference's streaming scheme (Qwen2.5-Omni token2wav `fast_forward`): chunks of 36 codes,
  each solved independently from the same per-utterance noise with 24 codes of past and 12 of future
  context, keeping the chunk's own frames. Lower latency (first chunk after 49 codes) and 1.94x the DiT
  work, but not equal to one-shot: a chunk's later evaluations do not see the receptive field that
  several evaluations accumulate (exact once past/future cover evaluations x blocks_back/blocks_ahead).

Either way the vocoder is exact streaming (see bigvgan.py; it lags 36 mel frames), so all seams come
from the DiT schedule. Either schedule can take a short first chunk in front (`first_chunk.py`: the
first N codes rendered alone, sound after N codes; the stream's own audio from its seam on).
"""

from __future__ import annotations

import threading

import numpy as np

from pocketomni.errors import OptionsError
from pocketomni.token2wav.bigvgan import BigVGAN
from pocketomni.token2wav.dit import DiT, SpeakerCond
from pocketomni.token2wav.first_chunk import CROSSFADE_SAMPLES, FirstChunk
from pocketomni.token2wav.layer_front import LayerFront
from pocketomni.token2wav.solver import SolverPlan

F32 = np.float32


class NoiseSource:
    """Initial noise of one utterance, (frames, mel_dim): a given array, or standard normals drawn from a
    seeded generator in fixed blocks so the values never depend on how the utterance is cut."""

    def __init__(
        self, mel_dim: int, noise: np.ndarray | None = None, seed: int | None = None, block: int = 240
    ):
        self.mel_dim = mel_dim
        self.fixed = None if noise is None else np.asarray(noise, F32).reshape(-1, mel_dim)
        self.rng = np.random.default_rng(seed)
        self.block = block
        self.drawn = np.zeros((0, mel_dim), F32)
        self._lock = threading.Lock()  # a stream's DiT and its first chunk may draw from two threads

    def get(self, f0: int, f1: int) -> np.ndarray:
        if self.fixed is not None:
            if f1 > self.fixed.shape[0]:
                raise OptionsError(f"initial noise covers {self.fixed.shape[0]} mel frames; {f1} needed.")
            return self.fixed[f0:f1]
        with self._lock:
            while self.drawn.shape[0] < f1:
                more = self.rng.standard_normal((self.block, self.mel_dim), dtype=F32)
                self.drawn = np.concatenate([self.drawn, more])
            return self.drawn[f0:f1]


class DiTStream:
    """Exact wavefront DiT solve over mel frames [frame0, ...) of an utterance (see module doc)."""

    def __init__(
        self,
        dit: DiT,
        spk: SpeakerCond,
        plan: SolverPlan,
        noise: NoiseSource,
        frame0: int = 0,
        step_frames: int = 0,
    ):
        self.dit, self.spk, self.plan, self.noise = dit, spk, plan, noise
        cfg = dit.cfg
        self.r, self.B = cfg.repeats, cfg.block_size
        if frame0 % self.B:
            raise OptionsError("a DiT stream must start on a block boundary")
        self.frame0 = frame0
        self.step = max(step_frames, 1)
        E = plan.evaluations
        self.deps = [plan.deps(i) for i in range(E)]
        self.out_deps = [j for j in range(E) if plan.b[j] != 0.0]
        self.feat = np.zeros((0, cfg.hidden_size), F32)
        self.fronts = [LayerFront(dit, spk, float(plan.times[i]), plan.guidance, frame0) for i in range(E)]
        self.pushed = [0] * E  # frames of evaluation i's input handed to its front
        self.done = [0] * E  # frames of k_i computed (relative to frame0)
        self.mel_done = 0
        self.base = 0  # first frame held in self.K
        self.K = np.zeros((E, 0, cfg.mel_dim), F32)
        self.last_front = 0
        self.finished = False

    @property
    def frames(self) -> int:
        return self.feat.shape[0] * self.r

    def feed(self, codes: np.ndarray) -> np.ndarray:
        """Add codes; return the mel frames (n, mel_dim) that became final."""
        if self.finished:
            raise OptionsError("feed() after finish(); start a new stream.")
        codes = np.asarray(codes).reshape(-1)
        if codes.size:
            self.feat = np.concatenate([self.feat, self.dit.code_features(codes)])
        limit = self.dit.cfg.max_position_embeddings
        if self.frame0 + self.frames > limit:
            raise OptionsError(f"speech longer than {limit} mel frames; split the reply.")
        front = (self.frames // self.B) * self.B
        if front - self.last_front < self.step:
            return np.zeros((0, self.dit.cfg.mel_dim), F32)
        self.last_front = front
        return self._advance(front, final=False)

    def finish(self) -> np.ndarray:
        """All remaining mel frames."""
        if self.finished:
            return np.zeros((0, self.dit.cfg.mel_dim), F32)
        self.finished = True
        return self._advance(self.frames, final=True)

    def _frame_feat(self, f0: int, f1: int) -> np.ndarray:
        c0 = f0 // self.r
        rep = np.repeat(self.feat[c0 : -(-f1 // self.r)], self.r, axis=0)
        return rep[f0 - c0 * self.r : f1 - c0 * self.r]

    def _reserve(self, f1: int) -> None:
        """Make self.K hold frames up to f1, dropping frames no evaluation needs any more."""
        keep = max(self.base, min(min(self.pushed), self.mel_done))
        if keep > self.base:
            self.K = self.K[:, keep - self.base :]
            self.base = keep
        need = f1 - self.base
        if need > self.K.shape[1]:
            grow = np.zeros(
                (self.K.shape[0], max(need, 2 * self.K.shape[1]) - self.K.shape[1], self.K.shape[2]), F32
            )
            self.K = np.concatenate([self.K, grow], axis=1)

    def _stage_input(self, i: int, f0: int, f1: int) -> np.ndarray:
        y = self.noise.get(self.frame0 + f0, self.frame0 + f1).copy()
        for j in self.deps[i]:
            y += F32(self.plan.A[i, j]) * self.K[j, f0 - self.base : f1 - self.base]
        return y

    def _advance(self, front: int, final: bool) -> np.ndarray:
        plan = self.plan
        for i in range(plan.evaluations):
            avail = min([front] + [self.done[j] for j in self.deps[i]])
            p = self.pushed[i]
            if avail > p:  # evaluation i's input on the new frames: the noise plus earlier evaluations' k
                self.fronts[i].push(self._stage_input(i, p, avail), self._frame_feat(p, avail))
                self.pushed[i] = avail
            v = self.fronts[i].advance(final=final and avail == self.frames)
            if v.shape[0]:
                d = self.done[i]
                self._reserve(d + v.shape[0])
                self.K[i, d - self.base : d + v.shape[0] - self.base] = v
                self.done[i] = d + v.shape[0]
        end = min(self.done[j] for j in self.out_deps)
        m0 = self.mel_done
        mel = self.noise.get(self.frame0 + m0, self.frame0 + end).copy()
        for j in self.out_deps:
            mel += F32(plan.b[j]) * self.K[j, m0 - self.base : end - self.base]
        self.mel_done = end
        return mel


def solve_mel(
    dit: DiT, spk: SpeakerCond, plan: SolverPlan, codes: np.ndarray, noise: NoiseSource, frame0: int = 0
) -> np.ndarray:
    """One-shot mel (frames, mel_dim) for `codes` whose first frame is utterance frame `frame0`."""
    s = DiTStream(dit, spk, plan, noise, frame0=frame0, step_frames=1 << 30)  # feed() only stores codes
    head = s.feed(codes)
    return np.concatenate([head, s.finish()])


class ChunkedDiTStream:
    """The reference's chunked streaming DiT (module doc): chunk/past/future given in codes."""

    def __init__(
        self,
        dit: DiT,
        spk: SpeakerCond,
        plan: SolverPlan,
        noise: NoiseSource,
        chunk: int = 36,
        past: int = 24,
        future: int = 12,
    ):
        cfg = dit.cfg
        r, B = cfg.repeats, cfg.block_size
        if (chunk * r) % B or (past * r) % B or chunk <= 0:
            raise OptionsError(f"chunk and past context must be whole DiT blocks ({B // r} codes).")
        self.dit, self.spk, self.plan, self.noise = dit, spk, plan, noise
        self.r, self.chunk, self.past, self.future = r, chunk * r, past * r, future * r
        self.codes = np.zeros(0, np.int64)
        self.next = 0  # next chunk index
        self.finished = False

    def _solve(self, i: int, end: int, keep_end: int) -> np.ndarray:
        """Solve chunk i on window [start - past, end) and keep frames [start, keep_end)."""
        f0 = i * self.chunk
        w0 = max(0, f0 - self.past)
        mel = solve_mel(
            self.dit, self.spk, self.plan, self.codes[w0 // self.r : end // self.r], self.noise, w0
        )
        return mel[f0 - w0 : keep_end - w0]

    def feed(self, codes: np.ndarray) -> np.ndarray:
        """Add codes; return the mel frames (n, mel_dim) of every chunk that became complete."""
        if self.finished:
            raise OptionsError("feed() after finish(); start a new stream.")
        self.codes = np.concatenate([self.codes, np.asarray(codes, np.int64).reshape(-1)])
        frames = self.codes.size * self.r
        out = [np.zeros((0, self.dit.cfg.mel_dim), F32)]
        # A chunk is regular (not the last one) once codes exist beyond its future context.
        while frames > (self.next + 1) * self.chunk + self.future:
            f1 = (self.next + 1) * self.chunk
            out.append(self._solve(self.next, f1 + self.future, f1))
            self.next += 1
        return np.concatenate(out)

    def finish(self) -> np.ndarray:
        """The last chunk's mel frames."""
        if self.finished:
            return np.zeros((0, self.dit.cfg.mel_dim), F32)
        self.finished = True
        frames = self.codes.size * self.r
        if self.next * self.chunk >= frames:
            return np.zeros((0, self.dit.cfg.mel_dim), F32)
        return self._solve(self.next, frames, frames)


class SpeechStream:
    """Codes in, 24 kHz float32 audio out, incrementally: `feed(codes)` then `finish()`.

    The concatenation of everything returned equals `Token2Wav.render` of all codes (same preset and
    noise) up to float rounding in `exact` mode; in `chunked` mode it follows the reference's streaming.
    `first_chunk_codes` N > 0 (with `first_chunk_future` F < N) puts an independently rendered first
    chunk in front (first_chunk.py): audio after N codes, then from sample (N - F) * samples-per-code +
    `first_chunk_crossfade` on the same audio as without it.
    """

    def __init__(
        self,
        dit: DiT,
        vocoder: BigVGAN,
        spk: SpeakerCond,
        plan: SolverPlan,
        noise: NoiseSource,
        mode: str = "exact",
        chunk: int = 36,
        past: int = 24,
        future: int = 12,
        first_chunk_codes: int = 0,
        first_chunk_future: int = 0,
        first_chunk_crossfade: int = CROSSFADE_SAMPLES,
    ):
        if mode == "exact":
            step = chunk * dit.cfg.repeats
            self.dit_stream: DiTStream | ChunkedDiTStream = DiTStream(dit, spk, plan, noise, step_frames=step)
        elif mode == "chunked":
            self.dit_stream = ChunkedDiTStream(dit, spk, plan, noise, chunk, past, future)
        else:
            raise OptionsError(f"unknown streaming mode {mode!r}; use 'exact' or 'chunked'.")
        self.voc = vocoder.new_stream()
        self.first = FirstChunk(
            lambda c: solve_mel(dit, spk, plan, c, noise),
            vocoder,
            dit.cfg.repeats,
            first_chunk_codes,
            first_chunk_future,
            first_chunk_crossfade,
        )
        self.mode = mode
        self.finished = False

    @property
    def seam(self) -> int:
        """First sample from which the output is the main stream's alone (0 without a first chunk)."""
        return self.first.seam + self.first.crossfade if self.first.n else 0

    def feed(self, codes: np.ndarray) -> np.ndarray:
        """Add codes; return the new audio samples (possibly none)."""
        return self.feed_audio(codes, self.feed_mel(codes))

    def finish(self) -> np.ndarray:
        """Flush: the remaining audio samples (empty when called again)."""
        if self.finished:
            return np.zeros(0, F32)
        return self.finish_audio(self.finish_mel())

    # feed() and finish() in two halves, the DiT's and the vocoder's, for a caller that runs them on two
    # threads: the vocoder half must get every mel the DiT half returned, in order, with the same codes.

    def first_chunk_due(self, codes: np.ndarray) -> bool:
        """Whether feed_audio(codes, ...) renders the short first chunk (its codes are complete then)."""
        return self.first.due(np.asarray(codes).size)

    def feed_mel(self, codes: np.ndarray) -> np.ndarray:
        """DiT half of feed(): the mel frames (n, mel_dim) that became final."""
        if self.finished:
            raise OptionsError("feed() after finish(); start a new stream.")
        return self.dit_stream.feed(codes)

    def feed_audio(self, codes: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """Vocoder half of feed(): the new audio samples for feed_mel(codes)'s mel."""
        main = self.voc.push(np.ascontiguousarray(mel.T), final=False).reshape(-1)
        return self.first.feed(codes, main)

    def finish_mel(self) -> np.ndarray:
        """DiT half of finish(): the last mel frames."""
        self.finished = True
        return self.dit_stream.finish()

    def finish_audio(self, mel: np.ndarray) -> np.ndarray:
        """Vocoder half of finish(): the remaining audio samples for finish_mel()'s mel."""
        return self.first.finish(self.voc.push(np.ascontiguousarray(mel.T), final=True).reshape(-1))
