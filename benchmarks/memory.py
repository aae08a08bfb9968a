"""Peak memory of a spoken chat turn through the public SDK, per stage, with a breakdown.

Usage:
    .venv/bin/python benchmarks/memory.py --tiny                                  # demo model (smoke test)
    flock /tmp/team/fullsize.lock .venv/bin/python benchmarks/memory.py --folder /tmp/synth-runs/3b --label 3b
    .venv/bin/python benchmarks/memory.py --report                                # rebuild memory.md / .png

Stages, in order: `load` (Omni.load_sync), `speech load` (the first omni.chat(speech=True) loads the
talker and token2wav), then one scripted spoken turn (text question, speech_preset "fast") whose work
interleaves three stages: `thinker` (prefill + reply tokens), `talker` (codes) and `token2wav`
(DiT + BigVGAN). The benchmark wraps the talker's and token2wav's entry points (here, not in the SDK)
to know which stage runs. Peak per stage is the kernel's high-water mark (VmHWM, reset at every stage
switch through /proc/self/clear_refs) and, as a cross-check, a thread sampling VmRSS every 5 ms.

Breakdown: /proc/self/smaps resident bytes per mapped model file (llama.cpp mmaps the thinker and
talker GGUFs; their pages count once touched), anonymous memory, and inside it what can be named:
numpy arrays held by token2wav / the audio encoder / the talker (walked from the SDK objects), and
llama.cpp's own buffers as its log reports them (KV cache, compute and output buffers, mtmd's
projector weights). Results: benchmarks/results/memory-<label>.json, memory.md and memory.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Tell me a long story about a lighthouse keeper and the storm that changed the coast."
MB = 1 << 20


# ----------------------------------------------------------------------------- /proc readers

def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_hwm() -> bool:
    """Set the kernel's peak-RSS mark back to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def smaps_breakdown() -> dict[str, float]:
    """Resident MB per mapped .gguf file, anonymous, and other file mappings (libraries); plus, over the
    whole process, what the kernel may drop under pressure without killing it (clean file-backed pages,
    re-read from the file when touched again) against what it may not (anonymous memory; no swap)."""
    out: dict[str, float] = {}
    name = ""
    clean = 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                name = head[5].strip() if len(head) > 5 else ""
            elif head and head[0] == "Rss:":
                kb = int(head[1])
                if name.endswith(".gguf"):
                    key = "file " + Path(name).name
                elif not name or name.startswith(("[heap", "[anon")):
                    key = "anonymous"
                else:
                    key = "other mappings"
                out[key] = out.get(key, 0.0) + kb / 1024
            elif head and head[0] in ("Shared_Clean:", "Private_Clean:") and name.startswith("/"):
                clean += int(head[1])
    out = {k: round(v, 1) for k, v in sorted(out.items())}
    out["= droppable: clean file pages"] = round(clean / 1024, 1)
    return out


# ----------------------------------------------------------------------------- stage tracking

class Stages:
    """Current stage label, per-stage peaks (VmHWM with resets, plus a VmRSS sampler) and end RSS."""

    def __init__(self) -> None:
        self.label = "start"
        self.peak: dict[str, float] = {}
        self.sampled: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.hwm_ok = reset_hwm()
        self._t = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            rss = status_mb("VmRSS")
            with self._lock:
                self.sampled[self.label] = max(self.sampled.get(self.label, 0.0), rss)

    def switch(self, label: str) -> str:
        """Close the current stage and start `label`; returns the previous label."""
        with self._lock:
            prev = self.label
            hwm = status_mb("VmHWM") if self.hwm_ok else status_mb("VmRSS")
            self.peak[prev] = max(self.peak.get(prev, 0.0), hwm)
            self.end[prev] = status_mb("VmRSS")
            now = time.perf_counter()
            self.seconds[prev] = self.seconds.get(prev, 0.0) + now - self._t
            self._t = now
            if self.hwm_ok:
                reset_hwm()
            self.label = label
            return prev

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wrap(self, cls: type, name: str, label: str) -> None:
        """Run `cls.name` under stage `label` (restoring the caller's stage afterwards)."""
        fn = getattr(cls, name)
        stages = self

        def run(*a: Any, **k: Any) -> Any:
            prev = stages.switch(label)
            try:
                out = fn(*a, **k)
                if hasattr(out, "__next__"):  # a generator: drain it inside the stage
                    out = list(out)
                return out
            finally:
                stages.switch(prev)

        setattr(cls, name, run)


# ----------------------------------------------------------------------------- attribution

def numpy_bytes(obj: Any, depth: int = 10) -> dict[str, float]:
    """MB of numpy memory reachable from obj's attributes: owned (heap) and file-mapped, deduplicated."""
    seen: set[int] = set()
    roots: dict[Any, tuple[str, int]] = {}

    def root_of(a: np.ndarray) -> tuple[Any, str, int]:
        base: Any = a
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, np.ndarray):
            return id(base), "owned", base.nbytes
        if isinstance(base, mmap.mmap):  # a view of a file map: count each mapped range once
            return ("map", a.__array_interface__["data"][0]), "mapped", a.nbytes
        return id(base), "owned", a.nbytes

    def walk(o: Any, d: int) -> None:
        if d < 0 or id(o) in seen or isinstance(o, (str, bytes, int, float, type, type(walk))):
            return
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            rid, kind, n = root_of(o)
            roots[rid] = (kind, max(n, roots.get(rid, (kind, 0))[1]))
            return
        items: Any = ()
        if isinstance(o, dict):
            items = o.values()
        elif isinstance(o, (list, tuple, set, frozenset)):
            items = o
        elif hasattr(o, "__dict__"):
            items = list(vars(o).values())
        elif hasattr(o, "__slots__"):
            items = [getattr(o, s, None) for s in o.__slots__]
        if getattr(o, "__closure__", None):
            items = list(items) + [c.cell_contents for c in o.__closure__]
        for v in items:
            walk(v, d - 1)
        fn = getattr(o, "fn", None)  # stream1d nodes keep their op in a closure
        if callable(fn) and getattr(fn, "__closure__", None):
            for c in fn.__closure__:
                walk(c.cell_contents, d - 1)

    walk(obj, depth)
    out = {"owned": 0.0, "mapped": 0.0}
    for kind, n in roots.values():
        out[kind] += n / MB
    return {k: round(v, 1) for k, v in out.items()}


class LlamaLog(logging.Handler):
    """Collects llama.cpp / mtmd buffer sizes from its log (debug level must be enabled)."""

    PAT = re.compile(r"^(\w+):\s+(\S+)\s+(model|KV|compute|output) buffer size\s*=\s*([\d.]+) MiB")
    CLIP = re.compile(r"model size:\s+([\d.]+) MiB")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.items: list[dict[str, Any]] = []
        self.stage = "?"

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().strip()
        m = self.PAT.search(msg)
        if m:
            self.items.append({"stage": self.stage, "where": m.group(1), "buffer": m.group(2),
                               "kind": m.group(3), "mb": float(m.group(4))})
        m = self.CLIP.search(msg)
        if m:
            self.items.append({"stage": self.stage, "where": "clip", "buffer": "CPU", "kind": "mmproj weights",
                               "mb": float(m.group(1))})


# ----------------------------------------------------------------------------- the run

def run(folder: Path, label: str, threads: int, n_ctx: int | None, tokens: int, codes: int,
        no_repack: bool = False, mmap_mode: str = "auto") -> dict:
    import pocketomni as po
    import pocketomni.backend.llama as backend_llama
    from pocketomni.engine.speech import SpeechEngine
    from pocketomni.engine.talker import Talker
    from pocketomni.token2wav.streaming import SpeechStream

    if no_repack:  # llama.cpp's CPU_REPACK buffers hold a second, re-laid-out copy of quantized weights
        import llama_cpp.llama_cpp as L

        defaults = L.llama_model_default_params

        def params() -> Any:
            p = defaults()
            p.use_extra_bufts = False
            return p

        L.llama_model_default_params = params
    if mmap_mode != "auto":  # force llama.cpp's weights mapped (on) or read into memory (off)
        backend_llama.should_mmap = lambda path, n_gpu_layers: mmap_mode == "on"  # type: ignore[assignment]
    llog = LlamaLog()
    lg = logging.getLogger("pocketomni.llama")
    lg.setLevel(logging.DEBUG)
    lg.addHandler(llog)
    st = Stages()
    base = status_mb("VmRSS")
    for name in ("start", "push_reply", "next_code"):
        st.wrap(Talker, name, "talker")
    for name in ("feed", "finish"):
        st.wrap(SpeechStream, name, "token2wav")
    st.wrap(SpeechEngine, "speaker", "token2wav")  # ECAPA runs once per voice
    snaps: dict[str, dict[str, float]] = {}
    init = SpeechEngine.__init__

    def engine_init(self: Any, *a: Any, **k: Any) -> None:  # name the llama.cpp buffers created here
        llog.stage = "talker"
        init(self, *a, **k)
        llog.stage = "thinker chat"

    SpeechEngine.__init__ = engine_init  # type: ignore[method-assign]

    st.switch("load")
    llog.stage = "thinker+mmproj"
    kw: dict[str, Any] = {"n_threads": threads}
    if n_ctx:
        kw["n_ctx"] = n_ctx
    omni = po.Omni.load_sync(folder, **kw)
    st.switch("speech load")
    snaps["after load"] = smaps_breakdown()
    chat = omni.chat(speech=True, speech_preset="fast", max_tokens=tokens,
                     speech_options=po.SpeechOptions(max_codes=codes, seed=3))
    st.switch("thinker")
    snaps["after speech load"] = smaps_breakdown()
    llog.stage = "turn"
    t0 = time.perf_counter()
    audio = 0
    done = None
    for ev in chat.send_sync(PROMPT):
        if isinstance(ev, po.AudioChunk):
            audio += ev.samples.size
        elif isinstance(ev, po.Done):
            done = ev
    wall = time.perf_counter() - t0
    st.switch("after turn")
    snaps["after turn"] = smaps_breakdown()
    speech = omni.runtime.speech_loaded
    arrays = {
        "token2wav (DiT, ECAPA, BigVGAN)": numpy_bytes(speech.token2wav) if speech else {},
        "talker (projection, speakers)": numpy_bytes(speech.talker) if speech else {},
        "audio encoder": numpy_bytes(omni.runtime.media._audio) if omni.runtime.media._audio is not None else {},
    }
    n_codes = done.usage.audio_codes if done else 0
    omni.close()
    st.switch("closed")
    st.stop()
    order = ["load", "speech load", "thinker", "talker", "token2wav"]
    return {
        "label": label, "folder": str(folder), "when": time.strftime("%Y-%m-%d %H:%M"),
        "threads": threads, "n_ctx": omni_n_ctx(n_ctx), "reply_tokens": done.usage.reply_tokens if done else 0,
        "codes": n_codes, "audio_seconds": round(audio / 24000, 2), "turn_seconds": round(wall, 1),
        "baseline_mb": round(base, 1), "hwm_resets": st.hwm_ok, "no_repack": no_repack,
        "mmap": mmap_mode if mmap_mode != "auto" else ("on" if speech and speech.talker.model.use_mmap else "off"),
        "decode_tok_s": round(done.timings.decode_tokens_per_second, 2) if done else 0.0,
        "stages": {s: {"peak_mb": round(st.peak.get(s, 0.0), 1), "sampled_peak_mb": round(st.sampled.get(s, 0.0), 1),
                       "end_mb": round(st.end.get(s, 0.0), 1), "seconds": round(st.seconds.get(s, 0.0), 1)}
                   for s in order},
        "overall_peak_mb": round(max(st.peak.get(s, 0.0) for s in order), 1),
        "smaps": snaps, "numpy": arrays, "llama_buffers": llog.items,
        "files": {p.name: round(p.stat().st_size / MB, 1) for p in sorted(folder.glob("*.gguf"))},
    }


def omni_n_ctx(n_ctx: int | None) -> int:
    if n_ctx:
        return n_ctx
    import inspect

    import pocketomni as po

    return int(inspect.signature(po.Omni.__init__).parameters["n_ctx"].default)


# ----------------------------------------------------------------------------- report

# Runs labelled <model>-<step>, in the order the memory fixes landed (issue 21; the fixes before it, on the
# older synthetic folders with the 7B-sized 3B talker and float32 token2wav: results/memory_history/).
STEPS = [("before", "before (main: f16 token2wav, corrected 3B talker)"),
         ("caches", "+ talker KV grows with the reply, thinker micro-batch 128"),
         ("kv", "+ thinker KV grows with the chat"),
         ("mmap", "+ weights mapped, repacked pages dropped"),
         ("fast", "+ the converter's default formats (q4_0 thinker and talker)")]


def write_report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("memory-*.json"))]
    order = ["load", "speech load", "thinker", "talker", "token2wav"]
    lines = ["# Peak memory of a spoken turn", "",
             ("Written by `benchmarks/memory.py` (method in its docstring). Peak = highest RSS while the stage ran "
              "(VmHWM reset at each stage switch; the 5 ms VmRSS sampler agrees or reads lower). Stages of the turn "
              "interleave, so each peak includes everything still resident from earlier stages."), ""]
    by = {r["label"]: r for r in runs}
    models = sorted({k.split("-")[0] for k in by if k.endswith("-before")})
    lines += [("Earlier steps (lazy mmproj, weights read, modulation weights released), measured on the older "
               "synthetic folders: results/memory_history/."), ""]
    for name in models:
        steps = [(step, title, by[f"{name}-{step}"]) for step, title in STEPS if f"{name}-{step}" in by]
        lines += [f"## {name}: step by step", "", "| stage | " + " | ".join(f"{t} MB" for _, t, _ in steps) + " |",
                  "|---" * (len(steps) + 1) + "|"]
        for s in order:
            lines.append(f"| {s} | " + " | ".join(f"{r['stages'][s]['peak_mb']:.0f}" for _, _, r in steps) + " |")
        lines += ["| **overall** | " + " | ".join(f"**{r['overall_peak_mb']:.0f}**" for _, _, r in steps) + " |", ""]
    for r in runs:
        lines += [f"## {r['label']}", "",
                  f"{r['folder']}; n_ctx {r['n_ctx']}; {r['threads']} threads; {r['reply_tokens']} reply tokens, "
                  f"{r['codes']} codes ({r['audio_seconds']} s audio), turn {r['turn_seconds']} s "
                  f"(thinker decode {r.get('decode_tok_s', 0)} tok/s{'; llama.cpp repacking OFF' if r.get('no_repack') else ''}"
                  f"{'; weights ' + ('mapped' if r['mmap'] == 'on' else 'read') if r.get('mmap') else ''}); "
                  f"{r['when']}. "
                  f"Files (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["files"].items()) + ".", "",
                  "| stage | peak RSS MB | RSS at stage end MB | seconds |", "|---|---|---|---|"]
        for s in order:
            d = r["stages"][s]
            lines.append(f"| {s} | {d['peak_mb']:.0f} | {d['end_mb']:.0f} | {d['seconds']:.1f} |")
        lines += [f"| **overall** | **{r['overall_peak_mb']:.0f}** | | |", ""]
        snap_names = list(r["smaps"])
        keys = sorted({k for v in r["smaps"].values() for k in v})
        lines += ["| resident MB (smaps) | " + " | ".join(snap_names) + " |", "|---" * (len(snap_names) + 1) + "|"]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(f"{r['smaps'][n].get(k, 0):.0f}" for n in snap_names) + " |")
        lines += ["", "| inside anonymous memory | MB |", "|---|---|"]
        for name, d in r["numpy"].items():
            if d:
                lines.append(f"| numpy arrays: {name} | {d.get('owned', 0):.0f} owned"
                             + (f", {d['mapped']:.0f} file-mapped" if d.get("mapped") else "") + " |")
        agg: dict[str, float] = {}
        for it in r["llama_buffers"]:
            if it["kind"] == "model" and "Mapped" in it["buffer"]:
                continue  # mmapped file: counted under its file above
            key = f"llama.cpp {it['where']} {it['kind']} ({it['stage']})"
            agg[key] = agg.get(key, 0.0) + it["mb"]
        for k, v in agg.items():
            lines.append(f"| {k} | {v:.0f} |")
        lines.append("")
    (RESULTS / "memory.md").write_text("\n".join(lines) + "\n")
    plot(runs, order)


def plot(runs: list[dict], order: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    w = 0.8 / max(1, len(runs))
    for i, r in enumerate(runs):
        xs = np.arange(len(order)) + i * w
        ax.bar(xs, [r["stages"][s]["peak_mb"] / 1024 for s in order], w, label=r["label"])
    ax.set_xticks(np.arange(len(order)) + w * (len(runs) - 1) / 2, order)
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title("Peak RSS per stage of a spoken turn")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "memory.png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, help="model folder (pocketomni convert / synth output)")
    ap.add_argument("--tiny", action="store_true", help="use the demo model (pocketomni synth tiny, built once)")
    ap.add_argument("--label", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=None, help="thinker context (default: the SDK's default)")
    ap.add_argument("--tokens", type=int, default=24, help="reply tokens (max_tokens)")
    ap.add_argument("--codes", type=int, default=60, help="speech codes (max_codes)")
    ap.add_argument("--no-repack", action="store_true",
                    help="experiment: load GGUFs with llama.cpp's weight repacking off (use_extra_bufts=False)")
    ap.add_argument("--mmap", choices=("auto", "on", "off"), default="auto",
                    help="thinker/talker weights mapped (on), read into memory (off) or as the SDK chooses (auto)")
    ap.add_argument("--report", action="store_true", help="only rebuild memory.md / memory.png")
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not a.report:
        if not (a.tiny or a.folder):
            ap.error("pass --tiny or --folder DIR")
        if a.tiny:
            from pocketomni.cli.demo import ensure_demo_model

            folder = ensure_demo_model(progress=False)
        else:
            folder = a.folder
        label = a.label or ("tiny" if a.tiny else folder.name)
        res = run(folder, label, a.threads, a.n_ctx, a.tokens, a.codes, a.no_repack, a.mmap)
        (RESULTS / f"memory-{label}.json").write_text(json.dumps(res, indent=1))
        print(json.dumps({k: res[k] for k in ("label", "overall_peak_mb", "stages")}, indent=1))
    write_report()
    print(f"wrote {RESULTS / 'memory.md'}")


if __name__ == "__main__":
    sys.exit(main())
