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
