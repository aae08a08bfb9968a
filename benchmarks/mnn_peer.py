"""MNN side by side (issue 20): the same synthetic decoder on llama.cpp (our converter's formats) and MNN.

Usage:
    bash scripts/mnn_venv.sh                  # once; without it the MNN rows are skipped with a message
    .venv/bin/python benchmarks/mnn_peer.py [--shapes talker-3b,thinker-3b] [--rounds 3] [--threads 2]
    .venv/bin/python benchmarks/mnn_peer.py --report        # rebuild mnn_peer.md / .png from the json

Method: each shape (mnn_peer_models.SHAPES) is built once with the real widths and `--layers` decoder
layers (fewer than the real model: speed per layer is linear, the head and input table are full size),
as our GGUF in every `--llama` format and as MNN files (llmexport, in the MNN venv, `--mnn` formats
bits:block). Every round runs every engine/format once, in an order rotated per round, each in a fresh
context (llama.cpp) or process (MNN) after a 16-token warm-up: a prefill of `--prompt` synthetic ids
(logits of the last one read), then greedy decode steps (logits read, argmax in numpy) for `--decode`
tokens, same threads. Figures are medians over rounds; the spread (min-max) is kept as the noise.
bits/weight = stored bytes of every matrix a decode step reads (layers + head; not the input table)
x 8 / their parameters. A sanity figure checks both engines run the same model: cosine of the
prefill's last logits between the 8-bit files of both engines (random weights; 1.0 = identical).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

THREADS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "2")
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, THREADS)

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"

import mnn_peer_models as models
import mnn_peer_run as peer
from suite_common import machine_info, med

DEFAULT_LAYERS = {"thinker-3b": 4, "thinker-7b": 2, "talker-3b": 8}
REAL_LAYERS = {"thinker-3b": 36, "thinker-7b": 28, "talker-3b": 24}
LLAMA_FORMATS = ["q4_0_pure", "q4_0", "q4_k_m", "q8_0"]
MNN_FORMATS = ["4:64", "8:64"]
# per-run llama.cpp context settings (the SDK's defaults: flash attention off, f16 KV)
LLAMA_SETTINGS = {"flash_attn": False, "n_ctx": 512, "n_batch": 512}


def prompt_ids(n: int) -> list[int]:
    """The synthetic prompt (identical to mnn_peer/worker.py's)."""
    return [(7919 * i + 13) % 8000 + 100 for i in range(n)]


def matmul_bits(gguf_path: Path, params: int) -> float:
    """Stored bits per parameter of every matrix but the input table."""
    import gguf

    r = gguf.GGUFReader(gguf_path)
    b = sum(int(t.n_bytes) for t in r.tensors if len(t.shape) >= 2 and t.name != "token_embd.weight")
    return 8 * b / params


def tensor_types(gguf_path: Path) -> dict[str, str]:
    """Type -> count of 2-D tensors, plus the head's and input table's types."""
    import gguf

    r = gguf.GGUFReader(gguf_path)
    out: dict[str, Any] = {}
    for t in r.tensors:
        if len(t.shape) < 2:
            continue
        name = t.tensor_type.name
        if t.name in ("output.weight", "token_embd.weight"):
            out[t.name.split(".")[0]] = name
        else:
            out[name] = out.get(name, 0) + 1
    return out


def llama_run(path: Path, threads: int, n_prompt: int, n: int, settings: dict[str, Any],
              logits_out: Path | None = None) -> dict[str, Any]:
    """One measurement on llama.cpp's low-level API: warm-up, then prefill + greedy decode."""
    import llama_cpp as L

    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(model)))

    def context() -> Any:
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = settings["n_ctx"], settings["n_batch"], min(512, settings["n_batch"])
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings["flash_attn"]
                              else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if "type_k" in settings:
            cp.type_k = cp.type_v = settings["type_k"]
        cp.no_perf = True
        return L.llama_init_from_model(model, cp)

    def logits(ctx: Any, ids: list[int]) -> np.ndarray:
        arr = (L.llama_token * len(ids))(*ids)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()

    ctx = context()
    logits(ctx, prompt_ids(16))
    L.llama_free(ctx)
    ctx = context()
    ids = prompt_ids(n_prompt)
    w0, c0 = time.perf_counter(), time.process_time()
    first = logits(ctx, ids)
    tok = int(first.argmax())
    w1, c1 = time.perf_counter(), time.process_time()
    out = [tok]
    for _ in range(n - 1):
        tok = int(logits(ctx, [tok]).argmax())
        out.append(tok)
    w2, c2 = time.perf_counter(), time.process_time()
    L.llama_free(ctx)
    L.llama_model_free(model)
    if logits_out is not None:
        np.save(logits_out, first)
    return {"prefill_s": w1 - w0, "prefill_cpu_s": c1 - c0, "decode_tok_s": (n - 1) / (w2 - w1),
            "decode_cpu_tok_s": (n - 1) / max(c2 - c1, 1e-9), "tokens": out}


def build(shape: str, layers: int, work: Path, llama_formats: list[str], mnn_formats: list[str],
          threads: int) -> dict[str, Any]:
    """Write (or reuse) the files of `shape`; returns {engine/format: {path, bits}} and the parameters."""
    d = work / f"{shape}-L{layers}"
    params = models.matmul_params(shape, layers)
    bf16 = d / "bf16.gguf"
    if not bf16.is_file():
        models.write_gguf_bf16(shape, layers, d / "bf16.tmp")
        (d / "bf16.tmp").rename(bf16)
    entries: dict[str, Any] = {}
    for q in llama_formats:
        p = models.quantized(bf16, q, d / f"{q}.gguf", threads)
        entries[f"llama.cpp {q}"] = {"engine": "llama.cpp", "format": q, "path": str(p),
                                     "bits": matmul_bits(p, params["matmul"]), "types": tensor_types(p)}
    if mnn_formats:
        hf = d / "hf"
        if not (hf / "config.json").is_file():
            models.write_hf(shape, layers, hf)
        for f in mnn_formats:
            bits, block = f.split(":")
            out = d / f"mnn-{bits}b{block}"
            if not (out / "llm.mnn.weight").is_file():
                peer.run_worker("export", str(hf), str(out), bits, block, threads=threads, log=d / f"export-{f}.log")
            wbytes = (out / "llm.mnn.weight").stat().st_size
            entries[f"MNN {bits}-bit b{block}"] = {
                "engine": "MNN", "format": f"{bits}-bit asym, block {block}", "path": str(out),
                "bits": 8 * wbytes / params["matmul"],
                "types": {"embedding": "bf16 (embeddings_bf16.bin)"}}
    return {"params": params, "entries": entries}


def run(shapes: list[str], layers: dict[str, int], rounds: int, threads: int, n_prompt: int, n: int,
        work: Path, llama_formats: list[str], mnn_formats: list[str], tag: str,
        settings: dict[str, Any]) -> dict[str, Any]:
    try:
        peer.venv_python()
    except peer.MNNUnavailable as e:
        print(f"skipping MNN: {e}", file=sys.stderr)
        mnn_formats = []
    res: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
                           "threads": threads, "prompt_tokens": n_prompt, "decode_tokens": n, "rounds": rounds,
                           "llama_settings": settings, "mnn_skipped": not mnn_formats, "shapes": {},
                           "load_start": os.getloadavg()[0]}
    out_path = RESULTS / f"mnn_peer-{tag}.json"
    for shape in shapes:
        t0 = time.perf_counter()
        b = build(shape, layers[shape], work, llama_formats, mnn_formats, threads)
        keys = list(b["entries"])
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
        ld = work / f"{shape}-L{layers[shape]}" / "logits"
        ld.mkdir(exist_ok=True)
        loads = []
        for r in range(rounds):
            order = keys[r % len(keys):] + keys[: r % len(keys)]
            for k in order:
                e = b["entries"][k]
                lo = ld / f"{k.replace(' ', '_').replace(':', '_')}.npy"
                loads.append(os.getloadavg()[0])
                if e["engine"] == "MNN":
                    m = peer.run_worker("bench", e["path"], str(threads), str(n_prompt), str(n), str(lo),
                                        threads=threads)
                else:
                    m = llama_run(Path(e["path"]), threads, n_prompt, n, settings, lo)
                runs[k].append(m)
                print(f"{shape} round {r} {k}: prefill {n_prompt / m['prefill_s']:.1f} tok/s, "
                      f"decode {m['decode_tok_s']:.2f} tok/s", flush=True)
        rows = {}
        for k in keys:
            pre = [n_prompt / m["prefill_s"] for m in runs[k]]
            dec = [m["decode_tok_s"] for m in runs[k]]
            rows[k] = {**{x: b["entries"][k][x] for x in ("engine", "format", "bits", "types")},
                       "prefill_tok_s": med(pre), "prefill_range": [min(pre), max(pre)],
                       "decode_tok_s": med(dec), "decode_range": [min(dec), max(dec)],
                       "prefill_cpu_tok_s": med([n_prompt / m["prefill_cpu_s"] for m in runs[k]]),
                       "decode_cpu_tok_s": med([m["decode_cpu_tok_s"] for m in runs[k]]),
                       "tokens": runs[k][-1]["tokens"][:8]}
        sanity = {}
        for a, c in (("llama.cpp q8_0", "MNN 8-bit b64"), ("llama.cpp q4_0_pure", "MNN 4-bit b64")):
            fa, fc = ld / f"{a.replace(' ', '_')}.npy", ld / f"{c.replace(' ', '_')}.npy"
            if fa.is_file() and fc.is_file():
                x, y = np.load(fa).astype(np.float64), np.load(fc).astype(np.float64)
                sanity[f"{a} vs {c}"] = float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
        res["shapes"][shape] = {"layers": layers[shape], "real_layers": REAL_LAYERS[shape], "params": b["params"],
                                "rows": rows, "logit_cosine": sanity, "seconds": time.perf_counter() - t0,
                                "load_mean": float(np.mean(loads)) if loads else None}
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))
    res["load_end"] = os.getloadavg()[0]
    out_path.write_text(json.dumps(res, indent=1))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="talker-3b,thinker-3b")
    ap.add_argument("--layers", default="", help="shape=N,... (defaults: " +
                    ", ".join(f"{k}={v}" for k, v in DEFAULT_LAYERS.items()) + ")")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(THREADS))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--llama", default=",".join(LLAMA_FORMATS))
    ap.add_argument("--mnn", default=",".join(MNN_FORMATS), help="bits:block,... ('' = llama.cpp only)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp with flash attention on")
    ap.add_argument("--work", default="/tmp/mnnpeer")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        layers = dict(DEFAULT_LAYERS)
        for kv in filter(None, a.layers.split(",")):
            k, v = kv.split("=")
            layers[k] = int(v)
        settings = {**LLAMA_SETTINGS, "flash_attn": a.flash_attn}
        run(a.shapes.split(","), layers, a.rounds, a.threads, a.prompt, a.decode, Path(a.work),
            [x for x in a.llama.split(",") if x], [x for x in a.mnn.split(",") if x], a.tag, settings)
    import mnn_peer_report

    mnn_peer_report.write_report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
