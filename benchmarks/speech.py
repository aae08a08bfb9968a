"""Speech output benchmark: talker, token2wav and whole spoken chat turns, each against a baseline.

Usage:
    .venv/bin/python benchmarks/speech.py --tiny                      # tiny test checkpoint (built if needed)
    .venv/bin/python benchmarks/speech.py --folder /tmp/synth-runs/3b --label 3b-synthetic
    .venv/bin/python benchmarks/speech.py --report                    # only rewrite speech.md / speech.png

For one model folder (`pocketomni convert` or `pocketomni synth` output), with the same thread count
everywhere (`--threads`, default 2: llama.cpp n_threads, OpenBLAS and torch threads):
1. talker codes/s: the SDK talker (embedding rows in, reference sampling: top-k 40, top-p 0.8,
   temperature 0.9, repetition penalty) against raw llama-cpp-python decoding the same talker GGUF
   token by token with greedy argmax (`Llama.eval`), same number of steps after the same prefill length.
2. token2wav: numpy one-shot rendering of the same random codes, same noise, same preset, against the
   PyTorch reference modules (transformers `Qwen2_5OmniToken2WavModel` loaded with the same weights:
   `reference` preset = its own `forward`; `fast` = 4 Euler steps on its DiT, then its BigVGAN), plus the
   numpy streamed rendering (exact for fast, chunked for reference). Seconds per second of audio and the
   torch / numpy time ratio; the two waveforms' SNR is printed as a sanity check.
3. spoken chat turns through the public API (`omni.chat(speech=True)`), per preset: time to first
   audio, real-time factor (work seconds from the first reply token per audio second) and where the
   time went (thinker, talker, token2wav).
Each figure is the median of `--repeats` runs after one warm-up. Results go to
benchmarks/results/speech-<label>.json; speech.md and speech.png are rebuilt from every such file.
"""

from __future__ import annotations

import argparse
import os
import sys

_T = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "2")
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _T  # before numpy is imported: numpy and torch use the same thread count as llama.cpp

import json
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SR = 24000
PROMPT = "Tell me a long story about a lighthouse keeper and the storm that changed the coast."


WARMUP = True


def median_of(fn, repeats: int) -> tuple[float, list[float]]:
    if WARMUP:
        fn()
    runs = [fn() for _ in range(repeats)]
    return statistics.median(runs), runs


def gemm_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    return 10 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9


# ---------------------------------------------------------------- 1. talker


def bench_talker(omni, threads: int, n_codes: int, n_prompt: int, repeats: int) -> dict:
    import llama_cpp

    from pocketomni.options import SpeechOptions

    engine = omni.runtime.speech_engine()
    tk = engine.talker
    rng = np.random.default_rng(0)
    width = tk.thinker_width
    prompt = rng.standard_normal((n_prompt, width), dtype=np.float32) * 0.5
    pos = np.tile(np.arange(n_prompt), (3, 1))
    reply = rng.standard_normal((n_codes + 1, width), dtype=np.float32) * 0.5
    opts = SpeechOptions(max_codes=n_codes, seed=1)

    import pocketomni.backend.context as ctx_mod

    in_llama = [0.0]
    python_ms: list[float] = []
    real_decode = ctx_mod.L.llama_decode

    def timed_decode(*args):  # CPU time inside llama.cpp, to split off the SDK's own per-code work
        t = time.thread_time()
        try:
            return real_decode(*args)
        finally:
            in_llama[0] += time.thread_time() - t

    def ours() -> float:
        tk.start(prompt, pos, "Chelsie", reply[0], opts)
        for row in reply[1:]:
            tk.push_reply(row)
        tk.finish_reply()
        ctx_mod.L.llama_decode, in_llama[0] = timed_decode, 0.0
        try:
            t, c = time.perf_counter(), time.thread_time()
            n = sum(1 for _ in tk.codes())
            dt, cpu = time.perf_counter() - t, time.thread_time() - c
        finally:
            ctx_mod.L.llama_decode = real_decode
        assert n == n_codes, f"the talker stopped after {n} codes"
        python_ms.append(1000 * (cpu - in_llama[0]) / n)  # llama.cpp runs in this thread at 1 thread only
        return n / dt

    llm = llama_cpp.Llama(model_path=str(omni.folder.talker), n_threads=threads, n_threads_batch=threads,
                          n_ctx=n_prompt + n_codes + 16, n_batch=512, verbose=False)

    def raw() -> float:
        llm.reset()
        llm.eval([int(x) for x in rng.integers(0, 8192, n_prompt + 2)])
        t = time.perf_counter()
        for _ in range(n_codes):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return n_codes / (time.perf_counter() - t)

    ours_med, ours_runs = median_of(ours, repeats)
    raw_med, raw_runs = median_of(raw, repeats)
    llm.close()
    return {"codes": n_codes, "prompt": n_prompt, "sdk_codes_per_s": ours_med, "raw_codes_per_s": raw_med,
            "ratio": ours_med / raw_med, "runs": {"sdk": ours_runs, "raw": raw_runs},
            "python_ms_per_code": statistics.median(python_ms[-repeats:]) if threads == 1 else None}


# ---------------------------------------------------------------- 2. token2wav


def torch_token2wav(weights):
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniToken2WavConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniToken2WavModel

    cfg = Qwen2_5OmniToken2WavConfig(**weights.config)
    model = Qwen2_5OmniToken2WavModel(cfg).float().eval()
    state = {k.removeprefix("token2wav."): torch.from_numpy(v) for k, v in weights.weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = {n for n, _ in model.named_parameters()}
    assert not unexpected and not (set(missing) & params), (unexpected, set(missing) & params)
    return model


def torch_render(model, codes, spk, noise, preset: str) -> np.ndarray:
    import torch

    from pocketomni.token2wav.solver import time_points

    code = torch.from_numpy(np.asarray(codes, np.int64))[None]
    cond = torch.from_numpy(np.asarray(spk.cond, np.float32).reshape(1, -1))
    ref = torch.from_numpy(np.asarray(spk.ref_mel, np.float32).reshape(1, -1, 80))
    x0 = torch.from_numpy(noise)[None]
    with torch.no_grad():
        if preset == "reference":
            real = torch.randn
            torch.randn = lambda *a, **k: x0.clone()  # the DiT's initial noise: the same array as ours
            try:
                return model(code, cond, ref).reshape(-1).numpy()
            finally:
                torch.randn = real
        dit = model.code2wav_dit_model
        t = torch.from_numpy(time_points(5, -1.0))
        x = x0.clone()
        spk_rep = cond[:, None].repeat(1, x.shape[1], 1)
        for n in range(4):
            v = dit(hidden_states=x, quantized_code=code, speaker_embedding=spk_rep, condition_vector=ref,
                    time_step=t[n], drop_audio_conditioning=False, drop_code=False, apply_cfg=False)
            x = x + (t[n + 1] - t[n]) * v
        return model.code2wav_bigvgan_model(x.permute(0, 2, 1)).reshape(-1).numpy()


def token2wav_inputs(n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """The random codes and initial noise every token2wav measurement uses."""
    from pocketomni.token2wav import NoiseSource

    return np.random.default_rng(5).integers(0, 8193, n_codes), NoiseSource(80, seed=9).get(0, 2 * n_codes).copy()


def bench_token2wav(omni, threads: int, n_codes: int, repeats: int, presets: list[str], streamed_too: bool = True,
                    model=None) -> dict:
    """numpy one-shot (and streamed, unless streamed_too=False) vs the PyTorch reference per preset;
    `model`: an already built `torch_token2wav` (built here when None)."""
    import torch

    from pocketomni.engine.weights import load_token2wav

    torch.set_num_threads(threads)
    engine = omni.runtime.speech_engine()
    tw = engine.token2wav
    spk = engine.speaker("Chelsie")
    spk_raw = engine._speakers["Chelsie"]
    if model is None:
        model = torch_token2wav(load_token2wav(omni.folder.token2wav))
    codes, noise = token2wav_inputs(n_codes)
    audio_s = n_codes * 480 / SR
    out: dict = {"codes": n_codes, "audio_seconds": audio_s}
    for preset in presets:
        mode = "exact" if preset == "fast" else "chunked"
        got: dict = {}

        def ours(preset: str = preset, got: dict = got) -> float:
            t = time.perf_counter()
            got["np"] = tw.render(codes, spk, preset, noise=noise)
            return time.perf_counter() - t

        def streamed(preset: str = preset, mode: str = mode) -> float:
            t = time.perf_counter()
            s = tw.stream(spk, preset, mode=mode, noise=noise)
            for i in range(0, n_codes, 12):  # as the talker hands them over
                s.feed(codes[i : i + 12])
            s.finish()
            return time.perf_counter() - t

        def ref(preset: str = preset, got: dict = got) -> float:
            t = time.perf_counter()
            got["torch"] = torch_render(model, codes, spk_raw, noise, preset)
            return time.perf_counter() - t

        np_s, np_runs = median_of(ours, repeats)
        st_s, st_runs = median_of(streamed, repeats) if streamed_too else (float("nan"), [])
        th_s, th_runs = median_of(ref, repeats)
        err = got["np"].astype(np.float64) - got["torch"].astype(np.float64)
        snr = 10 * np.log10(np.sum(got["torch"].astype(np.float64) ** 2) / max(np.sum(err**2), 1e-300))
        out[preset] = {"numpy_s": np_s, "numpy_stream_s": st_s, "stream_mode": mode, "torch_s": th_s,
                       "torch_over_numpy": th_s / np_s, "numpy_rtf": np_s / audio_s,
                       "numpy_stream_rtf": st_s / audio_s, "torch_rtf": th_s / audio_s, "snr_db": float(snr),
                       "runs": {"numpy": np_runs, "numpy_stream": st_runs, "torch": th_runs}}
        print(f"  token2wav {preset}: numpy {np_s:.2f} s, streamed ({mode}) {st_s:.2f} s, torch {th_s:.2f} s "
              f"for {audio_s:.1f} s of audio; SNR {snr:.1f} dB", flush=True)
    return out


# ---------------------------------------------------------------- 3. spoken chat turns


def bench_chat(omni, n_tokens: int, n_codes: int, repeats: int, presets: list[str]) -> dict:
    import pocketomni as po

    out = {}
    for spec in presets:  # "fast" or "fast:0": the preset with first_chunk_codes=0 (no short first chunk)
        preset, _, first = spec.partition(":")
        extra = {"first_chunk_codes": int(first), "first_chunk_future": 0} if first else {}
        rec: list[dict] = []

        def turn(preset: str = preset, rec: list = rec, extra: dict = extra) -> float:
            chat = omni.chat(speech=True, speech_preset=preset, max_tokens=n_tokens,
                             speech_options=po.SpeechOptions(max_codes=n_codes, seed=3, **extra))
            done = next(e for e in chat.send_sync(PROMPT) if isinstance(e, po.Done))
            sp, t = chat._last_speech, done.timings
            decode = t.total_seconds - t.time_to_first_token - sp.talker_seconds - sp.render_seconds
            rec.append({"ttfa": t.time_to_first_audio, "rtf": t.real_time_factor, "audio_s": t.audio_seconds,
                        "ttft": t.time_to_first_token, "talker_s": sp.talker_seconds,
                        "token2wav_s": sp.render_seconds, "thinker_decode_s": decode, "total_s": t.total_seconds,
                        "reply_tokens": done.usage.reply_tokens, "codes": done.usage.audio_codes})
            chat.close()
            return t.real_time_factor

        median_of(turn, repeats)
        runs = rec[-repeats:]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        key = preset if not first else f"{preset}, first chunk {first} codes"
        out[key] = {**med, "stream_mode": "exact" if preset == "fast" else "chunked", "runs": runs}
        print(f"  chat {key}: first audio {med['ttfa']:.2f} s, RTF {med['rtf']:.2f} "
              f"(talker {med['talker_s']:.1f} s, token2wav {med['token2wav_s']:.1f} s, thinker "
              f"{med['thinker_decode_s']:.1f} s for {med['audio_s']:.1f} s audio)", flush=True)
    return out


# ---------------------------------------------------------------- report


def write_report() -> None:
    files = sorted(RESULTS.glob("speech-*.json"))
    if not files:
        return
    res = [json.loads(f.read_text()) for f in files]
    lines = ["# Speech output benchmark", "",
             ("Written by `benchmarks/speech.py` (see its docstring for the method). Each figure is a median of "
              "3 runs after a warm-up unless its row says otherwise; the same thread count for llama.cpp, numpy "
              "and torch. RTF = work seconds per second of audio (below 1: faster than real time)."), ""]
    for r in res:
        m = r["meta"]
        lines += [f"## {r['label']}", "",
                  (f"{m['threads']} thread(s); numpy float32 GEMM {m['gemm_gflops']:.0f} GFLOP/s in the run; "
                   f"machine load average {m['load']:.1f} (2 cores, shared); {m['when']}."), ""]
        if "talker" in r:
            tk = r["talker"]
            lines += [f"| talker ({tk['codes']} codes after a {tk['prompt']}-row prefill; {how(tk)}) | codes/s | vs raw llama.cpp |",
                      "|---|---|---|",
                      f"| SDK (embeddings in, reference sampling) | {tk['sdk_codes_per_s']:.1f} | {tk['ratio']:.2f}x |",
                      f"| raw llama-cpp-python `eval`, greedy | {tk['raw_codes_per_s']:.1f} | 1 |", ""]
            if tk.get("python_ms_per_code") is not None:
                lines += [(f"SDK work per code outside llama.cpp (CPU time of the decoding thread minus its time in "
                           f"`llama_decode`, median): {tk['python_ms_per_code']:.3f} ms."), ""]
        t2w = r.get("token2wav", {})
        if any(p in t2w for p in ("fast", "reference")):
            lines += [("| token2wav preset (codes, audio) | numpy one-shot RTF | numpy streamed RTF | PyTorch RTF | "
                       "PyTorch / numpy time | SNR numpy vs torch |"), "|---|---|---|---|---|---|"]
            for p in ("fast", "reference"):
                if p in t2w:
                    t = t2w[p]
                    lines.append(f"| {p} ({t.get('codes', t2w.get('codes'))} codes, "
                                 f"{t.get('audio_seconds', t2w.get('audio_seconds')):.2f} s; {how(t)}) | "
                                 f"{t['numpy_rtf']:.2f} | {t['numpy_stream_rtf']:.2f} ({t['stream_mode']}) | "
                                 f"{t['torch_rtf']:.2f} | {t['torch_over_numpy']:.2f}x | {t['snr_db']:.0f} dB |")
            lines.append("")
        if "talker" in r and "fast" in t2w:
            talk_rtf = 50.0 / r["talker"]["sdk_codes_per_s"]
            lines += [(f"Lower bound of the spoken RTF from the parts (they run in turn, in one thread): talker "
                       f"{talk_rtf:.2f} (50 codes per second of speech) + token2wav streamed "
                       f"{t2w['fast']['numpy_stream_rtf']:.2f} (fast) or "
                       f"{t2w.get('reference', {}).get('numpy_stream_rtf', float('nan')):.2f} (reference); the "
                       "thinker's share depends on how many text tokens a second of speech carries."), ""]
        if r.get("chat"):
            lines += [("| spoken chat turn, preset | reply tokens / codes | time to first audio | RTF | thinker decode | "
                       "talker | token2wav |"), "|---|---|---|---|---|---|---|"]
            for p, c in r["chat"].items():
                a = c["audio_s"]
                lines.append(f"| {p} ({c['stream_mode']}; {how(c)}) | {c['reply_tokens']:.0f} / {c['codes']:.0f} "
                             f"({a:.1f} s) | {c['ttfa']:.2f} s | {c['rtf']:.2f} | {c['thinker_decode_s'] / a:.2f} s/s | "
                             f"{c['talker_s'] / a:.2f} s/s | {c['token2wav_s'] / a:.2f} s/s |")
            lines.append("")
    (RESULTS / "speech.md").write_text("\n".join(lines))
    plot(res)


def how(d: dict) -> str:
    n = d.get("repeats", 3)
    return f"median of {n} after a warm-up" if d.get("warmup", True) and n > 1 else (
        f"{n} run{'s' if n > 1 else ''}, no warm-up" if not d.get("warmup", True) else "1 run after a warm-up")


def plot(res: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = [r["label"] for r in res]
    x = np.arange(len(labels))
    ax = axes[0]
    for i, p in enumerate(("fast", "reference")):
        v = [r.get("chat", {}).get(p, {}).get("rtf", np.nan) for r in res]
        ax.bar(x + (i - 0.5) * 0.38, v, 0.38, label=p)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_title("spoken turn: real-time factor (log)")
    ax.set_xticks(x, labels)
    ax.legend()
    ax = axes[1]
    for i, p in enumerate(("fast", "reference")):
        v = [r.get("token2wav", {}).get(p, {}).get("torch_over_numpy", np.nan) for r in res]
        ax.bar(x + (i - 0.5) * 0.38, v, 0.38, label=p)
    ax.bar(x + 0.6, [r.get("talker", {}).get("ratio", np.nan) for r in res], 0.25, label="talker SDK / raw llama.cpp")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title("speed ratios: token2wav torch / numpy; talker SDK / raw")
    ax.set_xticks(x + 0.1, labels)
    ax.legend(fontsize=8)
    ax = axes[2]
    for i, p in enumerate(("fast", "reference")):
        v = [r.get("chat", {}).get(p, {}).get("ttfa", np.nan) for r in res]
        ax.bar(x + (i - 0.5) * 0.38, v, 0.38, label=p)
    ax.set_yscale("log")
    ax.set_title("time to first audio (s, log)")
    ax.set_xticks(x, labels)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "speech.png", dpi=110)


def tiny_folder() -> Path:
    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))
    import conftest
    from omni_fixtures import build_checkpoint

    return conftest._convert_cached(build_checkpoint("base"), "f32", "f32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, help="model folder (pocketomni convert / synth output)")
    ap.add_argument("--tiny", action="store_true", help="use the tiny test checkpoint (converted f32)")
    ap.add_argument("--label", default=None, help="name of this run in the report")
    ap.add_argument("--threads", type=int, default=int(_T))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--talker-codes", type=int, default=200)
    ap.add_argument("--t2w-codes", type=int, default=150)
    ap.add_argument("--chat-tokens", type=int, default=40)
    ap.add_argument("--chat-codes", type=int, default=150)
    ap.add_argument("--presets", default="fast,reference")
    ap.add_argument("--chat-extra", default="fast:0", help="more spoken-turn variants, e.g. fast:0 (no first chunk)")
    ap.add_argument("--parts", default="talker,token2wav,chat", help="sections to run (results merge by label)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (for very slow cases)")
    ap.add_argument("--report", action="store_true", help="only rebuild speech.md / speech.png")
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.report:
        write_report()
        return
    if not (a.tiny or a.folder):
        ap.error("pass --tiny or --folder DIR")
    import pocketomni as po

    global WARMUP
    WARMUP = not a.no_warmup
    parts = set(a.parts.split(","))
    tag = {"repeats": a.repeats, "warmup": WARMUP}
    folder = tiny_folder() if a.tiny else a.folder
    label = a.label or ("tiny" if a.tiny else folder.name)
    presets = a.presets.split(",")
    with po.Omni.load_sync(folder, n_threads=a.threads, n_ctx=1024) as omni:
        print(f"[{label}] {folder}", flush=True)
        meta = {"threads": a.threads, "gemm_gflops": gemm_gflops(), "folder": str(folder),
                "when": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0]}
        path = RESULTS / f"speech-{label}.json"
        out = json.loads(path.read_text()) if path.is_file() else {"label": label}
        out["meta"] = meta
        if "talker" in parts:
            out["talker"] = {**bench_talker(omni, a.threads, a.talker_codes, 64, a.repeats), **tag}
            tk = out["talker"]
            print(f"  talker: SDK {tk['sdk_codes_per_s']:.1f} codes/s, raw {tk['raw_codes_per_s']:.1f} "
                  f"codes/s ({tk['ratio']:.2f}x)", flush=True)
        if "token2wav" in parts:
            t2w = bench_token2wav(omni, a.threads, a.t2w_codes, a.repeats, presets)
            for p in presets:
                t2w[p].update(codes=t2w["codes"], audio_seconds=t2w["audio_seconds"], **tag)
            out.setdefault("token2wav", {}).update({p: t2w[p] for p in presets})
        if "chat" in parts:
            chat = bench_chat(omni, a.chat_tokens, a.chat_codes, a.repeats, presets + [x for x in a.chat_extra.split(",") if x])
            for c in chat.values():
                c.update(tag)
            out.setdefault("chat", {}).update(chat)
    meta["load_after"] = os.getloadavg()[0]
    path.write_text(json.dumps(out, indent=1))
    write_report()
    print(f"wrote {RESULTS / 'speech.md'}")


if __name__ == "__main__":
    main()
