"""LlamaContext: decoding (tokens or embeddings, explicit M-RoPE positions), KV-cache ops, state.

Positions are given as an int array of shape (n,) or (n_pos, n): rows t, h, w, 0 for M-RoPE
models (`model.n_pos_per_embd == 4`), laid out section-major exactly as llama.cpp reads
`llama_batch.pos`. Text tokens only carry one position (llama.cpp broadcasts t=h=w), so tokens
that need distinct h/w must be decoded as embeddings (`model.embed_tokens`).

llama.cpp derives causality from the t row alone: a cell is visible to a query if its t is
smaller, or equal with (h, w) not after the query's in row-major order; tokens with identical
(t, h, w) in one batch see each other.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as L
import numpy as np

from pocketomni.backend import _log
from pocketomni.backend.batch import (
    MAX_POS,
    BatchBuffers,
    DecodeInterrupted,
    DecodeResult,
    Select,
    check_embeddings,
    check_positions,
    check_tokens,
    select_rows,
)
from pocketomni.backend.kv_state import (
    SeqLog,
    cell_positions,
    clamp_cell_positions,
    pack_state,
    set_cell_t,
    unpack_state,
    write_atomic,
)
from pocketomni.backend.llama import LlamaModel
from pocketomni.errors import ContextOverflowError, PocketOmniError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DecodeInterrupted", "DecodeResult", "LlamaContext"]


class LlamaContext:
    """A llama.cpp context (KV cache + compute buffers) on a LlamaModel.

    Sequences 0..n_seq_max-1 share one unified KV cache of n_ctx cells, so a fork shares the
    prefix cells. Every method takes the model's lock.

    flash_attn defaults to False: on CPU llama.cpp's flash attention works in f16 and its result
    depends on how rows are split into batches (~4e-3 logit noise on the tiny model); without it,
    chunked and whole decodes agree exactly. None = llama.cpp's auto choice. kv_f32 keeps the KV
    cache in float32 (reference-parity runs; the default f16 halves its memory).
    """

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_seq_max: int = 4,
        embeddings: bool = False,
        flash_attn: bool | None = False,
        kv_f32: bool = False,
        hidden_chunk: int = 128,
    ) -> None:
        n_ubatch = min(512, n_batch) if n_ubatch is None else n_ubatch
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_ubatch", n_ubatch), ("n_seq_max", n_seq_max),
                        ("hidden_chunk", hidden_chunk)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if n_ubatch > n_batch:
            raise ValueError("n_ubatch must be <= n_batch")
        if n_seq_max > 64:
            raise ValueError("n_seq_max must be <= 64")
        self.model = model
        self.lock = model.lock
        threads = n_threads or model.n_threads
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_ubatch, n_seq_max
        cp.n_threads = threads
        cp.n_threads_batch = n_threads_batch or threads
        cp.embeddings = bool(embeddings)
        cp.kv_unified = True
        cp.no_perf = True
        cp.flash_attn_type = {None: L.LLAMA_FLASH_ATTN_TYPE_AUTO, True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                              False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        if kv_f32:  # exact-parity runs; the default f16 cache halves KV memory
            cp.type_k = cp.type_v = 0  # GGML_TYPE_F32
        self._params = cp  # kept for grow()
        with self.lock:
            self._ptr: Any = None
            self._create(cp)
            model._register(self)
        ptr = self._ptr
        self.n_batch = int(L.llama_n_batch(ptr))
        self.n_ubatch = int(L.llama_n_ubatch(ptr))
        self.n_seq_max = int(L.llama_n_seq_max(ptr))
        self.hidden_chunk = hidden_chunk
        self._embd_mode = bool(embeddings)
        self.kv_type = "f32" if kv_f32 else "f16"
        self._logs = [SeqLog() for _ in range(self.n_seq_max)]
        self._buf = BatchBuffers(self.n_batch, model.n_pos_per_embd)
        self._one = np.ones(1, dtype=bool)  # output flags of a one-row batch

    def _create(self, cp: Any) -> None:
        """Make the llama.cpp context for params `cp` this object's (lock held; the old one, if any, stays
        for the caller to free)."""
        mark = _log.mark()
        ptr = L.llama_init_from_model(self.model.ptr, cp)
        if not ptr:
            raise PocketOmniError(
                f"llama.cpp could not create a context (n_ctx={cp.n_ctx}): {_log.recent_errors(mark)}. "
                "Try a smaller n_ctx or free memory."
            )
        self._ptr = ptr
        self._finalizer = weakref.finalize(self, L.llama_free, ptr)
        self._finalizer.atexit = False  # the model's exit hook frees it (backend/lifetime.py)
        self._mem = L.llama_get_memory(ptr)
        self.n_ctx = int(L.llama_n_ctx(ptr))

    def grow(self, n_ctx: int) -> None:
        """Give the KV cache room for `n_ctx` cells (no-op if it has that already): a new llama.cpp context
        replaces this one, with every sequence's cells copied over (same values, same positions) and the
        same thread settings, so decoding continues as if it had been this size from the start. Lets a
        cache start small and grow with its content (the talker's codes) instead of reserving the worst
        case up front. The old context is freed before the new one is made, so the moment of the copy
        holds one cache plus one host copy of its cells; if the new size cannot be had, the old size is
        made again and PocketOmniError raised."""
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        with self.lock:
            old = self.ptr
            if n_ctx <= self.n_ctx:
                return
            cp, old_n_ctx = self._params, self.n_ctx
            cp.n_threads, cp.n_threads_batch = int(L.llama_n_threads(old)), int(L.llama_n_threads_batch(old))
            states = [(s, self._raw_state(s)) for s in range(self.n_seq_max) if self._logs[s].n_cells]
            self._finalizer()
            self._ptr = self._mem = None
            try:
                cp.n_ctx = n_ctx
                self._create(cp)
            except PocketOmniError:
                cp.n_ctx = old_n_ctx
                self._create(cp)  # what worked before works again, with the memory just freed
                self._restore(states)
                raise
            self._restore(states)

    def _restore(self, states: list[tuple[int, Any]]) -> None:
        """Put raw sequence states back after `_create` (lock held); embedding mode as it was."""
        for s, buf in states:
            mark = _log.mark()
            if int(L.llama_state_seq_set_data(self._ptr, buf, len(buf), s)) == 0:
                L.llama_memory_seq_rm(self._mem, s, -1, -1)
                self._logs[s] = SeqLog()
                raise PocketOmniError(f"llama.cpp could not copy sequence {s} into the resized context "
                                      f"({_log.recent_errors(mark)}); that sequence was emptied")
        if self._embd_mode != bool(self._params.embeddings):
            L.llama_set_embeddings(self._ptr, self._embd_mode)

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def ptr(self) -> Any:
        """Raw llama_context pointer (backend-internal)."""
        if self._ptr is None:
            raise PocketOmniError("this context is closed")
        return self._ptr

    def _check_open(self) -> None:
        """Raise PocketOmniError if this object has been closed."""
        _ = self.ptr

    def keep_at_exit(self) -> None:
        """Process exit with a native call still running: never free this (backend/lifetime.py)."""
        self._finalizer.detach()

    def close(self) -> None:
        """Free the context (idempotent). Closing the model closes its contexts too."""
        with self.lock:
            if self._ptr is not None:
                self._finalizer()
                self._ptr = self._mem = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def threads(self) -> tuple[int, int]:
        """(threads for one-token decodes, threads for batches)."""
        with self.lock:
            return int(L.llama_n_threads(self.ptr)), int(L.llama_n_threads_batch(self.ptr))

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        """Change the CPU threads of later decodes (one-token decodes; batches default to the same)."""
        for name, v in (("n_threads", n_threads), ("n_threads_batch", n_threads_batch or n_threads)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        with self.lock:
            L.llama_set_n_threads(self.ptr, n_threads, n_threads_batch or n_threads)

    # ------------------------------------------------------------------ positions

    def _check_seq(self, seq_id: int) -> int:
        if not isinstance(seq_id, (int, np.integer)) or not 0 <= int(seq_id) < self.n_seq_max:
            raise ValueError(f"seq_id must be in [0, {self.n_seq_max}), got {seq_id!r}")
        return int(seq_id)

    def next_pos(self, seq_id: int = 0) -> int:
        """Position for the next token of a sequence: 1 + the largest t/h/w decoded so far."""
        return self._logs[self._check_seq(seq_id)].next_pos

    def n_tokens(self, seq_id: int = 0) -> int:
        """Number of KV cells (decoded rows) the sequence holds."""
        return self._logs[self._check_seq(seq_id)].n_cells

    def cell_positions(self, seq_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the sequence's position log: t and max(t, h, w) of every cell, in decode order."""
        t, top = self._logs[self._check_seq(seq_id)].arrays()
        return t.copy(), top.copy()

    def seq_pos_range(self, seq_id: int = 0) -> tuple[int, int]:
        """llama.cpp's (min, max) t position of the sequence; (-1, -1) if empty."""
        s = self._check_seq(seq_id)
        with self.lock:
            self._check_open()
            return int(L.llama_memory_seq_pos_min(self._mem, s)), int(L.llama_memory_seq_pos_max(self._mem, s))

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        *,
        tokens: Sequence[int] | np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
        positions: Any = None,
        seq_id: int = 0,
        logits: Select = "last",
        hidden: Select = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> DecodeResult:
        """Decode token ids or float32 embedding rows (n, n_embd_inp) into sequence `seq_id`.

        `logits` / `hidden` choose which input rows return logits / final hidden states.
        Inputs larger than n_batch are split; with hidden states requested the split is
        `hidden_chunk` rows (llama.cpp then computes logits for every row, so this bounds memory).
        On a llama.cpp failure the rows this call added are removed again (all of them, except
        rows of an embedding batch placed at the sequence's previous maximum t), then it raises.
        `progress(rows_done, rows_total)` is called after each micro-batch.
        """
        if (tokens is None) == (embeddings is None):
            raise ValueError("pass exactly one of tokens= or embeddings=")
        seq = self._check_seq(seq_id)
        model = self.model
        tok = check_tokens(tokens, model.n_vocab) if tokens is not None else None
        emb = check_embeddings(embeddings, model.n_embd_inp) if embeddings is not None else None
        n = tok.size if tok is not None else emb.shape[0]  # type: ignore[union-attr]
        if n == 0:
            raise ValueError("nothing to decode (0 rows)")
        pos = check_positions(positions, n, model.n_pos_per_embd, self._logs[seq].next_pos, tok is not None)
        lrows, hrows = select_rows(logits, n, "logits"), select_rows(hidden, n, "hidden")
        need_hidden = hrows.size > 0
        want = np.zeros(n, dtype=bool)
        want[lrows] = True
        want[hrows] = True
        chunk = min(self.n_batch, self.hidden_chunk) if need_hidden else self.n_batch
        out_l = np.empty((lrows.size, model.n_vocab), dtype=np.float32)
        out_h = np.empty((hrows.size, model.n_embd), dtype=np.float32)
        li = hi = 0
        l_addr, l_row = out_l.ctypes.data, 4 * model.n_vocab
        h_addr, h_row = out_h.ctypes.data, 4 * model.n_embd
        with self.lock:
            ctx = self.ptr
            if need_hidden != self._embd_mode:
                L.llama_set_embeddings(ctx, need_hidden)
                self._embd_mode = need_hidden
            t_first = int(pos[0, 0])
            x = int(L.llama_memory_seq_pos_max(self._mem, seq))
            self._check_continuation(t_first, x, tok is not None)
            for i0 in range(0, n, chunk):
                if should_stop is not None and i0 > 0 and should_stop():
                    raise DecodeInterrupted(i0)
                i1 = min(n, i0 + chunk)
                flags = np.ones(i1 - i0, bool) if need_hidden else want[i0:i1]  # hidden mode outputs every row
                batch = self._buf.fill(
                    seq, None if tok is None else tok[i0:i1], None if emb is None else emb[i0:i1],
                    pos[:1, i0:i1] if tok is not None else pos[:, i0:i1], flags)
                mark = _log.mark()
                rc = int(L.llama_decode(ctx, batch))
                if rc != 0:
                    self._rollback(seq, max(t_first, x + 1))
                    self._raise_decode(rc, i1 - i0, seq, mark)
                self._logs[seq].append(pos[0, i0:i1], np.maximum.reduce(pos[:, i0:i1], axis=0))
                for r in np.flatnonzero(want[i0:i1]).tolist():
                    row = i0 + r
                    if li < lrows.size and lrows[li] == row:
                        self._copy(L.llama_get_logits_ith(ctx, r), l_addr + li * l_row, l_row, "logits")
                        li += 1
                    if hi < hrows.size and hrows[hi] == row:
                        self._copy(L.llama_get_embeddings_ith(ctx, r), h_addr + hi * h_row, h_row, "hidden state")
                        hi += 1
                if progress is not None:
                    progress(i1, n)
        return DecodeResult(lrows, out_l, hrows, out_h)

    def decode_row(self, embedding: np.ndarray, position: Sequence[int] | np.ndarray, seq_id: int = 0) -> np.ndarray:
        """`decode(embeddings=embedding[None], positions=position as a column, logits="last")` with less
        per-call work, for generation one embedding row at a time (the talker's codes). `position`
        holds the row's n_pos_per_embd values (t, h, w, 0 for M-RoPE). Returns the row's logits
        (a new float32 array)."""
        model = self.model
        emb = np.ascontiguousarray(embedding, dtype=np.float32).reshape(1, -1)
        if emb.shape[1] != model.n_embd_inp or not np.isfinite(emb).all():
            raise ValueError(f"embedding must be {model.n_embd_inp} finite values")
        pos = np.asarray(position, dtype=np.int64).reshape(-1, 1)
        if pos.shape[0] != model.n_pos_per_embd or pos.min() < 0 or pos.max() >= MAX_POS:
            raise ValueError(f"position must be {model.n_pos_per_embd} values in [0, {MAX_POS})")
        seq = self._check_seq(seq_id)
        out = np.empty(model.n_vocab, dtype=np.float32)
        with self.lock:
            ctx = self.ptr
            if self._embd_mode:
                L.llama_set_embeddings(ctx, False)
                self._embd_mode = False
            t_first = int(pos[0, 0])
            x = int(L.llama_memory_seq_pos_max(self._mem, seq))
            self._check_continuation(t_first, x, False)
            batch = self._buf.fill(seq, None, emb, pos.astype(np.int32), self._one)
            mark = _log.mark()
            rc = int(L.llama_decode(ctx, batch))
            if rc != 0:
                self._rollback(seq, max(t_first, x + 1))
                self._raise_decode(rc, 1, seq, mark)
            self._logs[seq].append(pos[0], pos.max(axis=0))
            self._copy(L.llama_get_logits_ith(ctx, 0), out.ctypes.data, out.nbytes, "logits")
        return out

    def decode_tokens(self, tokens: Sequence[int] | np.ndarray, positions: Any = None, **kw: Any) -> DecodeResult:
        """Shorthand for `decode(tokens=...)`."""
        return self.decode(tokens=tokens, positions=positions, **kw)

    def decode_embeddings(self, embeddings: np.ndarray, positions: Any = None, **kw: Any) -> DecodeResult:
        """Shorthand for `decode(embeddings=...)`."""
        return self.decode(embeddings=embeddings, positions=positions, **kw)

    def output_logits(self, i: int = -1) -> np.ndarray:
        """Copy of output row i (negative: from the end) of the most recent llama.cpp decode,
        e.g. after `MtmdContext.eval_stock`."""
        with self.lock:
            out = np.empty(self.model.n_vocab, dtype=np.float32)
            self._copy(L.llama_get_logits_ith(self.ptr, int(i)), out.ctypes.data, out.nbytes, "logits")
            return out

    def _note_external(self, seq: int, pos: np.ndarray) -> None:
        """Record cells decoded outside `decode` (mtmd's stock path) in the position log."""
        if pos.shape[1]:
            self._logs[seq].append(pos[0], pos.max(axis=0))

    @staticmethod
    def _copy(ptr: Any, dst_addr: int, n_bytes: int, what: str) -> None:
        """Copy one output row from a llama.cpp pointer to the address of a numpy row."""
        if not ptr:
            raise PocketOmniError(f"llama.cpp returned no {what} for a requested output row")
        ctypes.memmove(dst_addr, ptr, n_bytes)

    def _check_continuation(self, t_first: int, x: int, tokens: bool) -> None:
        """llama.cpp's rules for where a batch may start, given the sequence's max t position x."""
        if x < 0:
            return
        if self.model.n_pos_per_embd > 1:
            if tokens and t_first <= x:
                raise ValueError(f"text tokens must start after position {x} (got {t_first}); "
                                 "embedding rows may repeat the last position, tokens may not")
            if not tokens and t_first < x:
                raise ValueError(f"rows must not start before position {x} already in the cache (got {t_first})")
        elif t_first != x + 1:
            raise ValueError(f"positions must continue at {x + 1} (got {t_first}); remove the tail first to rewrite it")

    def _rollback(self, seq: int, p0: int) -> None:
        # only cells newer than anything before the call: rows an embedding batch added at the
        # previous max position itself cannot be told apart and stay (n_tokens() reports them)
        L.llama_memory_seq_rm(self._mem, seq, p0, -1)
        self._logs[seq].remove(p0, None)

    def _raise_decode(self, rc: int, m: int, seq: int, mark: int) -> None:
        detail = _log.recent_errors(mark)
        if rc == 1:
            raise ContextOverflowError(
                f"the context window is full ({self.n_ctx} cells, sequence {seq} holds {self.n_tokens(seq)}; "
                f"a batch of {m} more did not fit). Start a new chat, drop old turns, or use a larger n_ctx."
            )
        if rc == -1:
            raise ValueError(f"llama.cpp rejected the batch: {detail}")
        raise PocketOmniError(f"llama_decode failed with code {rc}: {detail}")

    # ------------------------------------------------------------------ KV cache

    def remove(self, seq_id: int, p0: int, p1: int | None = None) -> None:
        """Drop cells of a sequence with t in [p0, p1) (p1=None: to the end), e.g. an interrupted tail."""
        seq = self._check_seq(seq_id)
        if p0 < 0 or (p1 is not None and p1 < p0):
            raise ValueError("need 0 <= p0 <= p1")
        with self.lock:
            self._check_open()
            if not L.llama_memory_seq_rm(self._mem, seq, int(p0), -1 if p1 is None else int(p1)):
                raise PocketOmniError(f"llama.cpp could not remove positions [{p0}, {p1}) of sequence {seq}")
            self._logs[seq].remove(int(p0), None if p1 is None else int(p1))

    def fork(self, src: int, dst: int) -> None:
        """Make sequence `dst` a copy of `src` (cells are shared, not duplicated)."""
        s, d = self._check_seq(src), self._check_seq(dst)
        if s == d:
            return
        with self.lock:
            self._check_open()
            L.llama_memory_seq_rm(self._mem, d, -1, -1)
            L.llama_memory_seq_cp(self._mem, s, d, -1, -1)
            self._logs[d] = self._logs[s].copy()

    def clear(self, seq_id: int | None = None) -> None:
        """Empty one sequence, or the whole cache when seq_id is None."""
        with self.lock:
            self._check_open()
            if seq_id is None:
                L.llama_memory_clear(self._mem, True)
                self._logs = [SeqLog() for _ in range(self.n_seq_max)]
            else:
                seq = self._check_seq(seq_id)
                L.llama_memory_seq_rm(self._mem, seq, -1, -1)
                self._logs[seq] = SeqLog()

    def _raw_state(self, seq: int) -> Any:
        """llama_state_seq_get_data of a sequence in a writable ctypes buffer."""
        size = int(L.llama_state_seq_get_size(self.ptr, seq))
        buf = (ctypes.c_uint8 * max(size, 1))()
        got = int(L.llama_state_seq_get_data(self.ptr, buf, size, seq))
        if got != size:
            raise PocketOmniError(f"llama_state_seq_get_data wrote {got} of {size} bytes")
        return (ctypes.c_uint8 * size).from_buffer(buf)

    def stored_positions(self, seq_id: int = 0) -> np.ndarray:
        """(n_cells, 3) (t, h, w) positions llama.cpp holds for the sequence's cells (mask and batch checks)."""
        seq = self._check_seq(seq_id)
        with self.lock:
            return cell_positions(self._raw_state(seq), self.model.n_pos_per_embd > 1)

    def clamp_positions(self, seq_id: int, t_max: int) -> int:
        """Lower the stored t of every cell of a sequence above t_max to t_max; returns how many changed.

        llama.cpp keeps keys already rotated, so a cell's stored position only decides the KV mask
        (key visible iff key.t < query.t, or equal with (h, w) not after the query's) and where the
        next batch may start (not below the max t). Clamping makes every cached cell visible to all
        later queries with t > t_max, which lets a batch whose positions go back in time (the audio of
        a video chunk after its frames) attend to everything decoded before it, as the reference's
        sequence-order causal mask does. Our position log keeps the true positions (next_pos).
        Costs one round trip of the sequence's KV state through one host buffer (rewritten in place).
        """
        seq = self._check_seq(seq_id)
        if t_max < 0:
            raise ValueError("t_max must be >= 0")
        ext = self.model.n_pos_per_embd > 1
        with self.lock:
            buf = self._raw_state(seq)
            old = clamp_cell_positions(buf, int(t_max), ext)
            n = int(np.count_nonzero(old > t_max))
            if n == 0:
                return 0
            mark = _log.mark()
            if int(L.llama_state_seq_set_data(self.ptr, buf, len(buf), seq)) == 0:
                detail = _log.recent_errors(mark)
                set_cell_t(buf, old, ext)  # put the cells back as they were
                if int(L.llama_state_seq_set_data(self.ptr, buf, len(buf), seq)) == 0:
                    L.llama_memory_seq_rm(self._mem, seq, -1, -1)
                    self._logs[seq] = SeqLog()
                raise PocketOmniError(f"llama.cpp could not restore the relabelled KV cells: {detail}")
            return n

    # ------------------------------------------------------------------ state

    def get_state(self, seq_id: int = 0) -> bytes:
        """Serialise one sequence's KV cells plus our position bookkeeping."""
        seq = self._check_seq(seq_id)
        with self.lock:
            ctx = self.ptr
            size = int(L.llama_state_seq_get_size(ctx, seq))
            buf = (ctypes.c_uint8 * max(size, 1))()
            got = int(L.llama_state_seq_get_data(ctx, buf, size, seq))
            if got != size:
                raise PocketOmniError(f"llama_state_seq_get_data wrote {got} of {size} bytes")
            return pack_state(self.model, self._logs[seq], bytes(buf)[:size], self.kv_type)

    def set_state(self, data: bytes, seq_id: int = 0) -> None:
        """Replace sequence `seq_id` with a state from `get_state` (same model required)."""
        seq = self._check_seq(seq_id)
        log, raw = unpack_state(self.model, data, self.kv_type)
        with self.lock:
            ctx = self.ptr
            L.llama_memory_seq_rm(self._mem, seq, -1, -1)
            self._logs[seq] = SeqLog()
            if log.n_cells == 0:
                return
            buf = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
            mark = _log.mark()
            if int(L.llama_state_seq_set_data(ctx, buf, len(raw), seq)) == 0:
                L.llama_memory_seq_rm(self._mem, seq, -1, -1)
                raise ContextOverflowError(
                    f"could not restore the saved chat ({log.n_cells} cells) into sequence {seq}: "
                    f"{_log.recent_errors(mark)}. The context may be too small or too full; clear it or raise n_ctx."
                )
            self._logs[seq] = log

    def save_state(self, path: str, seq_id: int = 0) -> None:
        """Write `get_state(seq_id)` to a file atomically."""
        write_atomic(path, self.get_state(seq_id))

    def load_state(self, path: str, seq_id: int = 0) -> None:
        """Restore a sequence from a file written by `save_state`."""
        with open(path, "rb") as f:
            data = f.read()
        self.set_state(data, seq_id)

    def __repr__(self) -> str:
        return f"LlamaContext(n_ctx={self.n_ctx}, n_batch={self.n_batch}, closed={self.closed})"
