"""End of user speech -> first reply token of a camera turn: sent whole at the end vs streamed while spoken.

    .venv/bin/python benchmarks/live_camera_latency.py --folder /work/synth/3b-fast --label 3b-fast
    .venv/bin/python benchmarks/live_camera_latency.py --report      # rebuild live_camera_latency.md / .png

Issue 15, section 2 (a live camera): a spoken question (live_turn_latency's espeak-ng clip, 20 ms
blocks at real-time pace) with a camera at the model's 2 fps (a moving synthetic scene, frames at the
pixel budget's size, as voice.camera.CameraRecorder stores them). Per repeat, alternated:
- `whole`: once the last block is in, `chat.send_sync(video=(frames, 2, clip, 16000))` (what a
  VoiceSession did before camera turns streamed);
- `live`: `chat.begin_turn(video=True)`, each block fed as it comes and frame k once k / 2 s of audio
  are in; `finish_sync()` after the last block.
Timed from the last block to the first reply token (max_tokens=1), text replies. Also recorded: how
many 2 s chunks were in the cache at the end of speech, and the vision encode time of one frame pair
(the real-time budget at 2 fps is 1 s per pair). Writes results/live_camera_latency-<label>.json, then
the table and plot from every such file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pocketomni as po  # before numpy: its OpenBLAS idle spin (pocketomni.blas_spin), as in an app

# isort: split
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from live_turn_latency import R, question, speak

MODES = ("whole", "live")


def scene(n: int, h: int, w: int) -> np.ndarray:
    """n frames of a square crossing a gradient (every frame differs: no encode can be shared)."""
    base = np.broadcast_to(np.linspace(40, 200, w, dtype=np.float32)[None, :, None], (h, w, 3)).astype(np.uint8)
    out = np.repeat(base[None], n, axis=0)
    for i in range(n):
        x = (i * 23) % (w - 60)
        out[i, h // 3 : h // 3 + 60, x : x + 60] = (220, 30, 30)
    return out


def turn(omni: Any, clip: np.ndarray, frames: np.ndarray, mode: str) -> dict[str, float]:
    chat = omni.chat(max_tokens=1)
    chunks = 0
    if mode == "whole":
        blocks: list[np.ndarray] = []
        speak(clip, blocks.append)
        t0 = time.perf_counter()
        events = chat.send_sync(video=(frames, 2.0, np.concatenate(blocks), R))
    else:
        live = chat.begin_turn(video=True)
        fed = [0, 0]  # samples, frames

        def block(x: np.ndarray) -> None:
            live.feed_audio(x)
            fed[0] += x.size
            while fed[1] < frames.shape[0] and fed[1] * R // 2 <= fed[0]:
                live.feed_video(frames[fed[1]])
                fed[1] += 1

        speak(clip, block)
        if fed[1] < frames.shape[0]:
            live.feed_video(frames[fed[1]:])
        chunks = live.windows_prefilled
        t0 = time.perf_counter()
        events = live.finish_sync()
    first = float("nan")
    for ev in events:
        if isinstance(ev, (po.TextDelta, po.Done)):
            first = time.perf_counter() - t0
            break
    events.close()
    chat.close()
    return {"first_token_s": first, "chunks_at_end": chunks}


def run(folder: Path, label: str, repeats: int, seconds: float, pixels: tuple[int, int]) -> dict[str, Any]:
    clip = question(seconds)
    frames = scene(max(2, 2 * int(clip.size / R)), *pixels)
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with po.Omni.load_sync(folder) as omni:
        media = omni.chat()._model.media
        media.encode_frames(frames[:2])  # warm-up: the vision projector loads
        t = time.perf_counter()
        media.encode_frames(frames[2:4])
        pair_s = time.perf_counter() - t
        turn(omni, clip[: 2 * R], frames[:4], "whole")  # warm-up: audio encoder, first decodes
        for r in range(repeats):
            for mode in MODES[r % 2:] + MODES[: r % 2]:
                runs[mode].append(turn(omni, clip, frames, mode))
                print(r, mode, runs[mode][-1], flush=True)
    load.append(os.getloadavg()[0])
    from suite_common import machine_info

    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in runs.items()}
    return {"label": label, "folder": str(folder), "clip_seconds": clip.size / R, "frames": list(frames.shape),
            "pair_encode_s": pair_s, "load": load, "when": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": machine_info()["cpu"],
            "runs": runs, "median": med}


def write_report() -> None:
    res = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("live_camera_latency-*.json"))]
    lines = ["# Camera turn: end of user speech -> first reply token", "",
             "Written by `benchmarks/live_camera_latency.py` (its docstring has the method). Medians.", "",
             ("| run | question | frames | one pair encoded (s) | whole at the end (s) | streamed (s) | ratio | "
              "chunks in before the end |"), "|---|---|---|---|---|---|---|---|"]
    for r in res:
        m = r["median"]
        t, h, w, _ = r["frames"]
        lines.append(f"| {r['label']} | {r['clip_seconds']:.1f} s | {t} x {w}x{h} | {r['pair_encode_s']:.2f} | "
                     f"{m['whole']['first_token_s']:.2f} | {m['live']['first_token_s']:.2f} | "
                     f"{m['live']['first_token_s'] / m['whole']['first_token_s']:.2f}x | "
                     f"{m['live']['chunks_at_end']:.0f} |")
    lines += [""] + [f"- {r['label']}: {r['cpu']}; {r['folder']}; {len(r['runs']['live'])} turns per mode; load "
                     f"average {r['load'][0]:.1f} -> {r['load'][-1]:.1f}; {r['when']}." for r in res] + [""]
    (RESULTS / "live_camera_latency.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(res), 3.5))
    for j, mode in enumerate(MODES):
        ax.bar([i + 0.4 * j for i in range(len(res))], [r["median"][mode]["first_token_s"] for r in res], 0.4,
               label=f"{mode} (end of speech -> first token)")
    ax.set_xticks([i + 0.2 for i in range(len(res))], [r["label"] for r in res])
    ax.set_ylabel("seconds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "live_camera_latency.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", default="308x392", help="frame HxW, multiples of 28 (default: the session's budget)")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        if a.folder is None:
            ap.error("--folder is required (or --report)")
        h, w = (int(v) for v in a.size.split("x"))
        res = run(a.folder, a.label or a.folder.name, a.repeats, a.seconds, (h, w))
        (RESULTS / f"live_camera_latency-{res['label']}.json").write_text(json.dumps(res, indent=1))
    write_report()
    print((RESULTS / "live_camera_latency.md").read_text())


if __name__ == "__main__":
    main()
