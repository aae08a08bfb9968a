"""Load test of `pocketomni serve` on 127.0.0.1: concurrent clients, nothing lost or mixed up, latency.

Usage:
    .venv/bin/python benchmarks/serve_load.py --tiny                   # tiny test checkpoint (built if needed)
    .venv/bin/python benchmarks/serve_load.py --folder DIR [--clients 8 --requests 20]

Starts `pocketomni serve` as a child process on a free loopback port (default limits: 2 requests
generate at once, the rest queue) and drives it with the official openai client:
1. alone: each of the `--requests` distinct requests once, one after another (the reference replies
   and the uncontended latency);
2. load: `--clients` threads each send all of them (each client starting at a different one), at once.
The request mix cycles through: greedy text, sampled text with its own seed, image + text, audio +
text, and a streamed spoken reply (pcm16 deltas) with its own seed. Every reply under load must equal
its reply alone (text, and the PCM samples of spoken replies): a reply that is missing, failed, or
differs counts as lost / mismatched. Reported: p50/p99 latency per phase, requests/s and reply
tokens/s under load, time to first audio delta over HTTP vs the SDK in-process for the same request
(alternating rounds after the load phase),
and the server's CPU seconds per request in each phase (less noisy than wall time on a shared machine).
Results: benchmarks/results/serve_load.{json,md,png}. Bounded: (1 + clients) x requests requests,
each with a client timeout; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("text", "sampled", "image", "audio", "speech")
SPEECH_CODES = 60


def tiny_folder() -> Path:
    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))
    import conftest
    from omni_fixtures import build_checkpoint

    return conftest._convert_cached(build_checkpoint("base"), "f32", "f32")


def _png(seed: int) -> str:
    from PIL import Image

    img = (np.random.default_rng(seed).random((56, 84, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav(freq: float) -> str:
    t = np.arange(16000) / 16000
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.round(0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def make_requests(n: int) -> list[dict[str, Any]]:
    """n distinct requests, the kinds in turn; each names its index so a mix-up shows in the reply."""
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        text = f"Request {i}: tell me about the number {i * 7 + 3}."
        content: Any = text
        kw: dict[str, Any] = {"max_tokens": 12}
        if kind == "sampled":
            kw.update(temperature=0.8, top_p=0.95, seed=1000 + i)
        elif kind == "image":
            content = [{"type": "image_url", "image_url": {"url": _png(i)}}, {"type": "text", "text": text}]
        elif kind == "audio":
            content = [{"type": "input_audio", "input_audio": {"data": _wav(200 + 10 * i), "format": "wav"}},
                       {"type": "text", "text": text}]
        elif kind == "speech":
            kw.update(stream=True, seed=2000 + i, modalities=["text", "audio"],
                      audio={"voice": "Chelsie", "format": "pcm16"},
                      extra_body={"speech_options": {"max_codes": SPEECH_CODES}})
        out.append({"kind": kind, "messages": [{"role": "user", "content": content}], "kw": kw})
    return out


def run_one(client: Any, model: str, req: dict[str, Any]) -> dict[str, Any]:
    """Send one request; its reply (text, PCM digest) and timings."""
    t0 = time.perf_counter()
    first = first_audio = 0.0
    try:
        if req["kw"].get("stream"):
            text, pcm, tokens = [], [], 0
            for ch in client.chat.completions.create(model=model, messages=req["messages"], **req["kw"]):
                if not ch.choices:
                    continue
                a = ch.choices[0].delta.audio
                if a is not None and (a.transcript or a.data):
                    first = first or time.perf_counter() - t0
                    if a.transcript:
                        text.append(a.transcript)
                        tokens += 1
                    if a.data:
                        first_audio = first_audio or time.perf_counter() - t0
                        pcm.append(base64.b64decode(a.data))
            reply = {"text": "".join(text), "pcm_sha": _sha(b"".join(pcm)), "pcm_bytes": sum(map(len, pcm))}
        else:
            out = client.chat.completions.create(model=model, messages=req["messages"], **req["kw"])
            reply = {"text": out.choices[0].message.content}
            tokens = out.usage.completion_tokens
        return {"ok": True, "reply": reply, "latency": time.perf_counter() - t0, "ttft": first,
                "ttfa": first_audio, "tokens": tokens}
    except Exception as e:  # noqa: BLE001 -- a failed request is counted as lost
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "latency": time.perf_counter() - t0}


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, threads: int, max_active: int) -> tuple[subprocess.Popen[str], int]:
    import openai

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketomni", "serve", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--model-name", "bench", "--threads", str(threads),
                             "--max-active", str(max_active), "--max-queue", "64", "--log-level", "warning"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=10)
    deadline = time.monotonic() + 180
    while True:
        try:
            c.models.list()
            return proc, port
        except openai.APIConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the server did not start: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.2)


def compare_ttfa(client: Any, folder: Path, threads: int, req: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Time to first audio of one spoken request over HTTP (first pcm16 delta at the client) and through
    the SDK in this process (first AudioChunk), alternating so both see the same machine load."""
    import pocketomni as po

    http, local = [], []
    with po.Omni.load_sync(folder, n_threads=threads) as omni:
        for k in range(rounds + 1):  # the first round warms both up
            h = run_one(client, "bench", req)["ttfa"]
            chat = omni.chat(speech=True, voice="Chelsie",
                             speech_options=po.SpeechOptions(seed=req["kw"]["seed"], max_codes=SPEECH_CODES))
            t0 = time.perf_counter()
            first = 0.0
            for ev in chat.send_sync(messages=req["messages"], max_tokens=req["kw"]["max_tokens"]):
                if isinstance(ev, po.AudioChunk) and not first:
                    first = time.perf_counter() - t0
            chat.close()
            if k:
                http.append(h)
                local.append(first)
    return {"http": http, "in_process": local, "http_median": float(np.median(http)),
            "in_process_median": float(np.median(local)), "rounds": rounds}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run(folder: Path, clients: int, n_requests: int, threads: int, max_active: int, timeout: float) -> dict[str, Any]:
    import openai

    reqs = make_requests(n_requests)
    proc, port = start_server(folder, threads, max_active)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=timeout)
        run_one(client, "bench", reqs[min(4, n_requests - 1)])  # warm-up (loads the talker on first speech)
        cpu0 = _cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        alone = [run_one(client, "bench", r) for r in reqs]
        alone_s, alone_cpu = time.perf_counter() - t0, _cpu_seconds(proc.pid) - cpu0
        if not all(a["ok"] for a in alone):
            raise SystemExit(f"a request failed when run alone: {[a for a in alone if not a['ok']][:2]}")

        def client_run(c: int) -> list[tuple[int, dict[str, Any]]]:
            cl = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=timeout)
            order = [(c * 3 + j) % n_requests for j in range(n_requests)]  # clients start at different requests
            return [(i, run_one(cl, "bench", reqs[i])) for i in order]

        barrier_cpu = _cpu_seconds(proc.pid)
        t1 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            per_client = list(pool.map(client_run, range(clients)))
        load_s, load_cpu = time.perf_counter() - t1, _cpu_seconds(proc.pid) - barrier_cpu
        speech_req = next((r for r in reqs if r["kind"] == "speech"), None)
        ttfa = None if speech_req is None else compare_ttfa(client, folder, threads, speech_req, 3)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    results = [x for rs in per_client for x in rs]
    lost = [r for _, r in results if not r["ok"]]
    mismatched = [(i, r["reply"], alone[i]["reply"]) for i, r in results if r["ok"] and r["reply"] != alone[i]["reply"]]
    ok = [(i, r) for i, r in results if r["ok"]]
    return {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "config": {"clients": clients, "requests_per_client": n_requests, "server_threads": threads,
                   "max_active": max_active, "model": folder.name, "speech_codes": SPEECH_CODES},
        "sent": len(results), "lost": len(lost), "mismatched": len(mismatched),
        "lost_examples": [r["error"] for r in lost[:3]], "mismatch_examples": [str(m)[:300] for m in mismatched[:3]],
        "alone": {"seconds": alone_s, "cpu_seconds": alone_cpu, "latency": [a["latency"] for a in alone],
                  "p50": pct([a["latency"] for a in alone], 50), "p99": pct([a["latency"] for a in alone], 99)},
        "load": {"seconds": load_s, "cpu_seconds": load_cpu, "latency": [r["latency"] for _, r in ok],
                 "p50": pct([r["latency"] for _, r in ok], 50), "p99": pct([r["latency"] for _, r in ok], 99),
                 "requests_per_s": len(ok) / load_s, "reply_tokens_per_s": sum(r["tokens"] for _, r in ok) / load_s,
                 "by_kind": {k: {"p50": pct([r["latency"] for i, r in ok if reqs[i]["kind"] == k], 50),
                                 "p99": pct([r["latency"] for i, r in ok if reqs[i]["kind"] == k], 99)}
                             for k in KINDS}},
        "ttfa": ttfa,
    }


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def write_report(r: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(r, indent=1))
    a, ld, c = r["alone"], r["load"], r["config"]
    n_alone = len(a["latency"])
    lines = [
        "# `pocketomni serve` load test", "",
        ("Written by `benchmarks/serve_load.py` (see its docstring). Server and clients share one machine "
        f"({r['machine']['cpu']}, {r['machine']['cores']} cores, load average {r['machine']['load_avg'][0]:.1f} at the "
        f"start, shared with other work): wall-clock figures are noisy; CPU seconds per request are steadier."), "",
        (f"Model `{c['model']}`, server `--threads {c['server_threads']} --max-active {c['max_active']}`; "
        f"{c['clients']} clients x {c['requests_per_client']} requests (text, sampled text, image, audio in, "
        f"streamed speech of {c['speech_codes']} codes); {r['date']}."), "",
        (f"**Sent {r['sent']}, lost {r['lost']}, mismatched {r['mismatched']}** (every reply under load compared "
        "with the same request run alone: text, and the PCM of spoken replies)."), "",
        "| phase | requests | wall s | p50 latency | p99 latency | requests/s | server CPU s / request |",
        "|---|---|---|---|---|---|---|",
        (f"| alone (one at a time) | {n_alone} | {a['seconds']:.1f} | {a['p50'] * 1000:.0f} ms | {a['p99'] * 1000:.0f} ms | "
        f"{n_alone / a['seconds']:.2f} | {a['cpu_seconds'] / n_alone:.3f} |"),
        (f"| load ({c['clients']} clients) | {r['sent']} | {ld['seconds']:.1f} | {ld['p50'] * 1000:.0f} ms | "
        f"{ld['p99'] * 1000:.0f} ms | {ld['requests_per_s']:.2f} | {ld['cpu_seconds'] / max(r['sent'], 1):.3f} |"),
        "", (f"Under load: {ld['reply_tokens_per_s']:.1f} reply tokens/s; throughput {ld['requests_per_s'] * a['seconds'] / n_alone:.2f}x "
        "the one-at-a-time rate (same machine, same run)."), "",
        "| kind | p50 under load | p99 under load |", "|---|---|---|",
        *[f"| {k} | {v['p50'] * 1000:.0f} ms | {v['p99'] * 1000:.0f} ms |" for k, v in ld["by_kind"].items()],
    ]
    if r.get("ttfa"):
        t = r["ttfa"]
        lines += ["", (f"Time to first audio of one spoken reply, median of {t['rounds']} alternating rounds after a warm-up "
                  f"(idle server): over HTTP (first pcm16 delta at the client) {t['http_median'] * 1000:.0f} ms; "
                  f"in-process SDK (first AudioChunk) {t['in_process_median'] * 1000:.0f} ms; "
                  f"ratio {t['http_median'] / t['in_process_median']:.2f}x.")]
    if r["lost_examples"] or r["mismatch_examples"]:
        lines += ["", "Failures:", *[f"- {e}" for e in r["lost_examples"] + r["mismatch_examples"]]]
    (out / "serve_load.md").write_text("\n".join(lines) + "\n")
    plot(r, out / "serve_load.png")


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name in ("alone", "load"):
        xs = np.sort(np.asarray(r[name]["latency"]) * 1000)
        ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=f"{name} (n={xs.size})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("request latency CDF")
    ax.legend()
    ax = axes[1]
    kinds = list(r["load"]["by_kind"])
    x = np.arange(len(kinds))
    ax.bar(x - 0.2, [r["load"]["by_kind"][k]["p50"] * 1000 for k in kinds], 0.4, label="p50")
    ax.bar(x + 0.2, [r["load"]["by_kind"][k]["p99"] * 1000 for k in kinds], 0.4, label="p99")
    ax.set_xticks(x, kinds)
    ax.set_ylabel("ms")
    ax.set_title(f"latency under load by kind ({r['config']['clients']} clients)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="use the tiny test checkpoint (converted f32)")
    ap.add_argument("--folder", type=Path, help="a model folder")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20, help="requests per client (= distinct requests)")
    ap.add_argument("--threads", type=int, default=1, help="server CPU threads")
    ap.add_argument("--max-active", type=int, default=2, help="the server's --max-active")
    ap.add_argument("--timeout", type=float, default=300.0, help="client timeout per request, seconds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if not (a.tiny or a.folder):
        ap.error("pass --tiny or --folder DIR")
    if not (1 <= a.clients <= 64 and 1 <= a.requests <= 200):
        ap.error("keep the load bounded: 1..64 clients, 1..200 requests each")
    folder = tiny_folder() if a.tiny else a.folder
    r = run(folder, a.clients, a.requests, a.threads, a.max_active, a.timeout)
    write_report(r, a.out)
    print(f"sent {r['sent']}, lost {r['lost']}, mismatched {r['mismatched']}; wrote {a.out / 'serve_load.md'}")
    sys.exit(0 if r["lost"] == 0 and r["mismatched"] == 0 else 1)


if __name__ == "__main__":
    main()
