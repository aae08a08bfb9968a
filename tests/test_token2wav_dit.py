"""Parity of the numpy token2wav DiT + ECAPA with transformers' Qwen2_5OmniToken2WavModel (tiny, random).

Also hosts `build_tiny` / `speaker_inputs`, imported by the other test_token2wav_* modules.
Relative error below = max|ours - ref| / max|ref|.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniToken2WavConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniToken2WavModel

from pocketomni.token2wav import Token2Wav

torch.set_num_threads(1)

# (layers, look_ahead_layers, look_backward_layers): the real layout scaled down, and a 2-layer variant.
VARIANTS = {"a4": (4, [2], [0, 3]), "b2": (2, [0], [1])}


def build_tiny(seed: int = 0, layers: int = 4, ahead=(2,), back=(0, 3)):
    """A random-weight float32 Qwen2_5OmniToken2WavModel with real rates, mel_dim 80, 8193 codes."""
    torch.manual_seed(seed)
    cfg = Qwen2_5OmniToken2WavConfig(
        dit_config={
            "hidden_size": 64,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "head_dim": 16,
            "look_ahead_layers": list(ahead),
            "look_backward_layers": list(back),
            "emb_dim": 32,
            "enc_emb_dim": 24,
            "enc_dim": 16,
            "enc_channels": [32, 32, 32, 32, 96],
            "enc_attention_channels": 8,
            "enc_se_channels": 8,
        },
        bigvgan_config={"upsample_initial_channel": 128},
    )
    model = Qwen2_5OmniToken2WavModel(cfg).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(int(np.prod(p.shape[1:]))))
            else:
                p.copy_(
                    torch.randn(p.shape, generator=g) * (0.2 if name.endswith(("alpha", "beta")) else 0.1)
                )
        model.code2wav_dit_model.text_embed.codec_embed.weight.normal_(0, 1, generator=g)
        model.code2wav_bigvgan_model.conv_post.weight.mul_(0.04)  # keep the waveform mostly inside [-1, 1]
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, Token2Wav.from_weights(weights, cfg.to_dict())


def speaker_inputs(seed: int = 0, frames: int = 150):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(24).astype(np.float32), rng.standard_normal((frames, 80)).astype(np.float32)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def seeded_noise(seed: int, frames: int) -> np.ndarray:
    """The noise the reference's sample() draws right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return torch.randn([1, frames, 80]).numpy()[0]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request):
    layers, ahead, back = VARIANTS[request.param]
    return build_tiny(0, layers, ahead, back)


def test_ecapa_matches_reference(tiny):
    model, tw = tiny
    _, ref_mel = speaker_inputs(1, frames=173)
    with torch.no_grad():
        ref = model.code2wav_dit_model.input_embed.spk_encoder(torch.from_numpy(ref_mel)[None]).numpy()[0]
        ref0 = model.code2wav_dit_model.input_embed.spk_encoder(torch.zeros(1, 173, 80)).numpy()[0]
    assert rel(tw.dit.ecapa.embed(ref_mel), ref) < 1e-4
    assert rel(tw.dit.ecapa.embed(np.zeros_like(ref_mel)), ref0) < 1e-4


def test_speaker_is_cached_by_name(tiny):
    _, tw = tiny
    cond, ref_mel = speaker_inputs(2)
    a = tw.speaker(cond, ref_mel, name="Chelsie")
    assert tw.speaker(cond * 0, ref_mel * 0, name="Chelsie") is a


@pytest.mark.parametrize("guidance", [0.0, 0.5])
def test_dit_single_evaluation(tiny, guidance):
    model, tw = tiny
    cond, ref_mel = speaker_inputs(3)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 8194, 61)  # 122 frames: five full blocks and a partial one
    x = rng.standard_normal((122, 80)).astype(np.float32)
    with torch.no_grad():
        out = model.code2wav_dit_model(
            hidden_states=torch.from_numpy(x)[None],
            condition_vector=torch.from_numpy(ref_mel)[None],
            speaker_embedding=torch.from_numpy(cond)[None, None].repeat(1, 122, 1),
            quantized_code=torch.from_numpy(codes)[None],
            time_step=torch.tensor(0.37),
            apply_cfg=guidance > 0,
        ).numpy()
    ref = out[0] + (out[0] - out[1]) * guidance if guidance > 0 else out[0]
    spk = tw.speaker(cond, ref_mel)
    feat = np.repeat(tw.dit.code_features(codes), 2, axis=0)
    ours = tw.dit.velocity(x, feat, np.float32(0.37), spk, guidance)
    assert rel(ours, ref) < 1e-3


def test_reference_preset_mel_matches_sample(tiny):
    """Our `reference` preset == Qwen2_5OmniToken2WavDiTModel.sample defaults (RK4, 10 points, cfg 0.5)."""
    model, tw = tiny
    cond, ref_mel = speaker_inputs(5)
    codes = np.random.default_rng(6).integers(0, 8193, 90)
    noise = seeded_noise(7, 180)
    torch.manual_seed(7)
    with torch.no_grad():
        ref = (
            model.code2wav_dit_model.sample(
                torch.from_numpy(cond)[None], torch.from_numpy(ref_mel)[None], torch.from_numpy(codes)[None]
            )
            .numpy()[0]
            .T
        )
    ours = tw.mel(codes, tw.speaker(cond, ref_mel), "reference", noise=noise)
    assert ours.shape == ref.shape == (180, 80)
    assert rel(ours, ref) < 1e-3


def euler_reference(model, cond, ref_mel, codes, noise, points: int = 5, sway: float = -1.0):
    """The `fast` preset written against the reference DiT: Euler on sway-sampled points, no guidance."""
    dit = model.code2wav_dit_model
    t = torch.linspace(0, 1, points, dtype=torch.float32)
    t = t + sway * (torch.cos(torch.pi / 2 * t) - 1 + t)
    x = torch.from_numpy(noise)[None]
    n = x.shape[1]
    with torch.no_grad():
        for i in range(points - 1):
            v = dit(
                hidden_states=x,
                condition_vector=torch.from_numpy(ref_mel)[None],
                speaker_embedding=torch.from_numpy(cond)[None, None].repeat(1, n, 1),
                quantized_code=torch.from_numpy(codes)[None],
                time_step=t[i],
                apply_cfg=False,
            )
            x = x + (t[i + 1] - t[i]) * v
    return x.numpy()[0]


def test_fast_preset_mel_matches_torch_euler(tiny):
    model, tw = tiny
    cond, ref_mel = speaker_inputs(8)
    codes = np.random.default_rng(9).integers(0, 8193, 77)
    noise = np.random.default_rng(10).standard_normal((154, 80)).astype(np.float32)
    ref = euler_reference(model, cond, ref_mel, codes, noise)
    ours = tw.mel(codes, tw.speaker(cond, ref_mel), "fast", noise=noise)
    assert rel(ours, ref) < 1e-3
