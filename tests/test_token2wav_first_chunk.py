"""The short first chunk (token2wav/first_chunk.py) on the tiny random-weight token2wav: when it comes,
that the audio after its seam is the stream's own, and what it costs in fidelity (benchmarks/first_chunk.py
measures the grid the default was chosen from)."""

from __future__ import annotations

import numpy as np
import pytest
from speech_metrics import mel_distance, snr_db
from test_token2wav_dit import build_tiny, speaker_inputs
from test_token2wav_stream import EXACT_SNR_DB

import pocketomni as po
from pocketomni.token2wav import NoiseSource
from pocketomni.token2wav.first_chunk import CROSSFADE_SAMPLES
from pocketomni.token2wav.streaming import solve_mel

PER_CODE = 480  # samples per code: 2 mel frames x 240
DEFAULT = po.SpeechOptions()
N, F = DEFAULT.first_chunk_codes, DEFAULT.first_chunk_future


@pytest.fixture(scope="module")
def tw():
    return build_tiny(0, 4, (2,), (0, 3))[1]  # the real look-back/ahead layout, scaled down


@pytest.fixture(scope="module")
def spk(tw):
    return tw.speaker(*speaker_inputs(1))


def feed(stream, codes, sizes):
    """Feed codes in pieces of the given sizes, then finish: (outputs per piece + the final one)."""
    outs, fed = [], 0
    for n in sizes:
        outs.append(stream.feed(codes[fed : fed + n]))
        fed += n
    assert fed == codes.size
    return outs + [stream.finish()]


def pieces(seed, total):
    sizes = np.random.default_rng(seed).integers(1, 16, total)
    cut = np.cumsum(sizes)
    k = int(np.searchsorted(cut, total))
    return [int(x) for x in sizes[:k]] + [total - int(cut[k - 1]) if k else total]


def test_defaults_are_the_measured_choice():
    assert (N, F) == (24, 12)


@pytest.mark.parametrize(("preset", "mode", "today"), [("fast", "exact", 72), ("reference", "chunked", 49)])
@pytest.mark.parametrize(("n", "f"), [(24, 12), (12, 6), (0, 0)])
def test_first_audio_after_exactly_n_codes(tw, spk, preset, mode, today, n, f):
    codes = np.random.default_rng(2).integers(0, 8193, 110)
    s = tw.stream(spk, preset, mode=mode, seed=3, first_chunk_codes=n, first_chunk_future=f)
    outs = feed(s, codes, [1] * codes.size)
    first = next(i for i, o in enumerate(outs) if o.size) + 1  # codes fed when the first sound came
    assert first == (n or today)
    if n:
        assert outs[n - 1].size == (n - f) * PER_CODE  # exactly the first chunk's own audio
        assert s.seam == (n - f) * PER_CODE + min(CROSSFADE_SAMPLES, f * PER_CODE)
    assert sum(o.size for o in outs) == codes.size * PER_CODE


@pytest.mark.parametrize(("n", "f"), [(N, F), (36, 24), (12, 0)])
def test_after_the_seam_the_stream_is_unchanged(tw, spk, n, f):
    """From the seam on, the output is the plain exact stream's, bit for bit (the same arithmetic on the
    same codes: the first chunk only replaces samples), so it equals one-shot rendering as closely as the
    plain stream does (test_token2wav_stream's bound); before it, the first chunk with a cross-fade."""
    codes = np.random.default_rng(4).integers(0, 8193, 157)
    sizes = pieces(5, codes.size)
    out = np.concatenate(feed(tw.stream(spk, "fast", seed=6, first_chunk_codes=n, first_chunk_future=f),
                              codes, sizes))
    plain = np.concatenate(feed(tw.stream(spk, "fast", seed=6), codes, sizes))
    whole = tw.render(codes, spk, "fast", seed=6)
    s = tw.stream(spk, "fast", seed=6, first_chunk_codes=n, first_chunk_future=f)
    seam, S, X = s.seam, (n - f) * PER_CODE, s.seam - (n - f) * PER_CODE
    assert X == min(CROSSFADE_SAMPLES, f * PER_CODE)
    assert out.shape == plain.shape == whole.shape
    np.testing.assert_array_equal(out[seam:], plain[seam:])
    assert snr_db(out[seam:], whole[seam:]) >= EXACT_SNR_DB
    # Before the seam: the first N codes rendered alone (their own one-shot mel, vocoded with the end
    # padded), then a raised-cosine fade to the stream.
    head = tw.vocoder.vocode(solve_mel(tw.dit, spk, tw.plan("fast"), codes[:n], NoiseSource(80, seed=6)))
    np.testing.assert_array_equal(out[:S], head[:S])
    w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(X) + 0.5) / max(X, 1))).astype(np.float32)
    np.testing.assert_allclose(out[S:seam], head[S:seam] * (1 - w) + plain[S:seam] * w, rtol=0, atol=1e-6)
    assert snr_db(out[:S], whole[:S]) < EXACT_SNR_DB - 10 or f == 24  # an approximation, not the stream


def test_output_does_not_depend_on_how_codes_are_fed(tw, spk):
    codes = np.random.default_rng(7).integers(0, 8193, 130)
    make = lambda: tw.stream(spk, "fast", seed=8, first_chunk_codes=N, first_chunk_future=F)
    whole_piece = np.concatenate(feed(make(), codes, [codes.size]))
    one_by_one = np.concatenate(feed(make(), codes, [1] * codes.size))
    S = (N - F) * PER_CODE
    np.testing.assert_array_equal(whole_piece[:S], one_by_one[:S])  # the same first chunk
    assert snr_db(whole_piece[S:], one_by_one[S:]) >= EXACT_SNR_DB  # cross-fade + exact streams, any cut


@pytest.mark.parametrize("n_codes", [N - 1, 5])
def test_utterance_shorter_than_the_first_chunk_is_the_plain_stream(tw, spk, n_codes):
    codes = np.random.default_rng(9).integers(0, 8193, n_codes)
    out = feed(tw.stream(spk, "fast", seed=10, first_chunk_codes=N, first_chunk_future=F), codes, [1] * n_codes)
    plain = feed(tw.stream(spk, "fast", seed=10), codes, [1] * n_codes)
    assert not any(o.size for o in out[:-1])
    np.testing.assert_array_equal(np.concatenate(out), np.concatenate(plain))


def test_first_chunk_fidelity_is_the_measured_one(tw, spk):
    """The default first chunk against one-shot rendering, on the benchmark's seeds. Measured
    (benchmarks/results/first_chunk.md, fast): SNR 40.4..48.0 dB, log-mel distance 0.0031..0.0072 nats,
    ~100x below the 0.38..0.42 between two noise takes of the same codes. Float32 rounding moves these
    by far less than the bounds' 0.5 dB / 0.0005 rounding: the stream itself is 113 dB from one-shot, an
    error 10^(-(113-40)/20) ~ 2e-4 times the first chunk's. The upper SNR bound shows the first chunk is
    an approximation (the whole stream would be > 90 dB)."""
    for seed in range(5):
        codes = np.random.default_rng(100 + seed).integers(0, 8193, 150)
        whole = tw.render(codes, spk, "fast", seed=seed)
        other = tw.render(codes, spk, "fast", seed=1000 + seed)
        s = tw.stream(spk, "fast", seed=seed, first_chunk_codes=N, first_chunk_future=F)
        out = np.concatenate([s.feed(codes), s.finish()])
        S = (N - F) * PER_CODE
        snr, dist = snr_db(out[:S], whole[:S]), mel_distance(out[:S], whole[:S])
        assert 40.0 <= snr <= 48.5, (seed, snr)
        assert 0.0025 <= dist <= 0.0075, (seed, dist)
        assert dist < mel_distance(other[:S], whole[:S]) / 40


def test_bad_first_chunk_options(tw, spk):
    for n, f in ((12, 12), (12, 20), (-1, 0), (12, -1)):
        with pytest.raises(po.OptionsError, match="first_chunk"):
            tw.stream(spk, "fast", first_chunk_codes=n, first_chunk_future=f)
        with pytest.raises(po.OptionsError, match="first_chunk"):
            po.SpeechOptions(first_chunk_codes=n, first_chunk_future=f)
    assert po.SpeechOptions(first_chunk_codes=0, first_chunk_future=0).first_chunk_codes == 0
