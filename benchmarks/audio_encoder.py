"""Audio input benchmark: log-mel + numpy audio encoder time and memory per clip length.

Usage: .venv/bin/python benchmarks/audio_encoder.py [--shapes tiny,3b,7b] [--seconds 1,3,10,30,60]

Weights are deterministic random float32 at the real audio-tower shapes (no checkpoint needed). Every
time is reported next to a roofline measured in the same run: the float32 matmul throughput of this
machine on a matmul of the encoder's own shape. Times are process CPU seconds, so other jobs on the
machine do not inflate them; run with OPENBLAS_NUM_THREADS=1 for clean single-core figures (wall time on
an idle machine with n cores is about CPU time / n for the matmul-bound part). (The comparison with stock mtmd on the same mmproj
file will be added once the converter writes the mmproj GGUF.)
"""

from __future__ import annotations

import argparse
import functools
import resource
import time
import tracemalloc

import numpy as np

from pocketomni.audio.features import SAMPLE_RATE, log_mel, n_audio_tokens
from pocketomni.audio.tower import AudioEncoder, AudioEncoderConfig, audio_tower_names

SHAPES = {
    "tiny": AudioEncoderConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                               output_dim=48),
    "3b": AudioEncoderConfig(output_dim=2048),
    "7b": AudioEncoderConfig(output_dim=3584),
}


def random_weights(cfg: AudioEncoderConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in audio_tower_names(cfg).items():
        if name.endswith("norm.weight") or name == "ln_post.weight":
            out[name] = np.ones(shape, np.float32)
        else:
            out[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return out


def encoder_flops(cfg: AudioEncoderConfig, frames: int) -> float:
    """Multiply-adds x2 of one encode of `frames` mel frames (matmuls and attention)."""
    d, f, w = cfg.d_model, cfg.encoder_ffn_dim, cfg.window_frames
    full, tail = divmod(frames, w)
    windows = [w] * full + ([tail] if tail else [])
    rows = [(t - 1) // 2 + 1 for t in windows]
    n_rows = sum(rows)
    conv = 2 * frames * 3 * cfg.num_mel_bins * d + 2 * n_rows * 3 * d * d
    linear = 2 * n_rows * (4 * d * d + 2 * d * f) * cfg.encoder_layers
    attn = sum(4 * r * r * d for r in rows) * cfg.encoder_layers
    proj = 2 * n_audio_tokens(frames) * d * cfg.output_dim
    return float(conv + linear + attn + proj)


def matmul_gflops(rows: int, d: int, f: int, repeat: int = 5) -> float:
    """Measured float32 GEMM throughput for (rows, d) @ (d, f)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, d), dtype=np.float32)
    b = rng.standard_normal((f, d), dtype=np.float32)
    a @ b.T
    best = min(_timed(lambda: [a @ b.T for _ in range(3)]) / 3 for _ in range(repeat))
    return 2 * rows * d * f / best / 1e9


def _timed(fn) -> float:
    """CPU seconds of this process spent in fn (robust to other jobs sharing the cores; with
    OPENBLAS_NUM_THREADS=1 it is the single-core compute time)."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def chirp(seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(2)
    return (0.4 * np.sin(2 * np.pi * (150 * t + 40 * t * t)) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="tiny,7b")
    ap.add_argument("--seconds", default="1,3,10,30,60")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--max-rows", type=int, default=1000)
    ap.add_argument("--f16", action="store_true", help="float16 weights widened per layer (weights_f32=False)")
    args = ap.parse_args()
    seconds = [float(s) for s in args.seconds.split(",")]
    for shape in args.shapes.split(","):
        cfg = SHAPES[shape]
        t0 = time.perf_counter()
        w = random_weights(cfg)
        if args.f16:
            w = {k: v.astype(np.float16) for k, v in w.items()}
        enc = AudioEncoder(cfg, w, max_rows=args.max_rows, weights_f32=not args.f16)
        del w
        n_params = sum(int(np.prod(s)) for s in audio_tower_names(cfg).values())
        print(f"\n== {shape}: d={cfg.d_model} layers={cfg.encoder_layers} heads={cfg.encoder_attention_heads} "
              f"ffn={cfg.encoder_ffn_dim} out={cfg.output_dim}; {n_params / 1e6:.1f} M params = "
              f"{n_params * (2 if args.f16 else 4) / 2**30:.2f} GiB {'f16' if args.f16 else 'f32'} "
              f"(built in {time.perf_counter() - t0:.1f} s)")
        peak_gf = matmul_gflops(300, cfg.d_model, cfg.encoder_ffn_dim)
        print(f"roofline: numpy f32 GEMM (300x{cfg.d_model} @ {cfg.d_model}x{cfg.encoder_ffn_dim}) "
              f"= {peak_gf:.0f} GFLOP/s")
        print(f"{'clip s':>7} {'tokens':>7} {'mel ms':>8} {'enc cpu ms':>10} {'GFLOP':>8} {'GFLOP/s':>8} "
              f"{'% roof':>7} {'wall ms':>8} {'act MiB':>8} {'RSS MiB':>8}")
        enc.encode(log_mel(chirp(1.0)))  # warm-up
        for sec in seconds:
            x = chirp(sec)
            t_mel = min(_timed(lambda: log_mel(x)) for _ in range(args.repeat))
            mel = log_mel(x)
            tracemalloc.start()  # numpy reports its buffers to tracemalloc: the encoder's own peak
            w0 = time.perf_counter()
            t_enc = _timed(functools.partial(enc.encode, mel))
            wall = time.perf_counter() - w0
            act = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            for _ in range(args.repeat - 1):
                t_enc = min(t_enc, _timed(functools.partial(enc.encode, mel)))
            gf = encoder_flops(cfg, mel.shape[1]) / 1e9
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{sec:7.1f} {n_audio_tokens(mel.shape[1]):7d} {t_mel * 1e3:8.1f} {t_enc * 1e3:10.1f} "
                  f"{gf:8.1f} {gf / t_enc:8.1f} {100 * gf / t_enc / peak_gf:6.0f}% {wall * 1e3:8.0f} {act / 2**20:8.1f} "
                  f"{rss:8.0f}", flush=True)
        del enc


if __name__ == "__main__":
    main()
