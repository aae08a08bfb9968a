"""Token sampling in numpy with Hugging Face `generate` semantics.

Order as in transformers' logits-processor list: repetition penalty, suppressed ids, then (when
sampling) temperature, top-k, top-p, softmax and one multinomial draw. Greedy decoding applies
the penalty and suppression, then takes the argmax (lowest id on ties, like torch.argmax).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pocketomni.errors import OptionsError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. temperature == 0 or greedy=True means argmax.

    top_k: keep the k highest logits (0 = off). top_p: nucleus mass (1.0 = off).
    repetition_penalty: HF semantics over the ids passed to `sample` (1.0 = off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise OptionsError(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise OptionsError(f"top_k must be an int >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise OptionsError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0 and np.isfinite(self.repetition_penalty)):
            raise OptionsError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, ids: Iterable[int] | np.ndarray, penalty: float) -> np.ndarray:
    """HF RepetitionPenaltyLogitsProcessor: for every id seen, divide a positive logit by
    `penalty` and multiply a negative one (each id once, however often it occurred)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0:
        return out
    idx = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    if idx.size == 0:
        return out
    if idx[0] < 0 or idx[-1] >= out.shape[-1]:
        raise ValueError("penalty ids outside the vocabulary")
    score = out[..., idx]
    out[..., idx] = np.where(score < 0, score * np.float32(penalty), score / np.float32(penalty))
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """HF TopKLogitsWarper: logits below the k-th largest become -inf (ties at the edge kept)."""
    k = min(int(k), logits.shape[-1])
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k]
    return np.where(logits < np.expand_dims(kth, -1), np.float32(-np.inf), logits).astype(np.float32)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """HF TopPLogitsWarper on a 1-D row: sort ascending, drop tokens whose cumulative
    probability is <= 1 - p, always keep the most likely one."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits, kind="stable")
    srt = logits[order]
    e = np.exp(srt - srt[-1], dtype=np.float32)
    cum = np.cumsum(e / e.sum(dtype=np.float32), dtype=np.float32)
    remove = cum <= np.float32(1.0 - p)
    remove[-1] = False
    out = logits.copy()
    out[order[remove]] = -np.inf
    return out


def sample(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator | None = None,
    *,
    penalty_ids: Iterable[int] | np.ndarray = (),
    suppress_ids: Iterable[int] | np.ndarray = (),
) -> int:
    """Choose the next token id from one row of logits (float32, shape (n_vocab,))."""
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1 or row.size == 0:
        raise ValueError("logits must be a non-empty 1-D array")
    row = apply_repetition_penalty(row, penalty_ids, params.repetition_penalty)
    sup = np.asarray(list(suppress_ids) if not isinstance(suppress_ids, np.ndarray) else suppress_ids, np.int64)
    if sup.size:
        if sup.min() < 0 or sup.max() >= row.size:
            raise ValueError("suppressed ids outside the vocabulary")
        row[sup] = -np.inf
    if not np.isfinite(row).any():
        raise ValueError("every token is suppressed")
    if params.is_greedy:
        return int(np.argmax(row))
    if rng is None:
        raise ValueError("sampling needs a numpy Generator (pass rng=np.random.default_rng(seed))")
    if params.temperature != 1.0:
        row = row / np.float32(params.temperature)
    row = top_k_filter(row, params.top_k)
    row = top_p_filter(row, params.top_p)
    keep = np.flatnonzero(np.isfinite(row))
    z = row[keep].astype(np.float64)
    prob = np.exp(z - z.max())
    prob /= prob.sum()
    return int(keep[rng.choice(keep.size, p=prob)])


class StreamSampler:
    """`sample` for one generation, step after step, with a growing set of penalised ids: the same
    choice as `sample(row, params, rng, penalty_ids=seen, suppress_ids=suppress)` for every row, in
    fewer passes over the vocabulary (one partition for top-k, then top-p sorts only the kept ids).

    `seen(ids)` adds ids to the penalty set (each counts once, as in `sample`).
    """

    def __init__(self, params: SamplingParams, rng: np.random.Generator | None, n_vocab: int,
                 suppress_ids: Iterable[int] = ()) -> None:
        self.params, self.rng, self.n_vocab = params, rng, n_vocab
        self.buf = np.empty(n_vocab, np.float32)
        self.mask = np.zeros(n_vocab, bool)
        self.ids = np.zeros(0, np.int64)  # penalised ids, each once
        self.suppress = np.unique(np.asarray(list(suppress_ids), np.int64))
        if self.suppress.size and (self.suppress[0] < 0 or self.suppress[-1] >= n_vocab):
            raise ValueError("suppressed ids outside the vocabulary")
        self.pad = np.zeros(n_vocab, np.float32)  # top-p's sum runs over the whole (zero-padded) row
        self.pen = np.float32(params.repetition_penalty)
        self.temp = np.float32(params.temperature)
        self.cut = np.float32(1.0 - params.top_p)

    def _kth_largest(self, row: np.ndarray, k: int) -> np.ndarray:
        """The k-th largest value of row (what np.partition(row, -k)[-k] gives), partitioning only the
        values at or above a bound: the smallest of the maxima of k disjoint slices is <= it."""
        n = row.size // k
        bound = row[: n * k].reshape(k, n).max(axis=1).min()
        cand = row[row >= bound]
        return np.partition(cand, -k)[-k]

    def seen(self, ids: Iterable[int] | np.ndarray) -> None:
        idx = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_vocab):
            raise ValueError("penalty ids outside the vocabulary")
        new = idx[~self.mask[idx]]
        if new.size:
            new = np.unique(new)
            self.mask[new] = True
            self.ids = np.concatenate([self.ids, new])  # unsorted: the penalty is elementwise

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        raw = np.asarray(logits)
        # odd rows (a NaN or inf makes the sum non-finite; so may an overflow): the reference path
        if raw.shape != (self.n_vocab,) or not np.isfinite(raw.sum(dtype=np.float32)):
            return sample(raw, p, self.rng, penalty_ids=self.ids, suppress_ids=self.suppress)
        row = self.buf
        np.copyto(row, raw, casting="same_kind")
        if p.repetition_penalty != 1.0 and self.ids.size:
            if self.ids.size < 256:
                score = row[self.ids]
                row[self.ids] = np.where(score < 0, score * self.pen, score / self.pen)
            else:  # many ids: whole-row passes beat gathering them (the same values either way)
                np.copyto(row, np.where(row < 0, row * self.pen, row / self.pen), where=self.mask)
        if self.suppress.size:
            row[self.suppress] = -np.inf
            if self.suppress.size == row.size:
                raise ValueError("every token is suppressed")
        if p.is_greedy:
            return int(np.argmax(row))
        if self.rng is None:
            raise ValueError("sampling needs a numpy Generator (pass rng=np.random.default_rng(seed))")
        if p.temperature != 1.0:
            row /= self.temp
        k = min(int(p.top_k), row.size)
        kth = self._kth_largest(row, k) if 0 < k < row.size else -np.inf
        # ids top-k keeps (ties at the edge included), ascending; the input was finite, so only the
        # suppressed ids are -inf
        fin = np.flatnonzero(row >= kth) if kth > -np.inf else np.flatnonzero(row > -np.inf)
        if p.top_p < 1.0:
            vals = row[fin]
            order = np.argsort(vals, kind="stable")  # = the finite tail of sample's full stable sort
            srt = vals[order]
            e = np.exp(srt - srt[-1], dtype=np.float32)
            pad = self.pad
            pad[:] = 0
            pad[pad.size - e.size :] = e  # the -inf entries come first and add exact zeros
            cum = np.cumsum(e / pad.sum(dtype=np.float32), dtype=np.float32)
            remove = cum <= self.cut
            remove[-1] = False
            if remove.any():
                drop = np.zeros(fin.size, bool)
                drop[order[remove]] = True
                fin = fin[~drop]
        z = row[fin].astype(np.float64)
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        return int(fin[self.rng.choice(fin.size, p=prob)])
