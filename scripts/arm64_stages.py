"""Stage by stage: where two machines' runs of the image + audio turn part ways (scripts/arm64_check.sh
runs it natively on x86-64, then under qemu-aarch64 on the same model files with --reference).

    python scripts/arm64_stages.py run FOLDER OUT.npz [--reference X86.npz]
    python scripts/arm64_stages.py compare X86.npz ARM.npz [--out FILE.json]

`run` does arm64_compare.py's first turn (demo picture + sound, greedy) with hooks on the SDK's stages:
the prepared pixels and 16 kHz samples, the log-mel of every 2 s window, the audio encoder's and mtmd's
embedding rows, the prompt ids / kinds / TMRoPE positions, the thinker's logits at the prefill and at
every reply step, the talker's codes and the thinker's hidden states (the talker's input). With
--reference, the thinker is teacher-forced along the reference's tokens, so every step of both runs
sees the same prefix and the logits compare step by step, and two more passes isolate the parts:
  xfeed  the same turn with the REFERENCE's media rows put into this machine's thinker (text only):
         the thinker's own arithmetic, without the encoders' differences;
  t2w    token2wav on the REFERENCE's codes (and the vocoder on the reference's mel): the
         waveform's difference that token2wav's numerics alone make.
`compare` prints per-stage relative differences (max |a - b| / max |a|), the first step where the
greedy choice differs, the top-1 / top-2 margin there and the logit difference measured at it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TEXT = "What do you see in this picture, and what do you hear in this sound?"  # = arm64_compare.TURNS[0]
MAX_TOKENS = 24
MAX_CODES = 100
T2W_CODES = 50  # codes rendered in the t2w pass (1 s of speech: token2wav is the slow part under qemu)
SEED = 0


class Recorder:
    """Hooks on the SDK's stage functions (class attributes patched for this process only)."""

    def __init__(self, media_from: dict[str, np.ndarray] | None = None) -> None:
        self.rec: dict[str, Any] = {"mel": [], "step_logits": [], "talker_rows": []}
        self.media_from = media_from

    def install(self) -> None:
        import pocketomni.engine.encoders as enc
        from pocketomni.backend.sampling import StreamSampler
        from pocketomni.engine.thinker import ThinkerSession

        me = self
        prepare, encode_all, log_mel, prefill = (enc.MediaEncoders.prepare, enc.MediaEncoders.encode_all,
                                                 enc.log_mel, ThinkerSession.prefill)
        talker_sample = StreamSampler.__call__

        def prepare_hook(self: Any, part: Any) -> Any:
            rec = me.rec
            item = prepare(self, part)
            if item.image is not None:
                rec["pixels"] = item.image.pixels.copy()
            if item.audio is not None:
                rec["samples"] = item.audio.samples.copy()
            return item

        def log_mel_hook(samples: np.ndarray) -> np.ndarray:
            mel = log_mel(samples)
            me.rec["mel"].append(np.array(mel, copy=True))
            return mel

        def encode_all_hook(self: Any, items: Any, *a: Any, **kw: Any) -> dict[int, np.ndarray]:
            rows = encode_all(self, items, *a, **kw)
            for kind, name in ((1, "image_rows"), (2, "audio_rows")):
                if kind in rows:
                    me.rec[name] = rows[kind].copy()
                    if me.media_from is not None:
                        rows[kind] = me.media_from[name].astype(np.float32)
            return rows

        def prefill_hook(self: Any, layout: Any, media: Any, *a: Any, **kw: Any) -> np.ndarray:
            logits = prefill(self, layout, media, *a, **kw)
            rec = me.rec
            rec["input_ids"], rec["kinds"] = layout.input_ids.copy(), layout.kinds.copy()
            rec["positions"] = layout.positions.copy()
            return logits

        def talker_sample_hook(self: Any, logits: np.ndarray) -> int:  # the talker's rows as sampled
            code = talker_sample(self, logits)
            me.rec["talker_rows"].append(self.buf.copy())  # after the repetition penalty and suppression
            return code

        enc.MediaEncoders.prepare = prepare_hook
        enc.MediaEncoders.encode_all = encode_all_hook
        enc.log_mel = log_mel_hook
        ThinkerSession.prefill = prefill_hook
        StreamSampler.__call__ = talker_sample_hook

    def processor(self, forced: np.ndarray | None) -> Any:
        """A logits processor keeping each step's logits; with `forced`, only the forced token stays."""
        steps = self.rec["step_logits"]

        def proc(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
            steps.append(np.array(logits, np.float32, copy=True))
            if forced is None:
                return logits
            k = len(steps) - 1
            out = np.full_like(logits, -np.inf)
            out[int(forced[k])] = 0.0
            return out

        return proc


def _turn(omni: Any, po: Any, rec: Recorder, forced: np.ndarray | None, speech: bool) -> dict[str, np.ndarray]:
    from pocketomni.cli.demo import demo_audio, demo_image

    image, (pcm, rate) = demo_image(), demo_audio()
    if speech:
        chat = omni.chat(speech=True, voice="Chelsie",
                         speech_options=po.SpeechOptions(temperature=0.0, max_codes=MAX_CODES, seed=SEED))
    else:  # the same prompt as the speech chat's (its system prompt), text out only
        from pocketomni.engine.speech import SPEECH_SYSTEM_PROMPT

        chat = omni.chat(system=SPEECH_SYSTEM_PROMPT)
    audio, done = [], None
    n = len(forced) if forced is not None else MAX_TOKENS
    for ev in chat.send_sync(TEXT, images=[image], audio=[(pcm, rate)], max_tokens=n, temperature=0.0,
                             logits_processors=[rec.processor(forced)]):
        if isinstance(ev, po.AudioChunk):
            audio.append(ev.samples)
        elif isinstance(ev, po.Done):
            done = ev
    assert done is not None
    out = {"tokens": np.asarray(done.tokens, np.int64)}
    if speech:
        talk = chat._last_speech  # the turn's spoken reply: its talker codes
        sess = chat._session
        out["codes"] = np.asarray(talk.codes, np.int64)
        out["hidden"] = np.asarray(sess.history.hidden, np.float32)  # H of prompt + reply (the talker's input)
        out["wave"] = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    chat.close()
    return out


def run(folder: str, out: str, threads: int, reference: str | None) -> None:
    import pocketomni as po
    from pocketomni.token2wav import get_preset

    ref = dict(np.load(reference)) if reference else None
    forced = ref["tokens"] if ref else None
    record: dict[str, Any] = {"machine": np.asarray(platform.machine())}
    rec = Recorder()
    rec.install()
    with po.Omni.load_sync(folder, n_ctx=2048, n_threads=threads) as omni:
        t = time.perf_counter()
        record.update(_turn(omni, po, rec, forced, speech=True))
        record["turn_seconds"] = np.asarray(time.perf_counter() - t)
        record.update({k: v for k, v in rec.rec.items() if k not in ("mel", "step_logits", "talker_rows")})
        record["talker_rows"] = np.stack(rec.rec["talker_rows"])
        record["mel_windows"] = np.stack(rec.rec["mel"])
        record["logits"] = np.stack(rec.rec["step_logits"])
        if ref is not None:  # xfeed: the reference's media rows into this machine's thinker
            rec.rec = {"mel": [], "step_logits": [], "talker_rows": []}
            rec.media_from = ref
            _turn(omni, po, rec, forced, speech=False)
            record["xfeed_logits"] = np.stack(rec.rec["step_logits"])
        # t2w: token2wav on fixed codes (the reference's when given), the first T2W_CODES in range
        eng = omni.runtime.speech_engine()
        t2w = eng.token2wav
        codes = (ref if ref is not None else record)["codes"]
        codes = codes[(codes >= 0) & (codes <= t2w.dit.cfg.num_embeds)][:T2W_CODES]
        spk = eng.speaker("Chelsie")
        t = time.perf_counter()
        mel = t2w.mel(codes, spk, get_preset("fast"), seed=SEED)
        record["t2w_codes"], record["t2w_mel"] = codes, mel.astype(np.float32)
        record["t2w_wave"] = t2w.vocoder.vocode(ref["t2w_mel"] if ref is not None else mel).astype(np.float32)
        record["t2w_seconds"] = np.asarray(time.perf_counter() - t)
    np.savez(out, **record)
    print(f"{platform.machine()}: {len(record['tokens'])} tokens, {record['codes'].size} codes, "
          f"turn {float(record['turn_seconds']):.1f} s, t2w {float(record['t2w_seconds']):.1f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- compare

def rel(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """max |a - b| and that over max |a| (float64), plus whether they are bit-identical."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    scale = float(np.max(np.abs(a64))) if a64.size else 0.0
    return {"identical": bool(np.array_equal(a, b)), "max_abs_diff": d, "rel_diff": d / scale if scale else 0.0}


def snr_db(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    a64, b64 = a[:n].astype(np.float64), b[:n].astype(np.float64)
    err = float(np.sum((a64 - b64) ** 2))
    return float("inf") if err == 0.0 else 10.0 * float(np.log10(np.sum(a64**2) / err))


def step_table(la: np.ndarray, lb: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    """Per step: the reference's top-1 / top-2 margin, the largest logit difference, and whether the
    other machine's argmax differs (both saw the same prefix: teacher-forced)."""
    la, lb = la.astype(np.float64), lb.astype(np.float64)
    top = np.argsort(la, axis=1)[:, -2:]
    margin = la[np.arange(len(la)), top[:, 1]] - la[np.arange(len(la)), top[:, 0]]
    flips = np.nonzero(np.argmax(la, 1) != np.argmax(lb, 1))[0].tolist()
    out: dict[str, Any] = {
        "steps": len(la), "max_abs_logit_diff_per_step": np.max(np.abs(la - lb), axis=1).round(6).tolist(),
        "margin_a_per_step": margin.round(6).tolist(), "argmax_flips_at": flips,
        "logit_std": float(np.std(la)),
    }
    for k in flips[:3]:
        a_tok, b_tok = int(np.argmax(la[k])), int(np.argmax(lb[k]))
        out[f"flip{k}"] = {
            "a_token": a_tok, "b_token": b_tok, "margin_a": float(la[k, a_tok] - la[k, b_tok]),
            "margin_b": float(lb[k, b_tok] - lb[k, a_tok]),
            "diff_of_the_two_logits": [float(lb[k, a_tok] - la[k, a_tok]), float(lb[k, b_tok] - la[k, b_tok])],
            "max_abs_logit_diff": float(np.max(np.abs(la[k] - lb[k]))),
            "rms_logit_diff": float(np.sqrt(np.mean((la[k] - lb[k]) ** 2))),
        }
    del tokens
    return out


def talker_table(a: Any, b: Any) -> dict[str, Any]:
    """Codes of both runs (same reply tokens: teacher-forced) and, where they first differ, the margin
    of the talker's row (after its repetition penalty) on `a` and the difference of the two rows."""
    ca, cb = a["codes"], b["codes"]
    n = min(ca.size, cb.size)
    diff = np.nonzero(ca[:n] != cb[:n])[0]
    ra, rb = a["talker_rows"].astype(np.float64), b["talker_rows"].astype(np.float64)
    m = min(len(ra), len(rb), (int(diff[0]) + 1) if diff.size else n)
    fin = np.isfinite(ra[:m]) & np.isfinite(rb[:m])
    with np.errstate(invalid="ignore"):  # -inf - -inf at the suppressed ids
        d = np.where(fin, np.abs(ra[:m] - rb[:m]), 0.0)
    out: dict[str, Any] = {
        "codes": [int(ca.size), int(cb.size)], "identical": bool(np.array_equal(ca, cb)),
        "first_code_difference_at": int(diff[0]) if diff.size else None, "codes_differing": int(diff.size),
        "hidden_rel_diff": rel(a["hidden"], b["hidden"])["rel_diff"],
        "row_max_abs_diff_up_to_first_difference": float(d.max()) if d.size else 0.0,
        "row_std": float(np.std(ra[0][np.isfinite(ra[0])])),
        "wave_snr_db": snr_db(a["wave"], b["wave"]),
    }
    if diff.size:
        k = int(diff[0])
        out["at_first_difference"] = {
            "code_a": int(ca[k]), "code_b": int(cb[k]), "margin_a": float(ra[k, ca[k]] - ra[k, cb[k]]),
            "margin_b": float(rb[k, cb[k]] - rb[k, ca[k]]), "row_max_abs_diff": float(d[k].max()),
            "row_rms_diff": float(np.sqrt(np.mean(d[k][fin[k]] ** 2))),
        }
        # the waveform before and after the codes part ways (2 codes of lead for the DiT's context)
        cut = max(0, k - 2) * a["wave"].size // max(1, ca.size)
        out["wave_snr_db_before_after"] = [snr_db(a["wave"][:cut], b["wave"][:cut]),
                                           snr_db(a["wave"][cut:], b["wave"][cut:])]
    return out


def compare(a_path: str, b_path: str, out: str | None) -> int:
    a, b = np.load(a_path), np.load(b_path)
    r: dict[str, Any] = {"a": str(a["machine"]), "b": str(b["machine"])}
    st: dict[str, Any] = {}
    for name in ("pixels", "samples", "mel_windows", "image_rows", "audio_rows", "input_ids", "kinds", "positions"):
        st[name] = rel(a[name], b[name]) | {"shape": list(a[name].shape)}
    st["prefill_logits"] = rel(a["logits"][0], b["logits"][0])
    n_prompt = a["input_ids"].size
    ha, hb = a["hidden"][:n_prompt], b["hidden"][:n_prompt]
    st["hidden_prompt"] = rel(ha, hb)
    r["stages"] = st
    r["teacher_forced"] = step_table(a["logits"], b["logits"], a["tokens"])
    if "xfeed_logits" in b:
        x = step_table(a["logits"], b["xfeed_logits"], a["tokens"])
        r["thinker_only_same_media_rows"] = {k: v for k, v in x.items() if k != "margin_a_per_step"}
    r["talker"] = talker_table(a, b)
    r["token2wav_same_codes"] = {
        "codes": int(a["t2w_codes"].size), "codes_identical": bool(np.array_equal(a["t2w_codes"], b["t2w_codes"])),
        "dit_mel": rel(a["t2w_mel"], b["t2w_mel"]),
        "vocoder_same_mel_snr_db": snr_db(a["t2w_wave"], b["t2w_wave"]),
        "seconds": [float(a["t2w_seconds"]), float(b["t2w_seconds"])],
    }
    r["turn_seconds"] = [float(a["turn_seconds"]), float(b["turn_seconds"])]
    text = json.dumps(r, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("folder")
    r.add_argument("out")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--reference", default=None, help="the other machine's run: teacher-force its tokens, cross-feed")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.folder, args.out, args.threads, args.reference)
        return 0
    return compare(args.a, args.b, args.out)


if __name__ == "__main__":
    sys.exit(main())
