"""What the CPU guard's weight layouts cost: thinker prefill and decode per layout, in one run.

    python benchmarks/cpu_guard.py THINKER.gguf [THINKER.gguf ...] [--threads 2] [--repeats 3]

Layouts (pocketomni.backend.cpu_guard): "default" is llama.cpp's own choice among its extra buffer
types (the baseline), "repack" is what the guard uses on an AMX CPU with an AMX-enabled llama.cpp
(extra buffer types off, CPU_REPACK by explicit overrides), "plain" is every extra buffer type off.
The layouts alternate within each repeat so machine noise spreads over all of them; each figure is a
median. Writes benchmarks/results/cpu_guard.md (+ .json, .png).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS = ("default", "repack", "plain")
PROMPT, DECODE = 128, 32


def run_once(path: Path, layout: str, threads: int) -> dict[str, float]:
    """Load with `layout`, prefill PROMPT tokens, then decode DECODE tokens greedily: tok/s of each."""
    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel

    t0 = time.perf_counter()
    with LlamaModel(path, n_threads=threads, weight_layout=layout) as m:  # type: ignore[arg-type]
        load_s = time.perf_counter() - t0
        ids = np.random.default_rng(0).integers(1000, 20000, PROMPT).tolist()
        with LlamaContext(m, n_ctx=512, n_batch=PROMPT) as c:
            t1 = time.perf_counter()
            out = c.decode_tokens(ids, logits="last")
            t2 = time.perf_counter()
            tok = int(out.logits[-1].argmax())
            for _ in range(DECODE):
                tok = int(c.decode_tokens([tok], logits="last").logits[-1].argmax())
            t3 = time.perf_counter()
    return {"load_s": load_s, "prefill_tok_s": PROMPT / (t2 - t1), "decode_tok_s": DECODE / (t3 - t2)}


def measure(paths: list[Path], threads: int, repeats: int) -> dict[str, Any]:
    from pocketomni.backend import cpu_guard

    cpu = cpu_guard.read_cpu_features()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {p.name: {lay: [] for lay in LAYOUTS} for p in paths}
    for path in paths:
        run_once(path, "default", threads)  # warm-up: file pages in the cache
        for r in range(repeats):
            order = LAYOUTS[r % 3:] + LAYOUTS[:r % 3]  # rotate who goes first
            for layout in order:
                runs[path.name][layout].append(run_once(path, layout, threads))
                print(f"{path.name} {layout} {runs[path.name][layout][-1]}", flush=True)
    summary = {
        name: {lay: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for lay, rs in by.items()}
        for name, by in runs.items()
    }
    return {"cpu": cpu.model, "amx": cpu.has_amx, "extra_buffer_types": list(cpu_guard.extra_buffer_types()),
            "decision": cpu_guard.current_decision().reason, "threads": threads, "repeats": repeats,
            "loadavg": os.getloadavg(), "summary": summary, "runs": runs}


def report(res: dict[str, Any]) -> str:
    lines = [
        "# CPU guard: weight layouts compared (thinker)",
        "",
        f"CPU: {res['cpu']} (AMX: {res['amx']}); llama.cpp extra buffer types: {res['extra_buffer_types']}; "
        f"{res['threads']} threads; median of {res['repeats']} alternating runs; {PROMPT}-token prefill, "
        f"{DECODE}-token greedy decode; load average at the end {', '.join(f'{x:.2f}' for x in res['loadavg'])}.",
        f"Guard on this machine: {res['decision']}.",
        "",
        "| file | layout | prefill tok/s | vs default | decode tok/s | vs default | load s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by in res["summary"].items():
        base = by["default"]
        for lay in LAYOUTS:
            s = by[lay]
            lines.append(f"| {name} | {lay} | {s['prefill_tok_s']:.1f} | {s['prefill_tok_s'] / base['prefill_tok_s']:.2f}x "
                         f"| {s['decode_tok_s']:.2f} | {s['decode_tok_s'] / base['decode_tok_s']:.2f}x | {s['load_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ("prefill_tok_s", "decode_tok_s"), ("prefill tok/s", "decode tok/s")):
        x = np.arange(len(names))
        for i, lay in enumerate(LAYOUTS):
            ax.bar(x + (i - 1) * 0.27, [res["summary"][n][lay][key] for n in names], 0.27, label=lay)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"weight layouts on {res['cpu']}, {res['threads']} threads")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_guard")
    a = ap.parse_args()
    res = measure(a.paths, a.threads, a.repeats)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    a.out.with_suffix(".md").write_text(report(res))
    plot(res, a.out.with_suffix(".png"))
    print(report(res))


if __name__ == "__main__":
    main()
