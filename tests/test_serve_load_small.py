"""A small run of the serve load test (benchmarks/serve_load.py): concurrent openai clients against
`pocketomni serve` on 127.0.0.1; every reply under load equals the same request run alone (text, and
the PCM of spoken replies), none is lost, and the report files are written. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401  (the benchmark writes its plot: fail loudly if missing)

ROOT = Path(__file__).resolve().parent.parent


def test_concurrent_clients_get_their_own_replies(converted_tiny, tmp_path) -> None:
    converted_tiny("base", "f32")  # built here (cached) so the benchmark finds it
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--tiny", "--clients", "3",
                          "--requests", "5", "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((tmp_path / "serve_load.json").read_text())
    assert (r["sent"], r["lost"], r["mismatched"]) == (15, 0, 0), r
    assert len(r["alone"]["latency"]) == 5 and len(r["load"]["latency"]) == 15
    assert r["ttfa"]["http_median"] > 0 and r["ttfa"]["in_process_median"] > 0
    assert "**Sent 15, lost 0, mismatched 0**" in (tmp_path / "serve_load.md").read_text()
    assert (tmp_path / "serve_load.png").stat().st_size > 10_000
