"""How fast a turn stops, per stage: `chat.cancel()` and `omni.close()` issued while the turn is encoding
a long audio clip, prefilling a long prompt, decoding text, or speaking (both speech engines).

Usage:
    .venv/bin/python benchmarks/stop_latency.py --tiny                  # the tiny test model
    .venv/bin/python benchmarks/stop_latency.py --folder DIR --label 3b-synthetic

Each case runs the turn in a thread, waits until the stage is under way (an instrumented entry point
of that stage has been entered), issues the stop from the main thread and measures the wall time until
the turn's thread has ended (and for close, until close() returned). Reported, never asserted: the
machine is shared and noisy. Writes benchmarks/results/stop_latency.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))

import pocketomni as po
from pocketomni.audio.tower import AudioEncoder
from pocketomni.backend.context import LlamaContext
from pocketomni.token2wav.dit import DiT


class Probe:
    """Sets `entered` the first time the wrapped function runs (the stage is under way)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.real = owner, name, getattr(owner, name)
        self.entered = threading.Event()
        probe = self

        def wrapped(*a: Any, **k: Any) -> Any:
            probe.entered.set()
            return probe.real(*a, **k)

        setattr(owner, name, wrapped)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.real)


def run_case(folder: Path, stage: str, how: str, pipelined: bool | None) -> float:
    """Seconds from the stop call to the turn's end (cancel) or to close() returning (close)."""
    omni = po.Omni.load_sync(folder, n_threads=1, n_ctx=16384)  # room for a 240 s clip (6000 tokens)
    speech = stage == "speech"
    opts = po.SpeechOptions(temperature=0.0, max_codes=4000, seed=1, pipelined=pipelined) if speech else None
    chat = omni.chat(speech=speech, speech_options=opts, max_tokens=4000) if speech else omni.chat(max_tokens=4000)
    kwargs: dict[str, Any] = {}
    if stage == "audio encode":
        probe = Probe(AudioEncoder, "_encode_group")
        kwargs["audio"] = [(np.random.default_rng(0).standard_normal(16000 * 240).astype(np.float32) * 0.1, 16000)]
    elif stage == "prefill":
        probe = Probe(LlamaContext, "decode")
        kwargs["text"] = "word " * 3000
    elif stage == "text decode":
        probe = Probe(LlamaContext, "decode")
    else:
        probe = Probe(DiT, "embed_input")  # token2wav is rendering
    text = kwargs.pop("text", "Tell me a very long story.")
    done = threading.Event()

    def turn() -> None:
        try:
            for _ in chat.send_sync(text, **kwargs):
                pass
        except po.PocketOmniError:
            pass
        done.set()

    worker = threading.Thread(target=turn, daemon=True)
    worker.start()
    while not probe.entered.wait(0.05):
        if done.is_set():  # the turn ended (an error) before the stage began
            probe.restore()
            omni.close()
            raise RuntimeError(f"the {stage} case ended before its stage began")
    if stage in ("text decode", "speech"):
        time.sleep(1.0)  # well into the stage
    t0 = time.perf_counter()
    if how == "cancel":
        chat.cancel()
        done.wait(600)
        dt = time.perf_counter() - t0
        omni.close()
    else:
        omni.close()
        dt = time.perf_counter() - t0
        done.wait(600)
    probe.restore()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="run only this stage (e.g. 'audio encode')")
    args = ap.parse_args()
    if args.tiny:
        from conftest import _convert_cached  # the test suite's cached conversion
        from omni_fixtures import build_checkpoint

        folder, label = _convert_cached(build_checkpoint("base"), "f32", "f32", "f16"), "tiny"
    elif args.folder:
        folder, label = args.folder, args.label or args.folder.name
    else:
        ap.error("pass --tiny or --folder")
    cases: list[tuple[str, str, bool | None]] = [
        (stage, how, None) for stage in ("audio encode", "prefill", "text decode") for how in ("cancel", "close")
    ] + [("speech", how, p) for p in (False, True) for how in ("cancel", "close")]
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
    rows = []
    for stage, how, pipelined in cases:
        times = [run_case(folder, stage, how, pipelined) for _ in range(args.repeats)]
        name = stage if pipelined is None else f"speech ({'pipelined' if pipelined else 'one after another'})"
        rows.append({"stage": name, "stop": how, "median_s": statistics.median(times), "max_s": max(times),
                     "runs": times})
        print(f"{name:32} {how:6} median {statistics.median(times) * 1000:8.1f} ms  max {max(times) * 1000:8.1f} ms",
              flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    out = {"label": label, "load": load, "rows": rows, "cpu": _cpu()}
    (RESULTS / f"stop_latency-{label}.json").write_text(json.dumps(out, indent=1))
    md = [f"# Stop latency ({label})", "",
          f"{out['cpu']}; 1 llama.cpp thread; {args.repeats} runs per case; load average {load[0]:.1f} "
          "(shared 2-core machine: noisy). Wall time from `chat.cancel()` to the turn's end, or for "
          "`omni.close()` until it returned, issued while the stage runs (benchmarks/stop_latency.py).", "",
          "| stage | stop | median | max |", "|---|---|---|---|"]
    md += [f"| {r['stage']} | {r['stop']} | {r['median_s'] * 1000:.0f} ms | {r['max_s'] * 1000:.0f} ms |" for r in rows]
    (RESULTS / f"stop_latency-{label}.md").write_text("\n".join(md) + "\n")
    _plot(rows, label)
    return 0


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _plot(rows: list[dict[str, Any]], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [f"{r['stage']}\n{r['stop']}" for r in rows]
    ax.barh(names, [r["median_s"] * 1000 for r in rows])
    ax.set_xlabel("ms to stop (median)")
    ax.set_title(f"Stop latency per stage ({label})")
    fig.tight_layout()
    fig.savefig(RESULTS / f"stop_latency-{label}.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
