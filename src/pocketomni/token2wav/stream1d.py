"""Push-based streaming 1-D filters on channel-major (C, n) float32 arrays.

Each node takes the next input samples (`push(x, final)`) and returns the next output samples it can
compute exactly: a node waits for the right context it needs and keeps the left context it still needs.
Edge padding (zeros or replicate) is applied only at the true start and at `final`, so feeding a signal in
any number of pieces gives the same output as feeding it whole (up to BLAS rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pocketomni.token2wav.stop import check_stop

F32 = np.float32


def _empty(c: int) -> np.ndarray:
    return np.zeros((c, 0), F32)


class Node:
    """A streaming op: `push(x (C_in, n), final) -> (C_out, m)`; `reset()` starts a new signal."""

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class Windowed(Node):
    """Padded, strided windowed op: output group g reads input window [g*step, g*step + span) of the padded
    signal and yields `fn(buf, groups)`'s columns. Padding: `left`/`right` samples, "zeros" or "replicate".
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        left: int,
        right: int,
        span: int,
        step: int,
        fn: Callable[[np.ndarray, int], np.ndarray],
        mode: str = "zeros",
    ):
        self.c_in, self.c_out, self.left, self.right = c_in, c_out, left, right
        self.span, self.step, self.fn, self.mode = span, step, fn, mode
        self.reset()

    def reset(self) -> None:
        self.buf: np.ndarray | None = None
        self.last: np.ndarray | None = None
        self.done = False

    def _pad(self, n: int, edge: np.ndarray | None) -> np.ndarray:
        if self.mode == "replicate" and edge is not None:
            return np.repeat(edge, n, axis=1)
        return np.zeros((self.c_in, n), F32)

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        if self.done:
            raise RuntimeError("push after final; call reset() first")
        parts = []
        if self.buf is None:
            if x.shape[1] == 0 and not final:
                return _empty(self.c_out)
            if x.shape[1] == 0:  # empty signal
                self.done = True
                return _empty(self.c_out)
            parts.append(self._pad(self.left, x[:, :1]))
        else:
            parts.append(self.buf)
        if x.shape[1]:
            parts.append(x)
            self.last = x[:, -1:].copy()  # a copy: a view would keep the whole pushed chunk alive
        if final:
            parts.append(self._pad(self.right, self.last))
            self.done = True
        buf = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        n = buf.shape[1]
        groups = (n - self.span) // self.step + 1 if n >= self.span else 0
        out = self.fn(buf, groups) if groups else _empty(self.c_out)
        self.buf = np.ascontiguousarray(buf[:, groups * self.step :])
        return out


class Map(Node):
    """Pointwise op."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        return self.fn(x) if x.shape[1] else x


class Chain(Node):
    def __init__(self, nodes: Sequence[Node]):
        self.nodes = list(nodes)

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        for node in self.nodes:
            check_stop()  # a cancelled render ends between vocoder nodes
            x = node.push(x, final)
        return x

    def reset(self) -> None:
        for node in self.nodes:
            node.reset()


class Residual(Node):
    """x + inner(x), aligning the (delayed) inner output with the stored input."""

    def __init__(self, inner: Node):
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.inner.reset()
        self.fifo: np.ndarray | None = None

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        self.fifo = x if self.fifo is None else np.concatenate([self.fifo, x], axis=1)
        y = self.inner.push(x, final)
        m = y.shape[1]
        out = self.fifo[:, :m] + y
        self.fifo = self.fifo[:, m:].copy() if m else self.fifo  # copy: do not pin the consumed part
        return out


class Mean(Node):
    """Average of parallel branches fed the same input (summed left to right, then divided)."""

    def __init__(self, branches: Sequence[Node]):
        self.branches = list(branches)
        self.reset()

    def reset(self) -> None:
        for b in self.branches:
            b.reset()
        self.pending: list[np.ndarray | None] = [None] * len(self.branches)

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        outs = []
        for i, b in enumerate(self.branches):
            y = b.push(x, final)
            p = self.pending[i]
            outs.append(y if p is None else np.concatenate([p, y], axis=1))
        m = min(o.shape[1] for o in outs)
        total = outs[0][:, :m]
        for o in outs[1:]:
            total = total + o[:, :m]
        self.pending = [o[:, m:].copy() if m else o for o in outs]
        return total / F32(len(self.branches))
