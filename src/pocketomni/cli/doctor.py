"""`pocketomni doctor`: what this machine gives PocketOmni, and a smoke test of every native stage.

    pocketomni doctor [MODEL_DIR ...] [--no-smoke] [--json] [--threads N]

The report is what to paste into a bug report: Python and platform; the CPU and the features that
decide which llama.cpp kernels run fast; llama.cpp's version, build (system info) and GPU backend;
the CPU guard's decision (backend/cpu_guard.py); numpy's BLAS and threads; audio devices; free
memory against each MODEL_DIR's needs. Then, unless --no-smoke, each native stage runs once on the
demo model (`pocketomni demo`'s tiny random-weight model) in a child process of its own:

    python -m pocketomni.cli.doctor --stage NAME --folder DIR [--threads N] [--weight-layout L]

so a crash in native code is reported with its signal (SIGSEGV, SIGILL, ...) instead of ending the
report. The exit code is 0 when every smoke passed, 1 otherwise. tests/test_native_smoke.py runs the
same stages through `run_stage`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

# Native stages the smoke runs, in order: the quantized thinker's decode (llama.cpp), our numpy audio
# encoder, the vision tower (mtmd), the quantized talker (llama.cpp), token2wav (numpy DiT + BigVGAN).
SMOKE_STAGES: tuple[str, ...] = ("thinker", "audio_encoder", "vision", "talker", "token2wav")
DEMO_STAGE = "_demo_model"  # builds or finds the demo model (its quantizer is native code too)
CRASH_STAGE = "_crash"  # test-only: the child kills itself with SIGSEGV (proves the harness)
MARK = "POCKETOMNI-SMOKE "  # prefix of the child's one result line on stdout
STAGE_TIMEOUT = 180.0  # seconds per stage child (each takes well under 10 s on the demo model)
DEMO_TIMEOUT = 900.0  # building the demo model takes 10-30 s, more on a busy machine

PROMPT = "<|im_start|>user\nHello! What can you see and hear?<|im_end|>\n<|im_start|>assistant\n"
THINKER_TOKENS = 32  # decode steps of the thinker smoke
TALKER_CODES = 32  # codes of the talker smoke (the random talker never ends by itself)
T2W_CODES = 25  # codes of the token2wav smoke: 0.5 s of speech

Report = dict[str, Any]  # section -> fields (JSON-friendly); text and --json show the same sections


# ---------------------------------------------------------------------- the machine


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def system_section() -> dict[str, Any]:
    from pocketomni import __version__

    return {"pocketomni": __version__, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "executable": sys.executable,
            "platform": platform.platform(), "usable_cpus": _usable_cpus(), "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def cpu_section() -> dict[str, Any]:
    from pocketomni.backend.cpu_guard import read_cpu_features

    cpu = read_cpu_features()
    return {"model": cpu.model, "machine": cpu.machine, "features": cpu.summary()}


def _ggml_devices() -> list[str]:
    """ggml's backend devices ("CPU", "Metal", "CUDA0", ...) as "name (description)"; [] if unreadable."""
    import ctypes

    from pocketomni.backend.cpu_guard import ggml_library

    lib = ggml_library()
    if lib is None:
        return []
    try:
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
        out = []
        for i in range(int(lib.ggml_backend_dev_count())):
            dev = lib.ggml_backend_dev_get(i)
            name = (lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
            desc = (lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
            out.append(f"{name} ({desc})" if desc and desc != name else name)
        return out
    except AttributeError:
        return []


def llama_section() -> dict[str, Any]:
    import llama_cpp

    from pocketomni.backend import llama as backend
    from pocketomni.backend.cpu_guard import extra_buffer_types

    backend.ensure_backend()
    info = llama_cpp.llama_cpp.llama_print_system_info()
    return {"version": str(llama_cpp.__version__), "gpu": backend.gpu_available(), "devices": _ggml_devices(),
            "extra_buffer_types": list(extra_buffer_types()),
            "system_info": (info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)).strip()}


def guard_section() -> dict[str, Any]:
    from pocketomni.backend.cpu_guard import ALLOW_AMX_ENV, current_decision

    d = current_decision()
    return {"layout": d.layout, "reason": d.reason, ALLOW_AMX_ENV: os.environ.get(ALLOW_AMX_ENV)}


def numpy_section() -> dict[str, Any]:
    import numpy as np

    from pocketomni import blas_spin
    from pocketomni.numpy_blas import numpy_blas

    blas = numpy_blas().describe()
    try:
        cfg = np.show_config(mode="dicts")  # numpy >= 1.26
    except TypeError:
        cfg = None
    simd = (cfg.get("SIMD Extensions") or {}).get("found") if isinstance(cfg, dict) else None
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    out: dict[str, Any] = {"version": np.__version__, "blas": blas, "simd": simd,
                           "usable_cpus": _usable_cpus(), "thread_env": env, "blas_threads": None,
                           "idle_spin": blas_spin.state()}
    try:  # optional: threadpoolctl reads the BLAS library's own thread count
        from threadpoolctl import threadpool_info  # type: ignore[import-not-found]

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        out["blas_threads"] = pools[0]["num_threads"] if pools else None
    except ImportError:
        pass
    return out


def audio_section() -> dict[str, Any]:
    from pocketomni.audio.devices import list_devices
    from pocketomni.errors import FeatureUnavailableError

    try:
        devs = list_devices()
    except FeatureUnavailableError as e:
        return {"input": [], "output": [], "note": str(e)}

    def names(kind: str) -> list[str]:
        chosen = [d for d in devs if getattr(d, f"max_{kind}_channels") > 0]
        return [f"[{d.index}] {d.name} ({d.hostapi})" + (" default" if getattr(d, f"is_default_{kind}") else "")
                for d in chosen]

    return {"input": names("input"), "output": names("output"), "note": None}


# ---------------------------------------------------------------------- memory


def model_needs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The memory budget of a model folder (engine/memory_budget.py): MiB per component and the totals of a
    text chat, a spoken turn and a spoken turn after media input, at Omni.load's defaults."""
    from pocketomni.engine.memory_budget import SCENARIOS, memory_budget

    b = memory_budget(path)
    return {"path": b.path,
            "components": [{"name": i.name, "mib": round(i.mb, 1), "when": i.when, "note": i.note} for i in b.items],
            "totals_mib": {k: round(b.total_mb(k), 1) for k in SCENARIOS}}


def memory_section(model_dirs: Sequence[str]) -> dict[str, Any]:
    from pocketomni.backend import llama as backend

    avail = backend.available_memory()
    models: list[dict[str, Any]] = []
    for d in model_dirs:
        try:
            need = model_needs(d)
        except Exception as e:  # noqa: BLE001 -- a bad folder is part of the report, not the end of it
            models.append({"path": d, "error": f"{type(e).__name__}: {e}"})
            continue
        need["fits"] = {k: None if avail is None else v * 2**20 <= avail for k, v in need["totals_mib"].items()}
        models.append(need)
    estimate = ("budget = weights as read (thinker, talker), f16 KV caches (thinker at n_ctx 4096, talker for a "
                "512-token prompt + 512 codes, growing with longer replies), llama.cpp compute buffers, "
                "token2wav's mapped weights, the runtime; media encoders load on the first image/audio/video")
    return {"available_bytes": avail, "estimate": estimate, "models": models}


def collect(model_dirs: Sequence[str] = ()) -> Report:
    """Every section of the report except the smoke."""
    return {"system": system_section(), "cpu": cpu_section(), "llama.cpp": llama_section(),
            "guard": guard_section(), "numpy": numpy_section(), "audio": audio_section(),
            "memory": memory_section(model_dirs)}


# ---------------------------------------------------------------------- the stages (child side)


def _finite(a: Any, what: str) -> None:
    import numpy as np

    arr = np.asarray(a)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise RuntimeError(f"{what}: {'empty' if arr.size == 0 else 'NaN or inf'} output")


def _stage_thinker(folder: Any, threads: int | None, layout: Any) -> dict[str, Any]:
    import numpy as np

    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel

    with LlamaModel(folder.thinker, n_threads=threads, weight_layout=layout) as model:
        ctx = LlamaContext(model, n_ctx=256, n_seq_max=1)
        ids = model.tokenize(PROMPT)
        t0 = time.perf_counter()
        logits = ctx.decode(tokens=ids, logits="last").last_logits
        t1 = time.perf_counter()
        for _ in range(THINKER_TOKENS):
            _finite(logits, "thinker logits")
            logits = ctx.decode(tokens=[int(np.argmax(logits))], logits="last").last_logits
        t2 = time.perf_counter()
        _finite(logits, "thinker logits")
        rate = THINKER_TOKENS / (t2 - t1)
        return {"figure": f"decode {rate:.1f} tok/s, prefill {len(ids) / (t1 - t0):.0f} tok/s "
                          f"({model.path.name}, weights {model.weight_layout})",
                "value": rate, "unit": "tok/s", "file": model.path.name, "weight_layout": model.weight_layout}


def _stage_audio_encoder(folder: Any, threads: int | None, layout: Any) -> dict[str, Any]:
    from pocketomni.audio.features import log_mel_segments
    from pocketomni.cli.demo import demo_audio
    from pocketomni.engine.encoders import load_audio_encoder

    enc = load_audio_encoder(folder.mmproj)
    pcm, rate = demo_audio(seconds=2.0)
    t0 = time.perf_counter()
    rows = [enc.encode(mel) for mel in log_mel_segments(pcm)]
    dt = time.perf_counter() - t0
    for r in rows:
        _finite(r, "audio encoder")
    rtf = len(pcm) / rate / dt
    return {"figure": f"{rtf:.0f}x realtime ({sum(r.shape[0] for r in rows)} tokens for {len(pcm) / rate:.0f} s "
                      f"of audio in {dt * 1000:.0f} ms)", "value": rtf, "unit": "x realtime"}


def _stage_vision(folder: Any, threads: int | None, layout: Any) -> dict[str, Any]:
    from pocketomni.backend.llama import LlamaModel
    from pocketomni.chat.conversation import Part
    from pocketomni.cli.demo import demo_image
    from pocketomni.engine.encoders import MediaEncoders

    with LlamaModel(folder.thinker, n_threads=threads, weight_layout=layout) as model:
        enc = MediaEncoders(model, folder, n_threads=threads)
        item = enc.prepare(Part(kind="image", source=demo_image()))
        enc.encode(item)  # loads the projector and warms it up
        t0 = time.perf_counter()
        rows = enc.encode(item)
        dt = time.perf_counter() - t0
        enc.close()
    _finite(rows, "vision encoder")
    h, w = item.image.pixels.shape[:2]  # type: ignore[union-attr]
    return {"figure": f"{dt:.3f} s per {w}x{h} image ({rows.shape[0]} tokens, {rows.shape[0] / dt:.0f} tok/s)",
            "value": dt, "unit": "s"}


def _voice(weights: Any) -> str:
    return "Chelsie" if "Chelsie" in weights.speakers else min(weights.speakers)


def _stage_talker(folder: Any, threads: int | None, layout: Any) -> dict[str, Any]:
    import numpy as np

    from pocketomni.backend.llama import LlamaModel
    from pocketomni.engine.talker import Talker
    from pocketomni.engine.weights import load_token2wav
    from pocketomni.gguf_file import EmbeddingRows
    from pocketomni.options import SpeechOptions

    if folder.talker is None or folder.token2wav is None:
        raise RuntimeError(f"{folder.root} has no talker/token2wav files")
    weights = load_token2wav(folder.token2wav)
    # The thinker only lends its tokenizer and embedding rows (read from its file): only the talker computes.
    with LlamaModel(folder.thinker, n_threads=threads, vocab_only=True) as thinker:
        rows = EmbeddingRows(thinker.gguf, "token_embd.weight")
        talker = Talker(folder.talker, weights, threads, thinker_embed=lambda ids: rows.rows(list(ids)), n_ctx=512,
                        options=SpeechOptions(max_codes=TALKER_CODES, seed=0))
        try:
            prompt = rows.rows(thinker.tokenize(PROMPT))
            reply = rows.rows(thinker.tokenize("Hello there, nice to meet you."))
            pos = np.tile(np.arange(prompt.shape[0], dtype=np.int64), (3, 1))
            t0 = time.perf_counter()
            codes = talker.generate_codes(prompt, pos, _voice(weights), reply)
            dt = time.perf_counter() - t0
            _finite(talker.last_logits, "talker logits")
            name = talker.model.path.name
        finally:
            talker.close()
            rows.close()
    rate = max(len(codes), 1) / dt
    return {"figure": f"{rate:.1f} codes/s ({len(codes)} codes, {name})", "value": rate, "unit": "codes/s",
            "file": name}


def _stage_token2wav(folder: Any, threads: int | None, layout: Any) -> dict[str, Any]:
    import numpy as np

    from pocketomni.engine.weights import load_token2wav
    from pocketomni.token2wav import SAMPLE_RATE, Token2Wav

    if folder.token2wav is None:
        raise RuntimeError(f"{folder.root} has no token2wav file")
    weights = load_token2wav(folder.token2wav)
    tw = Token2Wav.from_weights(weights.weights, weights.config)
    s = weights.speakers[_voice(weights)]
    spk = tw.speaker(s.cond, s.ref_mel, name=s.name)
    tw.prepare_presets()  # one-time work the SDK does at load
    codes = np.random.default_rng(0).integers(0, tw.dit.cfg.num_embeds, size=T2W_CODES)
    t0 = time.perf_counter()
    wav = tw.render(codes, spk, "fast", seed=0)
    dt = time.perf_counter() - t0
    _finite(wav, "token2wav")
    rtf = wav.size / SAMPLE_RATE / dt
    return {"figure": f"{rtf:.1f}x realtime ({wav.size / SAMPLE_RATE:.1f} s of speech in {dt:.2f} s, preset fast)",
            "value": rtf, "unit": "x realtime"}


def _stage_demo_model() -> dict[str, Any]:
    from pocketomni.cli.demo import ensure_demo_model

    t0 = time.perf_counter()
    folder = ensure_demo_model(progress=False)
    return {"figure": f"{folder} ({time.perf_counter() - t0:.1f} s)", "folder": str(folder)}


_STAGES: dict[str, Callable[[Any, int | None, Any], dict[str, Any]]] = {
    "thinker": _stage_thinker, "audio_encoder": _stage_audio_encoder, "vision": _stage_vision,
    "talker": _stage_talker, "token2wav": _stage_token2wav,
}


def stage_main(stage: str, folder: str | None, threads: int | None, layout: str | None) -> int:
    """Run one stage in this process (the child); prints one `MARK {json}` line on success."""
    try:
        if stage == CRASH_STAGE:
            os.kill(os.getpid(), signal.SIGSEGV)
        if stage == DEMO_STAGE:
            result = _stage_demo_model()
        else:
            from pocketomni.engine.model_folder import ModelFolder

            if stage not in _STAGES:
                raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(_STAGES)}")
            if folder is None:
                raise ValueError("--stage needs --folder")
            result = _STAGES[stage](ModelFolder.open(folder), threads, layout)
    except Exception:  # noqa: BLE001 -- any error is a failed stage, its traceback on stderr
        traceback.print_exc()
        return 1
    print(MARK + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------- the stages (parent side)


@dataclass
class StageResult:
    """How one stage's child process ended."""

    stage: str
    ok: bool
    returncode: int | None  # None: timed out
    signal: str | None  # "SIGSEGV", ... when a signal ended the child
    seconds: float  # wall time of the child
    figure: str  # the speed figure, or what went wrong
    stderr_tail: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # the child's result (value, unit, ...)

    def describe(self) -> str:
        """One line when it passed; otherwise the stage, how it ended and the child's stderr tail."""
        if self.ok:
            return f"{self.stage}: ok, {self.figure}"
        tail = "\n".join("    " + line for line in self.stderr_tail.splitlines())
        return f"{self.stage}: FAILED, {self.figure}" + (f"\n  stderr tail:\n{tail}" if tail else "")


def _tail(text: str | bytes | None, lines: int = 25) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def run_stage(stage: str, folder: str | os.PathLike[str] | None = None, *, threads: int | None = None,
              weight_layout: str | None = None, timeout: float = STAGE_TIMEOUT,
              env: dict[str, str] | None = None) -> StageResult:
    """Run one stage in a child process (`python -m pocketomni.cli.doctor --stage ...`) and report how it ended."""
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pocketomni.cli.doctor", "--stage", stage]
    for opt, v in (("--folder", folder), ("--threads", threads), ("--weight-layout", weight_layout)):
        if v is not None:
            cmd += [opt, str(v)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        return StageResult(stage, False, None, None, time.perf_counter() - t0,
                           f"timed out after {timeout:.0f} s", _tail(e.stderr))
    dt, rc, tail = time.perf_counter() - t0, p.returncode, _tail(p.stderr)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return StageResult(stage, False, rc, name, dt, f"crashed with {name} (exit code {rc})", tail)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    if rc != 0 or not lines:
        last = tail.splitlines()[-1] if tail else "no output"
        return StageResult(stage, False, rc, None, dt, f"failed (exit code {rc}): {last}", tail)
    data = json.loads(lines[-1][len(MARK):])
    return StageResult(stage, True, rc, None, dt, str(data.get("figure", "")), tail, data)


def run_smoke(stages: Sequence[str] | None = None, *, threads: int | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Find or build the demo model, then run each stage on it in a child process of its own."""
    say = progress or (lambda s: None)

    def one(name: str, folder: str | None) -> StageResult:
        say(f"  {'demo model' if name == DEMO_STAGE else name:<14} ")
        if name == DEMO_STAGE:
            r = run_stage(DEMO_STAGE, timeout=DEMO_TIMEOUT)
        elif folder is None:
            r = StageResult(name, False, None, None, 0.0, "skipped: no demo model")
        else:
            r = run_stage(name, folder, threads=threads)
        say(("ok    " if r.ok else "FAIL  ") + r.figure + "\n")
        if not r.ok and r.stderr_tail:
            say("".join(f"        | {line}\n" for line in r.stderr_tail.splitlines()))
        return r

    results = [one(DEMO_STAGE, None)]
    folder = results[0].data.get("folder")
    results += [one(name, folder) for name in (SMOKE_STAGES if stages is None else stages)]
    return {"model": folder, "passed": all(r.ok for r in results), "stages": [asdict(r) for r in results]}


# ---------------------------------------------------------------------- text


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _text(report: Report) -> list[str]:
    s, c, ll, g, npy, au, mem = (report[k] for k in ("system", "cpu", "llama.cpp", "guard", "numpy", "audio",
                                                     "memory"))
    feats = c["features"]
    has = ", ".join(k for k, v in feats.items() if v) or "none"
    lacks = ", ".join(k for k, v in feats.items() if not v) or "none"
    env = ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in npy["thread_env"].items())
    out = [
        "system",
        f"  pocketomni {s['pocketomni']}, {s['implementation']} {s['python']} ({s['executable']})",
        f"  platform: {s['platform']}",
        "  load: " + (" ".join(f"{x:.2f}" for x in s["load_average"]) + " (1, 5, 15 min; speed figures drop when it "
                      "exceeds the usable CPUs)" if s["load_average"] else "unknown"),
        "cpu",
        f"  model: {c['model']}",
        f"  machine: {c['machine']}, {s['usable_cpus']} usable CPUs (of {s['cpu_count']})",
        f"  has: {has}",
        f"  lacks: {lacks}",
        "llama.cpp",
        f"  version: llama-cpp-python {ll['version']}",
        f"  gpu: {'yes' if ll['gpu'] else 'none (CPU only)'}; devices: {', '.join(ll['devices']) or 'unknown'}",
        f"  extra buffer types: {', '.join(ll['extra_buffer_types']) or 'none'}",
        f"  system info: {ll['system_info']}",
        "guard",
        f"  layout: {g['layout']}",
        f"  reason: {g['reason']}",
        "numpy",
        f"  version: {npy['version']}",
        f"  blas: {npy['blas']}",
        f"  simd: {', '.join(npy['simd']) if npy['simd'] else 'unknown'}",
        f"  threads: {npy['usable_cpus']} usable CPUs; BLAS threads {npy['blas_threads'] or 'unknown (threadpoolctl reads them)'}; {env}",
        f"  idle spin: {npy['idle_spin']}",
        "audio",
        f"  input: {'; '.join(au['input']) or 'none'}",
        f"  output: {'; '.join(au['output']) or 'none'}",
    ]
    if au["note"] or not (au["input"] and au["output"]):
        out.append(f"  note: {au['note'] or 'no device is normal on a server; speech can still go to WAV files'}")
    out += ["memory", f"  available: {_size(mem['available_bytes'])} ({mem['available_bytes']} bytes)"]
    for m in mem["models"]:
        if "error" in m:
            out.append(f"  {m['path']}: cannot read it: {m['error']}")
            continue
        verdicts = []
        for k, mib in m["totals_mib"].items():
            fit = m["fits"][k]
            short = int(mib * 2**20) - (mem["available_bytes"] or 0)
            word = "unknown" if fit is None else "fits" if fit else f"short by {_size(short)}"
            verdicts.append(f"{k} {mib:.0f} MiB {word}")
        out.append(f"  {m['path']}: " + "; ".join(verdicts))
        for c in m["components"]:
            out.append(f"    {c['name']} ({c['when']}): {c['mib']:.0f} MiB, {c['note']}")
    out.append(f"  ({mem['estimate']})" if mem["models"] else "  no MODEL_DIR given (pocketomni doctor MODEL_DIR ...)")
    return out


# ---------------------------------------------------------------------- command line


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="model folders to check memory against")
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke test of each native stage")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the smoke (default: all)")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # child process: run one stage
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weight-layout", default=None, help=argparse.SUPPRESS)


def add_doctor_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `doctor` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "doctor", help="report what this machine gives PocketOmni and smoke-test each native stage",
        description="Print Python/platform, CPU features, llama.cpp's build and GPU backend, the CPU guard's "
                    "decision, numpy's BLAS, audio devices and memory against each MODEL_DIR; then run each native "
                    "stage on the demo model in a child process (pass/fail, speed). Paste it into bug reports.")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The `doctor` command: exit code 0 when every smoke passed (or none ran), 1 otherwise."""
    if args.stage is not None:
        return stage_main(args.stage, args.folder, args.threads, args.weight_layout)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    report = collect(args.model_dirs)
    show = err if args.json else out
    if not args.json:
        print("\n".join(_text(report)), file=out, flush=True)
    if not args.no_smoke:
        print("smoke", file=show, flush=True)

        def progress(text: str) -> None:
            show.write(text)
            show.flush()

        report["smoke"] = run_smoke(threads=args.threads, progress=progress)
        n = sum(not r["ok"] for r in report["smoke"]["stages"])
        print(f"result: {'every stage passed' if not n else f'{n} stage(s) FAILED'}", file=show, flush=True)
    if args.json:
        print(json.dumps(report, indent=2), file=out, flush=True)
    return 0 if args.no_smoke or report["smoke"]["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pocketomni.cli.doctor", description="pocketomni doctor")
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
