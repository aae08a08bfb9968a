"""`pocketomni demo`: a scripted multimodal chat on a small built-in model, through the public API only.

The model is built once with `pocketomni synth tiny` into ~/.cache/pocketomni/demo-tiny (rebuilt when
pocketomni or the synthetic weights change). It has the real Qwen2.5-Omni architecture and tokenizer
but random weights: it shows that the whole pipeline (image and audio in, streaming text out, speech
when available) runs on this machine, not what the model can say. Its replies are gibberish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from pocketomni.audio.rates import INPUT_RATE, OUTPUT_RATE
from pocketomni.audio.wav import save_wav

DEMO_QUANT = "q8_0"
DEMO_SEED = 0
DEMO_FOLDER = "demo-tiny"
STAMP = "demo.json"
BANNER = (
    "PocketOmni demo: a tiny Qwen2.5-Omni with the real architecture and tokenizer but RANDOM weights.\n"
    "Its replies are gibberish on purpose; the demo checks that images, audio, streaming text{speech}\n"
    "run end to end on this machine. For real answers convert the real model:\n"
    "  pocketomni convert Qwen2.5-Omni-3B/ models/omni-3b && pocketomni chat models/omni-3b"
)
# (user text, use the media, max reply tokens)
SCRIPT: tuple[tuple[str, bool, int], ...] = (
    ("What do you see in this picture, and what do you hear in this sound?", True, 40),
    ("Say that again in one short sentence.", False, 20),
)
SPEECH_MAX_CODES = 150  # 3 s of speech: the random talker never ends a reply by itself


def _cache_root() -> Path:
    from pocketomni.convert.qwen_vocab import cache_dir

    return cache_dir()


def demo_key() -> str:
    """What the cached demo model depends on: pocketomni's version and the synthetic weights' format."""
    from pocketomni import __version__
    from pocketomni.convert.synth import SYNTH_FORMAT

    return f"pocketomni {__version__}, synth format {SYNTH_FORMAT}, {DEMO_QUANT}, seed {DEMO_SEED}"


def _current(folder: Path, key: str) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp.get("key") == key and (folder / "pocketomni.json").is_file()


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_model(rebuild: bool = False, progress: bool = True, log: TextIO | None = None) -> Path:
    """The demo model folder, built with `pocketomni synth tiny` on first use (safe under concurrent calls)."""
    log = log or sys.stderr
    root = _cache_root()
    folder, key = root / DEMO_FOLDER, demo_key()
    if not rebuild and _current(folder, key):
        return folder
    with exclusive_lock(root / f".{DEMO_FOLDER}.lock"):
        if not rebuild and _current(folder, key):
            return folder
        from pocketomni.convert.synth import synth_model

        print(f"building the demo model in {folder} (once; about 10-30 s) ...", file=log, flush=True)
        tmp = root / f".{DEMO_FOLDER}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        synth_model("tiny", tmp, quant=DEMO_QUANT, seed=DEMO_SEED, progress=progress)
        (tmp / STAMP).write_text(json.dumps({"key": key}) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


def demo_image(width: int = 336, height: int = 224) -> np.ndarray:
    """A generated picture (RGB uint8): sky gradient, a sun, two hills and a red house."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    sky = y / height
    img[...] = np.stack([90 + 100 * sky, 150 + 70 * sky, 235 - 30 * sky], axis=-1)
    sun = (x - 0.78 * width) ** 2 + (y - 0.25 * height) ** 2 < (0.09 * height) ** 2
    img[sun] = (255, 220, 60)
    for cx, h, green in ((0.3, 0.55, 140), (0.8, 0.65, 110)):
        hill = y > height * (h + 0.25 * ((x / width - cx) / 0.5) ** 2)
        img[hill] = (40, green, 50)
    house = (x > 0.2 * width) & (x < 0.36 * width) & (y > 0.5 * height) & (y < 0.72 * height)
    img[house] = (190, 40, 35)
    return img.astype(np.uint8)


def demo_audio(seconds: float = 2.0, rate: int = INPUT_RATE) -> tuple[np.ndarray, int]:
    """A generated sound (float32 mono): a rising chirp, then three short beeps."""
    t = np.arange(int(seconds * rate)) / rate
    half = seconds / 2
    chirp = np.sin(2 * np.pi * (300 * t + 400 * t**2 / seconds)) * (t < half)
    beeps = np.sin(2 * np.pi * 880 * t) * ((t >= half) & (((t - half) * 6) % 1 < 0.5))
    return (0.3 * (chirp + beeps)).astype(np.float32), rate


def _stats(done: Any) -> str:
    u, t = done.usage, done.timings
    parts = [f"finish: {done.finish_reason}", f"prompt {u.prompt_tokens} tok (media {u.media_tokens})",
             f"reply {u.reply_tokens} tok", f"first token {t.time_to_first_token * 1000:.0f} ms",
             f"prefill {t.prefill_tokens_per_second:.0f} tok/s", f"decode {t.decode_tokens_per_second:.1f} tok/s",
             f"media encode {t.media_encode_seconds * 1000:.0f} ms"]
    if u.audio_codes:
        parts.append(f"speech {t.audio_seconds:.1f} s (first audio {t.time_to_first_audio * 1000:.0f} ms)")
    return "  [" + ", ".join(parts) + "]"


async def run_demo(out: Path, speak: bool = True, rebuild: bool = False, threads: int | None = None,
                   stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Build or reuse the demo model and run the scripted chat; returns a process exit code."""
    import pocketomni as po

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr

    folder = ensure_demo_model(rebuild=rebuild, progress=stderr.isatty(), log=stderr)
    out.mkdir(parents=True, exist_ok=True)
    image, (pcm, rate) = demo_image(), demo_audio()
    from PIL import Image

    Image.fromarray(image).save(out / "demo-input.png")
    save_wav(out / "demo-input.wav", pcm, rate)
    t0 = time.perf_counter()
    async with po.Omni.load(folder, n_ctx=2048, n_threads=threads) as omni:
        caps = omni.capabilities
        want_speech = speak and caps.speech_out
        print(BANNER.format(speech=" and speech" if want_speech else ""), file=stdout)
        features = ", ".join(f for f in ("text", "vision", "audio_in", "speech_out") if getattr(caps, f))
        print(f"\nmodel: {folder} (loaded in {time.perf_counter() - t0:.1f} s; features: {features})", file=stdout)
        print(f"inputs: {out / 'demo-input.png'} ({image.shape[1]}x{image.shape[0]}), "
              f"{out / 'demo-input.wav'} ({len(pcm) / rate:.1f} s)", file=stdout)
        if speak and not want_speech:
            print("speech: not available here (omni.capabilities.speech_out is False); text only.", file=stdout)
        if want_speech:
            chat = omni.chat(speech=True, voice="Chelsie",
                             speech_options=po.SpeechOptions(max_codes=SPEECH_MAX_CODES, seed=0))
        else:
            chat = omni.chat()
        for turn, (text, media, max_tokens) in enumerate(SCRIPT, 1):
            print(f"\nuser: {text}" + ("  [+ picture, + sound]" if media else ""), file=stdout)
            print("assistant: ", end="", file=stdout, flush=True)
            audio: list[np.ndarray] = []
            kwargs: dict[str, Any] = {"images": [image], "audio": [(pcm, rate)]} if media else {}
            async for ev in chat.send(text, max_tokens=max_tokens, temperature=0.8, top_k=40, top_p=0.9,
                                      repetition_penalty=1.1, seed=turn, **kwargs):
                if isinstance(ev, po.TextDelta):
                    print(ev.text, end="", file=stdout, flush=True)
                elif isinstance(ev, po.AudioChunk):
                    audio.append(ev.samples)
                elif isinstance(ev, po.Done):
                    print("\n" + _stats(ev), file=stdout)
            if audio:
                wav = out / f"demo-reply-{turn}.wav"
                save_wav(wav, np.concatenate(audio), OUTPUT_RATE)
                print(f"  [spoken reply: {wav}]", file=stdout)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s. The words above are random: the weights are.", file=stdout)
    return 0


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `demo` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "demo",
        help="run a scripted multimodal chat on a small built-in (random-weight) model",
        description=(
            "Build (once) a tiny random-weight Qwen2.5-Omni in ~/.cache/pocketomni and chat with it: a generated "
            "picture and sound in, streaming text out, through the public pocketomni API. The replies are "
            "gibberish by design; this checks that everything runs. Needs: pip install 'pocketomni[demo]'."
        ),
    )
    p.add_argument("--out", default="pocketomni-demo", metavar="DIR",
                   help="folder for the generated inputs and the spoken reply (default ./pocketomni-demo)")
    p.add_argument("--speak", action=argparse.BooleanOptionalAction, default=True,
                   help="speak the replies too, as WAV files in --out (default on; --no-speak: text only)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(Path(args.out).expanduser(), speak=args.speak, rebuild=args.rebuild,
                                threads=args.threads))
