"""token2wav with float16-stored weights vs float32: resident memory and CPU time, same run.

Usage:
    .venv/bin/python benchmarks/token2wav_f16.py F16_GGUF F32_GGUF [--codes 50] [--rounds 2]

Both files hold the same network (e.g. the synthetic 3B token2wav written twice by the converter, with
`--token2wav-type f16` and `f32`). Each measurement runs in a fresh process (alternating f32, f16, ...
so the shared machine's load hits both alike), one BLAS thread, CPU time (time.process_time):
- resident memory after loading the file, building DiT + BigVGAN, the speaker and the preset times
  (the modulation weights released, as the speech engine does), and again after the stages below;
  peak (VmHWM); file-backed and anonymous parts (/proc/self/status), minus the process before loading;
- DiT one-shot (fast preset), DiT exact stream (codes fed 12 at a time), BigVGAN one-shot (200-frame
  pushes) and BigVGAN streamed in 24-frame pushes (what a 12-code step feeds it).
Results: results/token2wav_f16.json / .md / .png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("dit_one_shot", "dit_exact_stream", "bigvgan", "bigvgan_stream24")
MEM = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def status() -> dict[str, int]:
    """Memory fields of /proc/self/status in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEM:
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def worker(path: str, n_codes: int) -> dict:
    from pocketomni.engine.weights import load_token2wav
    from pocketomni.token2wav import NoiseSource, Token2Wav
    from pocketomni.token2wav.half import converter_name

    base = status()
    w = load_token2wav(path)
    tw = Token2Wav.from_weights(w.weights, w.config)
    s = w.speakers[min(w.speakers)]
    spk = tw.speaker(s.cond, s.ref_mel, s.name)
    released = tw.prepare_presets()
    built = status()
    codes = np.random.default_rng(5).integers(0, 8193, n_codes)
    noise = NoiseSource(tw.dit.cfg.mel_dim, seed=9).get(0, 2 * n_codes).copy()
    mel = tw.mel(codes, spk, "fast", noise=noise)

    def stream() -> None:
        st = tw.stream(spk, "fast", mode="exact", noise=noise)
        for i in range(0, n_codes, 12):
            st.dit_stream.feed(codes[i : i + 12])
        st.dit_stream.finish()

    stages = {"dit_one_shot": lambda: tw.mel(codes, spk, "fast", noise=noise), "dit_exact_stream": stream,
              "bigvgan": lambda: tw.vocoder.vocode(mel), "bigvgan_stream24": lambda: tw.vocoder.vocode(mel, 24)}
    times = {k: cpu(fn) for k, fn in stages.items()}
    after = status()
    return {"file": path, "file_bytes": os.path.getsize(path), "converter": converter_name(),
            "released": released, "cpu_s": times,
            "built": {k: built[k] - base[k] for k in ("VmRSS", "RssAnon", "RssFile")},
            "after": {k: after[k] - base[k] for k in ("VmRSS", "RssAnon", "RssFile")},
            "peak": after["VmHWM"] - base["VmRSS"]}


def write_report(res: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "token2wav_f16.json").write_text(json.dumps(res, indent=1))
    mb = 1e6
    lines = [
        "# token2wav: float16-stored weights vs float32 (float32 compute)",
        "",
        f"{res['machine']}; {res['codes']} codes ({res['codes'] / 50:.1f} s of speech), fast preset, 1 BLAS "
        f"thread, CPU seconds (median of {res['rounds']} fresh processes per type, alternating; shared, noisy "
        f"machine); fp16->fp32 conversion: {res['runs'][0]['converter']}; {res['date']}.",
        "Memory: bytes above the process before loading, after build + speaker + preset times (modulation "
        "weights released) and after running every stage; peak = VmHWM.",
        "",
        "| type | file MB | RSS built | anon built | file-backed built | RSS after | anon after | peak | "
        + " | ".join(STAGES) + " |",
        "|" + "---|" * (8 + len(STAGES)),
    ]
    for t in ("f32", "f16"):
        runs = [r for r in res["runs"] if r["type"] == t]

        def med(f, runs=runs):
            return statistics.median(f(r) for r in runs)

        lines.append(
            f"| {t} | {runs[0]['file_bytes'] / mb:.0f} | {med(lambda r: r['built']['VmRSS']) / mb:.0f} | "
            f"{med(lambda r: r['built']['RssAnon']) / mb:.0f} | {med(lambda r: r['built']['RssFile']) / mb:.0f} | "
            f"{med(lambda r: r['after']['VmRSS']) / mb:.0f} | {med(lambda r: r['after']['RssAnon']) / mb:.0f} | "
            f"{med(lambda r: r['peak']) / mb:.0f} | "
            + " | ".join(f"{med(lambda r, k=k: r['cpu_s'][k]):.2f}" for k in STAGES) + " |")
    lines += ["", "Every run (CPU s): " + "; ".join(
        f"{r['type']} " + ", ".join(f"{r['cpu_s'][k]:.2f}" for k in STAGES) for r in res["runs"])]
    (RESULTS / "token2wav_f16.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, t in enumerate(("f32", "f16")):
        runs = [r for r in res["runs"] if r["type"] == t]
        mem = [statistics.median(r[k]["VmRSS"] for r in runs) / mb for k in ("built", "after")]
        mem.append(statistics.median(r["peak"] for r in runs) / mb)
        a.bar(np.arange(3) + 0.4 * i, mem, 0.4, label=t)
        cpu_s = [statistics.median(r["cpu_s"][k] for r in runs) for k in STAGES]
        b.bar(np.arange(len(STAGES)) + 0.4 * i, cpu_s, 0.4, label=t)
    a.set_xticks(np.arange(3) + 0.2, ["RSS built", "RSS after", "peak"])
    a.set_ylabel("MB above the bare process")
    b.set_xticks(np.arange(len(STAGES)) + 0.2, STAGES, rotation=15, fontsize=8)
    b.set_ylabel(f"CPU s for {res['codes']} codes")
    a.legend()
    fig.suptitle("token2wav weights stored f16 vs f32 (float32 compute)")
    fig.tight_layout()
    fig.savefig(RESULTS / "token2wav_f16.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("f16")
    ap.add_argument("f32")
    ap.add_argument("--codes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.codes)))
        return
    from pocketomni.backend.cpu_guard import read_cpu_features

    runs = []
    for _ in range(args.rounds):
        for t in ("f32", "f16"):
            path = getattr(args, t)
            out = subprocess.run([sys.executable, __file__, args.f16, args.f32, "--codes", str(args.codes),
                                  "--worker", path], check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1]) | {"type": t}
            print(t, {k: round(v, 2) for k, v in r["cpu_s"].items()}, f"RSS built {r['built']['VmRSS'] / 1e6:.0f} MB",
                  f"peak {r['peak'] / 1e6:.0f} MB", flush=True)
            runs.append(r)
    write_report({"machine": f"{read_cpu_features().model}, {os.cpu_count()} cores, {platform.machine()}",
                  "codes": args.codes, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs})


if __name__ == "__main__":
    main()
