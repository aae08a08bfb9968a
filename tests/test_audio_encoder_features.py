"""Log-mel parity with the reference feature extractor as the Qwen2.5-Omni processor configures it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
    _get_feat_extract_output_lengths,
)

from pocketomni.audio.features import (
    MAX_SAMPLES,
    log_mel,
    log_mel_segments,
    mel_filterbank,
    n_audio_tokens,
    n_frames,
    split_segments,
)
from pocketomni.errors import MediaError

SR = 16000


def _feature_extractor() -> WhisperFeatureExtractor:
    # Qwen2.5-Omni's preprocessor_config.json: 128 mels, 300 s chunks, attention mask on.
    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SR, hop_length=160, chunk_length=300, n_fft=400,
        padding_value=0.0, dither=0.0, return_attention_mask=True,
    )


def _reference(fe: WhisperFeatureExtractor, clips: list[np.ndarray]) -> list[np.ndarray]:
    # What Qwen2_5OmniProcessor._process_audio does: max_length padding, then the mask gives lengths.
    torch.set_num_threads(1)
    r = fe(clips, sampling_rate=SR, padding="max_length", return_attention_mask=True, return_tensors="np")
    lens = r["attention_mask"].sum(-1)
    return [r["input_features"][i][:, : int(n)] for i, n in enumerate(lens)]


def _synth(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = 0.4 * np.sin(2 * np.pi * (150 * t + 40 * t * t)) + 0.2 * np.sin(2 * np.pi * (2500 * t - 30 * t * t))
    return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def fe() -> WhisperFeatureExtractor:
    return _feature_extractor()


def test_audio_encoder_filterbank_matches_reference(fe):
    assert mel_filterbank().shape == fe.mel_filters.shape
    np.testing.assert_allclose(mel_filterbank(), fe.mel_filters, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [321, 8000, 48100, 720000, MAX_SAMPLES])
def test_audio_encoder_log_mel_matches_processor(fe, n):
    # The processor runs the torch float32 STFT; its own numpy path differs from it by ~5e-5 at 300 s,
    # so that float32 noise, not our code, sets this tolerance (the exact check is the next test).
    x = _synth(n, seed=n)
    (ref,) = _reference(fe, [x])
    ours = log_mel(x)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (128, n_frames(n))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [321, 16000, 48100])
def test_audio_encoder_log_mel_matches_float64_reference(fe, n):
    # The reference's numpy STFT on the clip followed by zeros (as the 300 s padding gives it).
    x = _synth(n, seed=n + 1)
    padded = np.concatenate([x, np.zeros(2000, np.float32)])
    ref = fe._np_extract_fbank_features(padded[None], "cpu")[0][:, : n_frames(n)]
    np.testing.assert_allclose(log_mel(x), ref, rtol=0, atol=2e-6)


def test_audio_encoder_log_mel_silence_and_loud(fe):
    for x in (np.zeros(16000, np.float32), 0.999 * np.sign(_synth(24000)).astype(np.float32)):
        (ref,) = _reference(fe, [x])
        np.testing.assert_allclose(log_mel(x), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [321, 479, 480, 481, 8000, 48000, 48159, MAX_SAMPLES - 1, MAX_SAMPLES])
def test_audio_encoder_frame_and_token_counts(fe, n):
    r = fe([np.zeros(n, np.float32)], sampling_rate=SR, padding="max_length", return_attention_mask=True,
           return_tensors="pt")
    frames = int(r["attention_mask"].sum())
    assert n_frames(n) == frames
    assert n_audio_tokens(frames) == int(_get_feat_extract_output_lengths(torch.tensor(frames)))


def test_audio_encoder_long_audio_is_split_like_separate_inputs(fe):
    x = _synth(MAX_SAMPLES + SR, seed=7)  # 301 s
    with pytest.raises(MediaError, match="300 s"):
        log_mel(x)
    segs = split_segments(x)
    assert [s.shape[0] for s in segs] == [MAX_SAMPLES, SR]
    refs = _reference(fe, segs)
    ours = log_mel_segments(x)
    assert [m.shape for m in ours] == [r.shape for r in refs] == [(128, 30000), (128, 100)]
    for m, r in zip(ours, refs):
        np.testing.assert_allclose(m, r, rtol=0, atol=1e-4)


def test_audio_encoder_bad_inputs_raise_media_error():
    with pytest.raises(MediaError, match="too short"):
        log_mel(np.zeros(320, np.float32))
    with pytest.raises(MediaError, match="mono"):
        log_mel(np.zeros((2, 16000), np.float32))
    with pytest.raises(MediaError, match="float"):
        log_mel(np.zeros(16000, np.int16))
    bad = np.zeros(16000, np.float32)
    bad[5] = np.nan
    with pytest.raises(MediaError, match="NaN"):
        log_mel(bad)
