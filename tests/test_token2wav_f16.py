"""token2wav with float16-stored weights (float32 compute) against the float32 path, on the tiny
random-weight model (float32 weights, so float16 really rounds them; the fixture checkpoints are bf16,
which float16 holds exactly above 2^-14).

The bound. Rounding a weight w to float16 moves it by at most half a float16 ulp (<= 2^-11 |w| for
normal values). Perturbing every weight by exactly that amount with random signs, to first order,
moves the output by a random sum whose expected energy sum_i g_i^2 h_i^2 (g: the output's gradient,
h: half ulp) bounds the rounding's own, sum_i g_i^2 E[delta_i^2] (|delta_i| <= h_i). Round-to-nearest
errors are near uniform in [-h, h], so the float16 gap should come out near 1/sqrt(3) = 0.58 of the
perturbation's (measured 0.55-0.66 over four draws of signs); the test asserts <= 1. Truncating
instead of rounding measures 1.2x (mel) to 4x (waveform), bfloat16 storage ~8x: both fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from test_token2wav_bigvgan import snr_db
from test_token2wav_dit import build_tiny, seeded_noise, speaker_inputs

from pocketomni.token2wav import Token2Wav, layers
from pocketomni.token2wav.half import SCRATCH_MAX, converter_name, dense, to_f32

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    model, tw32 = build_tiny(0)
    w32 = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, tw32, w32, model.config.to_dict()


def _as_f16(w32: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What `--token2wav-type f16` stores: matrices and kernels float16, vectors float32."""
    return {k: v.astype(np.float16) if v.ndim >= 2 else v for k, v in w32.items()}


def _render(tw: Token2Wav, inputs) -> tuple[np.ndarray, np.ndarray]:
    cond, ref_mel, codes, noise = inputs
    mel = tw.mel(codes, tw.speaker(cond, ref_mel), "reference", noise=noise)
    return mel, tw.vocoder.vocode(mel)


def _inputs():
    cond, ref_mel = speaker_inputs(12)
    return cond, ref_mel, np.random.default_rng(13).integers(0, 8193, 70), seeded_noise(14, 140)


def test_f16_gap_within_the_rounding_bound(tiny, monkeypatch):
    model, tw32, w32, cfg = tiny
    monkeypatch.setattr(layers, "SMALL", 0)  # every float16 matrix converted per product, as at full size
    inputs = _inputs()
    mel32, wav32 = _render(tw32, inputs)
    mel16, wav16 = _render(Token2Wav.from_weights(_as_f16(w32), cfg), inputs)
    rng = np.random.default_rng(100)
    perturbed = {}
    for k, v in w32.items():
        if v.ndim >= 2:  # +-(half a float16 ulp in w's binade: 2^-11 |w| at most) on each float16 weight
            _, e = np.frexp(v)  # |v| = m 2^e, m in [0.5, 1): the float16 ulp is 2^(e - 11), 2^-24 below 2^-14
            half_ulp = np.ldexp(np.float32(1), np.maximum(e, -13) - 12)
            assert (np.abs(v.astype(np.float16).astype(np.float32) - v) <= half_ulp).all()
            v = v + rng.choice(np.float32([-1, 1]), v.shape) * half_ulp
        perturbed[k] = v
    mel_p, wav_p = _render(Token2Wav.from_weights(perturbed, cfg), inputs)
    for name, ours, bound, f32 in (("mel", mel16, mel_p, mel32), ("waveform", wav16, wav_p, wav32)):
        gap, allowed = np.linalg.norm(ours - f32), np.linalg.norm(bound - f32)
        print(f"\n{name}: f16 vs f32 SNR {snr_db(ours, f32):.1f} dB, +-half-ulp perturbation "
              f"{snr_db(bound, f32):.1f} dB, ratio {gap / allowed:.3f}")
        assert 0 < gap <= allowed, name

    # Against the reference (torch, float32 weights), same noise: f32 path vs f16 path.
    cond, ref_mel, codes, _ = inputs
    torch.manual_seed(14)
    with torch.no_grad():
        ref_wav = model(torch.from_numpy(codes)[None], torch.from_numpy(cond)[None],
                        torch.from_numpy(ref_mel)[None]).numpy()
        torch.manual_seed(14)
        ref_mel_out = model.code2wav_dit_model.sample(torch.from_numpy(cond)[None], torch.from_numpy(ref_mel)[None],
                                                      torch.from_numpy(codes)[None]).numpy()[0].T
    print(f"vs reference: mel f32 {snr_db(mel32, ref_mel_out):.1f} dB, f16 {snr_db(mel16, ref_mel_out):.1f} dB; "
          f"waveform f32 {snr_db(wav32, ref_wav):.1f} dB, f16 {snr_db(wav16, ref_wav):.1f} dB")
    assert snr_db(wav32, ref_wav) >= 60.0  # the f32 path's own bound (test_token2wav_bigvgan)


def test_per_product_and_kept_f32_conversions_agree(tiny, monkeypatch):
    """Small float16 tensors converted once at build and big ones converted per product give the same
    float32 values, so the same audio bit for bit."""
    _, _, w32, cfg = tiny
    inputs = _inputs()
    kept = _render(Token2Wav.from_weights(_as_f16(w32), cfg), inputs)
    monkeypatch.setattr(layers, "SMALL", 0)
    tw = Token2Wav.from_weights(_as_f16(w32), cfg)
    assert tw.dit.layers[0].ff1_w.dtype == np.float16 and tw.vocoder.ups[0].P.dtype == np.float16
    per_product = _render(tw, inputs)
    for a, b in zip(kept, per_product):
        np.testing.assert_array_equal(a, b)


def test_half_conversion_is_exact_and_the_scratch_is_reused():
    src = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = src[np.isfinite(src)][:63483].reshape(-1, 7)  # an odd row length: ragged SIMD tails
    want = finite.astype(np.float32)
    assert converter_name() in ("ggml", "numpy")
    got = to_f32(finite)
    assert got.dtype == np.float32 and got.shape == finite.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # -0.0 and subnormals included
    a = dense(finite)
    np.testing.assert_array_equal(a, want)
    b = dense(finite[:3])
    assert np.shares_memory(a, b)  # the same per-thread buffer: valid until the next call
    w32 = np.ones((2, 2), np.float32)
    assert dense(w32) is w32 and to_f32(w32) is w32
    big = np.zeros(SCRATCH_MAX + 1, np.float16)
    assert not np.shares_memory(dense(big), dense(finite))  # too big for the kept buffer: a temporary
