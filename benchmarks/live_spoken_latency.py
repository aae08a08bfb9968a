"""End of user speech -> first reply text and first sound of a spoken reply, against a typed question.

    .venv/bin/python benchmarks/live_spoken_latency.py --folder /work/synth/3b-fast --label 3b-fast
    .venv/bin/python benchmarks/live_spoken_latency.py --report      # rebuild live_spoken_latency.md / .png

Issue 15's second figure: how much later the first sound comes when the question is spoken than when
it is typed (the listening work that is not hidden). Per repeat, in rotated order, three spoken turns
(`speech=True`, greedy text, seeded talker, the SDK's default engine for this machine):
- `typed`: the question as text, timed from `send`;
- `whole`: the spoken question (live_turn_latency's espeak-ng clip, fed in real-time 20 ms blocks) sent
  in one piece once its last block is in, timed from that moment;
- `live`: the same blocks fed into `chat.begin_turn()` as they come, `finish` after the last, timed from
  the last block.
Each turn stops at its first audio chunk. Medians of first text and first audio; the live figures minus
the typed ones are the cost of listening.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pocketomni as po  # before numpy: its OpenBLAS idle spin (pocketomni.blas_spin), as in an app

# isort: split
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from live_turn_latency import QUESTION, R, question, speak

MODES = ("typed", "whole", "live")


def turn(omni: Any, clip: np.ndarray, mode: str) -> dict[str, float]:
    chat = omni.chat(speech=True, max_tokens=60, temperature=0.0,
                     speech_options=po.SpeechOptions(max_codes=200, seed=5))
    if mode == "typed":
        t0 = time.perf_counter()
        events = chat.send_sync(QUESTION)
    elif mode == "whole":
        blocks: list[np.ndarray] = []
        speak(clip, blocks.append)
        t0 = time.perf_counter()
        events = chat.send_sync(audio=[(np.concatenate(blocks), R)])
    else:
        live = chat.begin_turn()
        speak(clip, live.feed_audio)
        t0 = time.perf_counter()
        events = live.finish_sync()
    first_text = first_audio = float("nan")
    for ev in events:
        if isinstance(ev, po.TextDelta) and math.isnan(first_text):
            first_text = time.perf_counter() - t0
        if isinstance(ev, po.AudioChunk):
            first_audio = time.perf_counter() - t0
            break
    events.close()
    chat.close()
    return {"first_text_s": first_text, "first_audio_s": first_audio}


def run(folder: Path, label: str, repeats: int, seconds: float) -> dict[str, Any]:
    clip = question(seconds)
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with po.Omni.load_sync(folder) as omni:
        turn(omni, clip[: 2 * R], "whole")  # warm-up: speech load, encoder, first decodes
        for r in range(repeats):
            for mode in MODES[r % 3:] + MODES[: r % 3]:
                runs[mode].append(turn(omni, clip, mode))
                print(r, mode, runs[mode][-1], flush=True)
    load.append(os.getloadavg()[0])
    from suite_common import machine_info

    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in runs.items()}
    return {"label": label, "folder": str(folder), "clip_seconds": clip.size / R, "load": load,
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": machine_info()["cpu"],
            "runs": runs, "median": med}


def write_report() -> None:
    res = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("live_spoken_latency-*.json"))]
    lines = ["# Spoken reply: end of user speech vs a typed question", "",
             "Written by `benchmarks/live_spoken_latency.py` (its docstring has the method). Medians.", ""]
    for r in res:
        m = r["median"]
        lines += [f"## {r['label']}", "",
                  (f"{r['cpu']}; {r['folder']}; question clip {r['clip_seconds']:.1f} s; {len(r['runs']['live'])} "
                   f"turns per mode; load average {r['load'][0]:.1f} -> {r['load'][-1]:.1f}; {r['when']}."), "",
                  "| question | -> first text (s) | -> first audio (s) | first audio minus typed (s) |",
                  "|---|---|---|---|"]
        for mode, title in (("typed", "typed (from send)"), ("whole", "spoken, sent whole at the end (from its end)"),
                            ("live", "spoken, live turn (from its end)")):
            extra = m[mode]["first_audio_s"] - m["typed"]["first_audio_s"]
            lines.append(f"| {title} | {m[mode]['first_text_s']:.2f} | {m[mode]['first_audio_s']:.2f} | "
                         f"{'' if mode == 'typed' else f'{extra:+.2f}'} |")
        lines.append("")
    (RESULTS / "live_spoken_latency.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(5 * len(res), 3.5), squeeze=False)
    for ax, r in zip(axes[0], res, strict=True):
        for j, key in enumerate(("first_text_s", "first_audio_s")):
            ax.bar([i + 0.4 * j for i in range(3)], [r["median"][m][key] for m in MODES], 0.4, label=key[:-2].replace("_", " "))
        ax.set_xticks([i + 0.2 for i in range(3)], list(MODES))
        ax.set_ylabel("seconds after the question")
        ax.set_title(r["label"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "live_spoken_latency.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        if a.folder is None:
            ap.error("--folder is required (or --report)")
        res = run(a.folder, a.label or a.folder.name, a.repeats, a.seconds)
        (RESULTS / f"live_spoken_latency-{res['label']}.json").write_text(json.dumps(res, indent=1))
    write_report()
    print((RESULTS / "live_spoken_latency.md").read_text())


if __name__ == "__main__":
    main()
