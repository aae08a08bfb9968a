"""Benchmark suite (issue 7): every figure of a model folder next to a baseline measured in the same run.

Usage:
    .venv/bin/python benchmarks/suite.py --tiny [--quick]                 # the demo model (smoke test)
    flock /tmp/team/fullsize.lock .venv/bin/python benchmarks/suite.py --folder /tmp/synth-runs/3b --shape 3b
    .venv/bin/python benchmarks/suite.py --report                         # rebuild suite.md / suite.png
    pocketomni bench --folder DIR --shape 3b                              # the same, through the CLI

Sections (`--parts`, in this order; each figure is the median of its runs after a warm-up unless its
row says otherwise, with the same thread count everywhere):
- machine: copy bandwidth (numpy copy of a 256 MB array, 1 thread and --threads threads, best of 5) and
  float32 sgemm GFLOP/s (speech.gemm_gflops), the denominators of the two rooflines.
- audio: 10 s / 60 s clips, our exact encoder vs stock mtmd on the folder's mmproj, each path in its own
  process (audio_input.measure).
- memory: peak RSS of a spoken turn through the public API, in a subprocess (memory.run; if that module
  is missing or fails, a plain subprocess reading VmHWM at the end).
- thinker: prefill and decode tok/s, the SDK chat (sdk_vs_llama.run_sdk) vs a raw llama-cpp-python
  low-level loop (llama_batch_get_one + llama_decode + numpy argmax) on the same GGUF, same prompt ids,
  threads, n_ctx, n_batch and flash-attention setting, alternating; decode vs the memory roofline:
  bytes per token = the GGUF's weight bytes (token_embd only when it is also the output matrix) + the
  f16 KV cache read at the mean decode position, over the measured copy bandwidth.
- image: 448x448 and 1280x720 PNGs; SDK = file -> reference resize -> mtmd encode -> rows
  (MediaEncoders.prepare + encode) vs raw mtmd (PIL decode, mtmd_tokenize, mtmd_encode_chunk) with the
  same token limits, on the same file and mmproj.
- speech: talker codes/s vs raw decode (speech.bench_talker); token2wav RTF per preset, numpy vs the
  PyTorch reference (speech.bench_token2wav) and vs a FLOP roofline (FLOPs counted by torch's
  FlopCounterMode on the reference for the same codes, over the sgemm GFLOP/s); a spoken reply (preset
  fast): time to first token and to first audio (speech.bench_chat).
- converter: not re-run (no full-size bf16 HF checkpoint can be synthesised cheaply); the last measured
  figures are reported with their source.
Writes benchmarks/results/suite-<shape>.json (after every section), suite.md and suite.png.
"""

from __future__ import annotations

import argparse
import os
import sys

_T = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "2")
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, _T)

import json
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
PARTS = ("machine", "audio", "memory", "thinker", "image", "speech")
RSS_TARGET_MB = {"3b": 4096, "7b": 8192}
CONVERTER = {"source": "issue 2 closing note (converter commit c783840, 2026-11-28), not re-run by this suite",
             "checkpoint": "synthetic 3B-shaped bf16 HF checkpoint, 8.8 GB",
             "f16": {"seconds": 79, "peak_mb": 273}, "q4_k_m+q8_0": {"seconds": 9.8 * 60, "peak_mb": 950}}
# plan per mode: "full" keeps a 3B run under 30 minutes on 2 shared cores; "quick" is the smoke test
PLANS = {
    "full": {"repeats": 3, "thinker_tokens": 24, "image_repeats": {"448x448": 2, "1280x720": 1}, "audio_runs": 1,
             "audio_seconds": [10.0, 60.0], "talker_codes": 24, "t2w_codes": 50,
             "t2w_repeats": {"fast": 2, "reference": 1}, "chat_tokens": 16, "chat_codes": 50, "chat_repeats": 1,
             "mem_tokens": 8, "mem_codes": 30},
    "quick": {"repeats": 1, "thinker_tokens": 8, "image_repeats": {"448x448": 1, "1280x720": 1}, "audio_runs": 1,
              "audio_seconds": [10.0, 60.0], "talker_codes": 12, "t2w_codes": 12,
              "t2w_repeats": {"fast": 1, "reference": 1}, "chat_tokens": 6, "chat_codes": 12, "chat_repeats": 1,
              "mem_tokens": 4, "mem_codes": 8},
}
IMAGES = {"448x448": (448, 448), "1280x720": (1280, 720)}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ----------------------------------------------------------------------------- machine and rooflines


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        ram = int(f.readline().split()[1]) / 2**20
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram, 1)}


def copy_bandwidth(threads: int, mb: int = 256, reps: int = 5) -> dict[str, float]:
    """GB/s of numpy copies (bytes read + written), best of `reps`, with 1 and `threads` threads."""
    src = np.ones(mb << 17, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    out = {}
    for n in sorted({1, threads}):
        parts = np.array_split(np.arange(src.size), n)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
        best = 0.0
        with ThreadPoolExecutor(n) as pool:
            for _ in range(reps):
                t = time.perf_counter()
                list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
                best = max(best, 2 * src.nbytes / (time.perf_counter() - t) / 1e9)
        out[f"{n}_thread_gbs"] = best
    out["gbs"] = max(out.values())
    return out


class LoadSampler:
    """Samples the 1-minute load average every 10 s while the suite runs."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(10):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict[str, float]:
        self._stop.set()
        return {"start": self.samples[0], "mean": float(np.mean(self.samples)), "max": max(self.samples),
                "end": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- thinker


class RawLlama:
    """The baseline: llama-cpp-python's low-level API only, on the same GGUF."""

    def __init__(self, path: Path, threads: int, n_ctx: int, n_batch: int) -> None:
        import llama_cpp as L

        self.L, self.threads, self.n_ctx, self.n_batch = L, threads, n_ctx, n_batch
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))

    def _context(self) -> Any:
        L = self.L
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = self.n_ctx, self.n_batch, min(512, self.n_batch)
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the SDK's default
        cp.no_perf = True
        return L.llama_init_from_model(self.model, cp)

    def generate(self, ids: list[int], n: int) -> tuple[tuple[float, float, float, float], list[int]]:
        """Greedy: (TTFT wall, TTFT cpu, decode tok/s wall, decode tok/s cpu) and the tokens.
        A fresh context per run (an idle one keeps its worker threads spinning for a while)."""
        L = self.L
        ctx = self._context()
        chunks = [(L.llama_token * len(c))(*c) for c in (ids[i:i + self.n_batch] for i in range(0, len(ids), self.n_batch))]
        one = (L.llama_token * 1)()

        def step(arr: Any, m: int) -> int:
            if L.llama_decode(ctx, L.llama_batch_get_one(arr, m)) != 0:
                raise RuntimeError("llama_decode failed")
            return int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(self.n_vocab,)).argmax())

        t0 = clock()
        for c in chunks:
            tok = step(c, len(c))
        t1 = clock()
        out = [tok]
        for _ in range(n - 1):
            one[0] = tok
            tok = step(one, 1)
            out.append(tok)
        t2 = clock()
        L.llama_free(ctx)
        return (t1[0] - t0[0], t1[1] - t0[1], (n - 1) / (t2[0] - t1[0]), (n - 1) / max(t2[1] - t1[1], 1e-9)), out

    def close(self) -> None:
        self.L.llama_model_free(self.model)


def decode_bytes(path: Path, n_ctx_mean: float) -> dict[str, float]:
    """Bytes a decode step reads: weights (token_embd only if it doubles as the output) + the f16 KV cache."""
    import gguf

    r = gguf.GGUFReader(path)
    names = {t.name: int(t.n_bytes) for t in r.tensors}
    weights = sum(v for k, v in names.items() if k != "token_embd.weight")
    if "output.weight" not in names:
        weights += names["token_embd.weight"]
    arch = str(r.fields["general.architecture"].contents())

    def meta(key: str) -> int:
        return int(r.fields[f"{arch}.{key}"].contents())

    head_dim = meta("embedding_length") // meta("attention.head_count")
    kv = meta("block_count") * 2 * meta("attention.head_count_kv") * head_dim * 2 * n_ctx_mean
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes_per_token": weights + kv}


def sdk_generate(omni: Any, n: int) -> tuple[tuple[float, float, float, float], list[int]]:
    """One SDK text turn; (TTFT, nan, decode tok/s, nan) from the turn's own Timings: its first token is
    timed when sampled, like the raw loop's (the first TextDelta can come later: a token may be part of
    a character), decode = steps after the first token over their time. CPU time cannot be split here."""
    import pocketomni as po
    import sdk_vs_llama as svl

    chat = omni.chat(max_tokens=n)
    done = next(e for e in chat.send_sync(svl.PROMPT) if isinstance(e, po.Done))
    chat.close()
    t = done.timings
    return (t.time_to_first_token, float("nan"), t.decode_tokens_per_second, float("nan")), list(done.tokens)


def bench_thinker(omni: Any, raw: RawLlama, plan: dict, bw: float) -> dict[str, Any]:
    import sdk_vs_llama as svl

    n, reps = plan["thinker_tokens"], plan["repeats"]
    ids = svl.prompt_ids(omni)
    rows: dict[str, list] = {"sdk": [], "raw": []}
    same = True
    for i in range(reps + 1):  # the first round is the warm-up
        r, rt = raw.generate(ids, n)
        s, st = sdk_generate(omni, n)
        same = same and st == rt[: len(st)]
        if i:
            rows["raw"].append(r)
            rows["sdk"].append(s)
    m = {k: [med(list(x)) for x in zip(*v)] for k, v in rows.items()}
    out = {"prompt_tokens": len(ids), "reply_tokens": n, "repeats": reps, "greedy_tokens_identical": same,
           "runs": rows}
    for k in ("sdk", "raw"):
        ttft, ttft_cpu, dec, dec_cpu = m[k]
        out[k] = {"ttft_s": ttft, "ttft_cpu_s": ttft_cpu, "prefill_tok_s": len(ids) / ttft,
                  "prefill_cpu_tok_s": len(ids) / ttft_cpu, "decode_tok_s": dec, "decode_cpu_tok_s": dec_cpu}
    roof = decode_bytes(omni.folder.thinker, len(ids) + n / 2)
    roof["copy_gbs"] = bw
    roof["roofline_tok_s"] = bw * 1e9 / roof["bytes_per_token"]
    out["roofline"] = roof
    return out


# ----------------------------------------------------------------------------- images


class RawMtmd:
    """Stock mtmd through llama-cpp-python's mtmd_cpp bindings only."""

    def __init__(self, mmproj: Path, raw: RawLlama, threads: int, min_tokens: int, max_tokens: int) -> None:
        from llama_cpp import mtmd_cpp as M

        self.M, self.raw = M, raw
        p = M.mtmd_context_params_default()
        p.use_gpu, p.print_timings, p.warmup, p.n_threads = False, False, False, threads
        p.image_min_tokens, p.image_max_tokens = min_tokens, max_tokens
        self.ctx = M.mtmd_init_from_file(str(mmproj).encode(), raw.model, p)
        if not self.ctx:
            raise RuntimeError(f"mtmd could not load {mmproj}")
        self.n_embd = int(raw.L.llama_model_n_embd(raw.model))

    def encode_file(self, path: Path) -> int:
        """Decode the file, tokenize it with mtmd's own preprocessing, encode; returns the token rows."""
        import ctypes

        from PIL import Image

        M = self.M
        rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        bm = M.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = M.mtmd_input_chunks_init()
        text = M.mtmd_input_text()
        text.text = M.mtmd_default_marker()
        text.text_len, text.add_special, text.parse_special = len(text.text), False, True
        try:
            if M.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), (M.mtmd_bitmap_p_ctypes * 1)(bm), 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
            rows = 0
            for i in range(int(M.mtmd_input_chunks_size(chunks))):
                c = M.mtmd_input_chunks_get(chunks, i)
                if int(M.mtmd_input_chunk_get_type(c)) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    continue
                k = int(M.mtmd_input_chunk_get_n_tokens(c))
                if M.mtmd_encode_chunk(self.ctx, c) != 0:
                    raise RuntimeError("mtmd_encode_chunk failed")
                np.ctypeslib.as_array(M.mtmd_get_output_embd(self.ctx), shape=(k * self.n_embd,)).copy()
                rows += k
            return rows
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bm)

    def close(self) -> None:
        self.M.mtmd_free(self.ctx)


def write_images(work: Path) -> dict[str, Path]:
    from PIL import Image

    out = {}
    for name, (w, h) in IMAGES.items():
        y, x = np.mgrid[0:h, 0:w]
        rng = np.random.default_rng(w)
        rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 256)], -1) + rng.integers(0, 40, (h, w, 3))
        out[name] = work / f"{name}.png"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out[name])
    return out


def bench_images(omni: Any, raw: RawLlama, plan: dict, threads: int, work: Path) -> dict[str, Any]:
    from pocketomni.conversation import media_part

    media = omni._media
    kw = media._mtmd_kw
    stock = RawMtmd(omni.folder.mmproj, raw, threads, kw["image_min_tokens"], kw["image_max_tokens"])
    files = write_images(work)
    got: dict[str, int] = {}

    def sdk(path: Path) -> float:
        t = time.perf_counter()
        item = media.prepare(media_part("image", str(path)))
        got["sdk"] = media.encode(item).shape[0]
        return time.perf_counter() - t

    def raw_enc(path: Path) -> float:
        t = time.perf_counter()
        got["raw"] = stock.encode_file(path)
        return time.perf_counter() - t

    first = files["448x448"]
    sdk(first), raw_enc(first)  # warm-up: loads the projector, allocates mtmd's compute buffers
    out: dict[str, Any] = {}
    for name, path in files.items():
        runs: dict[str, list[float]] = {"sdk": [], "raw": []}
        for _ in range(plan["image_repeats"][name]):
            runs["sdk"].append(sdk(path))
            runs["raw"].append(raw_enc(path))
        out[name] = {"sdk_ms": 1000 * med(runs["sdk"]), "raw_ms": 1000 * med(runs["raw"]), "sdk_tokens": got["sdk"],
                     "raw_tokens": got["raw"], "repeats": len(runs["sdk"]), "runs": runs}
        print(f"  image {name}: SDK {out[name]['sdk_ms']:.0f} ms ({got['sdk']} tokens), raw mtmd "
              f"{out[name]['raw_ms']:.0f} ms ({got['raw']} tokens)", flush=True)
    stock.close()
    return out


# ----------------------------------------------------------------------------- audio, memory


def bench_audio(folder: Any, plan: dict, threads: int) -> dict[str, Any]:
    import audio_input

    secs = plan["audio_seconds"]
    res = {p: audio_input.measure(p, folder.thinker, folder.mmproj, secs, plan["audio_runs"], threads)
           for p in ("ours", "stock")}
    out: dict[str, Any] = {"runs": plan["audio_runs"], "raw": res}
    for s in secs:
        o, k = res["ours"]["clips"][str(s)], res["stock"]["clips"][str(s)]
        out[f"{s:g}s"] = {"ours_ms": 1000 * o["wall_s"], "stock_ms": 1000 * k["wall_s"], "ours_cpu_s": o["cpu_s"],
                          "stock_cpu_s": k["cpu_s"], "ours_tokens": o["tokens"], "stock_tokens": k["tokens"]}
    return out


_FALLBACK_RSS = """
import json, sys, pocketomni as po
folder, threads, tokens, codes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with po.Omni.load_sync(folder, n_threads=threads) as omni:
    chat = omni.chat(speech=True, speech_preset="fast", max_tokens=tokens,
                     speech_options=po.SpeechOptions(max_codes=codes, seed=3))
    for ev in chat.send_sync("Tell me a long story about a lighthouse keeper."):
        pass
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"overall_peak_mb": int(hwm.split()[1]) / 1024}))
"""


def bench_memory(folder: Path, plan: dict, threads: int) -> dict[str, Any]:
    """Peak RSS of a spoken turn in a fresh process: memory.run, else VmHWM at the end of a turn."""
    args = [str(folder), str(threads), str(plan["mem_tokens"]), str(plan["mem_codes"])]
    code = ("import sys, json; from pathlib import Path; sys.path.insert(0, sys.argv[5]); import memory; "
            "r = memory.run(Path(sys.argv[1]), 'suite', int(sys.argv[2]), None, int(sys.argv[3]), int(sys.argv[4])); "
            "print(json.dumps({k: r[k] for k in ('overall_peak_mb', 'stages', 'n_ctx', 'audio_seconds')}))")
    errors = []
    for how, cmd in (("benchmarks/memory.py run()", [sys.executable, "-c", code, *args, str(HERE)]),
                     ("VmHWM after a spoken turn", [sys.executable, "-c", _FALLBACK_RSS, *args])):
        if how.startswith("benchmarks") and not (HERE / "memory.py").is_file():
            continue
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return {"method": how, **json.loads(res.stdout.strip().splitlines()[-1]),
                    "tokens": plan["mem_tokens"], "codes": plan["mem_codes"], "errors": errors}
        errors.append(f"{how}: {res.stderr.strip().splitlines()[-1:]}")
    raise RuntimeError("; ".join(errors))


# ----------------------------------------------------------------------------- speech


def flop_count(model: Any, engine: Any, n_codes: int, preset: str) -> float:
    """FLOPs of the reference token2wav for n_codes (torch FlopCounterMode), cached per model size
    (FLOPs depend on shapes only: the 3B and 7B token2wav are the same network)."""
    import speech as sb
    from torch.utils.flop_counter import FlopCounterMode

    cache_file = RESULTS / "suite-flops.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key = f"{sum(p.numel() for p in model.parameters())}:{preset}:{n_codes}"
    if key not in cache:
        codes, noise = sb.token2wav_inputs(n_codes)
        with FlopCounterMode(display=False) as fc:
            sb.torch_render(model, codes, engine._speakers["Chelsie"], noise, preset)
        cache[key] = float(fc.get_total_flops())
        cache_file.write_text(json.dumps(cache, indent=1))
    return cache[key]


def bench_speech(omni: Any, plan: dict, threads: int, gflops: float) -> dict[str, Any]:
    import speech as sb
    from pocketomni.weights import load_token2wav

    out: dict[str, Any] = {}
    sb.WARMUP = True
    out["talker"] = sb.bench_talker(omni, threads, plan["talker_codes"], 64, plan["repeats"])
    print(f"  talker: SDK {out['talker']['sdk_codes_per_s']:.1f} codes/s, raw {out['talker']['raw_codes_per_s']:.1f}",
          flush=True)
    engine = omni._speech_engine()
    model = sb.torch_token2wav(load_token2wav(omni.folder.token2wav))
    n = plan["t2w_codes"]
    audio_s = n * 480 / sb.SR
    for preset, reps in plan["t2w_repeats"].items():
        sb.WARMUP = preset == "fast" or plan is PLANS["quick"]  # the reference preset is ~18x the work
        t = sb.bench_token2wav(omni, threads, n, reps, [preset], streamed_too=False, model=model)[preset]
        flops = flop_count(model, engine, n, preset)
        t.update(codes=n, audio_seconds=audio_s, repeats=reps, warmup=sb.WARMUP, flops=flops,
                 flops_per_audio_s=flops / audio_s, roofline_rtf=flops / audio_s / (gflops * 1e9))
        t["numpy_over_roofline"] = t["numpy_rtf"] / t["roofline_rtf"]
        out[f"token2wav_{preset}"] = t
    del model
    sb.WARMUP = False  # the sections above have warmed every stage of the spoken turn
    chat = sb.bench_chat(omni, plan["chat_tokens"], plan["chat_codes"], plan["chat_repeats"], ["fast"])["fast"]
    chat.update(repeats=plan["chat_repeats"], warmup=False)
    out["spoken_turn"] = chat
    sb.WARMUP = True
    return out


# ----------------------------------------------------------------------------- driver


def run_suite(folder: Path, shape: str, plan_name: str, threads: int, parts: list[str]) -> dict[str, Any]:
    import pocketomni as po
    import speech as sb
    from pocketomni.model_folder import ModelFolder

    plan = PLANS[plan_name]
    t_start = time.perf_counter()
    loads = LoadSampler()
    path = RESULTS / f"suite-{shape}.json"
    res: dict[str, Any] = {"shape": shape, "folder": str(folder), "plan": plan_name, "plan_settings": plan,
                           "threads": threads, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "machine": machine_info(), "converter": CONVERTER, "sections": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if set(parts) != set(PARTS) and path.is_file() else None
    if old:  # a partial re-run keeps the other sections' figures and the first run's totals
        res["sections"] = {k: v for k, v in old["sections"].items() if k not in parts}

    def section(name: str, fn: Any) -> Any:
        if name not in parts:
            return None
        t, l0 = time.perf_counter(), os.getloadavg()[0]
        print(f"[{shape}] {name} ...", flush=True)
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 -- keep the other sections' figures
            import traceback

            traceback.print_exc()
            out = {"error": f"{type(e).__name__}: {e}"}
        out["seconds"] = time.perf_counter() - t
        out["load"] = [l0, os.getloadavg()[0]]
        res["sections"][name] = out
        print(f"[{shape}] {name} done in {out['seconds']:.0f} s", flush=True)
        path.write_text(json.dumps(res, indent=1, default=float))
        return out

    mach = section("machine", lambda: {**copy_bandwidth(threads), "sgemm_gflops": sb.gemm_gflops()}) or {}
    bw = mach.get("gbs") or copy_bandwidth(threads)["gbs"]
    gflops = mach.get("sgemm_gflops") or sb.gemm_gflops()
    mf = ModelFolder.open(folder)
    section("audio", lambda: bench_audio(mf, plan, threads))
    section("memory", lambda: bench_memory(folder, plan, threads))
    if {"thinker", "image", "speech"} & set(parts):
        omni = po.Omni.load_sync(folder, n_threads=threads)
        raw = RawLlama(omni.folder.thinker, threads, omni.n_ctx, 512)
        with tempfile.TemporaryDirectory(prefix="pocketomni-suite-") as work:
            section("thinker", lambda: bench_thinker(omni, raw, plan, bw))
            section("image", lambda: bench_images(omni, raw, plan, threads, Path(work)))
        if omni._media.mtmd is not None:  # free the projector before the speech models load
            omni._media.mtmd.close()
            omni._media.mtmd = None
        raw.close()
        section("speech", lambda: bench_speech(omni, plan, threads, gflops))
        omni.close()
    res["load_average"] = loads.stop()
    res["elapsed_s"] = time.perf_counter() - t_start
    if old:
        res["reruns"] = old.get("reruns", []) + [{"when": res["when"], "parts": parts, "elapsed_s": res["elapsed_s"],
                                                  "load_average": res["load_average"]}]
        for k in ("when", "elapsed_s", "load_average", "plan_settings"):
            res[k] = old.get(k, res[k])
    path.write_text(json.dumps(res, indent=1, default=float))
    return res


# ----------------------------------------------------------------------------- report

ROWS = ["thinker prefill", "thinker decode", "decode vs bandwidth roofline", "image encode 448x448",
        "image encode 1280x720", "audio encode 10 s", "audio encode 60 s", "talker", "token2wav fast",
        "token2wav fast vs FLOP roofline", "token2wav reference", "token2wav reference vs FLOP roofline",
        "time to first token", "time to first audio (spoken reply)", "peak RSS, full speech pipeline",
        "converter (3B bf16 HF checkpoint)"]


def headline(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(row, ours, baseline, ratio, note) for every row of ROWS ("-" where a section did not run)."""
    S = r["sections"]
    rows: dict[str, tuple[str, str, str, str]] = {}

    def err(name: str) -> str | None:
        s = S.get(name)
        return "not run" if s is None else (f"error: {s['error']}" if "error" in s else None)

    if not err("thinker"):
        t = S["thinker"]
        s, w = t["sdk"], t["raw"]

        def cpu(k: str) -> str:
            x = s[f"{k}_cpu_tok_s"] / w[f"{k}_cpu_tok_s"]
            return "" if np.isnan(x) else f" (CPU {x:.2f}x)"
        n = f"median of {t['repeats']} after a warm-up; {t['prompt_tokens']}-token prompt, {t['reply_tokens']} replies"
        rows["thinker prefill"] = (f"{s['prefill_tok_s']:.1f} tok/s", f"{w['prefill_tok_s']:.1f} tok/s (raw low-level)",
                                   f"{s['prefill_tok_s'] / w['prefill_tok_s']:.2f}x" + cpu("prefill"),
                                   n + "; target >= 0.97")
        rows["thinker decode"] = (f"{s['decode_tok_s']:.2f} tok/s", f"{w['decode_tok_s']:.2f} tok/s (raw low-level)",
                                  f"{s['decode_tok_s'] / w['decode_tok_s']:.2f}x" + cpu("decode"),
                                  f"greedy tokens identical: {t['greedy_tokens_identical']}; target >= 0.97")
        # the least disturbed run of each path (the machine is shared): fastest prefill, fastest decode
        pre = {k: t["prompt_tokens"] / min(x[0] for x in t["runs"][k]) for k in ("sdk", "raw")}
        dec = {k: max(x[2] for x in t["runs"][k]) for k in ("sdk", "raw")}
        rows["thinker prefill"] = (*rows["thinker prefill"][:3], rows["thinker prefill"][3] +
                                   f"; best runs {pre['sdk']:.1f} vs {pre['raw']:.1f} tok/s ({pre['sdk'] / pre['raw']:.2f}x)")
        rows["thinker decode"] = (*rows["thinker decode"][:3], rows["thinker decode"][3] +
                                  f"; best runs {dec['sdk']:.2f} vs {dec['raw']:.2f} tok/s ({dec['sdk'] / dec['raw']:.2f}x)")
        ro = t["roofline"]
        rows["decode vs bandwidth roofline"] = (
            f"{s['decode_tok_s']:.2f} tok/s", f"{ro['roofline_tok_s']:.2f} tok/s roofline",
            f"{s['decode_tok_s'] / ro['roofline_tok_s']:.2f} of roofline (raw {w['decode_tok_s'] / ro['roofline_tok_s']:.2f})",
            f"{ro['bytes_per_token'] / 1e6:.0f} MB/token ({ro['kv_bytes'] / 1e6:.1f} MB KV) / {ro['copy_gbs']:.1f} GB/s copy")
        rows["time to first token"] = (f"{s['ttft_s'] * 1000:.0f} ms", f"{w['ttft_s'] * 1000:.0f} ms (raw prefill + argmax)",
                                       f"{s['ttft_s'] / w['ttft_s']:.2f}x time", "text chat, incl. template + tokenize")
    if not err("image"):
        for name in IMAGES:
            i = S["image"][name]
            rows[f"image encode {name}"] = (f"{i['sdk_ms']:.0f} ms ({i['sdk_tokens']} tok)",
                                            f"{i['raw_ms']:.0f} ms ({i['raw_tokens']} tok, raw mtmd)",
                                            f"{i['raw_ms'] / i['sdk_ms']:.2f}x speed",
                                            f"SDK incl. file decode + resize; {i['repeats']} run(s) after a warm-up")
    if not err("audio"):
        a = S["audio"]
        for s in ("10", "60"):
            if f"{s}s" in a:
                c = a[f"{s}s"]
                rows[f"audio encode {s} s"] = (f"{c['ours_ms']:.0f} ms ({c['ours_tokens']} tok)",
                                               f"{c['stock_ms']:.0f} ms ({c['stock_tokens']} tok, stock mtmd)",
                                               f"{c['stock_ms'] / c['ours_ms']:.2f}x speed (CPU {c['stock_cpu_s'] / c['ours_cpu_s']:.2f}x)",
                                               f"{a['runs']} run(s) after a 1 s warm-up, own processes")
    if not err("speech"):
        sp = S["speech"]
        tk = sp["talker"]
        rows["talker"] = (f"{tk['sdk_codes_per_s']:.1f} codes/s", f"{tk['raw_codes_per_s']:.1f} codes/s (raw eval)",
                          f"{tk['ratio']:.2f}x", f"{tk['codes']} codes, median of {len(tk['runs']['sdk'])} after a warm-up")
        for p in ("fast", "reference"):
            t = sp.get(f"token2wav_{p}")
            if t is None:
                continue
            how = f"{t['repeats']} run(s)" + (" after a warm-up" if t["warmup"] else ", no warm-up")
            rows[f"token2wav {p}"] = (f"RTF {t['numpy_rtf']:.2f} (numpy)", f"RTF {t['torch_rtf']:.2f} (PyTorch)",
                                      f"{t['torch_over_numpy']:.2f}x speed", f"{t['audio_seconds']:.1f} s audio; {how}")
            rows[f"token2wav {p} vs FLOP roofline"] = (
                f"RTF {t['numpy_rtf']:.2f}", f"RTF {t['roofline_rtf']:.3f} roofline",
                f"{t['roofline_rtf'] / t['numpy_rtf']:.2f} of roofline",
                f"{t['flops_per_audio_s'] / 1e9:.0f} GFLOP per audio s / {r['sections']['machine'].get('sgemm_gflops', float('nan')):.0f} GFLOP/s sgemm")
        c = sp["spoken_turn"]
        rows["time to first audio (spoken reply)"] = (
            f"{c['ttfa']:.2f} s", "-", "-",
            (f"preset fast; TTFT {c['ttft']:.2f} s, RTF {c['rtf']:.2f}, {c['reply_tokens']:.0f} tokens / "
             f"{c['codes']:.0f} codes; {c['repeats']} run(s) after the speech sections"))
    if not err("memory"):
        m = S["memory"]
        target = RSS_TARGET_MB.get(r["shape"].split("-")[0])
        rows["peak RSS, full speech pipeline"] = (
            f"{m['overall_peak_mb']:.0f} MB", f"{target} MB target" if target else "-",
            f"{m['overall_peak_mb'] / target:.2f} of target" if target else "-",
            f"{m['method']}; spoken turn, {m['tokens']} tokens / {m['codes']} codes")
    cv = r["converter"]
    rows["converter (3B bf16 HF checkpoint)"] = (
        f"f16: {cv['f16']['seconds']:.0f} s, peak {cv['f16']['peak_mb']} MB",
        f"q4_k_m+q8_0: {cv['q4_k_m+q8_0']['seconds'] / 60:.1f} min, peak {cv['q4_k_m+q8_0']['peak_mb']} MB", "-",
        cv["source"])
    out = []
    for name in ROWS:
        sec = {"thinker": "thinker", "decode": "thinker", "time to first token": "thinker", "image": "image",
               "audio": "audio", "talker": "speech", "token2wav": "speech", "time to first audio": "speech",
               "peak RSS": "memory"}
        why = next((err(v) for k, v in sec.items() if name.startswith(k)), None)
        out.append((name, *rows.get(name, (why or "-", "-", "-", "-"))))
    return out


def write_report() -> None:
    files = sorted(RESULTS.glob("suite-*.json"), key=lambda p: ("-" in p.stem[6:], p.name))  # labelled runs last
    runs = [json.loads(p.read_text()) for p in files if p.name != "suite-flops.json"]
    lines = ["# Benchmark suite", "",
             ("Written by `benchmarks/suite.py` (method in its docstring). Every figure has its baseline from the same "
              "run; ratios > 1 favour ours (speed) except where a row says otherwise. Wall-clock figures; the machine "
              "is shared, so CPU-time ratios are given where they differ."), ""]
    for r in runs:
        m, la = r["machine"], r.get("load_average", {})
        lines += [f"## {r['shape']}", "",
                  (f"{r['folder']}; {r['when']}; plan `{r['plan']}`; {r['threads']} threads. Machine: {m['cpu']}, "
                   f"{m['cores']} cores, {m['ram_gb']} GB RAM; load average during the run: start {la.get('start', 0):.1f}, "
                   f"mean {la.get('mean', 0):.1f}, max {la.get('max', 0):.1f}. Elapsed: {r.get('elapsed_s', 0) / 60:.1f} min "
                   "(" + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in r["sections"].items()) + ")."
                   + "".join(f" Re-run {x['when']}: {', '.join(x['parts'])} ({x['elapsed_s'] / 60:.1f} min, load average "
                             f"mean {x['load_average']['mean']:.1f})." for x in r.get("reruns", []))), "",
                  "| figure | ours (SDK) | baseline | ratio | notes |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in headline(r)]
        lines.append("")
    (RESULTS / "suite.md").write_text("\n".join(lines) + "\n")
    plot(runs)


def plot(runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    w = 0.8 / max(1, len(runs))
    for i, r in enumerate(runs):
        S = r["sections"]
        th, im, au, sp = (S.get(k, {}) for k in ("thinker", "image", "audio", "speech"))
        ok = {k: "error" not in v for k, v in (("th", th), ("im", im), ("au", au), ("sp", sp))}
        nan = float("nan")
        ratios = {
            "prefill\nSDK/raw": th["sdk"]["prefill_tok_s"] / th["raw"]["prefill_tok_s"] if ok["th"] and th else nan,
            "decode\nSDK/raw": th["sdk"]["decode_tok_s"] / th["raw"]["decode_tok_s"] if ok["th"] and th else nan,
            "img 448\nraw/SDK": im["448x448"]["raw_ms"] / im["448x448"]["sdk_ms"] if ok["im"] and im else nan,
            "img 720p\nraw/SDK": im["1280x720"]["raw_ms"] / im["1280x720"]["sdk_ms"] if ok["im"] and im else nan,
            "audio 10s\nstock/ours": au["10s"]["stock_ms"] / au["10s"]["ours_ms"] if ok["au"] and au else nan,
            "audio 60s\nstock/ours": au["60s"]["stock_ms"] / au["60s"]["ours_ms"] if ok["au"] and au else nan,
            "talker\nSDK/raw": sp["talker"]["ratio"] if ok["sp"] and sp else nan,
            "t2w fast\ntorch/np": sp["token2wav_fast"]["torch_over_numpy"] if ok["sp"] and sp else nan,
            "t2w ref\ntorch/np": sp["token2wav_reference"]["torch_over_numpy"] if ok["sp"] and sp else nan,
        }
        x = np.arange(len(ratios))
        axes[0].bar(x + i * w, list(ratios.values()), w, label=r["shape"])
        axes[0].set_xticks(x + w * (len(runs) - 1) / 2, list(ratios), fontsize=7)
        roof = {"thinker decode\n(bandwidth)": th["sdk"]["decode_tok_s"] / th["roofline"]["roofline_tok_s"] if ok["th"] and th else nan,
                "token2wav fast\n(sgemm)": 1 / sp["token2wav_fast"]["numpy_over_roofline"] if ok["sp"] and sp else nan,
                "token2wav ref\n(sgemm)": 1 / sp["token2wav_reference"]["numpy_over_roofline"] if ok["sp"] and sp else nan}
        x = np.arange(len(roof))
        axes[1].bar(x + i * w, list(roof.values()), w, label=r["shape"])
        axes[1].set_xticks(x + w * (len(runs) - 1) / 2, list(roof), fontsize=8)
        lat = {"TTFT text": th["sdk"]["ttft_s"] if ok["th"] and th else nan,
               "TTFT spoken": sp["spoken_turn"]["ttft"] if ok["sp"] and sp else nan,
               "first audio": sp["spoken_turn"]["ttfa"] if ok["sp"] and sp else nan}
        x = np.arange(len(lat))
        axes[2].bar(x + i * w, list(lat.values()), w, label=r["shape"])
        axes[2].set_xticks(x + w * (len(runs) - 1) / 2, list(lat))
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].axhline(0.97, color="r", lw=0.6, ls=":")
    axes[0].set_title("ours vs baseline, same run (> 1: ours faster)")
    axes[1].set_title("fraction of roofline reached")
    axes[2].set_yscale("log")
    axes[2].set_title("latency (s, log)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "suite.png", dpi=100)
    plt.close(fig)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--folder", type=Path, help="model folder (pocketomni convert / synth output)")
    ap.add_argument("--tiny", action="store_true", help="use the demo model (pocketomni synth tiny, built once)")
    ap.add_argument("--shape", help="label of the run: tiny, 3b, 7b (default: tiny or the folder's name)")
    ap.add_argument("--quick", action="store_true", help="reduced lengths and repeats (smoke test)")
    ap.add_argument("--threads", type=int, default=int(_T))
    ap.add_argument("--parts", default=",".join(PARTS), help=f"sections to run ({','.join(PARTS)})")
    ap.add_argument("--report", action="store_true", help="only rebuild suite.md / suite.png from the JSON files")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")


def run_from_args(a: argparse.Namespace) -> int:
    global RESULTS
    RESULTS = a.out
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not a.report:
        if not (a.tiny or a.folder):
            raise SystemExit("pass --tiny or --folder DIR")
        if a.tiny:
            from pocketomni.demo import ensure_demo_model

            folder = ensure_demo_model(progress=False)
        else:
            folder = a.folder
        shape = a.shape or ("tiny" if a.tiny else folder.name)
        res = run_suite(folder, shape, "quick" if a.quick else "full", a.threads, a.parts.split(","))
        print(f"[{shape}] suite finished in {res['elapsed_s'] / 60:.1f} min")
    write_report()
    print(f"wrote {RESULTS / 'suite.md'} and suite.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
