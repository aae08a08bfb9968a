"""Token2wav DiT (codes + noisy mel + time -> mel velocity), numpy float32 compute.

Weights are keyed by HF names relative to `token2wav.code2wav_dit_model.`. Attention is block-sparse:
frames are cut in blocks of `block_size`; every layer sees its own block, plus the previous block in the
`look_backward_layers` and the next one in the `look_ahead_layers`. Only head 0 gets (interleaved) RoPE,
as in the trained checkpoint. All ops are per frame except attention, so any window that starts on a
block boundary and holds the receptive field of the frames it keeps gives exactly the full-sequence result.
Big matrices may be float16 (as stored); each is converted to float32 right before its product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pocketomni.errors import OptionsError
from pocketomni.mapped_pages import release_file_pages
from pocketomni.token2wav.config import DiTConfig
from pocketomni.token2wav.ecapa import Ecapa
from pocketomni.token2wav.half import to_f32
from pocketomni.token2wav.layers import F32, ada_layer_norm, gelu_tanh_, linear, silu, softmax, sub, take
from pocketomni.token2wav.stop import check_stop


@dataclass(frozen=True)
class SpeakerCond:
    """Per-speaker constants of the DiT input projection (cache and reuse across utterances)."""

    cond: np.ndarray  # (hidden,) bias + W_ecapa @ ecapa(ref_mel) + W_spk @ spk
    uncond: np.ndarray  # (hidden,) bias + W_ecapa @ ecapa(zeros) + W_code @ codec_embed[0]
    ecapa: np.ndarray  # (enc_dim,) the speaker-encoder output, for inspection/tests


class _Layer:
    def __init__(self, w: Mapping[str, np.ndarray], cfg: DiTConfig, idx: int):
        h, inner = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
        p = f"transformer_blocks.{idx}."
        self.mod_w = take(w, p + "attn_norm.linear.weight", (6 * h, h))
        self.mod_b = take(w, p + "attn_norm.linear.bias", (6 * h,))
        # q, k, v stay separate (views of the weight file; a concatenated copy would hold them twice).
        self.qkv = [(take(w, f"{p}attn.{n}.weight", (inner, h)), take(w, f"{p}attn.{n}.bias", (inner,)))
                    for n in ("to_q", "to_k", "to_v")]
        self.out_w = take(w, p + "attn.to_out.0.weight", (h, inner))
        self.out_b = take(w, p + "attn.to_out.0.bias", (h,))
        ff = cfg.hidden_size * cfg.ff_mult
        self.ff1_w, self.ff1_b = take(w, p + "ff.ff.0.weight", (ff, h)), take(w, p + "ff.ff.0.bias", (ff,))
        self.ff2_w, self.ff2_b = take(w, p + "ff.ff.3.weight", (h, ff)), take(w, p + "ff.ff.3.bias", (h,))
        self.back = idx in cfg.layers_back
        self.ahead = idx in cfg.layers_ahead


class DiT:
    """The flow-matching DiT. `velocity()` evaluates it once (optionally with classifier-free guidance)."""

    def __init__(self, weights: Mapping[str, np.ndarray], cfg: DiTConfig):
        self.cfg = cfg
        h = cfg.hidden_size
        w = weights
        self.t1_w, self.t1_b = (
            take(w, "time_embed.time_mlp.0.weight", (h, 256)),
            take(w, "time_embed.time_mlp.0.bias"),
        )
        self.t2_w, self.t2_b = (
            take(w, "time_embed.time_mlp.2.weight", (h, h)),
            take(w, "time_embed.time_mlp.2.bias"),
        )
        self.codec = take(w, "text_embed.codec_embed.weight", (cfg.num_embeds + 1, cfg.emb_dim))
        d_in = cfg.mel_dim + cfg.enc_dim + cfg.emb_dim + cfg.enc_emb_dim
        proj = take(w, "input_embed.proj.weight", (h, d_in))
        cuts = np.cumsum([cfg.mel_dim, cfg.enc_dim, cfg.emb_dim])
        self.w_x, self.w_ecapa, self.w_code, self.w_spk = (
            np.ascontiguousarray(a) for a in np.split(proj, cuts, 1)
        )
        self.proj_b = take(w, "input_embed.proj.bias", (h,))
        self.ecapa = Ecapa(sub(w, "input_embed.spk_encoder."), cfg)
        self.layers = [_Layer(w, cfg, i) for i in range(cfg.num_hidden_layers)]
        self.norm_out_w = take(w, "norm_out.linear.weight", (2 * h, h))
        self.norm_out_b = take(w, "norm_out.linear.bias", (2 * h,))
        self.proj_out_w = take(w, "proj_out.weight", (cfg.mel_dim, h))
        self.proj_out_b = take(w, "proj_out.bias", (cfg.mel_dim,))
        hd = cfg.head_dim
        self.inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(F32)
        self._time_cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        # Receptive field of one evaluation, in blocks.
        self.blocks_back = len(cfg.layers_back)
        self.blocks_ahead = len(cfg.layers_ahead)

    # ---- conditioning -------------------------------------------------------------------------
    def speaker(self, cond: np.ndarray, ref_mel: np.ndarray) -> SpeakerCond:
        """Speaker constants from the spk_dict entry: `cond` (enc_emb_dim,) and `ref_mel` (T, mel_dim)."""
        cond = np.asarray(cond, F32).reshape(-1)
        ref_mel = np.asarray(ref_mel, F32).reshape(-1, self.cfg.mel_dim)
        if cond.shape[0] != self.cfg.enc_emb_dim:
            raise OptionsError(f"speaker cond has {cond.shape[0]} values, expected {self.cfg.enc_emb_dim}.")
        e = self.ecapa.embed(ref_mel)
        e0 = self.ecapa.embed(np.zeros_like(ref_mel))
        c = self.proj_b + linear(e, self.w_ecapa) + linear(cond, self.w_spk)
        u = self.proj_b + linear(e0, self.w_ecapa) + linear(to_f32(self.codec[0]), self.w_code)
        return SpeakerCond(cond=c.astype(F32), uncond=u.astype(F32), ecapa=e)

    def code_features(self, codes: np.ndarray) -> np.ndarray:
        """Projected codec embeddings, one row per code (repeat `repeats` times for frames)."""
        codes = np.asarray(codes).reshape(-1)
        if codes.size and (codes.min() < 0 or codes.max() > self.cfg.num_embeds):
            raise OptionsError(
                f"codec codes must lie in [0, {self.cfg.num_embeds}]; got {codes.min()}..{codes.max()}."
            )
        return linear(to_f32(self.codec[codes.astype(np.int64)]), self.w_code)

    def _time(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer AdaLN modulations (L, 6, h) and final (2, h) for time t (cached)."""
        hit = self._time_cache.get(float(t))
        if hit is None:
            self.prepare_times([t])
            hit = self._time_cache[float(t)]
        return hit

    def prepare_times(self, times: Sequence[float]) -> None:
        """Compute and cache the modulations of these solver times (one matmul per layer for all).
        The modulation weights (6h x h per layer: 553 MB at full size) serve nothing else, so once
        a model's solver times are cached they can be released (`release_time_weights`)."""
        ts = [float(t) for t in dict.fromkeys(times) if float(t) not in self._time_cache]
        if not ts:
            return
        half = 128
        freqs = np.exp(np.arange(half, dtype=F32) * F32(-math.log(10000) / (half - 1)))
        arg = (F32(1000.0) * np.asarray(ts, F32)[:, None]) * freqs
        emb = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)
        st = silu(linear(silu(linear(emb, self.t1_w, self.t1_b)), self.t2_w, self.t2_b))  # (T, h)
        mods = np.stack([linear(st, layer.mod_w, layer.mod_b) for layer in self.layers], axis=1)
        mods = mods.reshape(len(ts), len(self.layers), 6, -1)
        final = linear(st, self.norm_out_w, self.norm_out_b).reshape(len(ts), 2, -1)
        for i, t in enumerate(ts):
            self._time_cache[t] = (np.ascontiguousarray(mods[i]), np.ascontiguousarray(final[i]))

    def release_time_weights(self) -> int:
        """Drop the modulation weights' file pages from this process's memory (they come back from
        the file if an uncached time is ever asked for). Returns the bytes released."""
        return sum(release_file_pages(layer.mod_w) for layer in self.layers)

    # ---- one evaluation -----------------------------------------------------------------------
    def velocity(
        self,
        x: np.ndarray,
        code_feat: np.ndarray,
        t: float,
        spk: SpeakerCond,
        guidance: float,
        pos0: int = 0,
        keep: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Velocity for noisy mel `x` (T, mel_dim) with per-frame code features (T, hidden) at time t.

        `pos0` is the absolute frame index of x[0] (a multiple of block_size). guidance >= 1e-5 runs the
        conditional and unconditional passes and mixes them as the reference does. `keep=(k0, k1)`
        (k0 on a block boundary) returns only rows k0..k1; each layer then computes just the frames
        that later layers need for them, which is exact when x holds their receptive field.
        """
        B = self.cfg.block_size
        T = x.shape[0]
        k0, k1 = keep if keep is not None else (0, T)
        if pos0 % B or k0 % B:
            raise OptionsError("DiT windows and kept ranges must start on a block boundary.")
        # Output range of every layer, from the last one back: each look-back/ahead layer widens it.
        ranges: list[tuple[int, int]] = []
        lo, hi = k0, k1
        for layer in reversed(self.layers):
            ranges.append((lo, hi))
            lo, hi = max(0, lo - B * layer.back), min(T, hi + B * layer.ahead)
        ranges.reverse()
        mods, _ = self._time(t)
        h = self.embed_input(x[lo:hi], code_feat[lo:hi], spk, guidance)
        cos, sin = self._rope(pos0 + lo, hi - lo)  # rows of h are frames lo..hi
        for li, layer in enumerate(self.layers):
            check_stop()  # a cancelled render ends between DiT blocks
            r0, r1 = ranges[li]
            h = self._layer(layer, mods[li], h, r0 - lo, r1 - lo, cos, sin)
            cos, sin, lo = cos[r0 - lo : r1 - lo], sin[r0 - lo : r1 - lo], r0
        return self.head(h, t, guidance)

    def embed_input(self, x: np.ndarray, code_feat: np.ndarray, spk: SpeakerCond, guidance: float) -> np.ndarray:
        """The first layer's input (batch, T, hidden) for noisy mel rows x and their code features;
        batch 2 (conditional, unconditional) with guidance >= 1e-5, else 1."""
        xw = linear(x.astype(F32), self.w_x)
        if guidance >= 1e-5:
            return np.stack([xw + code_feat + spk.cond, xw + spk.uncond])
        return (xw + code_feat + spk.cond)[None]

    def head(self, h: np.ndarray, t: float, guidance: float) -> np.ndarray:
        """Velocity rows (T, mel_dim) from the last layer's output (batch, T, hidden), guidance mixed in."""
        scale, shift = self._time(t)[1]
        out = linear(ada_layer_norm(h, scale, shift), self.proj_out_w, self.proj_out_b)
        if guidance >= 1e-5:
            return out[0] + (out[0] - out[1]) * F32(guidance)
        return out[0]

    def layer_rows(
        self, li: int, t: float, h: np.ndarray, a0: int, a1: int, pos0: int
    ) -> np.ndarray:
        """Layer `li` at time t for query rows a0..a1 of h (batch, n, hidden), every row of h a key;
        h's first row is frame pos0 (pos0 and a0 on block boundaries)."""
        if pos0 % self.cfg.block_size or a0 % self.cfg.block_size:
            raise OptionsError("DiT windows and kept ranges must start on a block boundary.")
        cos, sin = self._rope(pos0, h.shape[1])
        return self._layer(self.layers[li], self._time(t)[0][li], h, a0, a1, cos, sin)

    def _rope(self, pos0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        freqs = np.arange(pos0, pos0 + n, dtype=F32)[:, None] * self.inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=1)
        return np.cos(emb), np.sin(emb)

    def _layer(
        self, L: _Layer, mod: np.ndarray, h: np.ndarray, a0: int, a1: int, cos: np.ndarray, sin: np.ndarray
    ) -> np.ndarray:
        """One block on rows a0..a1 of h (all rows of h serve as keys/values)."""
        nb, n, hid = h.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        rows = ada_layer_norm(h, scale_msa, shift_msa).reshape(nb * n, hid)
        qkv = np.concatenate([linear(rows, w, b) for w, b in L.qkv], axis=1)
        qkv = qkv.reshape(nb, n, 3, self.cfg.num_attention_heads, self.cfg.head_dim)
        a = self._attention(qkv, L, a0, a1, cos, sin)
        # Residuals in place on the fresh products (x + g * y as y *= g; y += x: the same values).
        out = linear(a, L.out_w, L.out_b).reshape(nb, a1 - a0, hid)
        out *= gate_msa
        out += h[:, a0:a1]
        h = out
        norm = ada_layer_norm(h, scale_mlp, shift_mlp)
        ff = linear(gelu_tanh_(linear(norm.reshape(-1, hid), L.ff1_w, L.ff1_b)), L.ff2_w, L.ff2_b)
        ff = ff.reshape(nb, a1 - a0, hid)
        ff *= gate_mlp
        ff += h
        return ff

    def _attention(
        self, qkv: np.ndarray, L: _Layer, a0: int, a1: int, cos: np.ndarray, sin: np.ndarray
    ) -> np.ndarray:
        """Block-sparse attention of query rows a0..a1 over all n rows.

        qkv: (batch, n, 3, heads, hd); a0 on a block boundary. Returns (batch*(a1-a0), heads*hd).
        """
        bsz, n, _, nh, hd = qkv.shape
        B = self.cfg.block_size
        q = np.ascontiguousarray(qkv[:, a0:a1, 0].transpose(0, 2, 1, 3))  # (batch, heads, nq, hd)
        k = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 1, 3))
        v = qkv[:, :, 2].transpose(0, 2, 1, 3)
        # Head 0 only: de-interleave (x0,x2,..,x1,x3,..) then rotate-half RoPE.
        for a, c, s in ((q, cos[a0:a1], sin[a0:a1]), (k, cos, sin)):
            h0 = np.concatenate([a[:, 0, :, 0::2], a[:, 0, :, 1::2]], axis=-1)
            rot = np.concatenate([-h0[..., hd // 2 :], h0[..., : hd // 2]], axis=-1)
            a[:, 0] = h0 * c + rot * s
        nq, nkb, nqb = a1 - a0, -(-n // B), -(-(a1 - a0) // B)
        q = np.pad(q, ((0, 0), (0, 0), (0, nqb * B - nq), (0, 0))).reshape(bsz, nh, nqb, B, hd)
        k, v = (
            np.pad(x, ((0, 0), (0, 0), (0, nkb * B - n), (0, 0))).reshape(bsz, nh, nkb, B, hd) for x in (k, v)
        )
        offsets = ([-1] if L.back else []) + [0] + ([1] if L.ahead else [])
        ks, vs, valid = [], [], []
        for o in offsets:
            src = np.arange(nqb) + a0 // B + o  # key block read by each query block
            idx = np.clip(src, 0, nkb - 1)
            ks.append(k[:, :, idx])
            vs.append(v[:, :, idx])
            valid.append(((src >= 0) & (src < nkb))[:, None] & (idx[:, None] * B + np.arange(B)[None, :] < n))
        kc = np.concatenate(ks, axis=3)  # (batch, heads, nqb, nO*B, hd)
        vc = np.concatenate(vs, axis=3)
        mask = np.concatenate(valid, axis=1)  # (nqb, nO*B)
        scores = (q @ kc.swapaxes(-1, -2)) * F32(1.0 / math.sqrt(hd))
        scores = np.where(mask[:, None, :], scores, F32(-np.inf))
        out = (softmax(scores) @ vc).reshape(bsz, nh, nqb * B, hd)[:, :, :nq]
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(bsz * nq, nh * hd)
