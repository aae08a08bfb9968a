"""The thinker engine: prefill of a prompt layout (token + media embeddings, our TMRoPE positions) and
one-token decode steps, on one llama.cpp context per chat, with a per-token record of the cache.

`Thinker` holds what every chat of a model shares (the GGUF model, tokenizer, chat template, EOG ids).
`ThinkerSession` is one chat's sequence: its LlamaContext and a `History` of every token in the KV
cache: id, kind (text / image / audio / video placeholder), (t, h, w) position and, for chats that
will speak, the final hidden state H (float16). The talker's other input E is the token's input
embedding row (zero at media placeholders) and is recomputed on demand (`input_embeddings`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.backend.sampling import SamplingParams
from pocketomni.chat.conversation import ChatTemplate, PromptText
from pocketomni.engine.ordered_decode import decode_in_order, needs_ordered_decode
from pocketomni.engine.positions import KIND_TEXT, KIND_VIDEO, PromptLayout, TokenIds
from pocketomni.engine.prefix_cache import CachedTurn, PrefixCache, first_turn_length
from pocketomni.errors import InternalError, ModelFileError
from pocketomni.options import GenerationOptions

__all__ = ["MEDIA_TOKEN_IDS", "THINKER_UBATCH", "ContextSettings", "History", "Thinker", "ThinkerSession",
           "sampling_params"]

MEDIA_TOKEN_IDS = (TokenIds.audio, TokenIds.image, TokenIds.video)
# llama.cpp micro-batch rows of each chat's context. Its compute buffer holds one micro-batch's logits
# (rows x 151936 floats: 297 MiB at 512 rows, 74 MiB at 128) or attention scores, whichever is larger;
# speech chats prefill in 128-row chunks anyway (hidden states), and text prefill runs as fast at 128
# rows (benchmarks/results/thinker_buffers-3b.md).
THINKER_UBATCH = 128
# KV cells a chat's cache grows by, up to n_ctx: llama.cpp zeroes a cache when it makes it, so a cache
# sized for n_ctx up front is resident in full (7B: 224 MiB at 4096) however short the chat.
THINKER_CTX_STEP = 1024


def sampling_params(opts: GenerationOptions) -> SamplingParams:
    """The backend sampler's settings for generation options (validated here, before any work)."""
    return SamplingParams(temperature=float(opts.temperature), top_k=int(opts.top_k), top_p=float(opts.top_p),
                          repetition_penalty=float(opts.repetition_penalty), greedy=opts.greedy)


@dataclass
class ContextSettings:
    """How each chat's llama.cpp context is created."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = THINKER_UBATCH
    n_threads: int | None = None
    kv_f32: bool = False
    hidden_dtype: str = "float16"  # storage of H for speech chats


class Thinker:
    """The loaded thinker GGUF and what all chats on it share."""

    def __init__(self, path: Path, *, n_threads: int | None = None, settings: ContextSettings | None = None,
                 n_gpu_layers: int = 0) -> None:
        self.model = LlamaModel(path, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        try:
            if not self.model.uses_mrope:
                raise ModelFileError(f"{path} is not a Qwen2.5-Omni thinker (no M-RoPE); convert the model again")
            source = self.model.chat_template
            if not source:
                raise ModelFileError(f"{path} carries no chat template; convert the model with `pocketomni convert`")
            self.template = ChatTemplate(source)
            self.settings = settings or ContextSettings()
            self.eog_ids = frozenset(self._eog_candidates())
            self.turn_start = self.model.token_id("<|im_start|>")
            self.first_turns = PrefixCache()  # chats' shared first (system) turns, see prefix_cache.py
        except BaseException:
            self.model.close()
            raise

    def _eog_candidates(self) -> set[int]:
        ids = {t for t in (self.model.eos_id, self.model.eot_id) if t is not None}
        for s in ("<|im_end|>", "<|endoftext|>"):
            t = self.model.token_id(s)
            if t is not None:
                ids.add(t)
        return {t for t in ids if self.model.is_eog(t)}

    @property
    def lock(self) -> Any:
        """The model's lock: every llama.cpp call on this model takes it."""
        return self.model.lock

    def tokenize(self, text: str) -> list[int]:
        """Trusted text to ids (special-token strings such as <|im_start|> become their ids). Never for text
        from the caller: prompts go through `tokenize_prompt`, which keeps that text plain."""
        return self.model.tokenize(text, add_special=False, parse_special=True)

    def tokenize_prompt(self, text: PromptText) -> list[int]:
        """Prompt text to ids: only the template's own text may hold special tokens; the caller's text is
        plain. Same ids as tokenizing the whole string with special tokens on, when the caller's text holds
        none: the template's text is cut at its special tokens and the plain stretches around them (the
        caller's text included) are tokenized whole."""
        ids: list[int] = []
        plain: list[str] = []

        def flush() -> None:
            if plain:
                ids.extend(self.model.tokenize("".join(plain), add_special=False, parse_special=False))
                plain.clear()

        for run, trusted in text.runs:
            if not trusted:
                plain.append(run)
                continue
            at = 0
            for tok in self.model.tokenize(run, add_special=False, parse_special=True):
                if not self.model.is_control(tok):
                    continue
                mark = self.model.token_to_piece(tok, special=True).decode("utf-8")
                found = run.find(mark, at)
                if found < 0:
                    raise ModelFileError(f"the chat template's token {mark!r} cannot be located; re-convert the model")
                plain.append(run[at:found])
                flush()
                ids.append(tok)
                at = found + len(mark)
            plain.append(run[at:])
        flush()
        return ids

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

    def session(self, keep_hidden: bool = False) -> ThinkerSession:
        """A new, empty chat sequence with its own context."""
        return ThinkerSession(self, keep_hidden=keep_hidden)

    def close(self) -> None:
        self.model.close()


class History:
    """Growable per-token arrays mirroring one sequence of the KV cache."""

    def __init__(self, n_embd: int, keep_hidden: bool, hidden_dtype: str = "float16") -> None:
        self.n = 0
        self._ids = np.zeros(256, np.int32)
        self._kinds = np.zeros(256, np.uint8)
        self._pos = np.zeros((3, 256), np.int32)
        self._hidden = np.zeros((256, n_embd), hidden_dtype) if keep_hidden else None

    def _reserve(self, n: int) -> None:
        cap = self._ids.shape[0]
        if self.n + n <= cap:
            return
        new = max(2 * cap, self.n + n)
        self._ids = np.resize(self._ids, new)
        self._kinds = np.resize(self._kinds, new)
        pos = np.zeros((3, new), np.int32)
        pos[:, : self.n] = self._pos[:, : self.n]
        self._pos = pos
        if self._hidden is not None:
            h = np.zeros((new, self._hidden.shape[1]), self._hidden.dtype)
            h[: self.n] = self._hidden[: self.n]
            self._hidden = h

    def append(self, ids: Any, kinds: Any, positions: np.ndarray, hidden: np.ndarray | None) -> None:
        ids = np.asarray(ids, np.int32).reshape(-1)
        m = ids.size
        self._reserve(m)
        s = slice(self.n, self.n + m)
        self._ids[s], self._kinds[s], self._pos[:, s] = ids, kinds, positions
        if self._hidden is not None:
            if hidden is None or hidden.shape[0] != m:
                raise InternalError("hidden states missing for a speech chat")
            self._hidden[s] = hidden
        self.n += m

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)

    @property
    def keeps_hidden(self) -> bool:
        return self._hidden is not None

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    @property
    def kinds(self) -> np.ndarray:
        return self._kinds[: self.n]

    @property
    def positions(self) -> np.ndarray:
        return self._pos[:, : self.n]

    @property
    def hidden(self) -> np.ndarray | None:
        return None if self._hidden is None else self._hidden[: self.n]

    @property
    def max_t(self) -> int:
        return int(self._pos[0, : self.n].max()) if self.n else -1

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"ids": self.ids.copy(), "kinds": self.kinds.copy(), "positions": self.positions.copy()}
        if self._hidden is not None:
            out["hidden"] = self.hidden.copy()  # type: ignore[union-attr]
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.n = 0
        ids = arrays["ids"]
        self.append(ids, arrays["kinds"], arrays["positions"], arrays.get("hidden") if self.keeps_hidden else None)


class ThinkerSession:
    """One chat's sequence: a llama.cpp context (sequence 0) plus its History. The context holds up to
    `n_ctx` tokens; its KV cache starts at THINKER_CTX_STEP cells and grows by that step as the chat needs
    (`LlamaContext.grow`: cells copied as they are, same arithmetic as a cache made large)."""

    def __init__(self, thinker: Thinker, *, keep_hidden: bool = False) -> None:
        s = thinker.settings
        self.thinker = thinker
        self.max_ctx = s.n_ctx
        self.ctx = LlamaContext(thinker.model, n_ctx=min(s.n_ctx, THINKER_CTX_STEP), n_batch=s.n_batch, n_ubatch=min(s.n_ubatch, s.n_batch),
                                n_threads=s.n_threads, n_seq_max=1, kv_f32=s.kv_f32)
        self.history = History(thinker.model.n_embd, keep_hidden, s.hidden_dtype)

    # ------------------------------------------------------------------ sizes

    @property
    def n_ctx(self) -> int:
        return self.max_ctx

    def _room(self, cells: int) -> None:
        """Grow the KV cache to hold `cells` cells (whole steps, at most n_ctx; beyond that decoding
        reports the overflow as before)."""
        if cells > self.ctx.n_ctx and self.ctx.n_ctx < self.max_ctx:
            step = THINKER_CTX_STEP
            self.ctx.grow(min(self.max_ctx, -(-cells // step) * step))

    @property
    def n_used(self) -> int:
        """KV cells in use (equals len(history) between calls)."""
        return self.ctx.n_tokens(0)

    @property
    def room(self) -> int:
        return self.n_ctx - self.n_used

    @property
    def next_pos(self) -> int:
        """Start position of the next block: the largest position so far + 1."""
        return self.ctx.next_pos(0)

    # ------------------------------------------------------------------ decoding

    def _hidden_sel(self) -> str | None:
        return "all" if self.history.keeps_hidden else None

    def prefill(self, layout: PromptLayout, media: dict[int, np.ndarray],
                should_stop: Callable[[], bool] | None = None,
                progress: Callable[[int, int], None] | None = None, floor: int | None = None) -> np.ndarray:
        """Decode a prompt layout; returns the logits of its last row. On failure or interruption
        (DecodeInterrupted) the cache is rolled back to what it was. progress(rows_done, rows_total)
        follows the micro-batches. floor: the lowest position a video's ordered decode may relabel cells
        down to (default: the layout's first position; a turn prefilled in pieces passes its own start).

        An empty session decodes its prompt's first (system) turn as a batch of its own and shares it
        with later sessions of this thinker, which restore it instead (prefix_cache.py)."""
        head = first_turn_length(layout, self.thinker.turn_start) if self.history.n == 0 else 0
        n = int(layout.input_ids.size)
        if not 0 < head < n:
            return self._prefill(layout, media, should_stop, progress, floor)
        try:
            self._first_turn(layout.part(0, head), should_stop)
            if progress is not None:
                progress(head, n)
            return self._prefill(layout.part(head, n), media, should_stop,
                                 None if progress is None else lambda d, _m: progress(head + d, n),
                                 int(layout.positions[0].min()) if floor is None else floor)
        except BaseException:
            self.rollback(0)
            raise

    def _first_turn(self, turn: PromptLayout, should_stop: Callable[[], bool] | None) -> None:
        """Put the first turn in the empty cache: restored from the thinker's PrefixCache, or decoded and
        stored there."""
        cache, hidden = self.thinker.first_turns, self.history.keeps_hidden
        saved = cache.get(turn.input_ids, hidden)
        if saved is not None:
            self.set_state(saved.state, saved.arrays)
            return
        self._prefill(turn, {}, should_stop, None, None)
        cache.put(turn.input_ids, hidden, CachedTurn(self.get_state(), self.history.arrays()))

    def _prefill(self, layout: PromptLayout, media: dict[int, np.ndarray], should_stop: Callable[[], bool] | None,
                 progress: Callable[[int, int], None] | None, floor: int | None) -> np.ndarray:
        n0 = self.history.n
        ids, kinds = layout.input_ids, layout.kinds
        rows = layout.llama_rows()
        self._room(self.n_used + int(ids.size))
        try:
            ordered = needs_ordered_decode(layout.positions)
            if np.all(kinds == KIND_TEXT) and not ordered:  # plain text (a video's bos pair shares a position)
                res = self.ctx.decode(tokens=ids, positions=rows[0], logits="last", hidden=self._hidden_sel(),
                                      should_stop=should_stop, progress=progress)
            elif ordered:  # a video with its sound: positions go back in time; its bos pair shares one
                res = decode_in_order(self.ctx, self._embeddings(ids, kinds, media), layout.positions,
                                      hidden=self.history.keeps_hidden, should_stop=should_stop,
                                      progress=progress, floor=floor)
            else:
                res = self.ctx.decode(embeddings=self._embeddings(ids, kinds, media), positions=rows,
                                      logits="last", hidden=self._hidden_sel(), should_stop=should_stop,
                                      progress=progress)
        except BaseException:
            self.rollback(n0)
            raise
        self.history.append(ids, kinds, layout.positions, res.hidden if self.history.keeps_hidden else None)
        return res.last_logits

    def _embeddings(self, ids: np.ndarray, kinds: np.ndarray, media: dict[int, np.ndarray]) -> np.ndarray:
        model = self.thinker.model
        emb = np.empty((ids.size, model.n_embd_inp), np.float32)
        text = kinds == KIND_TEXT
        emb[text] = model.embed_tokens(ids[text])
        for kind in np.unique(kinds[~text]).tolist():
            rows = media.get(kind)
            sel = kinds == kind
            if rows is None or rows.shape != (int(sel.sum()), model.n_embd_inp):
                raise InternalError(f"media rows of kind {kind} do not match the prompt layout")
            emb[sel] = rows
        return emb

    def step(self, token: int) -> np.ndarray:
        """Decode one reply token at the next position; returns its logits."""
        pos = self.next_pos
        self._room(self.n_used + 1)
        res = self.ctx.decode(tokens=[int(token)], logits="last", hidden=self._hidden_sel())
        self.history.append([token], [KIND_TEXT], np.full((3, 1), pos, np.int32),
                            res.hidden if self.history.keeps_hidden else None)
        return res.last_logits

    def rollback(self, n: int) -> None:
        """Keep only the first n history tokens in the cache (turn boundaries or after reply tokens)."""
        self.history.truncate(n)
        self.reconcile()

    def reconcile(self) -> None:
        """Drop any cache cells beyond the history (e.g. after an interrupted decode)."""
        with self.thinker.lock:
            self.ctx.remove(0, self.history.max_t + 1)

    def clear(self) -> None:
        self.ctx.clear()
        self.history.truncate(0)

    # ------------------------------------------------------------------ talker inputs

    def input_embeddings(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """E rows of history tokens [start, stop): input embeddings, zero at media placeholders."""
        ids = self.history.ids[start:stop]
        kinds = self.history.kinds[start:stop]
        out = np.zeros((ids.size, self.thinker.model.n_embd_inp), np.float32)
        text = kinds == KIND_TEXT
        if text.any():
            out[text] = self.thinker.model.embed_tokens(ids[text])
        return out

    # ------------------------------------------------------------------ state

    def get_state(self) -> bytes:
        return self.ctx.get_state(0)

    def set_state(self, data: bytes, arrays: dict[str, np.ndarray]) -> None:
        """Restore a saved sequence; ModelFileError (the sequence left empty) unless the token history
        is well-formed and matches the cache cell for cell."""
        self._check_arrays(arrays)
        self._room(int(arrays["ids"].size))  # the saved cells (checked against the history below)
        self.ctx.set_state(data, 0)
        try:
            self.history.load(arrays)
            pos = self.history.positions
            t, top = self.ctx.cell_positions(0)
            lo, hi = self.ctx.seq_pos_range(0)
            if (self.n_used != self.history.n or not np.array_equal(t, pos[0]) or not np.array_equal(top, pos.max(axis=0))
                    or (t.size and (lo, hi) != (int(t.min()), int(t.max())))):
                raise ModelFileError("the saved chat's KV cache and token history disagree; the file is corrupt")
        except BaseException:
            self.clear()
            raise

    def _check_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Keys, dtypes, shapes and value ranges of saved history arrays (History.arrays)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ModelFileError(f"the saved chat's token history is malformed ({what}); the file is corrupt")

        need(all(k in arrays for k in ("ids", "kinds", "positions")), "ids, kinds or positions missing")
        ids, kinds, pos = arrays["ids"], arrays["kinds"], arrays["positions"]
        need(all(a.dtype.kind in "iu" for a in (ids, kinds, pos)), "non-integer arrays")
        need(ids.ndim == 1 and kinds.shape == ids.shape and pos.shape == (3, ids.size), "shapes disagree")
        n_vocab = self.thinker.model.n_vocab
        need(not ids.size or (int(ids.min()) >= 0 and int(ids.max()) < n_vocab), "token ids outside the vocabulary")
        need(not kinds.size or (int(kinds.min()) >= 0 and int(kinds.max()) <= KIND_VIDEO), "unknown token kinds")
        need(not pos.size or (int(pos.min()) >= 0 and int(pos.max()) < 2**31 - 1), "positions out of range")
        hidden = arrays.get("hidden")
        if self.history.keeps_hidden:
            need(hidden is not None, "no hidden states for a speech chat")
        if hidden is not None:
            need(hidden.dtype.kind == "f" and hidden.shape == (ids.size, self.thinker.model.n_embd),
                 "hidden states of the wrong shape")

    def copy_from(self, other: ThinkerSession) -> None:
        """Make this session a copy of another (KV cells and history)."""
        self.set_state(other.get_state(), other.history.arrays())

    def close(self) -> None:
        self.ctx.close()

