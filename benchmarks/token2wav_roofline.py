"""token2wav per-stage FLOP efficiency at full size (DiT and BigVGAN of Qwen2.5-Omni; random weights).

Usage:
    .venv/bin/python benchmarks/token2wav_roofline.py [--codes 100] [--label after]

One thread everywhere (OPENBLAS_NUM_THREADS=1) and CPU time (time.process_time) so that the shared,
loaded 2-core machine disturbs the ratios as little as possible. In the same run:
- peak: numpy float32 sgemm GFLOP/s (1024^3 products, best of 5);
- DiT one-shot (fast preset, `Token2Wav.mel`), DiT exact stream (codes fed 12 at a time, 36-code steps),
  and BigVGAN (`vocode` of the one-shot mel);
- FLOPs counted from the shapes (GEMM-like work only: linear layers, attention products, convolutions;
  the anti-aliasing FIRs and pointwise ops count 0), checked against the PyTorch FlopCounterMode total the
  suite caches (benchmarks/results/suite-flops.json) when present.
fraction = useful FLOPs / (CPU seconds x peak); for the stream the useful FLOPs are the one-shot ones,
so recomputation shows as a lower fraction. Results: results/token2wav_roofline-<label>.json, and
token2wav_roofline.md / .png rebuilt from all labels.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def sgemm_peak() -> float:
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    a @ a
    best = 0.0
    for _ in range(5):
        t = time.process_time()
        for _ in range(4):
            a @ a
        best = max(best, 4 * 2 * 1024**3 / max(time.process_time() - t, 1e-9) / 1e9)
    return best


def full_size_token2wav():
    """Token2Wav with the real config and random float32 weights (shapes from transformers on the meta device)."""
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniToken2WavConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniToken2WavModel

    from pocketomni.token2wav import Token2Wav

    cfg = Qwen2_5OmniToken2WavConfig()
    with torch.device("meta"):
        model = Qwen2_5OmniToken2WavModel(cfg)
    rng = np.random.default_rng(0)
    w = {}
    for name, p in model.state_dict().items():
        shape = tuple(p.shape)
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1 / np.sqrt(fan) if len(shape) > 1 else (0.2 if name.endswith(("alpha", "beta")) else 0.1)
        w[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)) if p.dtype.is_floating_point \
            else np.zeros(shape, np.int64)
    w["code2wav_bigvgan_model.conv_post.weight"] *= np.float32(0.04)
    tw = Token2Wav.from_weights(w, cfg.to_dict())
    tw.prepare_presets()
    return tw


def dit_flops(cfg, frames: int, evaluations: int, cfg_passes: int = 1) -> float:
    h, ff = cfg.hidden_size, cfg.hidden_size * cfg.ff_mult
    keys = cfg.block_size  # keys per query per layer: own block, plus one per look-back/ahead layer
    per_layer = 2 * (4 * h * h + 2 * h * ff)
    attn = sum(4 * h * keys * (1 + (i in cfg.layers_back) + (i in cfg.layers_ahead))
               for i in range(cfg.num_hidden_layers))
    per_frame = cfg.num_hidden_layers * per_layer + attn + 2 * 2 * h * cfg.mel_dim
    return float(frames * evaluations * cfg_passes * per_frame)


def bigvgan_flops(cfg, frames: int) -> float:
    c0 = cfg.upsample_initial_channel
    total = 2 * cfg.mel_dim * c0 * 7 * frames  # conv_pre
    rate = frames
    for i, (s, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        cin, cout = c0 // 2**i, c0 // 2 ** (i + 1)
        total += 2 * cin * cout * k * rate  # transposed conv: k taps per input sample
        rate *= s
        taps = sum(2 * ks * len(d) for ks, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        total += 2 * cout * cout * taps * rate
    total += 2 * (c0 // 2 ** len(cfg.upsample_rates)) * 7 * rate  # conv_post
    return float(total)


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def run(n_codes: int, repeats: int) -> dict:
    from pocketomni.token2wav import NoiseSource

    tw = full_size_token2wav()
    rng = np.random.default_rng(1)
    spk = tw.speaker(rng.standard_normal(192, dtype=np.float32), rng.standard_normal((300, 80), dtype=np.float32))
    codes = np.random.default_rng(5).integers(0, 8193, n_codes)
    noise = NoiseSource(80, seed=9).get(0, 2 * n_codes).copy()
    plan = tw.plan("fast")
    frames = 2 * n_codes
    f_dit = dit_flops(tw.dit.cfg, frames, plan.evaluations)
    f_voc = bigvgan_flops(tw.vocoder.cfg, frames)
    mel = tw.mel(codes, spk, "fast", noise=noise)

    def stream():
        s = tw.stream(spk, "fast", mode="exact", noise=noise)
        dit = s.dit_stream
        for i in range(0, n_codes, 12):
            dit.feed(codes[i : i + 12])
        dit.finish()

    stages = {"dit_one_shot": (lambda: tw.mel(codes, spk, "fast", noise=noise), f_dit),
              "dit_exact_stream": (stream, f_dit),
              "bigvgan": (lambda: tw.vocoder.vocode(mel), f_voc)}
    peak_before = sgemm_peak()
    out: dict = {"codes": n_codes, "audio_seconds": n_codes / 50, "flops": {"dit": f_dit, "bigvgan": f_voc}}
    for name, (fn, flops) in stages.items():
        secs = sorted(cpu(fn) for _ in range(repeats))
        s = secs[len(secs) // 2]
        out[name] = {"cpu_s": s, "runs": secs, "gflops": flops / s / 1e9}
        print(f"  {name}: {s:.2f} s CPU, {flops / s / 1e9:.1f} GFLOP/s", flush=True)
    peak = max(peak_before, sgemm_peak())
    out["sgemm_peak_gflops"] = peak
    for name in stages:
        out[name]["fraction"] = out[name]["gflops"] / peak
    total = f_dit + f_voc
    out["fast_one_shot_fraction"] = total / ((out["dit_one_shot"]["cpu_s"] + out["bigvgan"]["cpu_s"]) * peak * 1e9)
    out["fast_stream_fraction"] = total / ((out["dit_exact_stream"]["cpu_s"] + out["bigvgan"]["cpu_s"]) * peak * 1e9)
    cache = RESULTS / "suite-flops.json"
    if cache.is_file() and n_codes == 50:
        ref = next((v for k, v in json.loads(cache.read_text()).items() if k.endswith(":fast:50") and v > 1e11), None)
        out["torch_flop_counter"] = ref
    return out


def write_report() -> None:
    res = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("token2wav_roofline-*.json"))]
    if not res:
        return
    lines = ["# token2wav FLOP efficiency per stage (full size, fast preset)", "",
             ("Written by `benchmarks/token2wav_roofline.py` (method in its docstring): one thread, CPU time, "
             "median of the runs; fraction = FLOPs counted from the shapes / (CPU s x numpy sgemm peak of the "
             "same run). Shared 2-core machine: expect +-15% noise between runs."), "",
             "| run | codes | sgemm peak | DiT one-shot | DiT exact stream | BigVGAN | one-shot total | streamed total |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res:
        def cell(k, r=r):
            return f"{r[k]['gflops']:.1f} GFLOP/s = {r[k]['fraction']:.2f} ({r[k]['cpu_s']:.1f} s)"
        lines.append(f"| {r['label']} ({r['when']}) | {r['codes']} | {r['sgemm_peak_gflops']:.1f} GFLOP/s | "
                     f"{cell('dit_one_shot')} | {cell('dit_exact_stream')} | {cell('bigvgan')} | "
                     f"{r['fast_one_shot_fraction']:.2f} | {r['fast_stream_fraction']:.2f} |")
    r = res[-1]
    lines += ["", (f"FLOPs counted: DiT {r['flops']['dit'] / 1e9:.0f} GFLOP, BigVGAN {r['flops']['bigvgan'] / 1e9:.0f} "
              f"GFLOP for {r['codes']} codes ({r['audio_seconds']:.1f} s of audio).")]
    (RESULTS / "token2wav_roofline.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    keys = ["dit_one_shot", "dit_exact_stream", "bigvgan"]
    x = np.arange(len(keys))
    for i, r in enumerate(res):
        ax.bar(x + i * 0.8 / len(res), [r[k]["fraction"] for k in keys], 0.8 / len(res), label=r["label"])
    ax.set_xticks(x + 0.4 - 0.4 / len(res), keys)
    ax.set_ylabel("fraction of sgemm peak")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "token2wav_roofline.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="now")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        out = {"label": a.label, "when": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0],
               **run(a.codes, a.repeats)}
        (RESULTS / f"token2wav_roofline-{a.label}.json").write_text(json.dumps(out, indent=1))
    write_report()


if __name__ == "__main__":
    main()
