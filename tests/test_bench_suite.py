"""Smoke test of the benchmark suite (benchmarks/suite.py) on the tiny demo model, reduced mode.

Checks that every section runs without error and that the table (every headline row filled) and the
plot are written; no timing is asserted.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib  # noqa: F401  (the suite writes its plot; hard dependency: fail loudly if missing)
import pytest
import torch  # noqa: F401  (the suite times PyTorch's token2wav; hard dependency: fail loudly if missing)

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite.py"


def _rows() -> list[str]:
    """The suite's ROWS list, read from its source (importing it would set thread variables here)."""
    tree = ast.parse(SUITE.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ROWS")
    return list(ast.literal_eval(node.value))


_WALL_S: dict[str, float] = {}  # wall time of the suite's subprocess, measured here


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(SUITE), "--tiny", "--quick", "--threads", "1", "--shape", "tiny",
                          "--out", str(out)], capture_output=True, text=True, timeout=1200, check=False)
    _WALL_S["suite"] = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_suite_sections_ran(results: Path) -> None:
    r = json.loads((results / "suite-tiny.json").read_text())
    assert set(r["sections"]) == {"machine", "audio", "memory", "thinker", "image", "speech"}
    errors = {k: v["error"] for k, v in r["sections"].items() if "error" in v}
    assert not errors
    assert r["sections"]["thinker"]["greedy_tokens_identical"]  # SDK and raw loop decode the same tokens
    # The suite's own clock spans every section and lies inside the subprocess we timed.
    sections_s = sum(v["seconds"] for v in r["sections"].values())
    assert sections_s <= r["elapsed_s"] <= _WALL_S["suite"], (sections_s, r["elapsed_s"], _WALL_S)
    assert r["machine"]["cores"] == os.cpu_count()


def test_suite_table_has_every_row(results: Path) -> None:
    md = (results / "suite.md").read_text()
    assert "## tiny" in md and "load average" in md and "Elapsed" in md
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and ln.count("|") == 6}
    for row in _rows():
        assert row in lines, f"row {row!r} missing from suite.md"
        ours = lines[row].split("|")[2].strip()
        assert ours not in ("-", "not run") and not ours.startswith("error"), lines[row]


def test_suite_plot_written(results: Path) -> None:
    png = (results / "suite.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_bench_rebuilds_report(results: Path) -> None:
    (results / "suite.md").unlink()
    res = subprocess.run([sys.executable, "-m", "pocketomni.cli.main", "bench", "--report", "--out", str(results)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| thinker decode |" in (results / "suite.md").read_text()
