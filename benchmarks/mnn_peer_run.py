"""Start MNN tools in their own venv, under the network guard (benchmarks/mnn_peer/guard).

The venv comes from scripts/mnn_venv.sh (default ~/.cache/pocketomni/mnn-venv, or $POCKETOMNI_MNN_VENV).
Each call runs the venv's interpreter by its full path with a fresh environment: the guard's
sitecustomize first on PYTHONPATH (Python sockets refused), the guard's refusing `pip` first on PATH
and nothing of the venv on PATH, no user site-packages, offline flags for the Hugging Face libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GUARD = HERE / "mnn_peer" / "guard"
WORKER = HERE / "mnn_peer" / "worker.py"
RESULT = "MNNPEER_RESULT "


class MNNUnavailable(RuntimeError):
    """The MNN venv is not set up; the peer rows are skipped."""


def venv_python() -> Path:
    venv = Path(os.environ.get("POCKETOMNI_MNN_VENV", Path.home() / ".cache/pocketomni/mnn-venv"))
    py = venv / "bin" / "python"
    if not py.is_file():
        raise MNNUnavailable(
            f"MNN is not installed ({py} missing): run `bash scripts/mnn_venv.sh` to compare against MNN.")
    return py


def guarded_env(threads: int | None = None) -> dict[str, str]:
    env = {
        "PATH": f"{GUARD / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": str(GUARD),
        "PYTHONNOUSERSITE": "1",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PIP_NO_INDEX": "1",
    }
    if threads:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[v] = str(threads)
    return env


def run_worker(*args: str, threads: int | None = None, timeout: float = 3600, log: Path | None = None,
               python: Path | None = None) -> dict[str, Any]:
    """Run `worker.py ARGS` in the MNN venv (or `python`) under the guard; its result is the JSON after RESULT."""
    py = python or venv_python()
    proc = subprocess.run([str(py), str(WORKER), *args], env=guarded_env(threads), capture_output=True,
                          text=True, timeout=timeout,
                          cwd=str(log.parent) if log else tempfile.gettempdir())  # llmexport writes .export.log here
    if log is not None:
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"MNN worker {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [x[x.index(RESULT):] for x in proc.stdout.splitlines() if RESULT in x]
    if not lines:
        raise RuntimeError(f"MNN worker {args[0]} printed no result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT):])
