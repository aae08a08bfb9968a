"""Shared pieces of the benchmark suite (benchmarks/suite.py): thread setting, plans, timing helpers and the
machine figures (copy bandwidth, load average).

Every suite module imports this one before numpy: it sets the BLAS thread variables from `--threads`.
"""

from __future__ import annotations

import os
import sys

THREADS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "2")
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, THREADS)

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))  # the other benchmark scripts (sdk_vs_llama, speech, audio_input, memory)

# plan per mode: "full" keeps a 3B run under 30 minutes on 2 shared cores; "quick" is the smoke test
PLANS = {
    "full": {"repeats": 3, "thinker_tokens": 24, "image_repeats": {"448x448": 2, "1280x720": 1}, "audio_runs": 1,
             "audio_seconds": [10.0, 60.0], "talker_codes": 24, "t2w_codes": 50,
             "t2w_repeats": {"fast": 2, "reference": 1}, "chat_tokens": 16, "chat_codes": 50, "chat_repeats": 1,
             "mem_tokens": 8, "mem_codes": 30},
    "quick": {"repeats": 1, "thinker_tokens": 8, "image_repeats": {"448x448": 1, "1280x720": 1}, "audio_runs": 1,
              "audio_seconds": [10.0, 60.0], "talker_codes": 12, "t2w_codes": 12,
              "t2w_repeats": {"fast": 1, "reference": 1}, "chat_tokens": 6, "chat_codes": 12, "chat_repeats": 1,
              "mem_tokens": 4, "mem_codes": 8},
}
IMAGES = {"448x448": (448, 448), "1280x720": (1280, 720)}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ----------------------------------------------------------------------------- machine and rooflines


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        ram = int(f.readline().split()[1]) / 2**20
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram, 1)}


def copy_bandwidth(threads: int, mb: int = 256, reps: int = 5) -> dict[str, float]:
    """GB/s of numpy copies (bytes read + written), best of `reps`, with 1 and `threads` threads."""
    src = np.ones(mb << 17, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    out = {}
    for n in sorted({1, threads}):
        parts = np.array_split(np.arange(src.size), n)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
        best = 0.0
        with ThreadPoolExecutor(n) as pool:
            for _ in range(reps):
                t = time.perf_counter()
                list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
                best = max(best, 2 * src.nbytes / (time.perf_counter() - t) / 1e9)
        out[f"{n}_thread_gbs"] = best
    out["gbs"] = max(out.values())
    return out


class LoadSampler:
    """Samples the 1-minute load average every 10 s while the suite runs."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(10):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict[str, float]:
        self._stop.set()
        return {"start": self.samples[0], "mean": float(np.mean(self.samples)), "max": max(self.samples),
                "end": os.getloadavg()[0]}

