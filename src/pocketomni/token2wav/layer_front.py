"""One DiT evaluation computed incrementally, layer by layer, each layer's output rows exactly once.

Rows of the evaluation's input (noisy mel + code features) arrive in order (`push`). Layer l can output
frame f once its input holds f's block plus one block after it if l looks ahead (and it keeps the block
before it while l looks back), so every `advance` moves each layer's front as far as its input allows
and keeps only the rows later steps still read. The velocity rows equal `DiT.velocity` over the whole
sequence up to float rounding (the same per-frame arithmetic; only the GEMM row counts differ), with no
recomputed context: streaming costs the one-shot work plus re-deriving one block of attention keys per
look-back/ahead layer and step.
"""

from __future__ import annotations

import numpy as np

from pocketomni.token2wav.dit import DiT, SpeakerCond

F32 = np.float32


class LayerFront:
    """Incremental evaluation at time `t` of frames frame0, frame0 + 1, ... (frame0 on a block boundary)."""

    def __init__(self, dit: DiT, spk: SpeakerCond, t: float, guidance: float, frame0: int = 0):
        self.dit, self.spk, self.t, self.guidance, self.frame0 = dit, spk, t, guidance, frame0
        self.B = dit.cfg.block_size
        self.back = [self.B * int(layer.back) for layer in dit.layers]
        self.ahead = [self.B * int(layer.ahead) for layer in dit.layers]
        n = len(dit.layers)
        # bufs[l]: the input rows of layer l (bufs[n]: the last layer's output), from frame base[l] to hi[l]
        self.bufs: list[np.ndarray | None] = [None] * (n + 1)
        self.base = [0] * (n + 1)
        self.hi = [0] * (n + 1)

    @property
    def done(self) -> int:
        """Velocity rows returned so far."""
        return self.hi[-1]

    def push(self, x: np.ndarray, code_feat: np.ndarray) -> None:
        """The next rows of the evaluation's input: noisy mel (m, mel_dim) and code features (m, hidden)."""
        if x.shape[0]:
            self._append(0, self.dit.embed_input(x, code_feat, self.spk, self.guidance))

    def advance(self, final: bool = False) -> np.ndarray:
        """Velocity rows (k, mel_dim) that became computable; `final`: the input is complete."""
        start = self.hi[-1]
        for li in range(len(self.dit.layers)):
            a, top = self.hi[li + 1], self.hi[li]
            b = top if final else top - self.ahead[li]
            if b > a:
                w0, w1 = max(self.base[li], a - self.back[li]), min(top, b + self.ahead[li])
                buf = self.bufs[li]
                assert buf is not None and w0 % self.B == 0
                h = buf[:, w0 - self.base[li] : w1 - self.base[li]]
                self._append(li + 1, self.dit.layer_rows(li, self.t, h, a - w0, b - w0, self.frame0 + w0))
            self._trim(li, self.hi[li + 1] - self.back[li] if not final else self.hi[li])
        out = self.bufs[-1]
        if out is None or self.hi[-1] == start:
            return np.zeros((0, self.dit.cfg.mel_dim), F32)
        v = self.dit.head(out[:, start - self.base[-1] :], self.t, self.guidance)
        self._trim(len(self.dit.layers), self.hi[-1])
        return v

    def _append(self, li: int, rows: np.ndarray) -> None:
        buf = self.bufs[li]
        self.bufs[li] = rows if buf is None or buf.shape[1] == 0 else np.concatenate([buf, rows], axis=1)
        self.hi[li] += rows.shape[1]

    def _trim(self, li: int, keep_from: int) -> None:
        """Forget rows of bufs[li] before keep_from (rounded down to a block)."""
        keep_from -= keep_from % self.B
        buf = self.bufs[li]
        if buf is not None and keep_from > self.base[li]:
            self.bufs[li] = np.ascontiguousarray(buf[:, keep_from - self.base[li] :])
            self.base[li] = keep_from
