"""End of user speech -> first reply token: the whole clip sent at the end vs a live turn (issue 15, section 1).

    .venv/bin/python benchmarks/live_turn_latency.py --folder /work/synth/3b-q4_k_m --label 3b-synthetic
    .venv/bin/python benchmarks/live_turn_latency.py --tiny

A spoken question (espeak-ng, cut as a VAD cuts it: 0.3 s before, 0.1 s after) is "spoken" in real
time: 20 ms blocks fed at the pace they would be captured. `before`: the clip is sent with
`chat.send_sync(audio=...)` once the last block is in (today's VoiceSession). `after`: the blocks go
into `chat.begin_turn()` as they come (streaming clamp) and `finish_sync()` is called after the last.
Measured from the last block to the first reply token (max_tokens=1: Done follows it at once), and
the CPU seconds of the process over the same span. The two are alternated `--repeats`
times (ABAB...), medians reported. Text replies only (the first token is where speech starts from).
Shared 2-core machine: figures are noisy (the load average is recorded). Writes
benchmarks/results/live_turn_latency-<label>.json and appends a row to live_turn_latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pocketomni  # noqa: F401  before numpy: its OpenBLAS idle spin (pocketomni.blas_spin), as in an app

# isort: split
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
R = 16000
QUESTION = "What is on the kitchen counter right now?"


def question(seconds: float) -> np.ndarray:
    sys.path.insert(0, str(ROOT / "tests"))
    from audio_env import espeak

    q = espeak(QUESTION, R)
    if q.size < seconds * R:  # pad with the question's own level of silence: digital zeros
        q = np.concatenate([q, np.zeros(int(seconds * R) - q.size, np.float32)])
    return np.concatenate([np.zeros(int(0.3 * R), np.float32), q[: int(seconds * R)], np.zeros(int(0.1 * R), np.float32)])


def speak(clip: np.ndarray, on_block: Any) -> None:
    """Call on_block(block) for 20 ms blocks at real-time pace."""
    t0 = time.monotonic()
    for k, i in enumerate(range(0, clip.size, 320)):
        on_block(clip[i : i + 320])
        time.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))


def one(omni: Any, clip: np.ndarray, live: bool) -> dict[str, float]:
    import pocketomni as po

    chat = omni.chat(max_tokens=1)
    if live:
        turn = chat.begin_turn()
        speak(clip, turn.feed_audio)
        windows = turn.windows_prefilled
        t_end, cpu0 = time.perf_counter(), time.process_time()
        events = list(turn.finish_sync())
    else:
        blocks: list[np.ndarray] = []
        speak(clip, blocks.append)
        windows = 0
        t_end, cpu0 = time.perf_counter(), time.process_time()
        events = list(chat.send_sync(audio=[(np.concatenate(blocks), R)]))
    done = events[-1]
    assert isinstance(done, po.Done) and done.usage.reply_tokens <= 1
    first = time.perf_counter() - t_end  # max_tokens=1: Done comes right after the first reply token
    chat.close()
    return {"first_token_s": first, "cpu_s": time.process_time() - cpu0, "windows_before_end": windows,
            "prompt_tokens": done.usage.prompt_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--label", default="tiny")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    import pocketomni as po

    folder = args.folder
    if args.tiny:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import tempfile

        from audio_input import tiny_folder

        folder = tiny_folder(Path(tempfile.mkdtemp(prefix="live-latency-")))
    clip = question(args.seconds)
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with po.Omni.load_sync(folder) as omni:
        one(omni, clip[: 2 * R], False)  # warm-up: encoder weights, first decode
        for r in range(args.repeats):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                runs[name].append(one(omni, clip, name == "after"))
                print(name, runs[name][-1], flush=True)
    from suite_common import machine_info

    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in runs.items()}
    res = {"label": args.label, "folder": str(folder), "clip_seconds": clip.size / R, "load": [load0, os.getloadavg()[0]],
           "cpu": machine_info()["cpu"],
           "runs": runs, "median": med}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"live_turn_latency-{args.label}.json").write_text(json.dumps(res, indent=1))
    md = RESULTS / "live_turn_latency.md"
    if not md.exists():
        md.write_text("# End of user speech -> first reply token: whole clip vs live turn\n\n"
                      "Written by `benchmarks/live_turn_latency.py` (its docstring has the method). Medians; shared "
                      "2-core machine, noisy (load average at start -> end).\n\n"
                      "| model | clip (s) | before: first token (s) | after: first token (s) | before / after CPU after "
                      "the end (s) | windows in before the end | load |\n|---|---|---|---|---|---|---|\n")
    b, a = med["before"], med["after"]
    with md.open("a") as f:
        f.write(f"| {args.label} | {clip.size / R:.1f} | {b['first_token_s']:.2f} | {a['first_token_s']:.2f} | "
                f"{b['cpu_s']:.2f} / {a['cpu_s']:.2f} | {a['windows_before_end']:.0f} | {load0:.1f} -> "
                f"{os.getloadavg()[0]:.1f} |\n")
    print(json.dumps(med, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
