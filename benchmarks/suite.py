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
- peer (not a section: its own script, benchmarks/mnn_peer.py): llama.cpp in our formats vs MNN 3.6.1 on
  the same synthetic decoder (3B/7B thinker, 3B talker widths), alternating; skipped with a message
  when scripts/mnn_venv.sh has not made the MNN venv. Results in mnn_peer.md.
- converter: not re-run (no full-size bf16 HF checkpoint can be synthesised cheaply); the last measured
  figures are reported with their source.
Writes benchmarks/results/suite-<shape>.json (after every section), suite.md and suite.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# suite_common first (sorted first too): it sets the BLAS thread variables before numpy loads
from suite_common import PLANS, RESULTS, THREADS, LoadSampler, copy_bandwidth, machine_info
from suite_media import bench_audio, bench_images
from suite_report import write_report
from suite_speech import bench_memory, bench_speech
from suite_thinker import RawLlama, bench_thinker

PARTS = ("machine", "audio", "memory", "thinker", "image", "speech")
CONVERTER = {"source": "issue 2 closing note (converter commit c783840, 2026-11-28), not re-run by this suite",
             "checkpoint": "synthetic 3B-shaped bf16 HF checkpoint, 8.8 GB",
             "f16": {"seconds": 79, "peak_mb": 273}, "q4_k_m+q8_0": {"seconds": 9.8 * 60, "peak_mb": 950}}
# the table's rows, in order (tests/test_bench_suite.py reads this list from this file)
ROWS = ["thinker prefill", "thinker decode", "decode vs bandwidth roofline", "image encode 448x448",
        "image encode 1280x720", "audio encode 10 s", "audio encode 60 s", "talker", "token2wav fast",
        "token2wav fast vs FLOP roofline", "token2wav reference", "token2wav reference vs FLOP roofline",
        "time to first token", "time to first audio (spoken reply)", "peak RSS, full speech pipeline",
        "converter (3B bf16 HF checkpoint)"]


def run_suite(folder: Path, shape: str, plan_name: str, threads: int, parts: list[str],
              results: Path = RESULTS) -> dict[str, Any]:
    """Run the sections `parts` on `folder`; writes `results`/suite-<shape>.json after each one."""
    import speech as sb

    import pocketomni as po
    from pocketomni.engine.model_folder import ModelFolder

    plan = PLANS[plan_name]
    t_start = time.perf_counter()
    loads = LoadSampler()
    path = results / f"suite-{shape}.json"
    res: dict[str, Any] = {"shape": shape, "folder": str(folder), "plan": plan_name, "plan_settings": plan,
                           "threads": threads, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "machine": machine_info(), "converter": CONVERTER, "sections": {}}
    results.mkdir(parents=True, exist_ok=True)
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
        if omni.runtime.media.mtmd is not None:  # free the projector before the speech models load
            omni.runtime.media.mtmd.close()
            omni.runtime.media.mtmd = None
        raw.close()
        section("speech", lambda: bench_speech(omni, plan, threads, gflops, results))
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


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The suite's options (also those of `pocketomni bench`)."""
    ap.add_argument("--folder", type=Path, help="model folder (pocketomni convert / synth output)")
    ap.add_argument("--tiny", action="store_true", help="use the demo model (pocketomni synth tiny, built once)")
    ap.add_argument("--shape", help="label of the run: tiny, 3b, 7b (default: tiny or the folder's name)")
    ap.add_argument("--quick", action="store_true", help="reduced lengths and repeats (smoke test)")
    ap.add_argument("--threads", type=int, default=int(THREADS))
    ap.add_argument("--parts", default=",".join(PARTS), help=f"sections to run ({','.join(PARTS)})")
    ap.add_argument("--report", action="store_true", help="only rebuild suite.md / suite.png from the JSON files")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")


def run_from_args(a: argparse.Namespace) -> int:
    """Run the suite (unless --report) and rebuild the report in --out."""
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        if not (a.tiny or a.folder):
            raise SystemExit("pass --tiny or --folder DIR")
        if a.tiny:
            from pocketomni.cli.demo import ensure_demo_model

            folder = ensure_demo_model(progress=False)
        else:
            folder = a.folder
        shape = a.shape or ("tiny" if a.tiny else folder.name)
        res = run_suite(folder, shape, "quick" if a.quick else "full", a.threads, a.parts.split(","), a.out)
        print(f"[{shape}] suite finished in {res['elapsed_s'] / 60:.1f} min")
    write_report(a.out, ROWS)
    print(f"wrote {a.out / 'suite.md'} and suite.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
