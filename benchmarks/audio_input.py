"""Audio input: our exact encoder vs stock mtmd on the same mmproj file (issue 8).

    .venv/bin/python benchmarks/audio_input.py [--shapes tiny,3b,7b] [--seconds 1,3,10,30,60]
        [--runs 3] [--full-runs 1] [--threads 2] [--tiny-folder DIR] [--work-dir DIR] [--keep]

For each clip length: the time from 16 kHz samples to the thinker's audio embedding rows, and the audio
tokens the thinker must then prefill, for
- ours: the SDK's exact path (`pocketomni.engine.encoders.load_audio_encoder` on the mmproj + whole-clip log-mel
  + 2 s windows, numpy), as `MediaEncoders` runs it;
- stock: libmtmd's own audio path (`MtmdContext.encode_audio`: mtmd's log-mel, 30 s windows, ggml).
Each path runs in its own process: its baseline RSS is taken before the encoder is loaded (for stock,
after the text model mtmd needs), then it loads, warms up on a 1 s clip and encodes every clip `runs`
times (median reported); per clip the kernel's peak-RSS mark is reset, so "peak" is the highest RSS
during that clip's encodes. Encoder memory = peak - baseline: weights as they end up resident (mtmd
reads the whole mmproj, vision tower included; ours memory-maps the audio tensors) plus the working set.

Shapes: "tiny" is the converted "base" test fixture (tests/omni_fixtures, needs the test extra) or
--tiny-folder; "3b" / "7b" write a full-size synthetic f16 mmproj with `pocketomni.convert.synth`
(random weights, real shapes) and, because mtmd needs a text model of the same width, a stub thinker:
the tiny thinker's tokenizer with the real hidden size, one layer and all-zero weights (it is only
loaded, never run). Full-size runs are slow on 2 cores: --full-runs (default 1) sets their repeats.
Writes benchmarks/results/audio_input.{md,png,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_RATE = 16000
WARMUP_SECONDS = 1.0


# ---------------------------------------------------------------------- inputs and process memory


def speech_like(seconds: float, seed: int = 5) -> np.ndarray:
    """Deterministic 16 kHz test audio: a gliding, amplitude-modulated tone plus noise."""
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    freq = 220 + 180 * np.sin(2 * np.pi * 0.15 * t)
    tone = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    return (0.3 * tone + 0.03 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> None:
    """Set the kernel's peak-RSS mark (VmHWM) back to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---------------------------------------------------------------------- worker (one path, own process)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one encoder, warm it up, time every clip; returns the measurements."""
    clips = {s: speech_like(s) for s in spec["seconds"]}
    warm = speech_like(WARMUP_SECONDS)
    threads = int(spec["threads"])
    if spec["path"] == "stock":
        from pocketomni.backend import LlamaModel, MtmdContext

        model = LlamaModel(spec["thinker"], n_threads=threads)
        base = _status_mb("VmRSS")
        t0 = time.perf_counter()
        mtmd = MtmdContext(spec["mmproj"], model, n_threads=threads)
        load_s = time.perf_counter() - t0

        def encode(x: np.ndarray) -> int:
            return mtmd.encode_audio(x).n_tokens
    else:
        from pocketomni.audio.features import log_mel_segments
        from pocketomni.engine.encoders import load_audio_encoder

        base = _status_mb("VmRSS")
        t0 = time.perf_counter()
        enc = load_audio_encoder(Path(spec["mmproj"]))
        load_s = time.perf_counter() - t0

        def encode(x: np.ndarray) -> int:  # what MediaEncoders._encode_audio does
            parts = [enc.encode(mel) for mel in log_mel_segments(x)]
            return int(sum(p.shape[0] for p in parts))

    encode(warm)
    loaded = _status_mb("VmRSS")
    out: dict[str, Any] = {"path": spec["path"], "baseline_mb": base, "resident_after_warmup_mb": loaded,
                           "load_s": load_s, "clips": {}}
    for s, x in clips.items():
        walls, cpus, peaks, tokens = [], [], [], 0
        for _ in range(int(spec["runs"])):
            _reset_peak()
            w0, c0 = time.perf_counter(), time.process_time()
            tokens = encode(x)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            peaks.append(_status_mb("VmHWM"))
        out["clips"][str(s)] = {"tokens": tokens, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
                                "peak_mb": max(peaks), "runs": len(walls)}
    return out


def measure(path: str, thinker: Path, mmproj: Path, seconds: list[float], runs: int, threads: int) -> dict[str, Any]:
    """run_worker in a fresh process (so each path's memory is its own)."""
    spec = {"path": path, "thinker": str(thinker), "mmproj": str(mmproj), "seconds": seconds, "runs": runs,
            "threads": threads}
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{path} worker failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- model files


def tiny_folder(work: Path) -> Path:
    """The "base" test fixture converted to f32 (thinker + mmproj)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from omni_fixtures import build_checkpoint

    from pocketomni.convert import convert_checkpoint

    out = work / "tiny-base-f32"
    if not (out / "pocketomni.json").is_file():
        convert_checkpoint(build_checkpoint("base"), out, quant="f32", mmproj_quant="f32", progress=False)
    return out


def synth_mmproj(preset: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """A full-size synthetic f16 mmproj for preset "3b" / "7b" (reused when present) and its text config."""
    from pocketomni.convert.mmproj import mmproj_plan
    from pocketomni.convert.synth import SyntheticFiles, synthetic_checkpoint
    from pocketomni.convert.writer import write_gguf

    ckpt = synthetic_checkpoint(preset)
    out = work / f"{preset}-mmproj-f16.gguf"
    if not out.is_file():
        tmp = out.with_suffix(".partial")
        write_gguf(tmp, mmproj_plan(ckpt, SyntheticFiles(0, ckpt.config), "f16", {"name": f"{preset} synthetic mmproj"}))
        os.replace(tmp, out)
    return out, ckpt.config["thinker_config"]["text_config"]


def stub_thinker(tokenizer_src: Path, text: dict[str, Any], out: Path) -> Path:
    """A loadable qwen2vl GGUF of the given width with the source's tokenizer, one layer, zero weights."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    if out.is_file():
        return out
    d, heads, kv = int(text["hidden_size"]), int(text["num_attention_heads"]), int(text["num_key_value_heads"])
    head_dim, ffn = d // heads, 32
    sections = list(text["rope_scaling"]["mrope_section"]) + [0]
    src = gguf.GGUFReader(tokenizer_src)
    n_vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    w = gguf.GGUFWriter(out.with_suffix(".partial"), "qwen2vl")
    fixed = {"embedding_length": d, "block_count": 1, "feed_forward_length": ffn, "attention.head_count": heads,
             "attention.head_count_kv": kv, "rope.dimension_sections": sections}
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        types = field.types
        value = fixed.get(key.removeprefix("qwen2vl."), field.contents()) if key.startswith("qwen2vl.") else \
            field.contents()
        w.add_key_value(key, value, types[0], types[1] if len(types) > 1 else None)

    def matrix(name: str, rows: int, cols: int) -> None:  # Q4_0 blocks of zero bytes are zeros
        w.add_tensor(name, np.zeros((rows, cols // 32 * 18), np.uint8), raw_dtype=QT.Q4_0)

    def vector(name: str, n: int) -> None:
        w.add_tensor(name, np.zeros(n, np.float32))

    b = "blk.0."
    matrix("token_embd.weight", n_vocab, d)
    vector("output_norm.weight", d)
    vector(b + "attn_norm.weight", d)
    vector(b + "ffn_norm.weight", d)
    matrix(b + "attn_q.weight", d, d)
    matrix(b + "attn_k.weight", kv * head_dim, d)
    matrix(b + "attn_v.weight", kv * head_dim, d)
    vector(b + "attn_q.bias", d)
    vector(b + "attn_k.bias", kv * head_dim)
    vector(b + "attn_v.bias", kv * head_dim)
    matrix(b + "attn_output.weight", d, d)
    matrix(b + "ffn_gate.weight", ffn, d)
    matrix(b + "ffn_up.weight", ffn, d)
    matrix(b + "ffn_down.weight", d, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(out.with_suffix(".partial"), out)
    return out


# ---------------------------------------------------------------------- report


def _row(shape: str, s: float, ours: dict[str, Any], stock: dict[str, Any]) -> str:
    o, k = ours["clips"][str(s)], stock["clips"][str(s)]
    mem_o, mem_k = o["peak_mb"] - ours["baseline_mb"], k["peak_mb"] - stock["baseline_mb"]
    return (f"| {shape} | {s:g} | {o['tokens']} | {k['tokens']} | {k['tokens'] / o['tokens']:.1f}x | "
            f"{o['wall_s']:.3f} | {k['wall_s']:.3f} | {k['wall_s'] / o['wall_s']:.1f}x | "
            f"{o['cpu_s']:.3f} | {k['cpu_s']:.3f} | {mem_o:.0f} | {mem_k:.0f} | {o['runs']} |")


def write_report(results: dict[str, dict[str, Any]], seconds: list[float], threads: int, out: Path) -> None:
    """Markdown table + PNG + raw JSON."""
    lines = [
        "# Audio input: our exact encoder vs stock mtmd (same mmproj file)",
        "",
        (f"Generated by `benchmarks/audio_input.py` on {time.strftime('%Y-%m-%d')}; {threads} threads for both paths "
        f"(numpy/OpenBLAS and ggml), {os.cpu_count()} CPU cores shared with other jobs. Encode = 16 kHz samples -> "
        "audio embedding rows (log-mel included). Tokens = audio tokens the thinker prefills (plus "
        "`<|audio_bos|>`/`<|audio_eos|>`). Times are medians of `runs` after a 1 s warm-up; wall and process CPU "
        "seconds (all threads). Encoder MB = peak RSS during the clip's encodes minus the process's RSS before the "
        "encoder was loaded: resident weights (stock mtmd loads the whole mmproj, vision tower included; ours "
        "memory-maps the audio tensors) plus working memory. 3b/7b: synthetic f16 mmproj with the real shapes. "
         "On a shared machine compare the CPU columns: wall seconds include waiting for a core (the load "
         "average column shows how busy the machine was while a shape ran)."),
        "",
        ("| shapes | clip s | tokens ours | tokens stock | stock/ours | encode s ours (wall) | stock (wall) | "
        "speedup | ours CPU s | stock CPU s | encoder MB ours | stock | runs |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, r in results.items():
        lines += [_row(shape, s, r["ours"], r["stock"]) for s in seconds]
    lines += ["", "| shapes | path | baseline RSS MB | RSS after load + warm-up MB | load s | load average | mmproj |",
              "|---|---|---|---|---|---|---|"]
    for shape, r in results.items():
        for p in ("ours", "stock"):
            m = r[p]
            lines.append(f"| {shape} | {p} | {m['baseline_mb']:.0f} | {m['resident_after_warmup_mb']:.0f} | "
                         f"{m['load_s']:.2f} | {m.get('loadavg', '-')} | {r['mmproj']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, seconds, out.with_suffix(".png"))


def plot(results: dict[str, dict[str, Any]], seconds: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for i, (shape, r) in enumerate(results.items()):
        c = f"C{i}"
        for p, style in (("ours", "-o"), ("stock", "--s")):
            clips = [r[p]["clips"][str(s)] for s in seconds]
            label = f"{shape} {p}"
            axes[0].plot(seconds, [c_["cpu_s"] for c_ in clips], style, color=c, label=label)
            axes[1].plot(seconds, [c_["tokens"] for c_ in clips], style, color=c, label=label)
            axes[2].plot(seconds, [c_["peak_mb"] - r[p]["baseline_mb"] for c_ in clips], style, color=c, label=label)
    titles = ("encode time (process CPU s, median)", "audio tokens to prefill", "encoder memory (peak - baseline, MB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clip length (s)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Qwen2.5-Omni audio input: exact 2 s-window encoder (ours, numpy) vs stock mtmd (30 s windows, ggml)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,3b,7b")
    ap.add_argument("--seconds", default="1,3,10,30,60")
    ap.add_argument("--runs", type=int, default=3, help="repeats per clip at tiny shapes (median reported)")
    ap.add_argument("--full-runs", type=int, default=1, help="repeats per clip at 3b/7b shapes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny-folder", type=Path, help="a converted f32 tiny model folder (default: convert the fixture)")
    ap.add_argument("--work-dir", type=Path, help="where the synthetic files go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files in --work-dir")
    ap.add_argument("--out", type=Path, default=RESULTS / "audio_input")
    ap.add_argument("--report-only", action="store_true", help="rebuild the .md/.png from the .json of --out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    seconds = [float(s) for s in args.seconds.split(",")]
    if args.report_only:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        write_report(saved, seconds, args.threads, args.out)
        print(args.out.with_suffix(".md").read_text())
        return 0
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="pocketomni-audio-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tiny = args.tiny_folder or tiny_folder(work)
        tiny_thinker, tiny_mmproj = tiny / "thinker-f32.gguf", tiny / "mmproj-f32.gguf"
        results: dict[str, dict[str, Any]] = {}
        made: list[Path] = []
        for shape in shapes:
            if shape == "tiny":
                thinker, mmproj, runs = tiny_thinker, tiny_mmproj, args.runs
            else:
                t0 = time.perf_counter()
                mmproj, text = synth_mmproj(shape, work)
                thinker = stub_thinker(tiny_thinker, text, work / f"{shape}-stub-thinker.gguf")
                made += [mmproj, thinker]
                print(f"{shape}: synthetic mmproj + stub thinker ready in {time.perf_counter() - t0:.0f} s", flush=True)
                runs = args.full_runs
            results[shape] = {"mmproj": f"{mmproj.name} ({mmproj.stat().st_size / 2**20:.0f} MiB)"}
            for path in ("ours", "stock"):
                t0 = time.perf_counter()
                load0 = os.getloadavg()[0]
                results[shape][path] = measure(path, thinker, mmproj, seconds, runs, args.threads)
                results[shape][path]["loadavg"] = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
                print(f"{shape} {path}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            write_report(results, seconds, args.threads, args.out)  # after every shape: partial results survive
        if args.work_dir and not args.keep:
            for f in made:
                f.unlink(missing_ok=True)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
