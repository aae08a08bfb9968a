"""Live turns: how far the `streaming` log-mel clamp is from the `exact` one (issue 15, section 1).

    .venv/bin/python benchmarks/live_clamp.py [--tiny-folder DIR] [--work-dir DIR]

The reference clamps the log-mel at (the clip's maximum - 8). A live turn encodes each 2 s window
when it is heard, before the maximum is known: `streaming` clamps window k at the running maximum
(frames up to the window's end), `exact` re-encodes at the end the windows whose features the final
maximum changes (audio.live_mel). For each clip, as a VAD would cut it (0.3 s before, 0.1 s after):

- exact mode's repairs: full windows heard before the end whose features change, and whether the
  first one does (then everything from there is re-encoded and re-prefilled after the user stops);
- features: fraction of values that differ between the modes, mean and max |difference| (feature units:
  log10 / 4) over the differing values;
- audio embeddings (the tiny model's audio tower from its mmproj): per-token cosine (min) and relative
  L2 error of the whole clip's rows;
- thinker logits of the first reply token through `chat.begin_turn(mode)` on the tiny model:
  max |difference| / max |logit|, and whether the top token agrees.

Clips: espeak-ng questions (digital silence around and between words); the same mixed with pink noise
at 30 dB and 50 dB SNR (a noise floor like a microphone's); recorded speech (Debian's
asterisk-core-sounds-en-wav, a human voice recorded at 8 kHz with a real noise floor, upsampled;
several prompts joined); loud start (first 1.5 s at full level, the rest at 1/10) and quiet start
(first 2.5 s at 1/30, the rest full). Random-weight tiny model: embedding and logit gaps show the
size of the input change, not what a trained model would answer. Writes
benchmarks/results/live_clamp.{md,png,json}.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
R = 16000
QUESTIONS = (
    "What is on the kitchen counter right now?",
    "Can you tell me how long the pasta should boil before I drain it?",
    "Is the traffic light in front of me green or red?",
    "Read me the label on this bottle, please.",
    "How many people are waiting at the bus stop?",
)
ASTERISK = "/usr/share/asterisk/sounds/en"


def espeak(text: str) -> np.ndarray:
    sys.path.insert(0, str(ROOT / "tests"))
    from audio_env import espeak as run

    return run(text, R)


def pink(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / R)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def vad_cut(speech: np.ndarray) -> np.ndarray:
    """Speech with the pre-roll / post-roll a VAD keeps (0.3 s / 0.1 s) as digital silence."""
    return np.concatenate([np.zeros(int(0.3 * R), np.float32), speech, np.zeros(int(0.1 * R), np.float32)])


def with_noise(clip: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    speech_rms = float(np.sqrt(np.mean(clip[np.abs(clip) > 1e-4] ** 2)))
    return (clip + pink(clip.size, seed) * speech_rms * 10 ** (-snr_db / 20)).astype(np.float32)


def recorded(names: list[str]) -> np.ndarray:
    from pocketomni.media.audio import resample

    parts = []
    for name in names:
        with wave.open(f"{ASTERISK}/{name}.wav") as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
            parts.append(resample(x, w.getframerate(), R))
    return np.concatenate(parts)


def clips() -> dict[str, list[np.ndarray]]:
    qs = [espeak(q) for q in QUESTIONS]
    out: dict[str, list[np.ndarray]] = {
        "espeak (digital silence)": [vad_cut(q) for q in qs],
        "espeak + pink noise 50 dB SNR": [with_noise(vad_cut(q), 50, i) for i, q in enumerate(qs)],
        "espeak + pink noise 30 dB SNR": [with_noise(vad_cut(q), 30, i) for i, q in enumerate(qs)],
    }
    prompts = sorted(Path(p).stem for p in glob.glob(f"{ASTERISK}/*.wav"))
    rng = np.random.default_rng(0)
    rec = []
    for _ in range(5):
        names = list(rng.choice(prompts, 6, replace=False))
        x = recorded(names)
        rec.append(x[: 8 * R] if x.size > 8 * R else x)
    out["recorded speech (8 kHz prompts)"] = rec
    loud, quiet = [], []
    for q in qs:
        c = vad_cut(q).copy()
        a, b = c.copy(), c.copy()
        a[int(1.5 * R) :] *= 0.1
        b[: int(2.5 * R)] /= 30
        loud.append(a)
        quiet.append(b)
    out["loud start"] = loud
    out["quiet start"] = quiet
    return out


def windows(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(streaming features, exact features, full windows heard before the end, windows exact redoes)."""
    from pocketomni.audio.features import log_mel
    from pocketomni.audio.live_mel import LiveLogMel

    lm, given = LiveLogMel(), []
    for i in range(0, clip.size, 320):  # 20 ms blocks, as a capture callback delivers them
        lm.feed(clip[i : i + 320])
        given += lm.windows()
    peak = lm.end()
    rest = lm.rest(peak)
    stream = np.concatenate([w.features for w in given + rest], axis=1)
    bad = [w.index for w in given if not w.valid_for(peak)]
    return stream, log_mel(clip), len(given), len(bad)


def first_logits(chat: Any, clip: np.ndarray, mode: str) -> np.ndarray:
    box: list[np.ndarray] = []

    def obs(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if not box:
            box.append(np.array(logits, np.float64))
        return logits

    turn = chat.begin_turn(mode, logits_processors=[obs], max_tokens=1)
    turn.feed_audio(clip)
    list(turn.finish_sync())
    return box[0]


def measure(folder: Path) -> dict[str, Any]:
    import pocketomni as po
    from pocketomni.engine.encoders import load_audio_encoder

    enc = load_audio_encoder(folder / "mmproj-f32.gguf")
    out: dict[str, Any] = {}
    with po.Omni.load_sync(folder, n_threads=2) as omni:
        for name, group in clips().items():
            rows = []
            for clip in group:
                st, ex, n_given, n_bad = windows(clip)
                diff = st != ex
                d = np.abs(st - ex)[diff]
                es, ee = enc.encode(st), enc.encode(ex)
                cos = np.sum(es * ee, 1) / (np.linalg.norm(es, axis=1) * np.linalg.norm(ee, axis=1))
                ls = first_logits(omni.chat(), clip, "streaming")
                le = first_logits(omni.chat(), clip, "exact")
                rows.append({
                    "seconds": clip.size / R, "windows_heard": n_given, "windows_redone": n_bad,
                    "first_window_redone": bool(n_bad and windows_first_bad(clip)),
                    "feature_fraction": float(diff.mean()),
                    "feature_mean_abs": float(d.mean()) if d.size else 0.0,
                    "feature_max_abs": float(d.max()) if d.size else 0.0,
                    "emb_cos_min": float(cos.min()),
                    "emb_rel_l2": float(np.linalg.norm(es - ee) / np.linalg.norm(ee)),
                    "logit_rel": float(np.abs(ls - le).max() / np.abs(le).max()),
                    "top1_same": bool(np.argmax(ls) == np.argmax(le)),
                })
            out[name] = rows
            print(name, summarize(rows), flush=True)
    return out


def windows_first_bad(clip: np.ndarray) -> bool:
    from pocketomni.audio.live_mel import LiveLogMel

    lm, given = LiveLogMel(), []
    lm.feed(clip)
    given = lm.windows()
    peak = lm.end()
    return bool(given) and not given[0].valid_for(peak)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    def mean(k: str) -> float:
        return float(np.mean([r[k] for r in rows]))

    return {
        "clips": len(rows), "seconds": mean("seconds"),
        "windows_heard": int(sum(r["windows_heard"] for r in rows)),
        "windows_redone": int(sum(r["windows_redone"] for r in rows)),
        "turns_redone_from_start": int(sum(r["first_window_redone"] for r in rows)),
        "feature_fraction": mean("feature_fraction"), "feature_mean_abs": mean("feature_mean_abs"),
        "feature_max_abs": max(r["feature_max_abs"] for r in rows),
        "emb_cos_min": min(r["emb_cos_min"] for r in rows), "emb_rel_l2": mean("emb_rel_l2"),
        "logit_rel": mean("logit_rel"), "logit_rel_max": max(r["logit_rel"] for r in rows),
        "top1_same": int(sum(r["top1_same"] for r in rows)),
    }


def write_report(res: dict[str, Any], path: Path) -> None:
    lines = [
        "# Live turns: streaming vs exact log-mel clamp",
        "",
        ("Written by `benchmarks/live_clamp.py` (its docstring has the method). Per clip type: the mean over its "
         "clips unless marked; tiny random-weight model, so embedding and logit gaps measure how much the input "
         "changes, not what a trained model would say. Deterministic (no timing)."),
        "",
        ("| clips | n | mean s | windows heard before the end | of them exact redoes | turns exact redoes from the "
         "first window | feature values differing | mean / max abs diff (differing) | embedding cos (min) | "
         "embedding rel L2 | first-token logits rel gap (mean / max) | same top token |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in res.items():
        s = summarize(rows)
        lines.append(
            f"| {name} | {s['clips']} | {s['seconds']:.1f} | {s['windows_heard']} | {s['windows_redone']} | "
            f"{s['turns_redone_from_start']} | {100 * s['feature_fraction']:.1f} % | {s['feature_mean_abs']:.3f} / "
            f"{s['feature_max_abs']:.3f} | {s['emb_cos_min']:.4f} | {s['emb_rel_l2']:.2e} | "
            f"{s['logit_rel']:.2e} / {s['logit_rel_max']:.2e} | {s['top1_same']}/{s['clips']} |")
    path.write_text("\n".join(lines) + "\n")


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res)
    summ = [summarize(res[n]) for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    y = np.arange(len(names))
    axes[0].barh(y, [100 * s["feature_fraction"] for s in summ])
    axes[0].set_title("feature values differing (%)")
    axes[1].barh(y, [s["emb_rel_l2"] for s in summ])
    axes[1].set_xscale("symlog", linthresh=1e-6)
    axes[1].set_title("audio embeddings: relative L2 error")
    axes[2].barh(y, [s["windows_redone"] / max(s["windows_heard"], 1) * 100 for s in summ])
    axes[2].set_title("exact mode: windows redone at the end (%)")
    for ax in axes:
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(names))
        ax.invert_yaxis()
    fig.suptitle("streaming vs exact clamp, per clip type (tiny model)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-folder", type=Path)
    ap.add_argument("--work-dir", type=Path)
    ap.add_argument("--report", action="store_true", help="rebuild the md / png from the json")
    args = ap.parse_args(argv)
    js = RESULTS / "live_clamp.json"
    if args.report:
        res = json.loads(js.read_text())
    else:
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="live-clamp-"))
        if args.tiny_folder:
            folder = args.tiny_folder
        else:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from audio_input import tiny_folder

            folder = tiny_folder(work)
        res = measure(folder)
        js.write_text(json.dumps(res, indent=1))
    write_report(res, RESULTS / "live_clamp.md")
    plot(res, RESULTS / "live_clamp.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
