"""Streaming token2wav: streamed audio against one-shot, and the chunked mode against the reference's
chunking written in torch. Tiny random-weight models; see streaming.py for the two modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from test_token2wav_bigvgan import snr_db
from test_token2wav_dit import build_tiny, rel, speaker_inputs
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

from pocketomni.token2wav import NoiseSource
from pocketomni.token2wav.streaming import ChunkedDiTStream, DiTStream

torch.set_num_threads(1)

# Exact-mode streamed audio vs one-shot: stated tolerance (measured ~110 dB, max |diff| ~1e-5).
EXACT_SNR_DB = 90.0


@pytest.fixture(scope="module")
def tiny_ahead():
    return build_tiny(0, 4, (2,), (0, 3))  # one look-ahead layer: exact streaming lags 1 block/evaluation


@pytest.fixture(scope="module")
def tiny_no_ahead():
    return build_tiny(0, 2, (), (0, 1))  # no look-ahead: the RK4 wavefront streams with no lag


def feed_in_pieces(stream, codes, seed):
    sizes = np.random.default_rng(seed).integers(1, 16, len(codes))
    outs, first, fed = [], None, 0
    for n in sizes:
        if fed >= len(codes):
            break
        out = stream.feed(codes[fed : fed + n])
        fed += n
        outs.append(out)
        if out.size and first is None:
            first = fed
    outs.append(stream.finish())
    return np.concatenate(outs), first


def test_vocoder_stream_equals_one_shot(tiny_ahead):
    _, tw = tiny_ahead
    mel = (np.random.default_rng(20).standard_normal((157, 80)) * 2 - 5).astype(np.float32)
    whole = tw.vocoder.vocode(mel)
    stream, parts, start = tw.vocoder.new_stream(), [], 0
    for n in np.random.default_rng(21).integers(1, 30, 200):
        end = min(start + n, 157)
        parts.append(stream.push(np.ascontiguousarray(mel[start:end].T), final=end == 157).reshape(-1))
        start = end
        if end == 157:
            break
    assert sum(p.size for p in parts[:-1]) > 0  # audio came out before the end
    assert np.abs(np.concatenate(parts) - whole).max() < 1e-5


@pytest.mark.parametrize("preset", ["fast", "reference"])
@pytest.mark.parametrize("which", ["ahead", "no_ahead"])
def test_exact_stream_equals_one_shot(request, which, preset):
    _, tw = request.getfixturevalue(f"tiny_{which}")
    cond, ref_mel = speaker_inputs(22)
    spk = tw.speaker(cond, ref_mel)
    codes = np.random.default_rng(23).integers(0, 8193, 203)
    whole = tw.render(codes, spk, preset, seed=24)
    streamed, first = feed_in_pieces(tw.stream(spk, preset, mode="exact", seed=24, chunk=12), codes, 25)
    assert streamed.shape == whole.shape == (203 * 2 * 240,)
    assert snr_db(streamed, whole) >= EXACT_SNR_DB
    lag_blocks = tw.dit.blocks_ahead * tw.plan(preset).evaluations
    if lag_blocks * 12 + 36 < 150:  # audio must start well before the last code when the lag allows it
        assert first is not None and first < 150


def test_exact_dit_stream_mel(tiny_ahead):
    _, tw = tiny_ahead
    spk = tw.speaker(*speaker_inputs(26))
    codes = np.random.default_rng(27).integers(0, 8193, 131)
    plan = tw.plan("fast")
    whole = tw.mel(codes, spk, "fast", seed=28)
    s = DiTStream(tw.dit, spk, plan, NoiseSource(80, seed=28), step_frames=24)
    parts = [s.feed(codes[i : i + 5]) for i in range(0, 131, 5)] + [s.finish()]
    assert rel(np.concatenate(parts), whole) < 1e-5


def torch_chunked_mel(model, cond, ref_mel, codes, noise, chunk=72, past=48, future=24):
    """The reference's chunked streaming (Qwen2.5-Omni token2wav fast_forward, 50 Hz codes), offline:
    every window is sampled like Qwen2_5OmniToken2WavDiTModel.sample but from the given noise slice."""
    dit = model.code2wav_dit_model
    L = 2 * len(codes)
    cond_t, ref_t = torch.from_numpy(cond)[None], torch.from_numpy(ref_mel)[None]

    def solve(w0, w1):
        code = torch.from_numpy(codes[w0 // 2 : w1 // 2])[None]
        spk = cond_t[:, None].repeat(1, w1 - w0, 1)

        def f(t, x):
            out = dit(
                hidden_states=x,
                quantized_code=code,
                speaker_embedding=spk,
                condition_vector=ref_t,
                time_step=t,
                apply_cfg=True,
            )
            g, u = torch.chunk(out, 2, dim=0)
            return g + (g - u) * 0.5

        t = torch.linspace(0, 1, 10, dtype=torch.float32)
        t += -1.0 * (torch.cos(torch.pi / 2 * t) - 1 + t)
        y0 = torch.from_numpy(noise[w0:w1].copy())[None]
        with torch.no_grad():
            return RungeKutta4ODESolver(function=f, initial_value=y0).integrate(t)[-1][0].numpy()

    if L <= chunk + future:
        return solve(0, L)
    n_iter = math.ceil((L - future) / chunk)
    mels = [solve(0, chunk + future)[:chunk]]
    for i in range(1, n_iter - 1):
        mels.append(solve(i * chunk - past, (i + 1) * chunk + future)[past:-future])
    mels.append(solve((n_iter - 1) * chunk - past, L)[past:])
    return np.concatenate(mels)


@pytest.mark.parametrize("n_codes", [131, 48])
def test_chunked_mode_matches_reference_chunking(tiny_ahead, n_codes):
    model, tw = tiny_ahead
    cond, ref_mel = speaker_inputs(29)
    codes = np.random.default_rng(30).integers(0, 8193, n_codes)
    noise = np.random.default_rng(31).standard_normal((2 * n_codes, 80)).astype(np.float32)
    ref = torch_chunked_mel(model, cond, ref_mel, codes, noise)
    s = ChunkedDiTStream(
        tw.dit, tw.speaker(cond, ref_mel), tw.plan("reference"), NoiseSource(80, noise=noise)
    )
    parts = [s.feed(codes[i : i + 7]) for i in range(0, n_codes, 7)] + [s.finish()]
    assert rel(np.concatenate(parts), ref) < 1e-3


def test_chunked_mode_with_full_receptive_field_is_exact(tiny_ahead):
    """Chunks whose context covers evaluations x receptive field (fast: 4 x (2 back, 1 ahead) blocks)
    reproduce the one-shot mel: the chunked mode's only error is truncated context."""
    _, tw = tiny_ahead
    spk = tw.speaker(*speaker_inputs(32))
    codes = np.random.default_rng(33).integers(0, 8193, 181)
    whole = tw.mel(codes, spk, "fast", seed=34)
    s = ChunkedDiTStream(tw.dit, spk, tw.plan("fast"), NoiseSource(80, seed=34), chunk=36, past=96, future=48)
    parts = [s.feed(codes[i : i + 9]) for i in range(0, 181, 9)] + [s.finish()]
    assert rel(np.concatenate(parts), whole) < 1e-5


@pytest.mark.parametrize("preset", ["fast", "reference"])
def test_exact_stream_computes_every_layer_row_once(tiny_ahead, preset):
    """The exact stream evaluates each DiT layer on every frame exactly once per solver evaluation,
    as one-shot rendering does (no recomputed context), whatever the step and feeding pattern."""
    _, tw = tiny_ahead
    spk = tw.speaker(*speaker_inputs(40))
    codes = np.random.default_rng(41).integers(0, 8193, 143)
    rows = {}
    real = tw.dit.layer_rows

    def counting(li, t, h, a0, a1, pos0):
        rows[li] = rows.get(li, 0) + (a1 - a0)
        return real(li, t, h, a0, a1, pos0)

    tw.dit.layer_rows = counting
    try:
        s = DiTStream(tw.dit, spk, tw.plan(preset), NoiseSource(80, seed=42), step_frames=24)
        parts = [s.feed(codes[i : i + 5]) for i in range(0, 143, 5)] + [s.finish()]
    finally:
        del tw.dit.layer_rows
    assert np.concatenate(parts).shape == (2 * 143, 80)
    evaluations = tw.plan(preset).evaluations
    assert rows == {li: 2 * 143 * evaluations for li in range(len(tw.dit.layers))}
