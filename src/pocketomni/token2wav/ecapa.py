"""ECAPA-TDNN speaker encoder of the DiT (reference mel -> `enc_dim` vector), numpy float32.

Weights are keyed by HF names relative to `input_embed.spk_encoder.` of the DiT.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pocketomni.token2wav.config import DiTConfig
from pocketomni.token2wav.layers import F32, Conv1d, sigmoid, softmax, take


def _conv(w: Mapping[str, np.ndarray], name: str, dilation: int = 1) -> Conv1d:
    return Conv1d(take(w, f"{name}.weight"), take(w, f"{name}.bias"), dilation)


def _tdnn(conv: Conv1d, x: np.ndarray) -> np.ndarray:
    return np.maximum(conv.same(x, "reflect"), F32(0))


class _SERes2Net:
    def __init__(self, w: Mapping[str, np.ndarray], p: str, scale: int, dilation: int):
        self.tdnn1 = _conv(w, f"{p}.tdnn1.conv")
        self.res2 = [_conv(w, f"{p}.res2net_block.blocks.{i}.conv", dilation) for i in range(scale - 1)]
        self.tdnn2 = _conv(w, f"{p}.tdnn2.conv")
        self.se1 = _conv(w, f"{p}.se_block.conv1")
        self.se2 = _conv(w, f"{p}.se_block.conv2")
        self.scale = scale

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = _tdnn(self.tdnn1, x)
        parts = np.split(h, self.scale, axis=0)
        outs = [parts[0]]
        prev = None
        for i in range(1, self.scale):
            inp = parts[i] if i == 1 else parts[i] + prev
            prev = _tdnn(self.res2[i - 1], inp)
            outs.append(prev)
        h = _tdnn(self.tdnn2, np.concatenate(outs, axis=0))
        s = h.mean(axis=1, keepdims=True)
        s = sigmoid(self.se2.valid(np.maximum(self.se1.valid(s), F32(0))))
        return h * s + x


class Ecapa:
    """Speaker encoder: `embed(ref_mel (T, mel_dim)) -> (enc_dim,)`. Compute once per speaker and cache."""

    def __init__(self, weights: Mapping[str, np.ndarray], cfg: DiTConfig):
        ks, ds = cfg.enc_kernel_sizes, cfg.enc_dilations
        self.first = _conv(weights, "blocks.0.conv", ds[0])
        self.blocks = [
            _SERes2Net(weights, f"blocks.{i}", cfg.enc_res2net_scale, ds[i]) for i in range(1, len(ks) - 1)
        ]
        self.mfa = _conv(weights, "mfa.conv", ds[-1])
        self.asp_tdnn = _conv(weights, "asp.tdnn.conv")
        self.asp_conv = _conv(weights, "asp.conv")
        self.fc = _conv(weights, "fc")

    @staticmethod
    def _stats(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = (w * x).sum(axis=1)
        var = (w * (x - mean[:, None]) ** 2).sum(axis=1)
        return mean, np.sqrt(np.maximum(var, F32(1e-12)))

    def embed(self, ref_mel: np.ndarray) -> np.ndarray:
        """Speaker vector from a (T, mel_dim) reference mel."""
        x = np.ascontiguousarray(np.asarray(ref_mel, F32).T)
        h = _tdnn(self.first, x)
        feats = []
        for blk in self.blocks:
            h = blk(h)
            feats.append(h)
        h = _tdnn(self.mfa, np.concatenate(feats, axis=0))
        # Attentive statistics pooling.
        t = h.shape[1]
        mean, std = self._stats(h, np.full((1, t), F32(1.0 / t), F32))
        att_in = np.concatenate([h, np.repeat(mean[:, None], t, 1), np.repeat(std[:, None], t, 1)], axis=0)
        att = self.asp_conv.valid(np.tanh(_tdnn(self.asp_tdnn, att_in)))
        mean, std = self._stats(h, softmax(att, axis=1))
        pooled = np.concatenate([mean, std])[:, None]
        return self.fc.valid(pooled)[:, 0]
