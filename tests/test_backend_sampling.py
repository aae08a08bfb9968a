"""Sampling: hand-computed cases and exact agreement with transformers' logits processors."""

from __future__ import annotations

import numpy as np
import pytest

from pocketomni.backend.sampling import (
    SamplingParams,
    StreamSampler,
    apply_repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)
from pocketomni.errors import OptionsError

NEG = -np.inf


def test_repetition_penalty_by_hand() -> None:
    logits = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)  # repeats count once
    np.testing.assert_array_equal(out, np.array([1.0, -2.0, 0.5, -3.0], np.float32))
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, -3.0])  # input untouched
    np.testing.assert_array_equal(apply_repetition_penalty(logits, [], 2.0), logits)


def test_top_k_and_top_p_by_hand() -> None:
    np.testing.assert_array_equal(top_k_filter(np.array([1, 3, 2, 3], np.float32), 2), [NEG, 3, NEG, 3])
    np.testing.assert_array_equal(top_k_filter(np.array([1, 3, 2, 2], np.float32), 2), [NEG, 3, 2, 2])  # ties kept
    logp = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    kept = np.isfinite(top_p_filter(logp, 0.75))  # ascending cum: .05 .20 .50 1.0; drop cum <= .25
    np.testing.assert_array_equal(kept, [True, True, False, False])
    assert np.isfinite(top_p_filter(logp, 0.01)).sum() == 1  # the best token always survives


def test_greedy_applies_penalty_and_suppression() -> None:
    logits = np.array([5.0, 4.9, 1.0, -2.0], np.float32)
    g = SamplingParams(temperature=0)
    assert sample(logits, g) == 0
    assert sample(logits, g, penalty_ids=[0]) == 0  # penalty 1.0 is off
    assert sample(logits, SamplingParams(greedy=True, repetition_penalty=1.1), penalty_ids=[0]) == 1  # 5/1.1 < 4.9
    assert sample(logits, g, suppress_ids=[0, 1]) == 2
    with pytest.raises(ValueError):
        sample(logits, g, suppress_ids=[0, 1, 2, 3])


def test_sampling_frequencies_and_seed() -> None:
    logp = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    p = SamplingParams(temperature=1.0, top_p=0.75)
    rng = np.random.default_rng(0)
    draws = np.array([sample(logp, p, rng) for _ in range(20000)])
    assert set(np.unique(draws)) == {0, 1}
    freq0 = (draws == 0).mean()
    assert abs(freq0 - 0.625) < 4 * np.sqrt(0.625 * 0.375 / 20000)  # renormalised 0.5 / 0.8
    a = [sample(logp, SamplingParams(), np.random.default_rng(7)) for _ in range(5)]
    b = [sample(logp, SamplingParams(), np.random.default_rng(7)) for _ in range(5)]
    assert a == b
    with pytest.raises(ValueError):
        sample(logp, SamplingParams())  # sampling needs an rng


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
                                 {"repetition_penalty": 0.0}, {"temperature": float("nan")}])
def test_invalid_params(bad: dict) -> None:
    with pytest.raises(OptionsError):
        SamplingParams(**bad)


def test_matches_transformers_processors() -> None:
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    vocab = 8296  # the talker's codec vocabulary
    for trial in range(20):
        logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
        seen = rng.integers(0, vocab, 300)
        scores = torch.from_numpy(logits.copy())[None]
        ids = torch.from_numpy(seen)[None]
        # each stage on its own
        hf_pen = RepetitionPenaltyLogitsProcessor(1.05)(ids, scores.clone())[0].numpy()
        np.testing.assert_array_equal(apply_repetition_penalty(logits, seen, 1.05), hf_pen)
        hf_k = TopKLogitsWarper(40)(ids, scores.clone())[0].numpy()
        np.testing.assert_array_equal(top_k_filter(logits, 40), hf_k)
        hf_p = TopPLogitsWarper(0.8)(ids, scores.clone())[0].numpy()
        np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.8)), np.isfinite(hf_p))
        # the talker's whole chain: penalty, suppress codec_bos, temperature, top-k, top-p
        chain = LogitsProcessorList([
            RepetitionPenaltyLogitsProcessor(1.05), SuppressTokensLogitsProcessor([8293]),
            TemperatureLogitsWarper(0.9), TopKLogitsWarper(40), TopPLogitsWarper(0.8),
        ])
        hf_probs = torch.softmax(chain(ids, scores.clone()), dim=-1)[0].numpy()
        ours = apply_repetition_penalty(logits, seen, 1.05)
        ours[8293] = NEG
        ours = top_p_filter(top_k_filter(ours / np.float32(0.9), 40), 0.8)
        e = np.exp(ours - ours.max())
        np.testing.assert_allclose(e / e.sum(), hf_probs, rtol=0, atol=1e-6)
        # and `sample` only ever returns a token HF could have drawn
        params = SamplingParams(temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05)
        tok = sample(logits, params, np.random.default_rng(trial), penalty_ids=seen, suppress_ids=[8293])
        assert hf_probs[tok] > 0


STREAM_PARAMS = [
    SamplingParams(temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05),  # the talker's defaults
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.3),
    SamplingParams(temperature=0.7, top_k=5, top_p=1.0, repetition_penalty=1.0),
    SamplingParams(temperature=1.3, top_k=8447, top_p=0.5, repetition_penalty=0.8),
    SamplingParams(temperature=0.5, top_k=1, top_p=0.95),
    SamplingParams(temperature=0.0, repetition_penalty=1.05),
]


@pytest.mark.parametrize("params", STREAM_PARAMS, ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}")
def test_stream_sampler_equals_sample(params: SamplingParams) -> None:
    """The talker's StreamSampler makes exactly `sample`'s choices, step after step, over 60 seeds of
    random logits (wide and narrow, with ties: rounded rows) and a growing penalty set (small, or
    hundreds of ids)."""
    V = 8448
    for seed in range(60):
        gen = np.random.default_rng(seed)
        ref_rng, fast_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        fast = StreamSampler(params, fast_rng, V, suppress_ids=[8293])
        seen = {8292, 8293, 8296}
        if seed % 2:  # a long reply's worth of ids: the sampler's whole-row penalty path
            seen |= set(gen.integers(0, V, 400).tolist())
        fast.seen(sorted(seen))
        for step in range(12):
            row = (gen.standard_normal(V) * gen.choice([0.5, 3.0, 12.0])).astype(np.float32)
            if step % 3 == 2:
                row = np.round(row * 2) / 2  # many exact ties, also at the top-k edge
            want = sample(row, params, ref_rng, penalty_ids=sorted(seen), suppress_ids=[8293])
            got = fast(row)
            assert got == want, (seed, step)
            seen.add(got)
            fast.seen([got])
    assert ref_rng.random() == fast_rng.random()  # the two generators drew the same numbers


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # sample's own arithmetic on an inf row
def test_stream_sampler_odd_rows_take_the_reference_path() -> None:
    params = SamplingParams(temperature=0.9, top_k=3, top_p=0.8)
    row = np.array([1.0, np.inf, 0.5, -np.inf, 2.0], np.float32)  # non-finite logits
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert StreamSampler(params, a, 5)(row) == sample(row, params, b)
    with pytest.raises(ValueError, match="every token"):
        StreamSampler(params, a, 3, suppress_ids=[0, 1, 2])(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="penalty ids"):
        StreamSampler(params, a, 3).seen([3])
