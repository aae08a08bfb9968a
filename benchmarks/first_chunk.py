"""What a short first chunk costs in fidelity (token2wav/first_chunk.py), on the tiny random-weight token2wav.

Usage:
    .venv/bin/python benchmarks/first_chunk.py            # grid below, writes results/first_chunk.{json,md,png}

For each preset (fast: exact stream; reference: chunked stream), first chunk N codes with F future codes
and 5 seeds (random codes, 150 per utterance; the utterance noise from the same seed), compared with the
one-shot rendering of the same codes and noise:
- first chunk: SNR and log-mel L1 distance (nats) over its own samples [0, (N - F) * 480);
- whole utterance: the same over the whole streamed waveform (first chunk + cross-fade + main stream);
- anchor: the log-mel distance over [0, (N - F) * 480) between two one-shot renderings whose noise
  differs (another take of the same codes), to read the first chunk's distance against;
- codes needed before the first and the second sound (codes fed one at a time).
The tiny model has the real DiT block/look-ahead layout (12 codes per block, one look-ahead block per
evaluation) and the real vocoder rates, but random weights: the figures show how context truncation
propagates through this architecture, not how a trained voice sounds.
"""

from __future__ import annotations

import os
import sys

_T = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "1")
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _T  # before numpy is imported: numpy uses the thread count llama.cpp gets

import json
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests"))

from speech_metrics import mel_distance, snr_db

GRID = [(12, 6), (24, 6), (24, 12), (36, 6), (36, 12), (36, 24), (48, 12), (48, 24)]
SEEDS = range(5)
N_CODES = 150
PER_CODE = 480


def run_stream(tw, spk, preset, mode, codes, seed, n, f):
    """Stream codes one at a time: (waveform, code count at the first and second non-empty output)."""
    s = tw.stream(spk, preset, mode=mode, seed=seed, first_chunk_codes=n, first_chunk_future=f)
    outs, marks = [], []
    for i in range(codes.size):
        o = s.feed(codes[i : i + 1])
        if o.size and len(marks) < 2:
            marks.append(i + 1)
        outs.append(o)
    outs.append(s.finish())
    marks += [None] * (2 - len(marks))
    return np.concatenate(outs), marks


def measure(tw, preset: str, mode: str) -> list[dict]:
    from test_token2wav_dit import speaker_inputs

    spk = tw.speaker(*speaker_inputs(1))
    rows = []
    base = {}
    for seed in SEEDS:
        codes = np.random.default_rng(100 + seed).integers(0, 8193, N_CODES)
        whole = tw.render(codes, spk, preset, seed=seed)
        other = tw.render(codes, spk, preset, seed=1000 + seed)
        plain, marks0 = run_stream(tw, spk, preset, mode, codes, seed, 0, 0)
        base[seed] = (codes, whole, other, plain, marks0)
    for n, f in [(0, 0), *GRID]:
        per = []
        for seed in SEEDS:
            codes, whole, other, plain, marks0 = base[seed]
            t = time.process_time()
            wav, marks = run_stream(tw, spk, preset, mode, codes, seed, n, f) if n else (plain, marks0)
            cpu = time.process_time() - t
            S = (n - f) * PER_CODE if n else 0
            r = {"seed": seed, "first_audio_codes": marks[0], "second_audio_codes": marks[1], "cpu_s": cpu,
                 "whole_snr_db": snr_db(wav, whole), "whole_mel": mel_distance(wav, whole),
                 "main_snr_db": snr_db(plain, whole)}
            if n:
                r.update(head_snr_db=snr_db(wav[:S], whole[:S]), head_mel=mel_distance(wav[:S], whole[:S]),
                         head_mel_other_noise=mel_distance(other[:S], whole[:S]),
                         head_snr_vs_stream_db=snr_db(wav[:S], plain[:S]))
            per.append(r)
        agg = {"preset": preset, "mode": mode, "codes": n, "future": f, "runs": per}
        for k in per[0]:
            if k != "seed" and per[0][k] is not None:
                vals = [p[k] for p in per]
                agg[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        rows.append(agg)
        if n:
            print(f"  {preset}/{mode} N={n} F={f}: first chunk SNR {agg['head_snr_db']['median']:.1f} dB "
                  f"(min {agg['head_snr_db']['min']:.1f}), mel {agg['head_mel']['median']:.3f} "
                  f"(other noise {agg['head_mel_other_noise']['median']:.3f}); whole SNR "
                  f"{agg['whole_snr_db']['median']:.1f} dB; audio at {per[0]['first_audio_codes']}, then "
                  f"{per[0]['second_audio_codes']} codes", flush=True)
    return rows


def write_report(res: dict) -> None:
    lines = ["# Short first chunk: fidelity against one-shot rendering", "",
             "Written by `benchmarks/first_chunk.py` (method in its docstring): tiny random-weight token2wav "
             f"(real block layout and vocoder rates), {N_CODES} random codes, {len(SEEDS)} seeds; median "
             "(min..max) over the seeds. SNR and log-mel L1 distance (nats) against one-shot rendering of the "
             "same codes and noise. 'other noise' = distance of a one-shot rendering with different noise (another "
             "take of the same codes), for scale. Machine: " + res["machine"] + ".", ""]
    for preset in ("fast", "reference"):
        rows = [r for r in res["rows"] if r["preset"] == preset]
        if not rows:
            continue
        lines += [f"## {preset} ({rows[0]['mode']} stream)", "",
                  ("| first chunk N / future F (codes) | first audio after (codes) | next audio after | "
                  "first chunk SNR (dB) | first chunk mel dist | other-noise mel dist | whole SNR (dB) | whole mel dist |"),
                  "|---|---|---|---|---|---|---|---|"]

        def fmt(r, k, p=1):
            v = r.get(k)
            return "-" if v is None else f"{v['median']:.{p}f} ({v['min']:.{p}f}..{v['max']:.{p}f})"

        for r in rows:
            name = "none (today)" if not r["codes"] else f"{r['codes']} / {r['future']}"
            lines.append(f"| {name} | {r['runs'][0]['first_audio_codes']} | {r['runs'][0]['second_audio_codes']} | "
                         f"{fmt(r, 'head_snr_db')} | {fmt(r, 'head_mel', 3)} | {fmt(r, 'head_mel_other_noise', 3)} | "
                         f"{fmt(r, 'whole_snr_db')} | {fmt(r, 'whole_mel', 4)} |")
        lines.append("")
    for f in sorted(RESULTS.glob("first_chunk-turns-*.json")):
        t = json.loads(f.read_text())
        lines += [f"## Spoken turns: {t['label']} (fast preset, {t['threads']} threads, load {t['load']:.1f})", "",
                  ("Turns alternate without / with the default first chunk; the first turn of the run also warmed "
                   "up. The text is what the synthetic thinker writes (random weights)."), "",
                  "| variant | time to first token | time to first audio | codes made by then | reply tokens / codes |",
                  "|---|---|---|---|---|"]
        for key, runs in t["turns"].items():
            for i, r in enumerate(runs):
                lines.append(f"| {key}{' (warm-up)' if key == 'no first chunk' and i == 0 else ''} | "
                             f"{r['ttft']:.2f} s | {r['ttfa']:.2f} s | {r['codes_at_first_audio']} | "
                             f"{r['reply_tokens']} / {r['codes']} |")
        lines.append("")
    (RESULTS / "first_chunk.md").write_text("\n".join(lines))
    plot(res)


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for preset, mk in (("fast", "o"), ("reference", "s")):
        rows = [r for r in res["rows"] if r["preset"] == preset and r["codes"]]
        for f in sorted({r["future"] for r in rows}):
            sel = [r for r in rows if r["future"] == f]
            x = [r["codes"] for r in sel]
            axes[0].plot(x, [r["head_snr_db"]["median"] for r in sel], marker=mk, label=f"{preset}, F={f}")
            axes[1].plot(x, [r["head_mel"]["median"] for r in sel], marker=mk, label=f"{preset}, F={f}")
    axes[0].set_title("first chunk SNR vs one-shot (dB, median of seeds)")
    axes[1].set_title("first chunk log-mel distance vs one-shot (nats)")
    other = [r["head_mel_other_noise"]["median"] for r in res["rows"] if r["codes"]]
    axes[1].axhline(statistics.median(other), color="k", ls="--", lw=0.8, label="another noise take")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("first chunk N (codes)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "first_chunk.png", dpi=110)


def bench_turns(folder: Path, label: str, threads: int, tokens: int, codes: int) -> dict:
    """One spoken turn (fast preset) with the default first chunk and one without, alternating, after a
    warm-up turn: time to first text token, to first audio, and the codes made by then."""
    import pocketomni as po

    out: dict = {"label": label, "folder": str(folder), "threads": threads, "load": os.getloadavg()[0], "turns": {}}
    with po.Omni.load_sync(folder, n_threads=threads) as omni:
        for first in (0, 24, 0, 24):  # the first turn also warms up (its figures are kept, marked)
            opts = po.SpeechOptions(max_codes=codes, seed=3, first_chunk_codes=first,
                                    first_chunk_future=12 if first else 0)
            chat = omni.chat(speech=True, max_tokens=tokens, speech_options=opts)
            t0, t_audio, n_text = time.perf_counter(), None, 0
            for ev in chat.send_sync("Tell me a long story about a lighthouse keeper."):
                if isinstance(ev, po.TextDelta):
                    n_text += 1
                if isinstance(ev, po.AudioChunk) and t_audio is None:
                    t_audio, codes_then = time.perf_counter() - t0, len(chat._last_speech.codes)
                if isinstance(ev, po.Done):
                    done = ev
            key = f"first chunk {first}" if first else "no first chunk"
            out["turns"].setdefault(key, []).append(
                {"ttft": done.timings.time_to_first_token, "ttfa": t_audio, "codes_at_first_audio": codes_then,
                 "reply_tokens": done.usage.reply_tokens, "codes": done.usage.audio_codes,
                 "rtf": done.timings.real_time_factor})
            print(f"  {label} {key}: first token {done.timings.time_to_first_token:.2f} s, first audio "
                  f"{t_audio:.2f} s after {codes_then} codes ({done.usage.reply_tokens} tokens, "
                  f"{done.usage.audio_codes} codes)", flush=True)
            chat.close()
    return out


def main() -> None:
    import argparse
    import platform

    from test_token2wav_dit import build_tiny

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, help="also time spoken turns on this model folder")
    ap.add_argument("--label", default="model")
    ap.add_argument("--threads", type=int, default=int(_T))
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--codes", type=int, default=100)
    a = ap.parse_args()
    if a.folder:
        turns = bench_turns(a.folder, a.label, a.threads, a.tokens, a.codes)
        (RESULTS / f"first_chunk-turns-{a.label}.json").write_text(json.dumps(turns, indent=1))
        res = json.loads((RESULTS / "first_chunk.json").read_text())
        write_report(res)
        return
    _, tw = build_tiny(0, 4, (2,), (0, 3))
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    res = {"machine": cpu, "when": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    for preset, mode in (("fast", "exact"), ("reference", "chunked")):
        res["rows"] += measure(tw, preset, mode)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "first_chunk.json").write_text(json.dumps(res, indent=1))
    write_report(res)
    print(f"wrote {RESULTS / 'first_chunk.md'}")


if __name__ == "__main__":
    main()
