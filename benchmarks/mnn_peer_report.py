"""mnn_peer.md / mnn_peer.png from benchmarks/results/mnn_peer-*.json (written by mnn_peer.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NOTE = ("Random weights; speed depends on shapes only. Wall-clock medians over alternating rounds on a shared "
        "2-core machine (range = min-max over rounds, the run's noise); ratios > 1 favour llama.cpp. Load from "
        "other work only slows a run, so the best run of each row (the range's top) is the least disturbed "
        "estimate; with 2 threads on 2 busy cores both engines lose up to 30x (see the threads sections).")


def mnn_peer_of(rows: dict[str, Any], bits: float) -> str | None:
    """The MNN row a llama.cpp row is held against: 4-bit below 7 bits/weight, 8-bit from there."""
    want = "MNN 4-bit b64" if bits < 7 else "MNN 8-bit b64"
    return want if want in rows else None


def _types(t: dict[str, Any]) -> str:
    parts = [f"{v}x {k}" for k, v in t.items() if isinstance(v, int)]
    extra = [f"{k} {v}" for k, v in t.items() if not isinstance(v, int)]
    return ", ".join(parts + extra)


def shape_table(s: dict[str, Any]) -> list[str]:
    rows = s["rows"]
    out = ["| engine, format | bits/weight | prefill tok/s (range) | decode tok/s (range) | prefill vs MNN | "
           "decode vs MNN | best prefill / decode vs MNN's best | tensor types |", "|---|---|---|---|---|---|---|---|"]
    for k, r in sorted(rows.items(), key=lambda kv: (kv[1]["engine"] != "llama.cpp", kv[1]["bits"])):
        peer = mnn_peer_of(rows, r["bits"]) if r["engine"] == "llama.cpp" else None
        rp = rd = rb = "-"
        if peer:
            rp = f"{r['prefill_tok_s'] / rows[peer]['prefill_tok_s']:.2f}x ({peer.split()[1]})"
            rd = f"{r['decode_tok_s'] / rows[peer]['decode_tok_s']:.2f}x"
            q = rows[peer]
            rb = (f"{r['prefill_range'][1] / q['prefill_range'][1]:.2f}x / "
                  f"{r['decode_range'][1] / q['decode_range'][1]:.2f}x")
        pr, dr = r["prefill_range"], r["decode_range"]
        out.append(f"| {k} | {r['bits']:.2f} | {r['prefill_tok_s']:.1f} ({pr[0]:.0f}-{pr[1]:.0f}) | "
                   f"{r['decode_tok_s']:.2f} ({dr[0]:.1f}-{dr[1]:.1f}) | {rp} | {rd} | {rb} | {_types(r['types'])} |")
    return out


def write_report(results: Path = RESULTS) -> Path:
    files = sorted(results.glob("mnn_peer-*.json"))
    md = ["# llama.cpp (our formats) vs MNN, same synthetic decoder", "",
          "Written by `benchmarks/mnn_peer.py` (method in its docstring). " + NOTE, ""]
    plots = []
    for f in files:
        d = json.loads(f.read_text())
        tag = f.stem.removeprefix("mnn_peer-")
        m = d["machine"]
        md += [f"## {tag}", "",
               f"{d['when']}; {m['cpu']}, {m['cores']} cores; {d['threads']} threads; prompt {d['prompt_tokens']} "
               f"tokens, {d['decode_tokens']} decoded; {d['rounds']} rounds; llama.cpp settings "
               f"{d['llama_settings']}; load average at start {d['load_start']:.1f}"
               + (f", end {d['load_end']:.1f}" if "load_end" in d else "") + "."
               + (" MNN not installed: its rows are missing." if d.get("mnn_skipped") else ""), ""]
        for shape, s in d["shapes"].items():
            p = s["params"]
            md += [f"### {shape}: {s['layers']} of {s['real_layers']} layers, real widths", "",
                   f"{p['matmul'] / 1e6:.0f} M matrix parameters read per token, input table "
                   f"{p['embedding'] / 1e6:.0f} M; mean load average {s['load_mean']:.1f}. "
                   "Logit cosine of the same prompt between engines (sanity: same model): "
                   + (", ".join(f"{k} {v:.4f}" for k, v in s["logit_cosine"].items()) or "-") + ".", ""]
            md += shape_table(s) + [""]
            plots.append((f"{tag} {shape} (L{s['layers']})", s["rows"]))
    out = results / "mnn_peer.md"
    out.write_text("\n".join(md) + "\n")
    if plots:
        _plot(plots, results / "mnn_peer.png")
    return out


def _plot(plots: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(plots), 2, figsize=(12, 3.2 * len(plots)), squeeze=False)
    for i, (title, rows) in enumerate(plots):
        keys = sorted(rows, key=lambda k: (rows[k]["engine"] != "llama.cpp", rows[k]["bits"]))
        colors = ["tab:blue" if rows[k]["engine"] == "llama.cpp" else "tab:orange" for k in keys]
        labels = [f"{k} ({rows[k]['bits']:.1f} b)" for k in keys]
        for j, (field, name) in enumerate((("prefill_tok_s", "prefill tok/s"), ("decode_tok_s", "decode tok/s"))):
            ax = axes[i][j]
            vals = [rows[k][field] for k in keys]
            rng = [rows[k][field.replace("_tok_s", "_range")] for k in keys]
            err = [[v - r[0] for v, r in zip(vals, rng)], [r[1] - v for v, r in zip(vals, rng)]]
            ax.barh(labels, vals, xerr=err, color=colors)
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    print(write_report())
