"""The talker: thinker states in, speech codec codes out, on llama.cpp with embedding inputs.

The feed (the reference's `Qwen2_5OmniForConditionalGeneration.generate` + talker `forward`), with
EH = E + H per thinker token (E: the thinker's input embedding row, zero at image/audio/video
placeholders; H: its final normed hidden state) and P(x) = W @ x + b the talker's input projection:

- prefill rows: P(EH) over the prompt, then P(embedding of the speaker's bos token), then P(EH of reply
  token 0); the codec embeddings of codec_pad and codec_bos are added (before P) to the last two rows.
- step k >= 1: P(codec_embed[code k-1] + R[k-1]) with R = EH of reply tokens 1..N-2, then the
  embedding of tts_text_eos, then that of tts_text_pad forever. The reply's last token (<|im_end|>) is
  never decoded by the thinker, so it is never pushed here.
- positions: the prompt's TMRoPE positions, then sequential from their maximum + 1.
- sampling: repetition penalty over every id seen (the prompt's codec_mask ids and the
  codec_pad/codec_bos of the prefill included), codec_bos suppressed, stop on codec_pad or codec_eos.

The talker GGUF's `token_embd[c]` is W @ codec_embed[c] + b, so a row with codec c is
`token_embd[c] + W @ x` and a row without one `W @ x + b`: b is added exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.backend.sampling import SamplingParams, StreamSampler
from pocketomni.engine.ordered_decode import decode_in_order, needs_ordered_decode
from pocketomni.engine.weights import Token2WavWeights, load_token2wav
from pocketomni.errors import ContextOverflowError, ModelFileError, OptionsError, PocketOmniError
from pocketomni.options import SpeechOptions

EmbedFn = Callable[[Sequence[int]], np.ndarray]
TALKER_ARCHS = ("paddleocr", "qwen2vl")
TALKER_UBATCH = 128  # llama.cpp micro-batch rows for the talker (sizes its attention scratch)
TALKER_CTX_STEP = 512  # KV cells the talker's cache grows by (about 10 s of speech at 50 codes/s)


class Talker:
    """Streaming talker on one llama.cpp context. Use as a context manager or call `close()`.

        talker = Talker("talker-f32.gguf", "token2wav-f32.gguf", thinker_embed=thinker.embed_tokens)
        talker.start(prompt_eh, prompt_positions, "Chelsie", reply_eh[0])
        for eh in reply_eh[1:]:
            talker.push_reply(eh)          # as the thinker decodes reply tokens
            for code in talker.codes():    # whatever can be produced with the text so far
                ...
        talker.finish_reply()              # the thinker is done (its last token is never pushed)
        rest = list(talker.codes())

    `token2wav` is the token2wav GGUF (path or `load_token2wav` result; it holds the projection W, b,
    the speakers and the feed's token ids). `thinker_embed(ids)` returns thinker input-embedding rows
    (n, thinker hidden) for thinker token ids, e.g. `LlamaModel.embed_tokens` of the thinker GGUF; it
    gives the speaker's bos row and the tts_text_eos / tts_text_pad rows. `kv_f32` keeps the KV cache
    in float32 (parity runs); `n_ctx` bounds prompt + 2 + codes. The KV cache does not reserve all of
    `n_ctx` up front: it holds the prompt plus room for `TALKER_CTX_STEP` codes and grows by that step
    as the reply's codes need it (`LlamaContext.grow`, cells copied as they are), up to `n_ctx`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        token2wav: Token2WavWeights | str | os.PathLike[str],
        n_threads: int | None = None,
        *,
        thinker_embed: EmbedFn,
        n_ctx: int = 4096,
        kv_f32: bool = False,
        options: SpeechOptions | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        self.weights = (
            token2wav if isinstance(token2wav, Token2WavWeights) else load_token2wav(Path(token2wav))
        )
        self.ids = self.weights.ids
        self.options = options or SpeechOptions()
        self._embed = thinker_embed
        self.model = LlamaModel(model_path, n_threads=n_threads, n_gpu_layers=n_gpu_layers, expect_arch=TALKER_ARCHS)
        try:
            w = np.ascontiguousarray(self.weights.proj_weight, dtype=np.float32)
            b = np.asarray(self.weights.proj_bias, dtype=np.float32).reshape(-1)
            if w.ndim != 2 or w.shape[0] != self.model.n_embd_inp or b.shape != (w.shape[0],):
                raise ModelFileError(
                    f"the talker projection {w.shape} does not match {self.model.path.name} (input width "
                    f"{self.model.n_embd_inp}); the talker and token2wav files come from different "
                    "conversions. Convert the model again."
                )
            self._wt, self._b = np.ascontiguousarray(w.T), b
            self.thinker_width = w.shape[1]
            # 128-row micro-batches: the prompt is prefilled once per reply and codes come one at a
            # time, so a quarter of the default attention scratch (3B/7B: 221 -> ~60 MB) costs little
            if not isinstance(n_ctx, int) or n_ctx < 1:
                raise OptionsError(f"n_ctx must be a positive int, got {n_ctx!r}")
            self.max_ctx = -(-n_ctx // 256) * 256  # llama.cpp rounds a context up to whole 256-cell blocks
            self.ctx = LlamaContext(self.model, n_ctx=min(n_ctx, TALKER_CTX_STEP), n_ubatch=TALKER_UBATCH,
                                    kv_f32=kv_f32, n_seq_max=1)
            eos, pad = self._thinker_rows([self.ids.text_eos, self.ids.text_pad])
            self._eos_proj, self._pad_proj = eos @ self._wt, pad @ self._wt
        except BaseException:
            self.model.close()
            raise
        self._stops = {self.ids.codec_pad, self.ids.codec_eos}
        self.last_logits = np.zeros(0, dtype=np.float32)  # raw codec logits of the latest step
        self._active = False
        self._done = True

    # ------------------------------------------------------------------ helpers

    def _thinker_rows(self, ids: Sequence[int]) -> np.ndarray:
        rows = np.asarray(self._embed(list(ids)), dtype=np.float32)
        if rows.shape != (len(ids), self.thinker_width):
            raise PocketOmniError(
                f"thinker_embed returned shape {rows.shape} for {len(ids)} ids; expected rows of width "
                f"{self.thinker_width} (the thinker's hidden size). Talker and thinker files do not match."
            )
        return rows

    def _eh(self, eh: np.ndarray, what: str, n: int | None = None) -> np.ndarray:
        a = np.asarray(eh, dtype=np.float32)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.thinker_width or (n is not None and a.shape[0] != n):
            want = f"({n}, {self.thinker_width})" if n is not None else f"(n, {self.thinker_width})"
            raise OptionsError(f"{what} must have shape {want}, got {np.shape(eh)}")
        if not np.all(np.isfinite(a)):
            raise OptionsError(f"{what} contains NaN or inf")
        return a

    def _codec_rows(self, codes: Sequence[int]) -> np.ndarray:
        return self.model.embed_tokens(list(codes))

    def _room(self, cells: int) -> None:
        """Grow the KV cache, if needed, to hold `cells` cells plus a step of room (at most max_ctx)."""
        if cells > self.ctx.n_ctx:
            step = TALKER_CTX_STEP
            self.ctx.grow(min(self.max_ctx, -(-(cells + step) // step) * step))

    # ------------------------------------------------------------------ streaming API

    def start(
        self,
        prompt_eh: np.ndarray,
        prompt_positions: np.ndarray,
        speaker: str,
        first_reply_eh: np.ndarray,
        options: SpeechOptions | None = None,
    ) -> None:
        """Prefill for a new reply: the prompt's E+H rows (N, thinker hidden), their TMRoPE positions
        (3, N), the voice name and the E+H of reply token 0. Forgets any previous reply."""
        opts = options or self.options
        prompt = self._eh(prompt_eh, "prompt_eh")
        n = prompt.shape[0]
        pos = np.asarray(prompt_positions)
        if pos.dtype.kind not in "iu" or pos.shape != (3, n):
            raise OptionsError(
                f"prompt_positions must be an integer array of shape (3, {n}), got {pos.shape}"
            )
        first = self._eh(first_reply_eh, "first_reply_eh", 1)
        spk = self.weights.speaker(speaker)
        if n + 2 > self.max_ctx:
            raise ContextOverflowError(
                f"the prompt ({n} tokens) does not fit the talker context ({self.max_ctx}); "
                "use a larger n_ctx."
            )
        x = np.concatenate([prompt, self._thinker_rows([spk.bos_token]), first]) @ self._wt
        x[:-2] += self._b
        x[-2:] += self._codec_rows([self.ids.codec_pad, self.ids.codec_bos])
        top = int(pos.max()) + 1 if n else 0
        tail = np.array([[top, top + 1]] * 3, dtype=np.int64)
        rows = np.concatenate([pos.astype(np.int64), tail], axis=1)
        rows = np.concatenate([rows, np.zeros((1, n + 2), dtype=np.int64)])

        self.ctx.clear()
        self._active = False
        self._room(n + 2)  # empty now: growing copies nothing
        if needs_ordered_decode(rows[:3]):  # a video with its sound: positions go back in time
            result = decode_in_order(self.ctx, x, rows[:3])
        else:
            result = self.ctx.decode(embeddings=x, positions=rows, logits="last")
        self.last_logits = result.last_logits.copy()
        self._next_pos = top + 2
        params = SamplingParams(
            temperature=opts.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            repetition_penalty=opts.repetition_penalty,
            greedy=opts.temperature == 0,
        )
        self._sampler = StreamSampler(params, np.random.default_rng(opts.seed), self.model.n_vocab,
                                      suppress_ids=[self.ids.codec_bos])
        # ids the reference's generate has seen: codec_mask per prompt token, then codec_pad, codec_bos
        self._sampler.seen([self.ids.codec_pad, self.ids.codec_bos] + ([self.ids.codec_mask] if n else []))
        self._max_codes = min(opts.max_codes, self.max_ctx - (n + 2) + 1)  # code k needs n + 2 + k cells
        self._prompt_cells = n + 2
        self.n_steps = 0  # sampling steps (codes plus the final end code)
        self._reply: list[np.ndarray] = []  # projected W @ R[k]
        self._finished = False
        self._codes: list[int] = []
        self._pending: int | None = None
        self._done = False
        self._active = True

    def push_reply(self, eh: np.ndarray) -> None:
        """Add the E+H row of the next reply token (tokens 1, 2, ... in order)."""
        self._check_active()
        if self._finished:
            raise PocketOmniError("finish_reply() was already called for this reply")
        self._reply.append((self._eh(eh, "reply eh", 1) @ self._wt)[0])

    def finish_reply(self) -> None:
        """The thinker has finished: from here on the talker reads tts_text_eos, then tts_text_pad."""
        self._check_active()
        self._finished = True

    def _check_active(self) -> None:
        if not self._active:
            raise PocketOmniError("call start() first")

    def _reply_row(self, k: int) -> np.ndarray | None:
        """W @ R[k], or None while the thinker has not produced it yet."""
        if k < len(self._reply):
            return self._reply[k]
        if not self._finished:
            return None
        return self._eos_proj if k == len(self._reply) else self._pad_proj

    @property
    def done(self) -> bool:
        """True once the talker stopped (end code, max_codes or a full context)."""
        return self._done

    @property
    def ready(self) -> bool:
        """True if `next_code()` can run now (or will report the end) without more reply text."""
        if not self._active:
            return False
        if self._done or self._pending is None or len(self._codes) >= self._max_codes:
            return True
        return self._reply_row(len(self._codes) - 1) is not None

    @property
    def codes_so_far(self) -> list[int]:
        """The codes returned for the current reply."""
        return list(self._codes) if self._active else []

    def next_code(self) -> int | None:
        """The next codec code, or None when the reply's speech has ended.

        Raises PocketOmniError if the next step needs a reply row that has not been pushed yet
        (check `ready`)."""
        self._check_active()
        if self._done:
            return None
        if len(self._codes) >= self._max_codes:
            self._done = True
            return None
        if self._pending is not None:
            row = self._reply_row(len(self._codes) - 1)
            if row is None:
                raise PocketOmniError(
                    "the talker needs the next reply token: push_reply() or finish_reply() first"
                )
            x = self._codec_rows([self._pending])[0] + row
            self._room(self._prompt_cells + len(self._codes))  # code k = len(codes) needs n + 2 + k cells
            p = self._next_pos
            self.last_logits = self.ctx.decode_row(x, (p, p, p, 0))
            self._next_pos += 1
            self._pending = None
        code = self._sampler(self.last_logits)
        self.n_steps += 1
        self._sampler.seen([code])
        if code in self._stops:
            self._done = True
            return None
        self._codes.append(code)
        self._pending = code
        return code

    def codes(self) -> Iterator[int]:
        """Yield codes while they can be produced with the reply text pushed so far."""
        while self._active and not self._done and self.ready:
            code = self.next_code()
            if code is None:
                return
            yield code

    def generate_codes(
        self,
        prompt_eh: np.ndarray,
        prompt_positions: np.ndarray,
        speaker: str,
        reply_eh: np.ndarray,
        options: SpeechOptions | None = None,
        on_step: Callable[[int, np.ndarray], Any] | None = None,
    ) -> list[int]:
        """All codes for a finished reply. `reply_eh` holds the E+H rows of the reply tokens the thinker
        decoded (tokens 0..N-2; not the final one). `on_step(code, raw_logits)` sees the raw logits of
        every sampling step (code -1 for the step that chose an end code)."""
        reply = self._eh(reply_eh, "reply_eh")
        if reply.shape[0] < 1:
            raise OptionsError("reply_eh needs at least the first reply token")
        self.start(prompt_eh, prompt_positions, speaker, reply[:1], options)
        for row in reply[1:]:
            self.push_reply(row)
        self.finish_reply()
        out: list[int] = []
        while True:
            steps = self.n_steps
            code = self.next_code()
            if on_step is not None and self.n_steps > steps:
                on_step(-1 if code is None else code, self.last_logits)
            if code is None:
                return out
            out.append(code)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Free the llama.cpp model and context (idempotent)."""
        self._active = False
        self.model.close()

    def __enter__(self) -> Talker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
