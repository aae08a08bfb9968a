"""Each native stage runs in a child process (`pocketomni.cli.doctor.run_stage`), so a crash in native code
(a SIGSEGV in a llama.cpp kernel, as with the AMX kernels of llama.cpp issue 20824) is a named failing
test with its signal and the child's stderr, and the rest of the suite still runs.

Stages: the demo model's (q8_0 thinker and q8_0 talker, every matrix Q8_0; numpy audio encoder; mtmd
vision; token2wav), plus the converter's q4_k_m thinker in each weight layout and its q4_k_m talker.
Those come from the "gqa4" tiny checkpoint (thinker hidden 128, FFN 256). llama.cpp's K-quants need rows
of 256 columns, so at these shapes q4_k_m falls back for most tensors: the thinker's ffn_down keeps
Q4_K / Q6_K (checked below, so the Q4_K kernels and CPU_REPACK's Q4_K layout really run) and the rest
becomes Q5_0 / Q8_0; the talker (hidden 48, not even a multiple of 32) stays mostly F16, with only
ffn_down quantized (Q5_0 / Q8_0). The fully quantized talker is the demo's q8_0 one.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import llama_cpp  # noqa: F401  (hard dependency: fail loudly if missing)
import pytest

from pocketomni.cli.doctor import CRASH_STAGE, DEMO_STAGE, DEMO_TIMEOUT, SMOKE_STAGES, StageResult, run_stage

THREADS = 1  # the test machines are small and shared


@pytest.fixture(scope="module")
def smoke_env() -> dict[str, str]:
    """Children build and find the demo model in the test cache, not in the user's."""
    from omni_fixtures import cache_root

    return dict(os.environ, POCKETOMNI_CACHE=str(cache_root() / "demo-cache"))


@pytest.fixture(scope="module")
def demo_folder(smoke_env: dict[str, str]) -> str:
    r = run_stage(DEMO_STAGE, env=smoke_env, timeout=DEMO_TIMEOUT)  # the quantizer is native code too
    check(r)
    return str(r.data["folder"])


@pytest.fixture(scope="module")
def q4_folder(converted_tiny) -> Path:
    return converted_tiny("gqa4", "q4_k_m")


def check(r: StageResult) -> None:
    """Fail with the stage, how it ended (signal name) and the child's stderr tail."""
    assert r.ok, r.describe()


@pytest.mark.parametrize("stage", list(SMOKE_STAGES))
def test_stage_runs_on_the_demo_model(stage: str, demo_folder: str, smoke_env: dict[str, str]) -> None:
    r = run_stage(stage, demo_folder, threads=THREADS, env=smoke_env)
    check(r)
    if stage in ("thinker", "talker"):
        assert r.data["file"] == f"{stage}-q8_0.gguf"  # the quantized files, as the demo ships them


# None: the guard's choice ("default" where AMX is not a hazard). "default" is not forced: on an AMX host
# with a llama.cpp built with AMX kernels it is the crash the guard exists to avoid.
@pytest.mark.parametrize("layout", [None, "repack", "plain"])
def test_q4_k_m_thinker_decodes(layout: str | None, q4_folder: Path) -> None:
    from pocketomni.backend.cpu_guard import current_decision

    r = run_stage("thinker", q4_folder, threads=THREADS, weight_layout=layout)
    check(r)
    assert r.data["file"] == "thinker-q4_k_m.gguf"
    assert r.data["weight_layout"] == (layout or current_decision().layout)


def test_q4_k_m_talker_runs(q4_folder: Path) -> None:
    r = run_stage("talker", q4_folder, threads=THREADS)
    check(r)
    assert r.data["file"] == "talker-q4_k_m.gguf"


def _matrix_types(path: Path) -> set[str]:
    from pocketomni.gguf_file import GGUFFile

    return {t.ggml_type.name for t in GGUFFile.open(path).tensors.values() if len(t.shape) == 2}


def test_q4_k_m_file_holds_q4_k_weights(q4_folder: Path) -> None:
    """The q4_k_m smoke must run the Q4_K kernels, not only the fallback types of narrow rows."""
    assert "Q4_K" in _matrix_types(q4_folder / "thinker-q4_k_m.gguf")


def test_demo_thinker_and_talker_are_quantized(demo_folder: str) -> None:
    for name in ("thinker-q8_0.gguf", "talker-q8_0.gguf"):
        assert _matrix_types(Path(demo_folder) / name) == {"Q8_0"}, name


# ---------------------------------------------------------------------- the harness itself


def test_a_crashing_stage_fails_naming_its_signal() -> None:
    r = run_stage(CRASH_STAGE)  # the child kills itself with SIGSEGV
    assert (r.ok, r.returncode, r.signal) == (False, -signal.SIGSEGV, "SIGSEGV")
    assert "Segmentation fault" in r.stderr_tail  # faulthandler's report reached the message
    with pytest.raises(AssertionError) as info:
        check(r)
    msg = str(info.value)
    assert msg.startswith(f"{CRASH_STAGE}: FAILED, crashed with SIGSEGV") and "Segmentation fault" in msg


def test_a_python_error_in_a_stage_fails_with_its_message(tmp_path: Path) -> None:
    r = run_stage("thinker", tmp_path / "missing", threads=THREADS)
    assert (r.ok, r.returncode, r.signal) == (False, 1, None)
    assert "ModelFileError" in r.figure and "model folder not found" in r.figure
    assert "Traceback" in r.stderr_tail
