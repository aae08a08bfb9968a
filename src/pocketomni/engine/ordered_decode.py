"""Decoding a prompt whose positions are not causal in llama.cpp's sense (video with its sound track).

The reference attends causally by sequence order. llama.cpp's KV mask for M-RoPE models orders
cells by their stored position instead: a key is visible to a query iff key.t < query.t, or the two
t are equal and the key's (h, w) is not after the query's; and an embedding batch may not start
below the largest t already cached. With a video's sound interleaved (per 2 s chunk: frames at
t = s and s + 25, then audio at t = s .. s + 49) and the shared bos/eos positions, sequence order
and position order disagree.

`decode_in_order` restores the reference semantics:

1. the prompt is cut into runs whose (t, h, w) strictly increase (inside a run, position order is
   sequence order, so llama.cpp's mask is the causal mask);
2. before a run, if a cell decoded earlier in this call would be hidden from the run's first
   (smallest) position, every cached cell above t0 - 1 gets its stored t lowered to t0 - 1
   (`LlamaContext.clamp_positions`: keys are stored already rotated, so only the mask and the
   batch check change), making all of them visible to the run and to everything after it;
3. the run is decoded with its true positions (RoPE uses them; our position log keeps them).

Only cells of the current prompt are ever relabelled: the clamp value never goes below the
prompt's first position, so removing a turn by position range still works.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from pocketomni.backend.batch import DecodeInterrupted, DecodeResult
from pocketomni.backend.context import LlamaContext
from pocketomni.errors import InternalError

__all__ = ["causal_runs", "decode_in_order", "needs_ordered_decode"]


def _lex_gt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a > b in (t, h, w) lexicographic order for (3, n) arrays (b may broadcast)."""
    return (a[0] > b[0]) | ((a[0] == b[0]) & ((a[1] > b[1]) | ((a[1] == b[1]) & (a[2] > b[2]))))


def causal_runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of a (3, N) position array inside which (t, h, w) strictly increases."""
    pos = np.asarray(positions, dtype=np.int64)
    n = pos.shape[1]
    if n == 0:
        return []
    breaks = np.flatnonzero(~_lex_gt(pos[:, 1:], pos[:, :-1])) + 1
    edges = [0, *breaks.tolist(), n]
    return list(itertools.pairwise(edges))


def needs_ordered_decode(positions: np.ndarray) -> bool:
    """True when one plain batch would not reproduce the reference's causal attention."""
    return len(causal_runs(positions)) > 1


def decode_in_order(
    ctx: LlamaContext,
    embeddings: np.ndarray,
    positions: np.ndarray,
    *,
    seq_id: int = 0,
    hidden: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_run: Callable[[int, int, int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    floor: int | None = None,
) -> DecodeResult:
    """Decode embedding rows with (3, N) positions so that every row attends to exactly the rows
    before it in sequence order. Returns the last row's logits and, with hidden=True, every row's
    final hidden state. on_run(start, stop, n_relabelled) is called after each run (tests, stats);
    progress(rows_done, rows_total) after each micro-batch. floor: the lowest t a relabel may set
    (default the first position of `positions`); a turn decoded in several calls passes its start, so
    a later call may relabel cells of the same turn decoded by an earlier one."""
    pos = np.asarray(positions, dtype=np.int64)
    n = pos.shape[1]
    if embeddings.shape[0] != n:
        raise InternalError(f"{embeddings.shape[0]} embedding rows for {n} positions")
    rows4 = np.zeros((4, n), np.int64)
    rows4[:3] = pos
    floor = int(pos[0].min()) if floor is None else int(floor)  # never relabel cells of earlier turns
    stored = pos.copy()  # what llama.cpp holds for the rows decoded so far in this call
    hid = np.empty((n if hidden else 0, ctx.model.n_embd), np.float32)
    last = None
    for a, b in causal_runs(pos):
        first = pos[:, a : a + 1]
        relabelled = 0
        if a > 0 and _lex_gt(stored[:, :a], first).any():
            t_clamp = int(first[0, 0]) - 1
            if t_clamp < floor:
                raise InternalError(
                    f"a prompt run at t={t_clamp + 1} would need cells of earlier turns relabelled")
            relabelled = ctx.clamp_positions(seq_id, t_clamp)
            np.minimum(stored[0, :a], t_clamp, out=stored[0, :a])
        if should_stop is not None and a > 0 and should_stop():
            raise DecodeInterrupted(a)
        res = ctx.decode(embeddings=embeddings[a:b], positions=rows4[:, a:b], seq_id=seq_id,
                         logits="last" if b == n else None, hidden="all" if hidden else None,
                         should_stop=should_stop,
                         progress=None if progress is None else (lambda done, _, a=a: progress(a + done, n)))
        if hidden:
            hid[a:b] = res.hidden
        if b == n:
            last = res
        if on_run is not None:
            on_run(a, b, relabelled)
    assert last is not None
    return DecodeResult(np.array([n - 1], np.int64), last.logits, np.arange(hid.shape[0], dtype=np.int64), hid)
