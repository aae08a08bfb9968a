"""One greedy spoken turn on a model folder, saved for comparison across machines (scripts/arm64_check.sh
runs it natively on x86-64 and under qemu-aarch64 on the same files).

    python scripts/arm64_compare.py run FOLDER OUT.npz       # image + audio in, text + speech out
    python scripts/arm64_compare.py compare A.npz B.npz [--wall SECONDS_A SECONDS_B] [--out FILE.json]
    python scripts/arm64_compare.py demo A.log B.log A_OUT B_OUT    # two `pocketomni demo` runs' replies

The turn is `pocketomni demo`'s first one (its picture and sound) with greedy decoding for both the
thinker (temperature 0) and the talker (SpeechOptions temperature 0), then a text-only follow-up.
Each turn keeps the thinker's logits at every reply step and the talker's codes. `compare` reports, per
turn, whether the reply tokens are identical and, where they first differ (both machines had the same
prefix up to there), A's top-1 margin over B's choice and the logit differences at that step; the same
for the talker's codes; and the speech waveform's SNR of B against A (10 log10(sum a^2 / sum (a - b)^2),
over the common length). It fails (exit 1) if a turn's tokens differ, unless --allow-near-ties and the
first difference is a near-tie: A's margin there below the largest logit difference measured between
the machines at the steps before it (where both saw the same tokens). scripts/arm64_stages.py shows
where the differences come from.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

TURNS = (("What do you see in this picture, and what do you hear in this sound?", True, 24),
         ("Say that again in one short sentence.", False, 12))
MAX_CODES = 100  # 2 s of speech (the random talker never ends by itself)
LOGIT_PROMPT = "<|im_start|>user\nWhat do you see in this picture, and what do you hear?<|im_end|>\n<|im_start|>assistant\n"
LOGIT_STEPS = 24


def thinker_logits(folder: str, threads: int, forced: np.ndarray | None) -> dict[str, np.ndarray]:
    """The thinker alone on a text prompt: greedy for LOGIT_STEPS tokens, or teacher-forced along
    `forced` (the other machine's greedy tokens), keeping every step's logits: shows how far the two
    machines' logits are apart, and how close the top two were wherever their argmax differs."""
    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel
    from pocketomni.engine.model_folder import ModelFolder

    path = ModelFolder.open(folder).thinker
    with LlamaModel(path, n_threads=threads) as model, LlamaContext(model, n_ctx=512, n_threads=threads) as ctx:
        prompt = model.tokenize(LOGIT_PROMPT)
        rows = [ctx.decode_tokens(prompt).logits[-1]]
        tokens = []
        for k in range(LOGIT_STEPS):
            nxt = int(forced[k]) if forced is not None else int(np.argmax(rows[-1]))
            tokens.append(nxt)
            rows.append(ctx.decode_tokens([nxt]).logits[-1])
    return {"logit_tokens": np.asarray(tokens, np.int64), "logits": np.stack(rows[:-1]).astype(np.float32)}


def run(folder: str, out: str, threads: int, forced_from: str | None = None) -> None:
    forced = np.load(forced_from)["logit_tokens"] if forced_from else None
    import pocketomni as po
    from pocketomni.audio.rates import OUTPUT_RATE
    from pocketomni.cli.demo import demo_audio, demo_image

    image, (pcm, rate) = demo_image(), demo_audio()
    record: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    with po.Omni.load_sync(folder, n_ctx=2048, n_threads=threads) as omni:
        load = time.perf_counter() - t0
        chat = omni.chat(speech=True, voice="Chelsie",
                         speech_options=po.SpeechOptions(temperature=0.0, max_codes=MAX_CODES, seed=0))
        for i, (text, media, max_tokens) in enumerate(TURNS):
            kw = {"images": [image], "audio": [(pcm, rate)]} if media else {}
            audio, done = [], None
            steps: list[np.ndarray] = []

            def keep(ids: np.ndarray, logits: np.ndarray, steps: list[np.ndarray] = steps) -> np.ndarray:
                steps.append(np.array(logits, np.float32, copy=True))
                return logits

            t = time.perf_counter()
            for ev in chat.send_sync(text, max_tokens=max_tokens, temperature=0.0, logits_processors=[keep], **kw):
                if isinstance(ev, po.AudioChunk):
                    audio.append(ev.samples)
                elif isinstance(ev, po.Done):
                    done = ev
            assert done is not None
            record[f"tokens{i}"] = np.asarray(done.tokens, dtype=np.int64)
            record[f"text{i}"] = np.asarray(done.text)
            record[f"wave{i}"] = np.concatenate(audio) if audio else np.zeros(0, np.float32)
            record[f"seconds{i}"] = np.asarray(time.perf_counter() - t)
            record[f"step_logits{i}"] = np.stack(steps)
            record[f"codes{i}"] = np.asarray(chat._last_speech.codes, np.int64)  # the turn's talker codes
            print(f"turn {i}: {len(done.tokens)} tokens, {record[f'wave{i}'].size / OUTPUT_RATE:.2f} s "
                  f"of speech, {record[f'seconds{i}']:.1f} s; text {done.text!r}", file=sys.stderr)
    record["load_seconds"] = np.asarray(load)
    record.update(thinker_logits(folder, threads, forced))
    record["machine"] = np.asarray(platform.machine())
    np.savez(out, **record)


def snr_db(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    err = float(np.sum((a - b) ** 2))
    return float("inf") if err == 0.0 else 10.0 * np.log10(float(np.sum(a**2)) / err)


def first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    n = min(a.size, b.size)
    d = np.nonzero(a[:n] != b[:n])[0]
    return int(d[0]) if d.size else (None if a.size == b.size else n)


def divergence(la: np.ndarray, lb: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> dict[str, object]:
    """Where the greedy tokens first differ (the logits there came from the same prefix on both machines):
    A's margin of its choice over B's, the logit differences there and at the shared steps before."""
    k = first_difference(ta, tb)
    shared = len(la) if k is None else k + 1  # steps whose prefix both machines shared
    d = np.abs(la[:shared].astype(np.float64) - lb[:shared].astype(np.float64))
    out: dict[str, object] = {"first_difference_at": k, "shared_steps": shared,
                              "max_abs_logit_diff_shared": float(d.max()),
                              "max_abs_logit_diff_before": float(d[:k].max()) if k else None}
    if k is not None and k < min(ta.size, tb.size):
        a, b = int(ta[k]), int(tb[k])
        out.update(margin_a=float(la[k, a] - la[k, b]), margin_b=float(lb[k, b] - lb[k, a]),
                   max_abs_logit_diff_at=float(d[k].max()), rms_logit_diff_at=float(np.sqrt(np.mean(d[k] ** 2))))
        out["near_tie"] = bool(k > 0 and out["margin_a"] < out["max_abs_logit_diff_before"])  # type: ignore[operator]
    return out


def compare(a_path: str, b_path: str, wall: list[float] | None, out: str | None, allow_near_ties: bool) -> int:
    a, b = np.load(a_path), np.load(b_path)
    report: dict[str, object] = {"a": str(a["machine"]), "b": str(b["machine"])}
    ok = True
    for i in range(len(TURNS)):
        ta, tb = a[f"tokens{i}"], b[f"tokens{i}"]
        same = np.array_equal(ta, tb)
        div = divergence(a[f"step_logits{i}"], b[f"step_logits{i}"], ta, tb)
        ok &= bool(same or (allow_near_ties and div.get("near_tie")))
        wa, wb = a[f"wave{i}"], b[f"wave{i}"]
        n = min(wa.size, wb.size)
        report[f"turn{i}"] = {
            "tokens_identical": bool(same), "tokens": [int(ta.size), int(tb.size)], "thinker": div,
            "text_a": str(a[f"text{i}"]), "text_b": str(b[f"text{i}"]),
            "codes_identical": bool(np.array_equal(a[f"codes{i}"], b[f"codes{i}"])),
            "codes": [int(a[f"codes{i}"].size), int(b[f"codes{i}"].size)],
            "codes_first_difference_at": first_difference(a[f"codes{i}"], b[f"codes{i}"]),
            "speech_samples": [int(wa.size), int(wb.size)],
            "speech_snr_db": snr_db(wa, wb) if n else None,
            "speech_max_abs_diff": float(np.max(np.abs(wa[:n] - wb[:n]))) if n else None,
            "seconds": [float(a[f"seconds{i}"]), float(b[f"seconds{i}"])],
        }
    la, lb = a["logits"].astype(np.float64), b["logits"].astype(np.float64)
    top2 = np.sort(la, axis=1)[:, -2:]
    flips = np.nonzero(np.argmax(la, axis=1) != np.argmax(lb, axis=1))[0]
    report["thinker_logits"] = {
        "steps": int(la.shape[0]), "teacher_forced": bool(np.array_equal(a["logit_tokens"], b["logit_tokens"])),
        "max_abs_diff": float(np.max(np.abs(la - lb))), "logit_std": float(np.std(la)),
        "argmax_flips_at": flips.tolist(),
        "top1_top2_margin_a_at_flips": [float(top2[i, 1] - top2[i, 0]) for i in flips],
        "median_top1_top2_margin_a": float(np.median(top2[:, 1] - top2[:, 0])),
    }
    report["load_seconds"] = [float(a["load_seconds"]), float(b["load_seconds"])]
    if wall:
        report["wall_seconds"] = wall
    report["verdict"] = verdict(report)
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    print(report["verdict"], file=sys.stderr)
    return 0 if ok else 1


def verdict(report: dict[str, object]) -> str:
    lines = []
    for i in range(len(TURNS)):
        t = report[f"turn{i}"]
        assert isinstance(t, dict)
        d = t["thinker"]
        if t["tokens_identical"]:
            lines.append(f"turn {i}: tokens identical ({t['tokens'][0]}); largest logit difference "
                         f"{d['max_abs_logit_diff_shared']:.4f}")
        else:
            lines.append(f"turn {i}: tokens differ from step {d['first_difference_at']} on: A's margin there "
                         f"{d.get('margin_a', float('nan')):.4f}, logit differences at the shared steps before it up to "
                         f"{d['max_abs_logit_diff_before'] or 0.0:.4f}: "
                         + ("a near-tie" if d.get("near_tie") else "NOT a near-tie"))
        lines.append(f"  codes {'identical' if t['codes_identical'] else 'differ from code ' + str(t['codes_first_difference_at'])}"
                     f", speech SNR {t['speech_snr_db']:.1f} dB")
    return "\n".join(lines)


def demo(logs: list[str], outs: list[str]) -> int:
    """Two `pocketomni demo` runs (sampled with fixed seeds): is each reply's text the same, and the
    spoken replies' SNR. Exit 1 if a reply's text differs or a run has no replies."""
    import wave

    def load_wav(path: Path) -> np.ndarray:  # the demo's 16-bit mono files (so SNR tops out near 90 dB)
        with wave.open(str(path), "rb") as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32767.0

    replies = [[ln for ln in Path(p).read_text(encoding="utf-8").splitlines() if ln.startswith("assistant: ")]
               for p in logs]
    ok = bool(replies[0]) and len(replies[0]) == len(replies[1])
    for i, (ra, rb) in enumerate(zip(*replies, strict=False), 1):
        same = ra == rb
        ok &= same
        line = f"demo turn {i}: reply text {'identical' if same else 'DIFFERS'}"
        wavs = [Path(o) / f"demo-reply-{i}.wav" for o in outs]
        if all(w.is_file() for w in wavs):
            line += f"; speech SNR {snr_db(load_wav(wavs[0]), load_wav(wavs[1])):.1f} dB"
        print(line + (f"\n  a: {ra}\n  b: {rb}" if not same else ""))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("folder")
    r.add_argument("out")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--forced-from", default=None, help="teacher-force the thinker along this run's greedy tokens")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--wall", type=float, nargs=2, default=None)
    c.add_argument("--out", default=None)
    c.add_argument("--allow-near-ties", action="store_true",
                   help="pass when a turn's tokens first differ at a near-tie (see the module doc)")
    d = sub.add_parser("demo")
    d.add_argument("logs", nargs=2)
    d.add_argument("outs", nargs=2)
    args = ap.parse_args()
    if args.cmd == "demo":
        return demo(args.logs, args.outs)
    if args.cmd == "run":
        run(args.folder, args.out, args.threads, args.forced_from)
        return 0
    return compare(args.a, args.b, args.wall, args.out, args.allow_near_ties)


if __name__ == "__main__":
    sys.exit(main())
