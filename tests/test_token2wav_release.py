"""Released weight pages: token2wav's modulation weights are used once (their results are cached per
solver time), then their file pages leave the process; the audio does not change, and a time that
was not cached still works (the pages come back from the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pocketomni.engine.weights import load_token2wav
from pocketomni.mapped_pages import release_file_pages
from pocketomni.token2wav import Preset, Token2Wav, layers


def resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_release_file_pages(tmp_path: Path) -> None:
    data = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)  # 4 MiB
    path = tmp_path / "w.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    view = mapped[1000:900_000].reshape(-1, 100)
    assert float(view.sum()) == float(data[1000:900_000].sum())  # touch every page
    before = resident_bytes(path)
    released = release_file_pages(view)
    assert 3_500_000 < released <= view.nbytes
    assert resident_bytes(path) <= before - released
    np.testing.assert_array_equal(view, data[1000:900_000].reshape(-1, 100))  # read back from the file
    assert release_file_pages(np.array(data[:4096])) == 0  # an ordinary array: nothing to release


@pytest.mark.parametrize("wtype", ["f32", "f16"])
def test_token2wav_audio_unchanged_after_release(converted_tiny, monkeypatch, wtype: str) -> None:
    # float16: every matrix kept as a view of the file as at full size (the tiny ones would be
    # converted to float32 once, leaving no file pages to release)
    monkeypatch.setattr(layers, "SMALL", 0)
    path = Path(converted_tiny("base", "f32", token2wav_type=wtype)) / f"token2wav-{wtype}.gguf"
    fresh = load_token2wav(path)
    a = Token2Wav.from_weights(fresh.weights, fresh.config)
    b_w = load_token2wav(path)
    b = Token2Wav.from_weights(b_w.weights, b_w.config)
    name = min(fresh.speakers)
    s = fresh.speakers[name]
    spk_a, spk_b = a.speaker(s.cond, s.ref_mel, name), b.speaker(s.cond, s.ref_mel, name)
    codes = np.random.default_rng(1).integers(0, 30, 40)
    noise = np.random.default_rng(2).standard_normal((40 * 2, a.dit.cfg.mel_dim)).astype(np.float32)

    assert b.prepare_presets() > 0  # tiny model: ~370 KB of whole pages
    assert all(float(t) in b.dit._time_cache for p in ("fast", "reference") for t in b.plan(p).times)
    for preset in ("fast", "reference", Preset("custom", "euler", 7, 0.0, None)):  # custom: not cached
        wa = a.render(codes, spk_a, preset, noise=noise)
        wb = b.render(codes, spk_b, preset, noise=noise)
        assert np.abs(wa - wb).max() <= 1e-5 * max(1.0, float(np.abs(wa).max())), preset
