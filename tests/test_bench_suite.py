"""Smoke test of the benchmark suite (benchmarks/suite.py) on the tiny demo model, reduced mode.

Checks that every section runs without error and that the table (every headline row filled) and the
plot are written; no timing is asserted.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite.py"

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def _rows() -> list[str]:
    """The suite's ROWS list, read from its source (importing it would set thread variables here)."""
    tree = ast.parse(SUITE.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ROWS")
    return list(ast.literal_eval(node.value))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    res = subprocess.run([sys.executable, str(SUITE), "--tiny", "--quick", "--threads", "1", "--shape", "tiny",
                          "--out", str(out)], capture_output=True, text=True, timeout=1200, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_suite_sections_ran(results: Path) -> None:
    r = json.loads((results / "suite-tiny.json").read_text())
    assert set(r["sections"]) == {"machine", "audio", "memory", "thinker", "image", "speech"}
    errors = {k: v["error"] for k, v in r["sections"].items() if "error" in v}
    assert not errors
    assert r["sections"]["thinker"]["greedy_tokens_identical"]  # SDK and raw loop decode the same tokens
    assert r["elapsed_s"] > 0 and r["machine"]["cores"] >= 1


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
    res = subprocess.run([sys.executable, "-m", "pocketomni.cli", "bench", "--report", "--out", str(results)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| thinker decode |" in (results / "suite.md").read_text()
