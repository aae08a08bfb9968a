"""Spoken-turn latency, the one-after-another engine against the pipelined one (issue 14, section 4).

Usage:
    .venv/bin/python benchmarks/spoken_turn.py --tiny                               # tiny test model
    .venv/bin/python benchmarks/spoken_turn.py --folder /work/synth/3b-q4_k_m --label 3b-synthetic \
        --repeats 2 --tokens 60 --codes 200
    .venv/bin/python benchmarks/spoken_turn.py --report     # rebuild spoken_turn.md / .png from the json files

One model folder per run, llama.cpp with all usable cores (the SDK's default), numpy's BLAS as it comes:
1. Stages alone, each at 1 thread and at all cores: thinker (a text-only turn of the spoken turn's
   tokens, system prompt included; like the turns, it restores that system turn from the thinker's
   PrefixCache: time to first token, decode tokens/s), talker (codes/s after a 64-row prefill, random
   input rows, reference sampling), token2wav (`fast` preset, exact streaming: seconds per audio second,
   and the time to render the first chunk). Alongside: numpy float32 GEMM GFLOP/s and copy bandwidth.
2. Spoken turns through the public API (`omni.chat(speech=True)`, fast preset), the text prompt
   PROMPT, greedy text of `--tokens` tokens, `--codes` speech codes (random weights never stop early):
   four engines alternated `--repeats` times (ABCD, DCBA, ..., then medians): one after another with
   every stage on all cores (the SDK's sequential path), one after another with the pipeline's thread
   split (to tell overlap from thread counts), pipelined (its defaults), and pipelined with
   first_audio_first=False (the text never waits). Per turn: time to
   first text, to first audio, to the end of the text, total; sustained real-time factor (seconds from
   the first reply token to the last sample, per audio second); per-stage busy time (thinker decode
   steps, talker, token2wav) and the process's CPU seconds.
3. The first-audio lower bound of the issue, next to every measured first audio:
   time to first token + (codes of the first chunk paced by the text: one code per reply token while the
   text lasts, then at the talker's rate) + the first chunk's rendering, from the stage figures of step 1
   (each stage at its best thread count alone).
   And the best possible sustained RTF of any engine on these cores (`best_overlap_rtf`): the stages'
   work at their most CPU-efficient thread count spread over all cores, or the slowest stage at its
   fastest, whichever is longer.
4. A projection to an 8-core laptop from the per-stage figures (labelled as such): every stage's time at
   n threads from its measured 1- and 2-thread times by Amdahl's law (its parallel fraction p from the
   measured 2-thread speedup), per-core speed as here; pipelined split 2/2/4 (engine/cpu_split.py),
   sequential with 8 threads per stage.
Everything runs on a shared 2-core machine: figures are noisy; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pocketomni  # noqa: F401  before numpy: its OpenBLAS idle spin (pocketomni.blas_spin), as in an app

# isort: split
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
PROMPT = "Tell me a long story about a lighthouse keeper and the storm that changed the coast."

def first_chunk() -> tuple[int, int]:
    """The SDK's default short first chunk (codes, future codes): the turns use it, so do the bound and
    the token2wav-alone figures."""
    from pocketomni.options import SpeechOptions

    o = SpeechOptions()
    return o.first_chunk_codes, o.first_chunk_future
PROJECT_CORES = 8


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def gemm_gflops(threads: int) -> float:
    from pocketomni.engine.cpu_split import set_blas_threads

    old = set_blas_threads(threads)
    try:
        a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
        a @ a
        t = time.perf_counter()
        for _ in range(8):
            a @ a
        return 8 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9
    finally:
        if old is not None:
            set_blas_threads(old)


def amdahl(t1: float, t2: float, n: int) -> float:
    """Time at n threads from the 1- and 2-thread times (parallel fraction clamped to [0, 1])."""
    s2 = t1 / t2 if t2 > 0 else 1.0
    p = min(1.0, max(0.0, 2.0 * (1.0 - 1.0 / s2)))
    return t1 * ((1.0 - p) + p / n)


# ---------------------------------------------------------------------------------- 1. stages alone


def thinker_alone(omni: Any, threads: int, tokens: int) -> dict[str, float]:
    from pocketomni.engine.speech import SPEECH_SYSTEM_PROMPT

    # The spoken turn's tokens (a speech chat's system prompt is longer than a text chat's default: +0.3 s
    # of prefill at 3B here), without the hidden states a speech chat also collects: that cost is the SDK's.
    chat = omni.chat(system=SPEECH_SYSTEM_PROMPT, max_tokens=tokens, temperature=0.0)
    chat._session.ctx.set_threads(threads, chat._session.ctx.threads[1])  # decode threads; the prefill keeps all cores
    done = list(chat.send_sync(PROMPT))[-1]
    chat.close()
    return {"ttft_s": done.timings.time_to_first_token, "tok_s": done.timings.decode_tokens_per_second}


def talker_alone(omni: Any, threads: int, codes: int) -> float:
    from pocketomni.options import SpeechOptions

    tk = omni.runtime.speech_engine().talker
    old = tk.ctx.threads
    tk.ctx.set_threads(threads)
    try:
        rng = np.random.default_rng(0)
        prompt = rng.standard_normal((64, tk.thinker_width), dtype=np.float32) * 0.5
        reply = rng.standard_normal((codes + 1, tk.thinker_width), dtype=np.float32) * 0.5
        tk.start(prompt, np.tile(np.arange(64), (3, 1)), "Chelsie", reply[0], SpeechOptions(max_codes=codes, seed=1))
        for row in reply[1:]:
            tk.push_reply(row)
        tk.finish_reply()
        t = time.perf_counter()
        n = sum(1 for _ in tk.codes())
        return n / (time.perf_counter() - t)
    finally:
        tk.ctx.set_threads(*old)


def token2wav_alone(omni: Any, threads: int, codes: int) -> dict[str, float]:
    from pocketomni.engine.cpu_split import set_blas_threads

    eng = omni.runtime.speech_engine()
    spk = eng.speaker("Chelsie")
    seq = np.random.default_rng(1).integers(0, eng.token2wav.dit.cfg.num_embeds, codes)
    old = set_blas_threads(threads)
    try:
        fc, ff = first_chunk()
        s = eng.token2wav.stream(spk, "fast", mode="exact", seed=0, first_chunk_codes=fc, first_chunk_future=ff)
        t0 = time.perf_counter()
        first = 0.0
        n = 0
        for c in seq:  # one code at a time, as the text phase feeds them
            n += s.feed(np.array([c])).size
            if n and not first:
                first = time.perf_counter() - t0
        n += s.finish().size
        total = time.perf_counter() - t0
    finally:
        if old is not None:
            set_blas_threads(old)
    return {"rtf": total / (n / 24000), "first_chunk_s": first}


# ---------------------------------------------------------------------------------- 2. spoken turns


def spoken_turn(omni: Any, pipelined: bool, tokens: int, codes: int,
                threads: tuple[int, int, int] | None = None, first_audio_first: bool | None = None) -> dict[str, float]:
    import pocketomni as po

    opts = po.SpeechOptions(max_codes=codes, seed=5, pipelined=pipelined, threads=threads,
                            first_audio_first=first_audio_first)
    chat = omni.chat(speech=True, speech_options=opts, max_tokens=tokens, temperature=0.0)
    sess = chat._session
    step, busy = sess.step, [0.0]

    def timed_step(tok: int) -> Any:
        t = time.perf_counter()
        try:
            return step(tok)
        finally:
            busy[0] += time.perf_counter() - t

    sess.step = timed_step  # thinker decode busy time (the benchmark's own instrument)
    t0, c0 = time.perf_counter(), time.process_time()
    text_end = 0.0
    n_text = 0
    for ev in chat.send_sync(PROMPT):
        if isinstance(ev, po.TextDelta):
            text_end = time.perf_counter() - t0
            n_text += 1
        done = ev
    cpu = time.process_time() - c0
    sp, tm = chat._last_speech, done.timings
    assert sp.pipelined is pipelined and len(done.tokens) == tokens and len(sp.codes) == codes, \
        (len(done.tokens), len(sp.codes))
    chat.close()
    return {"first_text_s": tm.time_to_first_token, "first_audio_s": tm.time_to_first_audio,
            "first_audio_after_text_s": tm.time_to_first_audio - tm.time_to_first_token,
            "text_done_s": text_end, "total_s": tm.total_seconds, "audio_s": tm.audio_seconds,
            "rtf": tm.real_time_factor, "thinker_busy_s": busy[0], "talker_busy_s": sp.talker_seconds,
            "token2wav_busy_s": sp.render_seconds, "cpu_s": cpu}


# ---------------------------------------------------------------------------------- 3./4. bound, projection


def first_audio_bound(ttft: float, tok_s: float, talker_cps: float, tokens: int, first_chunk: int,
                      render_first: float) -> float:
    paced = min(first_chunk, tokens)  # code k needs reply token k while the text lasts
    return ttft + paced / tok_s + max(0, first_chunk - paced) / talker_cps + render_first


def best_overlap_rtf(st: dict[str, Any], tokens: int, codes: int, cpus: int) -> float:
    """The sustained RTF no engine can beat with these stages on `cpus` cores: every stage's work at its
    most CPU-efficient thread count (min over t of t x its time at t threads) spread over all cores, or the
    slowest stage at its fastest thread count, whichever is longer; per second of audio."""
    ks = list(st["thinker"])
    times = {"thinker": {k: tokens / st["thinker"][k]["tok_s"] for k in ks},
             "talker": {k: codes / st["talker_codes_s"][k] for k in ks},
             "token2wav": {k: st["token2wav"][k]["rtf"] * codes / 50 for k in ks}}
    work = sum(min(int(k) * t[k] for k in ks) for t in times.values())
    longest = max(min(t.values()) for t in times.values())
    return max(work / cpus, longest) / (codes / 50)


def projection(st: dict[str, Any], tokens: int, codes: int) -> dict[str, float]:
    """8-core figures from the stage times at 1 and 2 threads (module doc, step 4)."""
    n = PROJECT_CORES
    tok = {k: 1 / st["thinker"][k]["tok_s"] for k in ("1", "2")}  # s per token
    code = {k: 1 / st["talker_codes_s"][k] for k in ("1", "2")}  # s per code
    t2w = {k: st["token2wav"][k]["rtf"] for k in ("1", "2")}  # s per audio s
    first = {k: st["token2wav"][k]["first_chunk_s"] for k in ("1", "2")}
    audio_s = codes / 50
    per_audio = {  # seconds of each stage per second of speech at t threads
        "thinker": lambda t: amdahl(tok["1"], tok["2"], t) * tokens / audio_s,
        "talker": lambda t: amdahl(code["1"], code["2"], t) * 50,
        "token2wav": lambda t: amdahl(t2w["1"], t2w["2"], t),
    }
    from pocketomni.engine.cpu_split import split_threads

    sp = split_threads(n)
    pipe = {"thinker": per_audio["thinker"](sp.thinker), "talker": per_audio["talker"](sp.talker),
            "token2wav": per_audio["token2wav"](sp.token2wav)}
    seq = {k: f(n) for k, f in per_audio.items()}
    ttft = st["thinker"]["2"]["ttft_s"]  # prefill: not projected (short prompt)
    fc = first_chunk()[0]
    paced = min(fc, tokens)
    return {
        "cores": n, "split": stage_split(sp),
        "pipelined_rtf": max(pipe.values()), "sequential_rtf": sum(seq.values()),
        "pipelined_first_audio_s": ttft + paced * max(amdahl(tok["1"], tok["2"], sp.thinker),
                                                      amdahl(code["1"], code["2"], sp.talker))
        + (fc - paced) * amdahl(code["1"], code["2"], sp.talker) + amdahl(first["1"], first["2"], sp.token2wav),
        "sequential_first_audio_s": ttft + paced * (amdahl(tok["1"], tok["2"], n) + amdahl(code["1"], code["2"], n))
        + (fc - paced) * amdahl(code["1"], code["2"], n) + amdahl(first["1"], first["2"], n),
        **{f"pipelined_{k}_s_per_audio_s": v for k, v in pipe.items()},
        **{f"sequential_{k}_s_per_audio_s": v for k, v in seq.items()},
    }


# ---------------------------------------------------------------------------------- run and report


def stage_split(threads: Any) -> list[int]:
    """(thinker, talker, token2wav) threads of a StageThreads, as SpeechOptions.threads takes them."""
    return [threads.thinker, threads.talker, threads.token2wav]


def run(folder: Path, label: str, repeats: int, tokens: int, codes: int) -> dict[str, Any]:
    from suite_common import copy_bandwidth, machine_info

    import pocketomni as po
    from pocketomni.engine.cpu_split import blas_threads, split_threads, usable_cpus

    cpus = usable_cpus()
    load0 = os.getloadavg()[0]
    out: dict[str, Any] = {"label": label, "folder": str(folder), "machine": machine_info(), "usable_cpus": cpus,
                           "blas_threads": blas_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
                           "tokens": tokens, "codes": codes, "repeats": repeats, "prompt": PROMPT,
                           "thinker_system": "speech",  # thinker alone with the spoken turn's system prompt
                           "split": stage_split(split_threads(cpus)),
                           "vocoder_thread": split_threads(cpus).vocoder_thread}
    with po.Omni.load_sync(folder) as omni:
        print(f"[{label}] warm-up turn", flush=True)
        spoken_turn(omni, False, min(tokens, 8), min(codes, 16))  # loads the speech engine, ECAPA
        thinker_alone(omni, cpus, 2)  # its system turn decoded once, as the speech chats' was just now
        st: dict[str, Any] = {"gemm_gflops": {}, "thinker": {}, "talker_codes_s": {}, "token2wav": {}}
        for t in sorted({1, cpus}):
            k = str(t)
            st["gemm_gflops"][k] = gemm_gflops(t)
            st["thinker"][k] = thinker_alone(omni, t, tokens)
            st["talker_codes_s"][k] = talker_alone(omni, t, min(codes, 200))
            st["token2wav"][k] = token2wav_alone(omni, t, min(codes, 150))
            print(f"  stages alone at {t} thread(s): {json.dumps({s: st[s][k] for s in st})}", flush=True)
        st["copy_gbs"] = copy_bandwidth(cpus)["gbs"]
        out["stages"] = st
        split = tuple(out["split"])
        engines = {"sequential": (False, None, None), "sequential_split": (False, split, None),
                   "pipelined": (True, None, None), "pipelined_no_wait": (True, None, False)}
        turns: dict[str, list[dict[str, float]]] = {k: [] for k in engines}
        for r in range(repeats):
            order = list(engines) if r % 2 == 0 else list(engines)[::-1]  # alternate which goes first
            for name in order:
                pipelined, threads, first_audio_first = engines[name]
                m = spoken_turn(omni, pipelined, tokens, codes, threads, first_audio_first)
                turns[name].append(m)
                print(f"  {name} #{r}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()), flush=True)
    out["turns"] = turns
    out["median"] = {mode: {k: med([m[k] for m in runs]) for k in runs[0]} for mode, runs in turns.items()}
    ks = list(st["thinker"])  # the bound takes each stage at its best thread count
    out["bound"] = {
        "first_audio_s": first_audio_bound(min(st["thinker"][k]["ttft_s"] for k in ks),
                                           max(st["thinker"][k]["tok_s"] for k in ks),
                                           max(st["talker_codes_s"][k] for k in ks), tokens,
                                           first_chunk()[0],
                                           min(st["token2wav"][k]["first_chunk_s"] for k in ks)),
        "first_chunk_codes": first_chunk()[0],
        "rtf": best_overlap_rtf(st, tokens, codes, cpus),
    }
    if "1" in st["thinker"] and "2" in st["thinker"]:
        out["projection"] = projection(st, tokens, codes)
    out["load"] = {"start": load0, "end": os.getloadavg()[0]}
    return out


def speedup(st: dict[str, Any], key: str) -> float:
    """A stage's measured 2-thread over 1-thread speed."""
    v = st[key]
    if key == "thinker":
        return v["2"]["tok_s"] / v["1"]["tok_s"]
    if key == "token2wav":
        return v["1"]["rtf"] / v["2"]["rtf"]
    return v["2"] / v["1"]


def fmt(x: float, unit: str = "") -> str:
    return "-" if math.isnan(x) else f"{x:.2f}{unit}"


def bound_rows(md: dict[str, Any], name: str, ratio_name: str, bound: float, key: str) -> list[str]:
    """Two table rows: a bound in every engine's column, then each engine's median `key` over it (the two
    ratio columns of the table stay empty)."""
    cols = ("sequential", "sequential_split", "pipelined", "pipelined_no_wait")
    ratios = [fmt(md[m][key] / bound, "x") if m in md else "-" for m in cols]
    return [f"| {name} | {fmt(bound)} | {fmt(bound)} | {fmt(bound)} | | | {fmt(bound)} |",
            f"| {ratio_name} | {' | '.join(ratios[:3])} | | | {ratios[3]} |"]


def write_report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("spoken_turn-*.json"))]
    (RESULTS / "spoken_turn.json").write_text(json.dumps({r["label"]: r for r in runs}, indent=1))
    lines = ["# Spoken turn: one after another vs pipelined", "",
             ("Written by `benchmarks/spoken_turn.py` (its docstring has the method). `fast` preset, exact streaming, "
              "greedy text, seeded talker; the two engines alternated, medians shown. Shared 2-core machine: "
              "figures are noisy (load average given); the same run's ratios are the figures to trust. The "
              "first-audio bound comes from the stages measured alone earlier in the same run: when the load "
              "drops between those measurements and the turns, a turn can beat it."), ""]
    for r in runs:
        st, md, b = r["stages"], r["median"], r["bound"]
        n = str(r["usable_cpus"])
        lines += [f"## {r['label']}", "",
                  (f"{r['machine']['cpu']}, {r['usable_cpus']} usable cores, load average {r['load']['start']:.1f} -> "
                   f"{r['load']['end']:.1f}; {r['date']}. Reply: {r['tokens']} tokens, {r['codes']} codes "
                   f"({r['codes'] / 50:.1f} s of speech); {r['repeats']} run(s) per engine. Pipelined split "
                   f"(thinker/talker/token2wav threads): {'/'.join(map(str, r['split']))}"
                   f"{', the vocoder on a thread of its own' if r.get('vocoder_thread') else ''}."), "",
                  "| stage alone | 1 thread | " + f"{n} threads |", "|---|---|---|"]
        ks = sorted(st["thinker"])
        system = "the spoken turn's system prompt" if r.get("thinker_system") == "speech" else \
            "a text chat's default system prompt: the bound's first token is early"
        lines.append(f"| thinker ({system}): first token (s) / decode tok/s | " + " | ".join(
            f"{st['thinker'][k]['ttft_s']:.2f} / {st['thinker'][k]['tok_s']:.1f}" for k in ks) + " |")
        lines.append("| talker codes/s | " + " | ".join(f"{st['talker_codes_s'][k]:.1f}" for k in ks) + " |")
        lines.append("| token2wav (fast, exact stream) s per audio s / first chunk (s) | " + " | ".join(
            f"{st['token2wav'][k]['rtf']:.2f} / {st['token2wav'][k]['first_chunk_s']:.2f}" for k in ks) + " |")
        lines.append("| numpy GEMM GFLOP/s | " + " | ".join(f"{st['gemm_gflops'][k]:.0f}" for k in ks) + " |")
        lines += ["", f"Copy bandwidth {st['copy_gbs']:.1f} GB/s.", "",
                  ("| spoken turn (median) | sequential (all cores per stage) | sequential (pipeline's threads "
                   f"{'/'.join(map(str, r['split']))}) | pipelined | pipelined / sequential (all cores) | "
                   "pipelined / sequential (same threads) | pipelined, text never waits |"),
                  "|---|---|---|---|---|---|---|"]
        rows = [("text prompt -> first text (s)", "first_text_s"), ("text prompt -> first audio (s)", "first_audio_s"),
                ("first text -> first audio (s)", "first_audio_after_text_s"),
                ("text prompt -> end of text (s)", "text_done_s"), ("total (s)", "total_s"),
                ("sustained RTF (s per audio s)", "rtf"), ("thinker decode busy (s)", "thinker_busy_s"),
                ("talker busy (s)", "talker_busy_s"), ("token2wav busy (s)", "token2wav_busy_s"),
                ("process CPU (s)", "cpu_s")]
        for name, k in rows:
            if k not in md["pipelined"]:  # a figure older runs did not record
                continue
            s, p = md["sequential"][k], md["pipelined"][k]
            s1 = md["sequential_split"][k] if "sequential_split" in md else float("nan")
            nw = fmt(md["pipelined_no_wait"][k]) if "pipelined_no_wait" in md else "-"
            lines.append(f"| {name} | {fmt(s)} | {fmt(s1)} | {fmt(p)} | {fmt(p / s if s else float('nan'), 'x')} | "
                         f"{fmt(p / s1 if s1 else float('nan'), 'x')} | {nw} |")
        lines += bound_rows(md, f"first-audio lower bound (s; {b['first_chunk_codes']}-code first chunk, each "
                            "stage alone at its best)", "measured first audio / bound", b["first_audio_s"],
                            "first_audio_s")
        if "rtf" in b:
            lines += bound_rows(md, "best possible overlap, RTF (stages' work at their most efficient thread count "
                                f"over {n} cores)", "measured RTF / best possible overlap", b["rtf"], "rtf")
        runs_txt = "; ".join(f"{mode}: " + ", ".join(f"{m['first_audio_s']:.2f}/{m['rtf']:.2f}" for m in ms)
                             for mode, ms in r["turns"].items())
        lines += ["", f"Every run (first audio s / RTF): {runs_txt}.", ""]
        if "projection" in r:
            p = r["projection"]
            flat = [s for s, k in (("thinker", "thinker"), ("talker", "talker_codes_s"), ("token2wav", "token2wav"))
                    if speedup(st, k) < 1.0]
            note = (f" In this run {', '.join(flat)} ran slower on 2 threads than on 1 (other processes held the "
                    "cores), so the projection gives those stages no gain from more threads: read it as a "
                    "pessimistic bound." if flat else "")
            lines += [f"**Projection, not a measurement**: an {p['cores']}-core laptop with this machine's per-core "
                      "speed, each stage scaled from its 1- and 2-thread times here by Amdahl's law (memory-bound "
                      "decoders will scale worse if the laptop's bandwidth does not grow with its cores)." + note, "",
                      ("| projected (8 cores) | sequential (8 threads per stage) | pipelined "
                       f"(split {'/'.join(map(str, p['split']))}) |"), "|---|---|---|",
                      f"| RTF | {p['sequential_rtf']:.2f} | {p['pipelined_rtf']:.2f} |",
                      f"| first audio (s) | {p['sequential_first_audio_s']:.2f} | {p['pipelined_first_audio_s']:.2f} |",
                      "| thinker / talker / token2wav s per audio s | " + " / ".join(
                          f"{p[f'sequential_{k}_s_per_audio_s']:.2f}" for k in ("thinker", "talker", "token2wav"))
                      + " | " + " / ".join(f"{p[f'pipelined_{k}_s_per_audio_s']:.2f}"
                                           for k in ("thinker", "talker", "token2wav")) + " |", ""]
    (RESULTS / "spoken_turn.md").write_text("\n".join(lines) + "\n")
    plot(runs)


def plot(runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(5.5 * max(1, len(runs)), 4), squeeze=False)
    keys = [("first text", "first_text_s"), ("first audio", "first_audio_s"), ("text done", "text_done_s"),
            ("total", "total_s")]
    for ax, r in zip(axes[0], runs):
        x = np.arange(len(keys))
        modes = [m for m in ("sequential", "sequential_split", "pipelined", "pipelined_no_wait") if m in r["median"]]
        w = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            ax.bar(x + (i - (len(modes) - 1) / 2) * w, [r["median"][mode][k] for _, k in keys], w,
                   color={"sequential": "tab:blue", "sequential_split": "tab:gray", "pipelined": "tab:green",
                          "pipelined_no_wait": "tab:olive"}[mode],
                   label=f"{mode} (RTF {r['median'][mode]['rtf']:.2f})")
        ax.axhline(r["bound"]["first_audio_s"], color="k", ls=":", lw=1, label="first-audio lower bound")
        ax.set_xticks(x, [n for n, _ in keys])
        ax.set_ylabel("seconds from the text prompt")
        ax.set_title(f"{r['label']} ({r['usable_cpus']} cores, shared)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "spoken_turn.png", dpi=110)


def tiny_folder() -> Path:
    tests = HERE.parent / "tests"
    sys.path.insert(0, str(tests))
    import conftest
    from omni_fixtures import build_checkpoint

    return conftest._convert_cached(build_checkpoint("base"), "f32", "f32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, help="model folder (pocketomni convert / synth output)")
    ap.add_argument("--tiny", action="store_true", help="use the tiny test checkpoint (converted f32)")
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="turns per engine (alternated)")
    ap.add_argument("--tokens", type=int, default=100, help="reply tokens")
    ap.add_argument("--codes", type=int, default=500, help="speech codes (50 per second)")
    ap.add_argument("--report", action="store_true", help="only rebuild the report from the json files")
    a = ap.parse_args()
    if not a.report:
        folder = tiny_folder() if a.tiny else a.folder
        if folder is None:
            ap.error("give --folder or --tiny")
        label = a.label or ("tiny" if a.tiny else folder.name)
        res = run(folder, label, a.repeats, a.tokens, a.codes)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"spoken_turn-{label}.json").write_text(json.dumps(res, indent=1))
    write_report()
    print((RESULTS / "spoken_turn.md").read_text())


if __name__ == "__main__":
    main()
