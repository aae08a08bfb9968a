"""OpenBLAS's idle spin and the spoken reply (pocketomni.blas_spin): its default against pocketomni's.

Usage:
    .venv/bin/python benchmarks/blas_spin.py --folder /work/synth/3b-fast --label 3b-fast [--rounds 2]
    .venv/bin/python benchmarks/blas_spin.py --report        # rebuild blas_spin.md / .png from the json

Each round starts one fresh process per setting of OPENBLAS_THREAD_TIMEOUT (28: OpenBLAS's default; 20:
what pocketomni sets), in alternating order. A process loads the folder and runs `--turns` spoken turns
(the first is a warm-up and not counted) of `--tokens` greedy tokens and `--codes` codes, one after another
(`pipelined=False`, every stage on all cores) and then `--pipelined-turns` pipelined ones. Per turn: time
to first text and first audio, the thinker's mean decode step (wrapped here), the talker's and token2wav's
busy seconds, total seconds and the process's CPU seconds. Medians per setting; ratios 20 vs 28.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SETTINGS = ("28", "20")
FIGURES = [("first_text_s", "text prompt -> first text (s)"), ("first_audio_s", "text prompt -> first audio (s)"),
           ("thinker_step_ms", "thinker decode step (ms)"), ("talker_s", "talker busy (s)"),
           ("token2wav_s", "token2wav busy (s)"), ("total_s", "total (s)"), ("cpu_s", "process CPU (s)")]


def child(folder: str, turns: int, pipelined_turns: int, tokens: int, codes: int) -> None:
    """One process: spoken turns, one JSON line per counted turn."""
    sys.path.insert(0, str(HERE))
    from spoken_turn import PROMPT

    import pocketomni as po

    with po.Omni.load_sync(folder) as omni:
        plan = [False] * turns + [True] * pipelined_turns
        for i, pipelined in enumerate(plan):
            opts = po.SpeechOptions(max_codes=codes, seed=5, pipelined=pipelined)
            chat = omni.chat(speech=True, speech_options=opts, max_tokens=tokens, temperature=0.0)
            sess, step, busy = chat._session, chat._session.step, [0.0, 0]

            def timed(tok: int, step: Any = step, busy: list = busy) -> Any:
                t = time.perf_counter()
                try:
                    return step(tok)
                finally:
                    busy[0] += time.perf_counter() - t
                    busy[1] += 1

            sess.step = timed
            c0 = time.process_time()
            for ev in chat.send_sync(PROMPT):
                done = ev
            tm, sp = done.timings, chat._last_speech
            chat.close()
            if i == 0:
                continue  # warm-up
            print(json.dumps({"pipelined": pipelined, "first_text_s": tm.time_to_first_token,
                              "first_audio_s": tm.time_to_first_audio, "thinker_step_ms": 1000 * busy[0] / busy[1],
                              "talker_s": sp.talker_seconds, "token2wav_s": sp.render_seconds,
                              "total_s": tm.total_seconds, "cpu_s": time.process_time() - c0}), flush=True)


def run(a: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from suite_common import machine_info

    turns: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    load = [os.getloadavg()[0]]
    for r in range(a.rounds):
        for s in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            env = {**os.environ, "OPENBLAS_THREAD_TIMEOUT": s}
            out = subprocess.run([sys.executable, __file__, "--child", str(a.folder), "--turns", str(a.turns),
                                  "--pipelined-turns", str(a.pipelined_turns), "--tokens", str(a.tokens),
                                  "--codes", str(a.codes)], env=env, capture_output=True, text=True, check=True)
            rows = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
            turns[s] += rows
            for row in rows:
                print(f"round {r} spin 2^{s} {'pipelined' if row['pipelined'] else 'sequential'}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "pipelined"), flush=True)
            load.append(os.getloadavg()[0])
    return {"label": a.label, "folder": str(a.folder), "when": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine_info(), "load": load, "tokens": a.tokens, "codes": a.codes, "turns": turns}


def med(rows: list[dict[str, Any]], pipelined: bool, key: str) -> float | None:
    xs = [r[key] for r in rows if r["pipelined"] is pipelined]
    return statistics.median(xs) if xs else None


def write_report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("blas_spin-*.json"))]
    lines = ["# OpenBLAS's idle spin and the spoken reply", "",
             ("Written by `benchmarks/blas_spin.py` (its docstring has the method). OPENBLAS_THREAD_TIMEOUT=28 is "
              "OpenBLAS's default (workers busy-wait 2^28 cycles after a call), 20 is what pocketomni sets at "
              "import (pocketomni.blas_spin). Medians over fresh processes, settings alternated; ratio = 20 / 28."), ""]
    for r in runs:
        m = r["machine"]
        lines += [f"## {r['label']}", "",
                  (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; {r['folder']}; {r['tokens']} tokens, "
                   f"{r['codes']} codes; load average {r['load'][0]:.1f} -> {r['load'][-1]:.1f}; {r['when']}."), ""]
        for pipelined in (False, True):
            n = sum(1 for t in r["turns"]["20"] if t["pipelined"] is pipelined)
            if not n:
                continue
            lines += [f"{'Pipelined' if pipelined else 'One after another (all cores per stage)'}, {n} turns per setting:",
                      "", "| figure | spin 2^28 (default) | spin 2^20 (pocketomni) | ratio |", "|---|---|---|---|"]
            for key, title in FIGURES:
                old, new = med(r["turns"]["28"], pipelined, key), med(r["turns"]["20"], pipelined, key)
                lines.append(f"| {title} | {old:.2f} | {new:.2f} | {new / old:.2f}x |")
            lines.append("")
    (RESULTS / "blas_spin.md").write_text("\n".join(lines))
    plot(runs)


def plot(runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    keys = ["first_audio_s", "total_s", "cpu_s"]
    for ax, r in zip(axes[0], runs, strict=True):
        for j, (s, label) in enumerate((("28", "spin 2^28 (default)"), ("20", "spin 2^20"))):
            ax.bar([i + 0.4 * j for i in range(len(keys))], [med(r["turns"][s], False, k) for k in keys], 0.4,
                   label=label)
        ax.set_xticks([i + 0.2 for i in range(len(keys))], ["first audio", "turn total", "CPU"])
        ax.set_ylabel("seconds")
        ax.set_title(f"{r['label']}: one after another")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "blas_spin.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--label", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--turns", type=int, default=3, help="one-after-another turns per process (first: warm-up)")
    ap.add_argument("--pipelined-turns", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=60)
    ap.add_argument("--codes", type=int, default=200)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.turns, a.pipelined_turns, a.tokens, a.codes)
        return
    if not a.report:
        if a.folder is None:
            ap.error("--folder is required (or --report)")
        res = run(a)
        (RESULTS / f"blas_spin-{a.label or a.folder.name}.json").write_text(json.dumps(res, indent=1))
    write_report()
    print((RESULTS / "blas_spin.md").read_text())


if __name__ == "__main__":
    main()
