"""Thinker context memory x speed: llama.cpp micro-batch rows (n_ubatch) and KV cache type.

Usage:
    .venv/bin/python benchmarks/thinker_buffers.py --folder /work/synth/3b-default --label 3b

For micro-batches of 128 and 512 rows with an f16 KV cache, and 128 rows with K in q8_0 (V f16: the only
quantized cache llama.cpp allows without flash attention), one context of n_ctx 4096 on the folder's
thinker: its KV and compute buffers (llama.cpp's log), the anonymous memory it added (smaps), the prefill
of a PROMPT_TOKENS-token prompt as a text chat does it (logits of the last row, n_batch 512) and as a
speech chat does it (hidden states of every row, 128-row chunks), and DECODE_TOKENS one-token decodes.
Times are wall seconds and process CPU seconds, the median of REPEATS runs (the machine is shared: read
ratios between rows of one run, not absolute figures). Writes benchmarks/results/thinker_buffers-<label>.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_TOKENS = 192
DECODE_TOKENS = 8
REPEATS = 1
# (KV type, micro-batch) pairs; KV types as (type_k, type_v) ggml type ids
CONFIGS = [("f16", 128), ("f16", 512), ("q8_0 K", 128)]
KV_TYPES = {"f16": (1, 1), "q8_0 K": (8, 1)}
PAT = re.compile(r"(KV|compute) buffer size\s*=\s*([\d.]+) MiB")


class BufferLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.mb: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = PAT.search(record.getMessage())
        if m:
            self.mb[m.group(1)] = self.mb.get(m.group(1), 0.0) + float(m.group(2))


def anon_mb() -> float:
    total = 0
    with open("/proc/self/smaps") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                total += int(line.split()[1])
    return total / 1024


def timed(fn: Any) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(REPEATS):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def run(folder: Path, threads: int) -> list[dict[str, Any]]:
    import llama_cpp.llama_cpp as L

    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel
    from pocketomni.engine.model_folder import ModelFolder

    log = BufferLog()
    lg = logging.getLogger("pocketomni.llama")
    lg.setLevel(logging.DEBUG)
    lg.addHandler(log)
    model = LlamaModel(ModelFolder.open(folder).thinker, n_threads=threads)
    ids = np.random.default_rng(0).integers(100, 150000, PROMPT_TOKENS).tolist()
    defaults = L.llama_context_default_params
    rows = []
    for kv, ub in CONFIGS:
        tk, tv = KV_TYPES[kv]
        def params(tk: int = tk, tv: int = tv) -> Any:
            p = defaults()
            p.type_k, p.type_v = tk, tv
            return p

        L.llama_context_default_params = params
        log.mb.clear()
        a0 = anon_mb()
        ctx = LlamaContext(model, n_ctx=4096, n_batch=512, n_ubatch=ub, n_seq_max=1)
        L.llama_context_default_params = defaults
        added = anon_mb() - a0

        def text(ctx: LlamaContext = ctx) -> None:
            ctx.clear()
            ctx.decode_tokens(ids, logits="last")

        def speech(ctx: LlamaContext = ctx) -> None:
            ctx.clear()
            ctx.decode_tokens(ids, logits="last", hidden="all")

        def decode(ctx: LlamaContext = ctx) -> None:
            ctx.clear()
            ctx.decode_tokens(ids[:64], logits="last")
            for i in range(DECODE_TOKENS):
                ctx.decode_tokens([ids[64 + i]], logits="last")

        t_text, t_speech, t_dec = timed(text), timed(speech), timed(decode)
        used = anon_mb() - a0  # pages of the reserved buffers the runs touched (untouched ones cost nothing)
        rows.append({"kv": kv, "n_ubatch": ub, "kv_mb": log.mb.get("KV", 0.0),
                     "compute_mb": log.mb.get("compute", 0.0), "anon_added_mb": round(added, 1),
                     "anon_after_runs_mb": round(used, 1),
                     "prefill_text_s": round(t_text[0], 2), "prefill_text_cpu_s": round(t_text[1], 2),
                     "prefill_speech_s": round(t_speech[0], 2), "prefill_speech_cpu_s": round(t_speech[1], 2),
                     "decode_s": round(t_dec[0], 2), "decode_cpu_s": round(t_dec[1], 2)})
        print(json.dumps(rows[-1]), flush=True)
        ctx.close()
    model.close()
    return rows


def write(label: str, folder: Path, threads: int, rows: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"label": label, "folder": str(folder), "threads": threads, "when": time.strftime("%Y-%m-%d %H:%M"),
            "prompt_tokens": PROMPT_TOKENS, "decode_tokens": DECODE_TOKENS, "repeats": REPEATS, "rows": rows}
    (RESULTS / f"thinker_buffers-{label}.json").write_text(json.dumps(meta, indent=1))
    lines = [f"# Thinker context: micro-batch x KV type ({label})", "",
             (f"{folder}; n_ctx 4096; {threads} threads; prompt {PROMPT_TOKENS} tokens; decode = 64-token prompt + "
              f"{DECODE_TOKENS} one-token steps; median of {REPEATS}; {meta['when']}. Shared machine: compare rows, "
              "not runs."), "",
             ("| KV | n_ubatch | KV MB | compute MB | resident after create / after runs MB | text prefill s (cpu) "
              "| speech prefill s (cpu) | decode s (cpu) |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kv']} | {r['n_ubatch']} | {r['kv_mb']:.0f} | {r['compute_mb']:.0f} | "
                     f"{r['anon_added_mb']:.0f} / {r['anon_after_runs_mb']:.0f} | {r['prefill_text_s']:.1f} ({r['prefill_text_cpu_s']:.1f}) | "
                     f"{r['prefill_speech_s']:.1f} ({r['prefill_speech_cpu_s']:.1f}) | "
                     f"{r['decode_s']:.1f} ({r['decode_cpu_s']:.1f}) |")
    (RESULTS / f"thinker_buffers-{label}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    write(a.label, a.folder, a.threads, run(a.folder, a.threads))


if __name__ == "__main__":
    sys.exit(main())
