"""ODE solver presets for the DiT flow, flattened into one explicit evaluation table.

Every preset (RK4 or Euler over sway-sampled time points) is written as E evaluations:
evaluation i runs the DiT at time `times[i]` on `x0 + sum_j A[i, j] * k_j`, and the result is
`x0 + sum_j b[j] * k_j`. One-shot and streaming rendering share this table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pocketomni.errors import OptionsError

F32 = np.float32


@dataclass(frozen=True)
class Preset:
    """How to integrate the flow.

    method: "rk4" (the reference's 3/8-rule RK4) or "euler".
    num_points: time points from 0 to 1 (the reference's `num_steps`); there are num_points - 1 steps.
    guidance: classifier-free guidance scale (below 1e-5: no guidance, half the work).
    sway: sway-sampling coefficient (None: uniform time points).
    """

    name: str
    method: str
    num_points: int
    guidance: float
    sway: float | None

    @property
    def evaluations(self) -> int:
        steps = self.num_points - 1
        return steps * (4 if self.method == "rk4" else 1)


PRESETS: dict[str, Preset] = {
    # Exactly Qwen2_5OmniToken2WavDiTModel.sample defaults: 10 points, RK4, guidance 0.5, sway -1 (36 evals x2).
    "reference": Preset("reference", "rk4", 10, 0.5, -1.0),
    # MNN-style: 4 Euler steps on the same sway schedule (t = 1 - cos(pi t / 2)), no guidance (4 evals).
    "fast": Preset("fast", "euler", 5, 0.0, -1.0),
}


def get_preset(preset: str | Preset) -> Preset:
    """Resolve a preset name (`reference`, `fast`) or pass a Preset through."""
    if isinstance(preset, Preset):
        if preset.method not in ("rk4", "euler") or preset.num_points < 2:
            raise OptionsError("Preset.method must be 'rk4' or 'euler' and num_points >= 2.")
        return preset
    if preset not in PRESETS:
        raise OptionsError(f"unknown speech preset {preset!r}; use one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def time_points(num_points: int, sway: float | None) -> np.ndarray:
    """float32 time points as the reference computes them (torch.linspace, then sway)."""
    n = num_points
    i = np.arange(n, dtype=F32)
    step = F32(1.0) / F32(n - 1)
    # torch.linspace fills the first half from the start and the second half from the end.
    t = np.where(i < n // 2, i * step, F32(1.0) - (F32(n - 1) - i) * step).astype(F32)
    if sway is not None:
        t = t + F32(sway) * (np.cos(F32(math.pi / 2) * t) - F32(1.0) + t)
    return t.astype(F32)


@dataclass(frozen=True)
class SolverPlan:
    """Flattened solver: evaluation times (E,), stage matrix A (E, E) and output weights b (E,)."""

    times: np.ndarray
    A: np.ndarray
    b: np.ndarray
    guidance: float

    @property
    def evaluations(self) -> int:
        return len(self.times)

    def deps(self, i: int) -> list[int]:
        """Evaluations whose results evaluation i reads."""
        return [j for j in range(i) if self.A[i, j] != 0.0]


def make_plan(preset: str | Preset) -> SolverPlan:
    """Build the flattened evaluation table for a preset."""
    p = get_preset(preset)
    t = time_points(p.num_points, p.sway)
    steps = p.num_points - 1
    per = 4 if p.method == "rk4" else 1
    E = steps * per
    A = np.zeros((E, E), np.float64)
    b = np.zeros(E, np.float64)
    times = np.zeros(E, F32)
    for n in range(steps):
        t0, t1 = t[n], t[n + 1]
        h = t1 - t0  # float32, as the reference's tensor arithmetic
        base = n * per
        hf = float(h)
        # x_n = x0 + b-so-far: every stage of this step starts from it.
        A[base : base + per, :base] = b[:base]
        if p.method == "euler":
            times[base] = t0
            b[base] = hf
            continue
        times[base : base + 4] = [t0, t0 + h * F32(1 / 3), t0 + h * F32(2 / 3), t1]
        A[base + 1, base] = hf / 3
        A[base + 2, base] = -hf / 3
        A[base + 2, base + 1] = hf
        A[base + 3, base : base + 3] += [hf, -hf, hf]
        b[base : base + 4] += np.array([1, 3, 3, 1]) * hf / 8
    return SolverPlan(times=times.astype(F32), A=A, b=b, guidance=float(p.guidance))
