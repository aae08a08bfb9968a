"""scripts/arm64_compare.py's verdict on two runs' greedy tokens: identical, a near-tie, or a real
difference (the ARM check must not pass a divergence that numeric noise cannot explain)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "arm64_compare", Path(__file__).resolve().parents[1] / "scripts" / "arm64_compare.py")
assert _spec is not None and _spec.loader is not None
cmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmp)


def _run(seed: int, steps: int = 6, vocab: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, vocab)).astype(np.float32)


def test_identical_tokens_have_no_divergence() -> None:
    la = _run(0)
    lb = la + np.float32(1e-3)  # a uniform shift moves no argmax
    t = np.argmax(la, 1)
    d = cmp.divergence(la, lb, t, np.argmax(lb, 1))
    assert d["first_difference_at"] is None and d["shared_steps"] == 6
    assert abs(d["max_abs_logit_diff_shared"] - 1e-3) < 1e-6


def _flip_at(la: np.ndarray, k: int, margin: float, noise: float) -> tuple[np.ndarray, ...]:
    """B = A plus `noise` at the steps before k; at step k A's top two are `margin` apart and B swaps them."""
    la = la.copy()
    lb = la.copy()
    lb[:k, 0] += np.float32(noise)  # logit differences of size `noise` where both saw the same prefix
    order = np.argsort(la[k])
    a_tok, b_tok = int(order[-1]), int(order[-2])
    la[k, b_tok] = la[k, a_tok] - np.float32(margin)
    lb[k] = la[k]
    lb[k, b_tok] = la[k, a_tok] + np.float32(margin)  # B's choice: the runner-up
    ta, tb = np.argmax(la, 1), np.argmax(lb, 1)
    tb[k + 1:] = (ta[k + 1:] + 1) % la.shape[1]  # after the flip the replies go their own ways
    return la, lb, ta, tb


def test_a_flip_below_the_measured_noise_is_a_near_tie() -> None:
    la = _run(1)
    la, lb, ta, tb = _flip_at(la, 3, margin=0.005, noise=0.03)
    d = cmp.divergence(la, lb, ta, tb)
    assert d["first_difference_at"] == 3 and d["shared_steps"] == 4
    assert abs(d["margin_a"] - 0.005) < 1e-5 and abs(d["max_abs_logit_diff_before"] - 0.03) < 1e-5
    assert d["near_tie"] is True


def test_a_flip_with_a_wide_margin_is_not_a_near_tie() -> None:
    la = _run(2)
    la, lb, ta, tb = _flip_at(la, 3, margin=0.5, noise=0.03)
    d = cmp.divergence(la, lb, ta, tb)
    assert d["first_difference_at"] == 3 and d["near_tie"] is False


def test_a_flip_at_the_first_token_is_never_called_a_near_tie() -> None:
    la = _run(3)
    la, lb, ta, tb = _flip_at(la, 0, margin=0.001, noise=0.03)
    assert cmp.divergence(la, lb, ta, tb)["near_tie"] is False  # no shared step measured the noise


def test_first_difference_counts_a_shorter_reply() -> None:
    assert cmp.first_difference(np.array([1, 2, 3]), np.array([1, 2, 3])) is None
    assert cmp.first_difference(np.array([1, 2, 3]), np.array([1, 2])) == 2
    assert cmp.first_difference(np.array([1, 2, 3]), np.array([1, 5, 3])) == 1
