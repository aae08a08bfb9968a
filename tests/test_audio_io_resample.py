"""StreamResampler: chunked resampling equals one resample() of the whole signal (no devices needed)."""

from __future__ import annotations

import numpy as np
import pytest

from pocketomni.audio.io import StreamResampler
from pocketomni.media.audio import resample


@pytest.mark.parametrize(("orig", "target"), [(24000, 48000), (24000, 44100), (48000, 16000), (44100, 16000)])
def test_stream_resampler_matches_one_shot(orig: int, target: int) -> None:
    rng = np.random.default_rng(orig + target)
    x = rng.standard_normal(orig // 2 + 123).astype(np.float32) * 0.3
    want = resample(x, orig, target)
    rs = StreamResampler(orig, target)
    parts, pos = [], 0
    for size in rng.integers(1, 2000, size=10_000):  # odd chunk sizes, including single samples
        if pos >= x.size:
            break
        parts.append(rs.push(x[pos : pos + size]))
        pos += size
    parts.append(rs.flush())
    got = np.concatenate(parts)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_stream_resampler_is_reusable_after_flush_and_passes_equal_rates() -> None:
    x = np.sin(np.arange(5000) / 7.0).astype(np.float32)
    rs = StreamResampler(24000, 48000)
    first = np.concatenate([rs.push(x), rs.flush()])
    second = np.concatenate([rs.push(x[:1234]), rs.push(x[1234:]), rs.flush()])
    np.testing.assert_array_equal(first, second)
    same = StreamResampler(16000, 16000)
    np.testing.assert_array_equal(same.push(x), x)
    assert same.flush().size == 0
