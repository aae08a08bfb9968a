"""One greedy spoken turn on a model folder, saved for comparison across machines (scripts/arm64_check.sh
runs it natively on x86-64 and under qemu-aarch64 on the same files).

    python scripts/arm64_compare.py run FOLDER OUT.npz       # image + audio in, text + speech out
    python scripts/arm64_compare.py compare A.npz B.npz [--wall SECONDS_A SECONDS_B] [--out FILE.json]

The turn is `pocketomni demo`'s first one (its picture and sound) with greedy decoding for both the
thinker (temperature 0) and the talker (SpeechOptions temperature 0), then a text-only follow-up.
`compare` fails (exit 1) unless the reply tokens of both turns are identical; it reports the speech
waveform's SNR of B against A (10 log10(sum a^2 / sum (a - b)^2), over the common length) and the
largest sample difference.
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
            t = time.perf_counter()
            for ev in chat.send_sync(text, max_tokens=max_tokens, temperature=0.0, **kw):
                if isinstance(ev, po.AudioChunk):
                    audio.append(ev.samples)
                elif isinstance(ev, po.Done):
                    done = ev
            assert done is not None
            record[f"tokens{i}"] = np.asarray(done.tokens, dtype=np.int64)
            record[f"text{i}"] = np.asarray(done.text)
            record[f"wave{i}"] = np.concatenate(audio) if audio else np.zeros(0, np.float32)
            record[f"seconds{i}"] = np.asarray(time.perf_counter() - t)
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


def compare(a_path: str, b_path: str, wall: list[float] | None, out: str | None) -> int:
    a, b = np.load(a_path), np.load(b_path)
    report: dict[str, object] = {"a": str(a["machine"]), "b": str(b["machine"])}
    ok = True
    for i in range(len(TURNS)):
        same = np.array_equal(a[f"tokens{i}"], b[f"tokens{i}"])
        ok &= bool(same)
        wa, wb = a[f"wave{i}"], b[f"wave{i}"]
        report[f"turn{i}"] = {
            "tokens_identical": bool(same), "tokens": int(a[f"tokens{i}"].size),
            "text_a": str(a[f"text{i}"]), "text_b": str(b[f"text{i}"]),
            "speech_samples": [int(wa.size), int(wb.size)],
            "speech_snr_db": snr_db(wa, wb) if wa.size and wb.size else None,
            "speech_max_abs_diff": float(np.max(np.abs(wa[: min(wa.size, wb.size)] - wb[: min(wa.size, wb.size)])))
            if wa.size and wb.size else None,
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
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    if not ok:
        print("FAIL: the reply tokens differ between the two runs", file=sys.stderr)
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
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.folder, args.out, args.threads, args.forced_from)
        return 0
    return compare(args.a, args.b, args.wall, args.out)


if __name__ == "__main__":
    sys.exit(main())
