"""The talker's decode against its memory-bandwidth roofline (issue 14: talker >= 0.8 of it).

Usage:
    .venv/bin/python benchmarks/talker_roofline.py --folder /work/synth/3b-q4_k_m --label 3b-synthetic
    .venv/bin/python benchmarks/talker_roofline.py --report      # rebuild talker_roofline.md from the json files

Method (one process; rounds alternate the measurements so load changes hit them alike):
- bytes per code: every weight the decode step reads (all GGUF tensors but the token embedding table,
  of which one row is read) + the f16 KV cache at the mean position of the codes (prompt + 2 + codes/2);
- memory bandwidth, per round: read (BLAS dot of a 256 MB float32 vector with itself: bytes read) and copy
  (numpy copy: bytes read + written), each at 1 thread and at all usable cores, best of 3;
- talker per round at 1 thread and at all cores: `--codes` codes after a 64-row prefill (random input
  rows, reference sampling, the real `Talker.codes()` loop); wall time per code, the part spent inside
  llama_decode (`decode_row`), and the rest (Python per code: embedding row, sampling, bookkeeping);
- fraction = measured codes/s / (bandwidth / bytes per code), the same round's bandwidth at the same
  thread count; medians over rounds. At 1 thread also on CPU time (a loaded machine steals time
  slices, which wall time counts against the talker). A second figure takes only the llama_decode time, to separate
  llama.cpp's own efficiency from the SDK's per-code Python;
- the SDK's Python per code alone, in CPU time: the same loop with llama_decode stubbed out (a copy
  of one real logits row), so load on the machine does not inflate it.
Shared 2-core machine: expect large noise; the same round's ratio is the figure to trust.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
PROMPT_ROWS = 64


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def bandwidth(threads: int, mb: int = 256, reps: int = 3) -> dict[str, float]:
    """GB/s: 'read' (dot of a vector with itself, bytes read) and 'copy' (bytes read + written)."""
    from pocketomni.engine.cpu_split import set_blas_threads

    old = set_blas_threads(1)  # one BLAS thread per worker: the split below sets the count
    try:
        a = np.ones(mb << 18, np.float32)
        dst = np.empty_like(a)
        parts = [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(a.size), threads)]
        out = {}
        jobs = {"read": (lambda b: float(a[b[0]:b[1]] @ a[b[0]:b[1]]), 1),
                "copy": (lambda b: np.copyto(dst[b[0]:b[1]], a[b[0]:b[1]]), 2)}
        with ThreadPoolExecutor(threads) as pool:
            for name, (fn, passes) in jobs.items():
                best = 0.0
                for _ in range(reps):
                    t = time.perf_counter()
                    list(pool.map(fn, parts))
                    best = max(best, passes * a.nbytes / (time.perf_counter() - t) / 1e9)
                out[name] = best
        return out
    finally:
        if old is not None:
            set_blas_threads(old)


def code_bytes(path: Path, mean_pos: float) -> dict[str, float]:
    """Bytes one talker decode step reads (weights, f16 KV at mean_pos)."""
    import gguf

    r = gguf.GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    weights = sum(v for k, v in sizes.items() if k != "token_embd.weight")
    if "output.weight" not in sizes:
        weights += sizes["token_embd.weight"]
    arch = str(r.fields["general.architecture"].contents())

    def meta(key: str) -> int:
        return int(r.fields[f"{arch}.{key}"].contents())

    kv = meta("block_count") * 2 * meta("attention.head_count_kv") * meta("attention.key_length") * 2 * mean_pos
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes_per_code": weights + kv}


def talker_run(tk: Any, threads: int, codes: int) -> dict[str, float]:
    """Codes/s of the real code loop at `threads`, with the llama_decode share timed apart."""

    old = tk.ctx.threads
    tk.ctx.set_threads(threads)
    inner = tk.ctx.decode_row
    spent = [0.0]

    def timed(*a: Any, **k: Any) -> np.ndarray:
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    try:
        _start_reply(tk, codes, seed=0)
        tk.ctx.decode_row = timed
        c0, t0 = time.process_time(), time.perf_counter()
        n = sum(1 for _ in tk.codes())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        tk.ctx.__dict__.pop("decode_row", None)
        tk.ctx.set_threads(*old)
    return {"codes": n, "codes_s": n / wall, "cpu_s_per_code": cpu / n, "decode_ms": 1e3 * spent[0] / n,
            "python_ms": 1e3 * (wall - spent[0]) / n}


def _start_reply(tk: Any, codes: int, seed: int) -> None:
    """Start the talker on a random prompt and a whole random reply (so codes run without waiting)."""
    from pocketomni.options import SpeechOptions

    rng = np.random.default_rng(seed)
    prompt = rng.standard_normal((PROMPT_ROWS, tk.thinker_width), dtype=np.float32) * 0.5
    reply = rng.standard_normal((codes + 1, tk.thinker_width), dtype=np.float32) * 0.5
    tk.start(prompt, np.tile(np.arange(PROMPT_ROWS), (3, 1)), "Chelsie", reply[0],
             SpeechOptions(max_codes=codes, seed=1))
    for row in reply[1:]:
        tk.push_reply(row)
    tk.finish_reply()


def python_per_code(tk: Any, codes: int) -> float:
    """CPU ms of the SDK's own per-code work (embedding row, sampling, bookkeeping): the code loop with
    llama_decode replaced by a copy of one real logits row, on this thread (no llama.cpp time in it)."""

    _start_reply(tk, codes, seed=2)
    row0 = tk.last_logits.copy()
    tk.ctx.decode_row = lambda x, pos: row0.copy()
    try:
        c0 = time.thread_time()
        n = sum(1 for _ in tk.codes())
        return 1e3 * (time.thread_time() - c0) / max(n, 1)
    finally:
        tk.ctx.__dict__.pop("decode_row", None)


def run(folder: Path, label: str, rounds: int, codes: int) -> dict[str, Any]:
    from suite_common import machine_info

    import pocketomni as po
    from pocketomni.engine.cpu_split import usable_cpus

    cpus = usable_cpus()
    counts = sorted({1, cpus})
    out: dict[str, Any] = {"label": label, "folder": str(folder), "machine": machine_info(), "usable_cpus": cpus,
                           "date": time.strftime("%Y-%m-%d %H:%M"), "codes": codes, "rounds": rounds,
                           "load_start": os.getloadavg()[0]}
    with po.Omni.load_sync(folder) as omni:
        tk = omni.runtime.speech_engine().talker
        talker_path = Path(tk.model.path)
        out["talker_file"] = talker_path.name
        out["bytes"] = code_bytes(talker_path, PROMPT_ROWS + 2 + codes / 2)
        talker_run(tk, cpus, 16)  # warm-up: pages the weights in
        per: dict[str, list[dict[str, float]]] = {str(t): [] for t in counts}
        for r in range(rounds):
            for t in counts if r % 2 == 0 else counts[::-1]:
                bw = bandwidth(t)
                m = talker_run(tk, t, codes)
                bpc = out["bytes"]["bytes_per_code"]
                m.update({f"{k}_gbs": v for k, v in bw.items()})
                for k, v in bw.items():
                    m[f"fraction_{k}"] = m["codes_s"] * bpc / (v * 1e9)
                    m[f"decode_fraction_{k}"] = bpc / (m["decode_ms"] / 1e3) / (v * 1e9)
                    # CPU time instead of wall (one thread: all of llama.cpp's work is this thread's), so
                    # time slices lost to other processes do not count against the talker
                    m[f"cpu_fraction_{k}"] = bpc / m["cpu_s_per_code"] / (v * 1e9)
                m["python_cpu_ms_stubbed"] = python_per_code(tk, codes)
                per[str(t)].append(m)
                print(f"  round {r} threads {t}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()), flush=True)
    out["runs"] = per
    out["median"] = {t: {k: med([m[k] for m in ms]) for k in ms[0]} for t, ms in per.items()}
    out["load_end"] = os.getloadavg()[0]
    return out


def write_report() -> None:
    res = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("talker_roofline-*.json"))]
    if not res:
        return
    lines = ["# Talker decode vs its memory-bandwidth roofline", "",
             ("Written by `benchmarks/talker_roofline.py` (method in its docstring). Per code: the bytes one "
              "decode step reads (weights + f16 KV at the mean position) over the memory bandwidth measured in "
              "the same round at the same thread count; medians over rounds. `read` = dot of a 256 MB vector "
              "(bytes read), `copy` = numpy copy (bytes read + written). Shared 2-core machine: noisy."), ""]
    for r in res:
        b = r["bytes"]
        lines += [f"## {r['label']}", "",
                  (f"{r['machine']['cpu']}, {r['usable_cpus']} usable cores, load average {r['load_start']:.1f} -> "
                   f"{r['load_end']:.1f}; {r['date']}. {r['talker_file']}: {b['weight_bytes'] / 1e6:.1f} MB of "
                   f"weights + {b['kv_bytes'] / 1e6:.2f} MB KV = {b['bytes_per_code'] / 1e6:.1f} MB per code; "
                   f"{r['codes']} codes x {r['rounds']} rounds."), "",
                  "| threads | codes/s | ms per code: llama_decode / Python | Python CPU ms per code (decode stubbed) | CPU ms per code | read GB/s | "
                  "copy GB/s | fraction of read roofline (all / decode only / on CPU time) | fraction of copy roofline |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t, m in r["median"].items():
            lines.append(f"| {t} | {m['codes_s']:.1f} | {m['decode_ms']:.2f} / {m['python_ms']:.2f} | "
                         f"{m['python_cpu_ms_stubbed']:.2f} | {1e3 * m['cpu_s_per_code']:.2f} | {m['read_gbs']:.1f} | {m['copy_gbs']:.1f} | "
                         f"{m['fraction_read']:.2f} / {m['decode_fraction_read']:.2f} / "
                         f"{m['cpu_fraction_read']:.2f} | {m['fraction_copy']:.2f} |")
        lines.append("")
    (RESULTS / "talker_roofline.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--label", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codes", type=int, default=200)
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        if a.folder is None:
            ap.error("give --folder")
        label = a.label or a.folder.name
        res = run(a.folder, label, a.rounds, a.codes)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"talker_roofline-{label}.json").write_text(json.dumps(res, indent=1))
    write_report()
    print((RESULTS / "talker_roofline.md").read_text())


if __name__ == "__main__":
    main()
