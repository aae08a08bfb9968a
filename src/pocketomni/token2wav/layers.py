"""Shared float32 numpy ops for token2wav (no torch). Arrays are float32 unless noted.

Weights come float32 or float16 (as the GGUF stores them, both used in place); `take` keeps big
float16 matrices as they are and every product converts them to float32 right before use
(`half.dense`), so the model is never held in float32 as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pocketomni.errors import ModelFileError
from pocketomni.token2wav.half import F16, dense, to_f32

F32 = np.float32
SMALL = 1 << 16  # float16 tensors up to this many values are converted once and kept as float32


def take(weights: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Fetch one contiguous tensor, checking its shape: float32 for float32 and small tensors, the
    stored float16 (no copy) for big float16 ones (convert with `half.dense` at use)."""
    if name not in weights:
        raise ModelFileError(
            f"token2wav weights lack '{name}'; re-run `pocketomni convert` on the HF checkpoint."
        )
    arr = np.asarray(weights[name])
    arr = np.ascontiguousarray(arr if arr.dtype == F16 and arr.size > SMALL else to_f32(arr))
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ModelFileError(
            f"token2wav tensor '{name}' has shape {tuple(arr.shape)}, expected {tuple(shape)}; "
            "the weights do not match the config."
        )
    return arr


def sub(weights: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The tensors under `prefix` with the prefix stripped."""
    n = len(prefix)
    return {k[n:]: v for k, v in weights.items() if k.startswith(prefix)}


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ w.T + b over the last axis (w in torch (out, in) layout, float32 or float16).

    Rows (2-D x) are computed transposed, (w @ x.T).T: OpenBLAS packs the big operand better as the
    left one, so with few rows (streaming steps: 24-144) this runs 1.1-1.4x faster single-threaded on
    AMD EPYC (72 rows x 1024 -> 1024: 61 -> 72 GFLOP/s); the output's transposing copy costs ~1 ns
    per value, under 3% of the product at 72 rows. Same dot products, BLAS rounding may differ."""
    wd = dense(w)
    if x.ndim != 2:
        y = x @ wd.T
        if b is not None:
            y += b
        return y
    yt = wd @ x.T
    out = np.empty((x.shape[0], wd.shape[0]), np.result_type(yt, F32))
    if b is None:
        np.copyto(out, yt.T)
    else:
        np.add(yt.T, b, out=out)
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1.0) + np.exp(-x))


def gelu_tanh_(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), overwriting x (a float32 temporary of the
    caller's) with one temporary."""
    t = x * F32(0.044715)
    t *= x
    t *= x
    t += x
    t *= F32(math.sqrt(2.0 / math.pi))
    np.tanh(t, out=t)
    t += F32(1.0)
    x *= F32(0.5)
    x *= t
    return x


def ada_layer_norm(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """LayerNorm over the last axis (no affine parameters), then * (1 + scale) + shift; a new array."""
    xc = x - x.mean(axis=-1, keepdims=True)
    sq = xc * xc
    var = sq.mean(axis=-1, keepdims=True)
    xc /= np.sqrt(var + F32(eps))
    xc *= F32(1) + scale
    xc += shift
    return xc


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return F32(1.0) / (F32(1.0) + np.exp(-x))


class Conv1d:
    """1-D convolution on channel-major (C, T) arrays as matrix products.

    `valid(x)` needs the padding already applied; `same(x, mode)` pads like torch's
    padding="same" / symmetric integer padding (`mode` "zeros" or "reflect").
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, dilation: int = 1):
        self.c_out, self.c_in, self.k = weight.shape
        self.dilation = dilation
        self.span = (self.k - 1) * dilation + 1
        self.bias = None if bias is None else bias.astype(F32).reshape(-1, 1)
        # Few input channels: one product per tap is faster; many: one product over stacked taps, with
        # columns ordered (channel, tap) so the stored (out, in, k) weight serves as is (no copy).
        self.im2col = self.c_in >= 128 and self.k > 1
        # The stored type is kept (float16 is converted per product).
        if self.im2col:
            self.w = np.ascontiguousarray(weight).reshape(self.c_out, self.c_in * self.k)
        else:
            self.w = np.ascontiguousarray(weight.transpose(2, 0, 1))  # (k, out, in)

    def valid(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[1] - self.span + 1
        if n <= 0:
            return np.zeros((self.c_out, 0), F32)
        d = self.dilation
        if self.im2col:
            cols = np.empty((self.c_in, self.k, n), F32)
            for t in range(self.k):
                cols[:, t] = x[:, t * d : t * d + n]
            y = dense(self.w) @ cols.reshape(self.c_in * self.k, n)
        else:
            w = dense(self.w)
            y = w[0] @ x[:, :n]
            if self.k > 1:
                tmp = np.empty_like(y)
                for t in range(1, self.k):
                    np.matmul(w[t], x[:, t * d : t * d + n], out=tmp)
                    y += tmp
        if self.bias is not None:
            y += self.bias
        return y

    def same(self, x: np.ndarray, mode: str = "zeros") -> np.ndarray:
        total = self.span - 1
        left = total // 2
        pad = ((0, 0), (left, total - left))
        xp = np.pad(x, pad, mode="reflect") if mode == "reflect" else np.pad(x, pad)
        return self.valid(xp)


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass filter (sums to 1), as the reference builds it."""
    even = kernel_size % 2 == 0
    half = kernel_size // 2
    delta_f = 4 * half_width
    atten = 2.285 * (half - 1) * math.pi * delta_f + 7.95
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = np.kaiser(kernel_size, beta).astype(F32)
    t = (np.arange(-half, half) + 0.5) if even else (np.arange(kernel_size) - half)
    if cutoff == 0:
        return np.zeros(kernel_size, F32)
    filt = F32(2 * cutoff) * window * np.sinc(F32(2 * cutoff) * t.astype(F32)).astype(F32)
    return (filt / filt.sum()).astype(F32)


class BlockFIR:
    """Depthwise FIR (same taps on every channel) as one matrix product over blocks of outputs.

    Output group j reads input window [step*j, step*j + span) and yields `out_per` samples,
    sample q = sum_w coef[q, w] * x[step*j + w]. Groups are batched M at a time against a banded
    (Toeplitz) matrix: more flops than direct taps but far fewer passes over memory in numpy.
    """

    def __init__(self, coef: np.ndarray, step: int, block: int = 16):
        self.out_per, self.span = coef.shape
        self.step, self.M = step, block
        self.extra = self.span - step
        if self.extra < 0 or self.extra > step * block:
            raise ModelFileError("unsupported FIR geometry (filter longer than a block).")
        width = step * block + self.extra
        T = np.zeros((width, self.out_per * block), F32)
        for j in range(block):
            for q in range(self.out_per):
                T[step * j : step * j + self.span, self.out_per * j + q] = coef[q]
        self.T = T

    def __call__(self, x: np.ndarray, groups: int) -> np.ndarray:
        c, M, s = x.shape[0], self.M, self.step
        nb = -(-groups // M)
        width, hop = s * M + self.extra, s * M
        X = np.empty((c, nb, width), F32)
        # Block j reads x[:, hop*j : hop*j + width]: the blocks inside x in one strided copy (no padded
        # copy of x), the last ones (past x's end) zero-filled.
        full = min(nb, (x.shape[1] - width) // hop + 1) if x.shape[1] >= width else 0
        if full:
            X[:, :full] = np.lib.stride_tricks.sliding_window_view(x, width, axis=1)[:, : hop * full : hop]
        for j in range(full, nb):
            part = x[:, hop * j : hop * j + width]
            X[:, j, : part.shape[1]] = part
            X[:, j, part.shape[1] :] = 0
        y = X.reshape(c * nb, -1) @ self.T
        return y.reshape(c, nb * M * self.out_per)[:, : groups * self.out_per]
