"""Parity of the numpy BigVGAN (and the whole token2wav path) with transformers (tiny, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from test_token2wav_dit import build_tiny, seeded_noise, speaker_inputs

torch.set_num_threads(1)


def snr_db(ours: np.ndarray, ref: np.ndarray) -> float:
    err = np.asarray(ours, np.float64) - np.asarray(ref, np.float64)
    return float(10 * np.log10(np.sum(np.asarray(ref, np.float64) ** 2) / max(np.sum(err**2), 1e-300)))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(0)


def test_bigvgan_waveform_snr(tiny):
    model, tw = tiny
    rng = np.random.default_rng(11)
    mel = (rng.standard_normal((173, 80)) * 2.0 - 5.0).astype(np.float32)
    with torch.no_grad():
        ref = model.code2wav_bigvgan_model(torch.from_numpy(mel.T.copy())[None]).numpy()
    ours = tw.vocoder.vocode(mel)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (173 * 240,)
    assert np.mean(np.abs(ref) >= 1.0) < 0.05  # the test signal is not just clipping
    assert snr_db(ours, ref) >= 60.0


def test_whole_token2wav_matches_reference_forward(tiny):
    """codes -> waveform against Qwen2_5OmniToken2WavModel.forward (reference preset, same noise)."""
    model, tw = tiny
    cond, ref_mel = speaker_inputs(12)
    codes = np.random.default_rng(13).integers(0, 8193, 70)
    noise = seeded_noise(14, 140)
    torch.manual_seed(14)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(codes)[None], torch.from_numpy(cond)[None], torch.from_numpy(ref_mel)[None]
        ).numpy()
    ours = tw.render(codes, tw.speaker(cond, ref_mel), "reference", noise=noise)
    assert snr_db(ours, ref) >= 60.0
