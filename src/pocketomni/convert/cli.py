"""`pocketomni convert HF_DIR OUT_DIR`: the command-line front of the converter."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pocketomni.convert.pipeline import (
    DEFAULT_MMPROJ_QUANT,
    DEFAULT_QUANT,
    MMPROJ_QUANTS,
    QUANT_PRESETS,
    THINKER_QUANTS,
    convert_checkpoint,
)
from pocketomni.convert.token2wav import DEFAULT_TOKEN2WAV_TYPE, TOKEN2WAV_TYPES


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `convert` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face Qwen2.5-Omni checkpoint into GGUF files",
        description=(
            "Convert an unmodified Hugging Face Qwen2.5-Omni (3B or 7B) folder into a PocketOmni model "
            "folder: thinker-<quant>.gguf (llama.cpp), mmproj-<quant>.gguf (mtmd vision + audio) and "
            "pocketomni.json."
        ),
    )
    p.add_argument("hf_dir", metavar="HF_DIR",
                   help="folder of the downloaded checkpoint (config.json, *.safetensors, ...)")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="folder to write the GGUF files into (created if needed)")
    p.add_argument("--quant", default=DEFAULT_QUANT,
                   help=f"thinker type: {', '.join(THINKER_QUANTS)}, or a preset for thinker and talker: "
                        f"fast = {'/'.join(QUANT_PRESETS['fast'])} (fastest on CPU at <= 5 bits per weight), "
                        f"faithful = {'/'.join(QUANT_PRESETS['faithful'])} (closest to bf16) "
                        f"(default {DEFAULT_QUANT}; README: choosing a format)")
    p.add_argument("--mmproj-quant", default=DEFAULT_MMPROJ_QUANT,
                   help=f"vision/audio projector type: {', '.join(MMPROJ_QUANTS)} "
                        f"(default {DEFAULT_MMPROJ_QUANT})")
    p.add_argument("--talker-quant", default=None,
                   help=f"talker type: {', '.join(THINKER_QUANTS)} (default: the preset's, or same as --quant)")
    p.add_argument("--token2wav-type", default=DEFAULT_TOKEN2WAV_TYPE, choices=TOKEN2WAV_TYPES,
                   help=f"token2wav weight matrices (DiT, BigVGAN): {', '.join(TOKEN2WAV_TYPES)} "
                        f"(default {DEFAULT_TOKEN2WAV_TYPE}, half the memory; computed in float32 either way)")
    p.add_argument("--no-speech", action="store_true",
                   help="skip the talker and token2wav files (text output only; spk_dict.pt not needed)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for llama.cpp quantization (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.add_argument("--force", action="store_true",
                   help="replace a model already in OUT_DIR (its files of other types are removed)")
    p.set_defaults(func=run_convert)
    return p


def run_convert(args: argparse.Namespace) -> int:
    """Run a conversion from parsed arguments; errors propagate as ConversionError."""
    res = convert_checkpoint(
        args.hf_dir, args.out_dir, quant=args.quant, mmproj_quant=args.mmproj_quant,
        progress=not args.no_progress, threads=args.threads,
        speech=not args.no_speech, talker_quant=args.talker_quant, force=args.force,
        token2wav_type=args.token2wav_type,
    )
    if res.removed:
        print(f"removed: {', '.join(res.removed)} (left by an interrupted or replaced conversion)", file=sys.stderr)
    for component, path in res.files.items():
        print(f"{component}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"manifest: {res.out_dir / 'pocketomni.json'}  ({res.seconds:.1f} s)")
    return 0
