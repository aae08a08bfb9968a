"""BigVGAN vocoder (80-bin mel at 100 Hz -> 24 kHz waveform), numpy float32 compute, streamable.

Weights are keyed by HF names relative to `token2wav.code2wav_bigvgan_model.`. The network is built
from the push-based nodes of `stream1d`, so feeding mel frames chunk by chunk yields exactly the
one-shot waveform (no seams, no recomputed context); output lags the input by the receptive field.
Kernels may be stored float16; each is converted to float32 right before its product (the vocoder
computes in float32 throughout: float16 compute collapses BigVGAN, as MNN found).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pocketomni.errors import ModelFileError
from pocketomni.token2wav.config import BigVGANConfig
from pocketomni.token2wav.half import dense
from pocketomni.token2wav.layers import F32, BlockFIR, Conv1d, kaiser_sinc_filter, take
from pocketomni.token2wav.stream1d import Chain, Map, Mean, Node, Residual, Windowed


def _polyphase(k: int, s: int, p: int) -> tuple[int, int, np.ndarray]:
    """Transposed conv (kernel k, stride s, crop p) as windows: output s*g+q reads inputs g-L..g+R.

    Returns L, R and tap[q, w] = kernel index used by phase q at window column w (-1: none).
    """
    lo = math.ceil((p - k + 1) / s)
    hi = (s - 1 + p) // s
    tap = np.full((s, hi - lo + 1), -1, np.int64)
    for q in range(s):
        for j in range(lo, hi + 1):
            kk = q + p - s * j
            if 0 <= kk < k:
                tap[q, j - lo] = kk
    return -lo, hi, tap


def _interleave(y: np.ndarray, s: int) -> np.ndarray:
    """(s, C, G) phases -> (C, G*s) samples."""
    c, g = y.shape[1], y.shape[2]
    return np.ascontiguousarray(y.transpose(1, 2, 0)).reshape(c, g * s)


class _TConv:
    """ConvTranspose1d(k, stride s, padding p) with k - 2p == s, as one matrix product per window."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int):
        c_in, c_out, k = weight.shape
        if k - 2 * padding != stride:
            raise ModelFileError(
                f"bigvgan_config: upsample kernel {k} with rate {stride} is not supported (need kernel - 2 * "
                "((kernel - rate) // 2) == rate, as in Qwen2.5-Omni); check the token2wav config."
            )
        self.c_in, self.c_out, self.s = c_in, c_out, stride
        self.left, self.right, tap = _polyphase(k, stride, padding)
        span = tap.shape[1]
        P = np.zeros((stride, c_out, span, c_in), weight.dtype)  # the stored type (float16 stays float16)
        for q in range(stride):
            for w in range(span):
                if tap[q, w] >= 0:
                    P[q, :, w, :] = weight[:, :, tap[q, w]].T
        self.P = P.reshape(stride * c_out, span * c_in)
        self.bias = bias.reshape(-1, 1)
        self.span = span

    def node(self) -> Node:
        def fn(buf: np.ndarray, g: int) -> np.ndarray:
            cols = np.empty((self.span, self.c_in, g), F32)
            for w in range(self.span):
                cols[w] = buf[:, w : w + g]
            y = (dense(self.P) @ cols.reshape(self.span * self.c_in, g)).reshape(self.s, self.c_out, g)
            return _interleave(y, self.s) + self.bias

        return Windowed(self.c_in, self.c_out, self.left, self.right, self.span, 1, fn)


def _conv_node(conv: Conv1d) -> Node:
    pad = (conv.span - 1) // 2
    return Windowed(conv.c_in, conv.c_out, pad, conv.span - 1 - pad, conv.span, 1, lambda b, g: conv.valid(b))


class _AntiAliasedSnake:
    """Upsample x2 (kaiser sinc) -> SnakeBeta -> downsample x2, with replicate edge padding."""

    def __init__(self, alpha: np.ndarray, beta: np.ndarray, ratio: int = 2, kernel: int = 12):
        self.c = alpha.shape[0]
        self.a = np.exp(alpha).reshape(-1, 1).astype(F32)
        self.ib = (F32(1.0) / (np.exp(beta) + F32(1e-9))).reshape(-1, 1).astype(F32)
        h = kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel)
        self.r, self.k, self.h = ratio, kernel, h
        # Upsampler = depthwise transposed conv (stride r, crop (k-r)//2) on the replicate-padded input.
        self.up_left, self.up_right, self.up_tap = _polyphase(kernel, ratio, (kernel - ratio) // 2)
        pad = kernel // ratio - 1
        if self.up_left > pad or self.up_right > pad:
            raise ModelFileError("unsupported anti-aliasing filter size in the BigVGAN activations.")
        up_coef = np.where(self.up_tap >= 0, h[np.maximum(self.up_tap, 0)] * F32(ratio), F32(0)).astype(F32)
        self.up = BlockFIR(up_coef, 1, block=32)
        self.down = BlockFIR(h[None, :], ratio, block=16)
        self.down_left = kernel // 2 - int(kernel % 2 == 0)
        self.down_right = kernel // 2

    def _snake(self, x: np.ndarray) -> np.ndarray:
        s = x * self.a
        np.sin(s, out=s)
        s *= s
        s *= self.ib
        s += x
        return s

    def node(self) -> Node:
        c, r = self.c, self.r
        span = self.up_tap.shape[1]
        up = Windowed(c, c, self.up_left, self.up_right, span, 1, self.up, mode="replicate")
        down = Windowed(c, c, self.down_left, self.down_right, self.k, r, self.down, mode="replicate")
        return Chain([up, Map(self._snake), down])


class BigVGAN:
    """Vocoder. `vocode(mel (T, mel_dim)) -> (T*hop,)`; `new_stream()` for incremental use."""

    def __init__(self, weights: Mapping[str, np.ndarray], cfg: BigVGANConfig):
        self.cfg = cfg
        w = weights
        c0 = cfg.upsample_initial_channel
        self.conv_pre = Conv1d(take(w, "conv_pre.weight", (c0, cfg.mel_dim, 7)), take(w, "conv_pre.bias"))
        self.ups, self.blocks = [], []
        nres = len(cfg.resblock_kernel_sizes)
        for i, (rate, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            cin, cout = c0 // 2**i, c0 // 2 ** (i + 1)
            wt = take(w, f"ups.{i}.0.weight", (cin, cout, k))
            self.ups.append(_TConv(wt, take(w, f"ups.{i}.0.bias"), rate, (k - rate) // 2))
            stage = []
            for j, (ks, dil) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
                p = f"resblocks.{i * nres + j}."
                subs = []
                for m, d in enumerate(dil):
                    acts = [
                        _AntiAliasedSnake(
                            take(w, f"{p}activations.{a}.act.alpha"), take(w, f"{p}activations.{a}.act.beta")
                        )
                        for a in (2 * m, 2 * m + 1)
                    ]
                    c1 = Conv1d(
                        take(w, f"{p}convs1.{m}.weight", (cout, cout, ks)), take(w, f"{p}convs1.{m}.bias"), d
                    )
                    c2 = Conv1d(
                        take(w, f"{p}convs2.{m}.weight", (cout, cout, ks)), take(w, f"{p}convs2.{m}.bias"), 1
                    )
                    subs.append((acts[0], c1, acts[1], c2))
                stage.append(subs)
            self.blocks.append(stage)
        clast = c0 // 2 ** len(cfg.upsample_rates)
        self.act_post = _AntiAliasedSnake(
            take(w, "activation_post.act.alpha"), take(w, "activation_post.act.beta")
        )
        self.conv_post = Conv1d(take(w, "conv_post.weight", (1, clast, 7)), None)

    @staticmethod
    def _process_mel(mel: np.ndarray) -> np.ndarray:
        """log-mel -> dB -> [-1, 1], as the reference's process_mel_spectrogram."""
        amp = np.exp(mel)
        floor = np.exp(F32(-115 / 20.0 * np.log(10)))
        db = F32(20) * np.log10(np.maximum(amp, floor)) - F32(20)
        return np.clip(F32(2) * ((db - F32(-115)) / F32(115)) - F32(1), F32(-1), F32(1))

    def new_stream(self) -> Node:
        """A fresh streaming graph: push (mel_dim, n) frames, get (1, m) samples."""
        nodes: list[Node] = [Map(self._process_mel), _conv_node(self.conv_pre)]
        for up, stage in zip(self.ups, self.blocks):
            nodes.append(up.node())
            branches = []
            for subs in stage:
                chain = [
                    Residual(Chain([a1.node(), _conv_node(c1), a2.node(), _conv_node(c2)]))
                    for a1, c1, a2, c2 in subs
                ]
                branches.append(Chain(chain))
            nodes.append(Mean(branches))
        nodes += [
            self.act_post.node(),
            _conv_node(self.conv_post),
            Map(lambda x: np.clip(x, F32(-1), F32(1))),
        ]
        return Chain(nodes)

    def vocode(self, mel: np.ndarray, chunk_frames: int = 200) -> np.ndarray:
        """Waveform (T*hop,) float32 for a (T, mel_dim) mel; fed in chunks to bound memory (exact)."""
        mel = np.asarray(mel, F32)
        stream = self.new_stream()
        outs = []
        T = mel.shape[0]
        for s in range(0, max(T, 1), chunk_frames):
            part = np.ascontiguousarray(mel[s : s + chunk_frames].T)
            outs.append(stream.push(part, final=s + chunk_frames >= T))
        return np.concatenate(outs, axis=1).reshape(-1)
