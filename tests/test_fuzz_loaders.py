"""Fuzz the loaders and the chat-file reader (issue 19): a few hundred damaged inputs (random
truncation, bit flips and garbage in file headers, JSON values swapped for other types, chat files
damaged behind valid checksums) must each load or fail with a PocketOmniError. Cases run in worker
subprocesses (tests/fuzz_worker.py), so a native crash or a hang is a failure naming its case; a
crashed worker is replaced and the run goes on. The counts are printed (run with -s to see them).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_worker import cases

BATCH_TIMEOUT = 600.0  # seconds for one worker; a case that hangs is named when it is killed


def _run_workers(folder: Path, work: Path) -> tuple[list[dict], list[dict]]:
    """Run every case; returns (records of finished cases, crashes/hangs with the case they hit)."""
    total = len(cases())
    log = work / "results.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    records: dict[int, dict] = {}
    failures: list[dict] = []
    nxt = 0
    while nxt < total:
        wdir = work / f"worker-{nxt}"
        wdir.mkdir()
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fuzz_worker.py"), str(folder), str(wdir),
                                 str(nxt), str(total), str(log)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=BATCH_TIMEOUT)
            why = None if proc.returncode == 0 else f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            why = "hang (killed)"
        started, how = None, ""
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "start" in rec:
                started, how = rec, ""
            elif "how" in rec and len(rec) == 1:
                how = rec["how"]
            else:
                records[rec["i"]] = rec
                started = None
        if why is None:
            break
        if started is None or started["start"] in records:
            raise AssertionError(f"fuzz worker failed outside a case ({why}):\n{err.decode()[-3000:]}")
        failures.append({**started, "how": how, "outcome": why, "stderr": err.decode()[-800:]})
        nxt = started["start"] + 1
    return [records[i] for i in sorted(records)], failures


def test_fuzz_loaders_and_chat_files(converted_tiny, tmp_path) -> None:
    t0 = time.monotonic()
    records, failures = _run_workers(converted_tiny("base", "f32"), tmp_path)
    counts = collections.Counter((r["target"], r["outcome"]) for r in records)
    for f in failures:
        counts[(f["target"], "crash")] += 1
    targets = sorted({t for t, _ in counts})
    table = "\n".join(f"  {t:14s} " + "  ".join(f"{o} {counts[(t, o)]}" for o in ("ok", "typed", "untyped", "crash"))
                      for t in targets)
    total = len(records) + len(failures)
    print(f"\nfuzz: {total} cases in {time.monotonic() - t0:.0f} s; typed errors "
          f"{sum(r['outcome'] == 'typed' for r in records)}, loaded {sum(r['outcome'] == 'ok' for r in records)}, "
          f"untyped {sum(r['outcome'] == 'untyped' for r in records)}, crashes {len(failures)}\n{table}")
    assert total == len(cases())
    untyped = [r for r in records if r["outcome"] == "untyped"]
    problems = [f"{f['target']} seed {f['seed']}: {f['outcome']} after {f['how']!r}" for f in failures]
    problems += [f"{r['target']} seed {r['seed']}: {r['how']!r} -> {r['error'].splitlines()[-1]}" for r in untyped]
    assert not problems, "\n".join(problems[:40])
    for t in targets:  # every target's damage was noticed at least once
        assert counts[(t, "typed")] > 0, t
