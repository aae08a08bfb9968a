"""Input checking and llama_batch construction for LlamaContext.decode.

Positions come as an int array of shape (n,) or (n_pos, n). For M-RoPE models (n_pos 4) the rows
are t, h, w, 0 and go into `llama_batch.pos` section-major (all t's, then all h's, ...), which
is how llama.cpp reads an embedding batch; a token batch carries only the t row and llama.cpp
broadcasts it to t=h=w.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from pocketomni.errors import PocketOmniError

Select = str | Sequence[int] | np.ndarray | None  # "last" | "all" | None | explicit row indices
MAX_POS = 2**30


class DecodeInterrupted(PocketOmniError):
    """`should_stop` returned True between two chunks; `n_done` rows were decoded and kept."""

    def __init__(self, n_done: int) -> None:
        super().__init__(f"decode stopped after {n_done} rows")
        self.n_done = n_done


@dataclass
class DecodeResult:
    """Copies of what one `decode` call produced. Row indices refer to the input rows."""

    logits_rows: np.ndarray  # int64 (k,)
    logits: np.ndarray  # float32 (k, n_vocab)
    hidden_rows: np.ndarray  # int64 (m,)
    hidden: np.ndarray  # float32 (m, n_embd): final hidden state after the last RMSNorm

    @property
    def last_logits(self) -> np.ndarray:
        """Logits of the last output row."""
        if not len(self.logits):
            raise ValueError("this decode returned no logits")
        return self.logits[-1]


def select_rows(sel: Select, n: int, what: str) -> np.ndarray:
    """Sorted unique row indices for a 'last' / 'all' / None / explicit-indices selector."""
    if sel is None or (isinstance(sel, str) and sel == "none"):
        return np.zeros(0, dtype=np.int64)
    if isinstance(sel, str):
        if sel == "last":
            return np.array([n - 1], dtype=np.int64)
        if sel == "all":
            return np.arange(n, dtype=np.int64)
        raise ValueError(f"{what} must be 'last', 'all', None or row indices, not {sel!r}")
    idx = np.unique(np.asarray(sel, dtype=np.int64).reshape(-1))
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise ValueError(f"{what} row indices must lie in [0, {n})")
    return idx


def check_tokens(tokens: Any, n_vocab: int) -> np.ndarray:
    """int32 token ids, each in [0, n_vocab)."""
    tok = np.asarray(tokens)
    if tok.ndim != 1 or (tok.size and tok.dtype.kind not in "iu"):
        raise ValueError("tokens must be a 1-D sequence of ints")
    if tok.size and not all(0 <= int(t) < n_vocab for t in ((tok.min(), tok.max()) if tok.size > 4 else tok)):
        raise ValueError(f"token ids must lie in [0, {n_vocab})")
    return tok.astype(np.int32)


def check_embeddings(embeddings: Any, n_embd: int) -> np.ndarray:
    """C-contiguous float32 (n, n_embd) rows, all finite."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] != n_embd:
        raise ValueError(f"embeddings must have shape (n, {n_embd}), got {emb.shape}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if not np.all(np.isfinite(emb)):
        raise ValueError("embeddings contain NaN or inf")
    return emb


def check_positions(positions: Any, n: int, n_pos: int, next_pos: int, tokens: bool) -> np.ndarray:
    """int32 (n_pos, n) positions; None means text positions from next_pos on (t=h=w, 4th row 0)."""
    if positions is None:
        if next_pos + n >= MAX_POS:
            raise ValueError(f"positions must lie in [0, {MAX_POS})")
        out = np.zeros((n_pos, n), dtype=np.int32)
        out[: min(n_pos, 3)] = np.arange(next_pos, next_pos + n, dtype=np.int32)
        return out
    else:
        pos = np.asarray(positions)
        if pos.dtype.kind not in "iu":
            raise ValueError("positions must be an integer array")
        pos = pos.astype(np.int64)
        if pos.ndim == 1:
            if pos.shape[0] != n:
                raise ValueError(f"positions has {pos.shape[0]} entries for {n} rows")
            pos = pos[None]
        elif pos.shape != (n_pos, n):
            raise ValueError(f"positions must have shape ({n},) or ({n_pos}, {n}), got {pos.shape}")
    if pos.shape[0] == 1 and n_pos == 4:
        pos = np.vstack([pos, pos, pos, np.zeros_like(pos)])
    if pos.size and (pos.min() < 0 or pos.max() >= MAX_POS):
        raise ValueError(f"positions must lie in [0, {MAX_POS})")
    if n > 1 and np.any(np.diff(pos[0]) < 0):
        raise ValueError("the t positions of one decode call must be non-decreasing")
    if tokens and n > 1 and np.any(np.diff(pos[0]) == 0):  # llama.cpp's token path mis-attends such a pair
        raise ValueError("text tokens of one decode call need distinct positions; decode tokens that share a "
                         "position (a video's <|vision_bos|><|audio_bos|>) as embedding rows")
    if tokens and n_pos == 4 and not (np.array_equal(pos[0], pos[1]) and np.array_equal(pos[0], pos[2])):
        raise ValueError("text tokens carry one position (t=h=w); decode them as embeddings for distinct h/w")
    return pos.astype(np.int32)


class BatchBuffers:
    """Reusable arrays behind one llama_batch of up to n_batch rows, all for one sequence."""

    def __init__(self, n_batch: int, n_pos: int) -> None:
        self.tok = np.zeros(n_batch, dtype=np.int32)
        self.pos = np.zeros(n_batch * n_pos, dtype=np.int32)
        self.nseq = np.ones(n_batch, dtype=np.int32)
        self.out = np.zeros(n_batch, dtype=np.int8)
        self.seq = np.zeros(1, dtype=np.int32)
        self.seq_ptrs = np.full(n_batch, self.seq.ctypes.data, dtype=np.uintp)  # every row -> self.seq
        b = self.batch = L.llama_batch()  # pointer fields set once; fill() only changes contents
        self._tok_p = self.tok.ctypes.data_as(ctypes.POINTER(L.llama_token))
        b.pos = self.pos.ctypes.data_as(ctypes.POINTER(L.llama_pos))
        b.n_seq_id = self.nseq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = self.seq_ptrs.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(L.llama_seq_id)))
        b.logits = self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def fill(self, seq: int, tok: np.ndarray | None, emb: np.ndarray | None, pos: np.ndarray,
             outputs: np.ndarray) -> Any:
        """The llama_batch over the given rows (tok or emb), positions (n_pos_used, m) and output
        flags. It points into these buffers and `emb`: keep both alive while it is used."""
        m = outputs.size
        self.seq[0] = seq
        self.out[:m] = outputs
        self.pos[: pos.size] = pos.reshape(-1)  # section-major: all t, then all h, ...
        b = self.batch
        b.n_tokens = m
        if tok is not None:
            self.tok[:m] = tok
            b.token = self._tok_p
            b.embd = None
        else:
            assert emb is not None and emb.flags.c_contiguous
            b.token = None
            b.embd = emb.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        return b
