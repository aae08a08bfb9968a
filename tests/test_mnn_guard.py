"""The MNN peer benchmark's network guard (benchmarks/mnn_peer): every process it starts refuses sockets.

The guard is checked with this interpreter (always) and with the MNN venv's when scripts/mnn_venv.sh
has made one; a local listener proves a refused connect is the guard's doing, not a missing route.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import mnn_peer_run as peer


def _interpreters() -> list[Path]:
    out = [Path(sys.executable)]
    try:
        out.append(peer.venv_python())
    except peer.MNNUnavailable:
        pass
    return out


@pytest.fixture()
def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s
    s.close()


@pytest.mark.parametrize("python", _interpreters(), ids=lambda p: "venv" if "mnn-venv" in str(p) else "this")
def test_connect_in_guarded_process_raises(python: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    res = peer.run_worker("netprobe", "127.0.0.1", str(port), python=python, timeout=120)
    assert res["refused_by"] == "NetworkBlocked", res
    ready, _, _ = select.select([listener], [], [], 0.2)
    assert not ready  # nothing reached the listener


def test_guard_blocks_resolution_and_pip() -> None:
    code = ("import socket\n"
            "for f in (lambda: socket.getaddrinfo('localhost', 80), lambda: socket.create_connection(('127.0.0.1', 9))):\n"
            "    try:\n        f()\n    except OSError as e:\n        print(type(e).__name__)\n")
    env = peer.guarded_env()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["NetworkBlocked", "NetworkBlocked"], out.stderr
    pip = subprocess.run(["pip", "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert pip.returncode != 0 and "disabled" in pip.stderr
    assert "mnn-venv" not in env["PATH"]


def test_worker_refuses_to_run_without_guard() -> None:
    env = {k: v for k, v in peer.guarded_env().items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(peer.WORKER), "netprobe", "127.0.0.1", "9"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=str(peer.WORKER.parent))
    assert out.returncode != 0 and "guard is not active" in out.stderr


def test_mnn_logger_stays_offline_in_venv() -> None:
    """MNN's usage logger in the venv: the aliyun stand-in is what it imports, and it finds no network."""
    try:
        py = peer.venv_python()
    except peer.MNNUnavailable:
        py = None
    if py is None:  # the MNN venv is optional (scripts/mnn_venv.sh); say so instead of passing unchecked
        assert not os.environ.get("POCKETOMNI_REQUIRE_MNN"), "POCKETOMNI_REQUIRE_MNN set but no MNN venv"
        pytest.skip("no MNN venv: run scripts/mnn_venv.sh to check MNN's usage logger stays offline")
    res = peer.run_worker("telemetry", python=py, timeout=300)
    assert res == {"aliyun_stub": True, "logger_network_available": False}
