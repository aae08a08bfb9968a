"""pocketomni shortens OpenBLAS's idle spin at import (pocketomni.blas_spin), and it takes effect.

Each case runs in a fresh interpreter: OpenBLAS reads the variable once, when numpy loads it.

The behavioural check: after a 2-thread matmul the process sleeps 50 ms and its CPU time over that
sleep is read. OpenBLAS's default spin is 2^28 cycles, >= 53 ms on any CPU up to 5 GHz, so the worker
thread busy-waits through the whole sleep (tens of ms of CPU); with pocketomni's 2^20 cycles (<= 1 ms at
>= 1 GHz) it sleeps within about a millisecond.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pocketomni import blas_spin

IDLE_CPU = """
import json, sys, time
first = sys.argv[1]
if first == "pocketomni":
    import pocketomni
import numpy as np
import os
a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
idle = []
for _ in range(5):
    a @ a
    c = time.process_time(); time.sleep(0.05); idle.append(time.process_time() - c)
from pocketomni import blas_spin
print(json.dumps({"env": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "idle_ms": 1000 * min(idle),
                  "state": blas_spin.state(), "exponent": blas_spin.exponent()}))
"""


def run(first: str, **env: str) -> dict[str, object]:
    e = {k: v for k, v in os.environ.items() if k != blas_spin.VARIABLE}
    e.update(OPENBLAS_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", IDLE_CPU, first], env=e, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def openblas() -> None:
    from pocketomni.numpy_blas import numpy_blas

    if "openblas" not in numpy_blas().name.lower():
        pytest.fail(f"these tests need numpy with OpenBLAS (the test extra's numpy wheels); got {numpy_blas().name}")


def test_import_sets_the_spin_and_workers_sleep_soon(openblas: None) -> None:
    r = run("pocketomni")
    assert r["env"] == str(blas_spin.SPIN_EXPONENT)
    assert "set by pocketomni" in str(r["state"]) and r["exponent"] == blas_spin.SPIN_EXPONENT
    assert r["idle_ms"] < 10, r  # 2^20 cycles: ~1 ms of spin at most


def test_numpy_first_keeps_the_default_and_says_how_to_fix(openblas: None) -> None:
    r = run("numpy")
    assert r["env"] is None and r["exponent"] == blas_spin.DEFAULT_EXPONENT
    assert "import pocketomni first" in str(r["state"]) and "OPENBLAS_THREAD_TIMEOUT=20" in str(r["state"])
    assert r["idle_ms"] > 20, r  # the default spin (>= 53 ms) covers most of each 50 ms sleep


def test_a_users_value_is_kept(openblas: None) -> None:
    r = run("pocketomni", OPENBLAS_THREAD_TIMEOUT="28")
    assert r["env"] == "28" and "set by you" in str(r["state"]) and r["exponent"] == 28
    assert r["idle_ms"] > 20, r
