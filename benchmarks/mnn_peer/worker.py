"""Runs inside the MNN venv only (started by benchmarks/mnn_peer_run.py under the network guard).

Commands (one JSON object on stdout's last line):
    worker.py export HF_DIR OUT_DIR BITS BLOCK     llmexport: HF Qwen2 folder -> MNN files
    worker.py bench MNN_DIR THREADS PROMPT N [LOGITS.npy]   prefill PROMPT synthetic ids, greedy-decode N tokens
    worker.py netprobe HOST PORT                   try to connect (the guard must refuse)
    worker.py telemetry                            import MNN's usage logger; report that it is offline
"""

from __future__ import annotations

import json
import sys
import time

try:
    import sitecustomize  # the guard (benchmarks/mnn_peer/guard); refuse to run without it
except ImportError:
    sitecustomize = None

if not getattr(sitecustomize, "POCKETOMNI_NET_GUARD", False):
    sys.exit("MNN worker: the network guard is not active (benchmarks/mnn_peer/guard not first on PYTHONPATH)")


def export(hf_dir: str, out_dir: str, bits: str, block: str) -> dict:
    import importlib.util
    import os

    # llmexport imports its helpers as the top-level package `utils`
    sys.path.insert(0, os.path.dirname(importlib.util.find_spec("llmexport").origin))
    import llmexport as le  # the module llmexport.py (its folder is now first on the path)

    sys.argv = ["llmexport", "--path", hf_dir, "--export", "mnn", "--dst_path", out_dir,
                "--quant_bit", bits, "--quant_block", block]
    t = time.perf_counter()
    le.main()
    return {"export_s": time.perf_counter() - t}


def prompt_ids(n: int) -> list[int]:
    """The benchmark's synthetic prompt (ordinary ids of every vocabulary here; mnn_peer.py uses the same)."""
    return [(7919 * i + 13) % 8000 + 100 for i in range(n)]


def bench(mnn_dir: str, threads: str, prompt: str, n: str, logits_out: str = "") -> dict:
    """Load, warm up on 16 tokens, reset; then time a prefill of PROMPT ids (logits of the last one read)
    and N-1 greedy decode steps (logits read, argmax in numpy), like mnn_peer.py's llama.cpp loop."""
    import os

    import numpy as np
    from MNN import llm

    m = llm.create(os.path.join(mnn_dir, "config.json"))
    m.set_config({"thread_num": int(threads), "sampler_type": "greedy", "tokenizer_file": "tokenizer.txt"})
    t = time.perf_counter()
    m.load()
    load_s = time.perf_counter() - t

    def logits(ids: list[int]) -> np.ndarray:
        return np.array(m.forward(ids).read(), dtype=np.float32).reshape(-1)

    logits(prompt_ids(16))
    m.reset()
    ids = prompt_ids(int(prompt))
    w0, c0 = time.perf_counter(), time.process_time()
    first = logits(ids)
    tok = int(first.argmax())
    w1, c1 = time.perf_counter(), time.process_time()
    out = [tok]
    for _ in range(int(n) - 1):
        tok = int(logits([tok]).argmax())
        out.append(tok)
    w2, c2 = time.perf_counter(), time.process_time()
    if logits_out:
        np.save(logits_out, first)
    steps = int(n) - 1
    return {"load_s": load_s, "prefill_s": w1 - w0, "prefill_cpu_s": c1 - c0, "decode_tok_s": steps / (w2 - w1),
            "decode_cpu_tok_s": steps / max(c2 - c1, 1e-9), "tokens": out}


def netprobe(host: str, port: str) -> dict:
    import socket

    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect((host, int(port)))
    except OSError as e:
        return {"refused_by": type(e).__name__, "message": str(e)}
    return {"refused_by": None}


def telemetry() -> dict:
    """Import MNN's usage logger (it tries to fetch upload credentials at import) and report what it got."""
    import aliyun.log
    from MNN.tools.utils.log import mnn_logger

    return {"aliyun_stub": "Offline stand-in" in (aliyun.__doc__ or ""),
            "logger_network_available": bool(mnn_logger._network_available)}


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    result = {"export": export, "bench": bench, "netprobe": netprobe, "telemetry": telemetry}[cmd](*args)
    print("\nMNNPEER_RESULT " + json.dumps(result), flush=True)
