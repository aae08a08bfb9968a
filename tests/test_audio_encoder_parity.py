"""Audio tower parity: our numpy encoder vs the reference Qwen2_5OmniAudioEncoder on tiny random towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
    Qwen2_5OmniAudioEncoderConfig,
)
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
    _get_feat_extract_output_lengths,
)

from pocketomni.audio.features import log_mel_segments, split_segments
from pocketomni.audio.tower import AudioEncoder, AudioEncoderConfig, audio_tower_names
from pocketomni.errors import MediaError, ModelFileError

SR = 16000
SHAPES = {
    "w100": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, output_dim=48),
    "w50": dict(d_model=48, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=96, output_dim=40,
                n_window=50),
}


def _synth(seconds: float, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = 0.4 * np.sin(2 * np.pi * (150 * t + 40 * t * t)) + 0.2 * np.sin(2 * np.pi * (2500 * t - 30 * t * t))
    return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _tower(name: str) -> tuple[Qwen2_5OmniAudioEncoder, dict]:
    torch.manual_seed(sum(map(ord, name)))
    hf = dict(num_mel_bins=128, max_source_positions=1500, **SHAPES[name])
    ref = Qwen2_5OmniAudioEncoder(Qwen2_5OmniAudioEncoderConfig(**hf)).eval()
    with torch.no_grad():  # O(1) random weights so every tensor visibly matters
        for pname, p in ref.named_parameters():
            base = 1.0 if "norm" in pname and pname.endswith("weight") else 0.0
            p.copy_(base + torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))
    return ref, hf


@pytest.fixture(scope="module", params=sorted(SHAPES))
def tower(request):
    torch.set_num_threads(1)
    ref, hf = _tower(request.param)
    weights = {k: v.numpy() for k, v in ref.state_dict().items()}
    return ref, AudioEncoder(AudioEncoderConfig.from_hf(hf), weights), weights


@pytest.fixture(scope="module")
def fe() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SR, hop_length=160, chunk_length=300, n_fft=400,
        padding_value=0.0, dither=0.0, return_attention_mask=True,
    )


def _reference_embeddings(ref, fe, x: np.ndarray) -> np.ndarray:
    # The processor's features (clips over 300 s fed as consecutive 300 s audios), then the thinker's
    # get_audio_features path: masked frames concatenated, feature_lens from the mask.
    r = fe(split_segments(x), sampling_rate=SR, padding="max_length", return_attention_mask=True,
           return_tensors="pt")
    mask = r["attention_mask"]
    feats = r["input_features"].permute(0, 2, 1)[mask.bool()].permute(1, 0)
    with torch.no_grad():
        out = ref(feats, feature_lens=mask.sum(-1)).last_hidden_state.numpy()
    assert out.shape[0] == int(_get_feat_extract_output_lengths(mask.sum(-1)).sum())
    return out


# The four clips, plus odd tails: 32001 samples = 201 frames (a 1-frame last window), 64480 = 403.
@pytest.mark.parametrize("seconds", [0.5, 3.0, 45.0, 301.0, 32001 / SR, 64480 / SR])
def test_audio_encoder_matches_reference(tower, fe, seconds):
    ref, enc, _ = tower
    x = _synth(seconds, seed=int(seconds * 10))
    want = _reference_embeddings(ref, fe, x)
    got = np.concatenate([enc.encode(m) for m in log_mel_segments(x)], axis=0)
    assert got.dtype == np.float32
    assert got.shape == want.shape  # exactly the reference's token count
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-3, rel  # the bar
    assert rel < 1e-5, rel  # float32 rounding only (measured <= 2e-6); catches e.g. a tanh-approximate GELU


def test_audio_encoder_streaming_groups_do_not_change_output(tower):
    _, enc, weights = tower
    mel = log_mel_segments(_synth(13.37, seed=3))[0]
    whole = enc.encode(mel)
    small = AudioEncoder(enc.config, weights, max_rows=1).encode(mel)  # one window per group
    assert small.shape == whole.shape == (enc.n_tokens(mel.shape[1]), enc.config.output_dim)
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_audio_encoder_from_gguf_tensors_uses_name_map(tower):
    _, enc, weights = tower
    gguf_like = {"a." + k.replace(".", "/"): v.reshape(-1) for k, v in weights.items()}  # flat, renamed
    built = AudioEncoder.from_gguf_tensors(enc.config, gguf_like, lambda k: "a." + k.replace(".", "/"))
    mel = log_mel_segments(_synth(2.5, seed=5))[0]
    np.testing.assert_array_equal(built.encode(mel), enc.encode(mel))
    first = next(iter(audio_tower_names(enc.config)))
    gguf_like.pop("a." + first.replace(".", "/"))
    with pytest.raises(ModelFileError, match="re-convert"):
        AudioEncoder.from_gguf_tensors(enc.config, gguf_like, lambda k: "a." + k.replace(".", "/"))


def test_audio_encoder_float16_weights_widened_lazily_give_same_output(tower):
    _, enc, weights = tower
    w16 = {k: v.astype(np.float16) for k, v in weights.items()}
    lazy = AudioEncoder(enc.config, w16, weights_f32=False)
    assert lazy._w["layers.0.fc1.weight"].dtype == np.float16  # really kept narrow
    mel = log_mel_segments(_synth(4.2, seed=9))[0]
    np.testing.assert_array_equal(lazy.encode(mel), AudioEncoder(enc.config, w16).encode(mel))


def test_audio_encoder_rejects_bad_mels(tower):
    _, enc, _ = tower
    with pytest.raises(MediaError, match="log-mel"):
        enc.encode(np.zeros((80, 300), np.float32))
    with pytest.raises(MediaError, match="frames"):
        enc.encode(np.zeros((128, 2), np.float32))
