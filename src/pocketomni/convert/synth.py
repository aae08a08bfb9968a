"""`pocketomni synth`: a model folder with the exact shapes of Qwen2.5-Omni-3B/7B and random weights.

Real weights cannot be downloaded everywhere, but speed and memory depend on shapes, not values. This
writes the same four GGUFs as `pocketomni convert` (thinker, mmproj, talker, token2wav + manifest)
through the converter's own plans and writer: a synthetic `Checkpoint` lists every tensor of the real
checkpoint (names and shapes from `synth_shapes`), and `SyntheticFiles` stands in for the memory-mapped
safetensors, generating each tensor's bf16 values on the fly, block by block, from a counter-based
generator keyed by (seed, tensor name). Nothing but the block being written is ever in memory, and the
same seed gives byte-identical files.

Weights are scaled like a sane init (unit-variance activations, residual branches shrunk by the depth),
so activations stay finite. The rows of the thinker's output head beyond the 151,643 BPE tokens (stop
and special tokens, padding) and of the talker's codec head beyond the DiT's codes (stop codes
included) are zero: the thinker writes ordinary tokens until `max_tokens` and the talker speaks until
its code limit, so generation runs as long as asked. The tokenizer is the real Qwen2.5 one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.convert import qwen_vocab
from pocketomni.convert.checkpoint import Checkpoint, check_shapes
from pocketomni.convert.mmproj import mmproj_expected, mmproj_plan
from pocketomni.convert.pipeline import (
    DEFAULT_MMPROJ_QUANT,
    DEFAULT_QUANT,
    MMPROJ_QUANTS,
    QUANT_PRESETS,
    THINKER_QUANTS,
    ConversionResult,
    check_quant,
    converter_version,
    resolve_quants,
    source_summary,
    write_folder,
)
from pocketomni.convert.quantize import LLAMA_QUANT_TYPES
from pocketomni.convert.safetensors import MappedFiles, TensorInfo
from pocketomni.convert.synth_shapes import (
    MODEL_NAMES,
    PREPROCESSOR_CONFIG,
    PRESETS,
    checkpoint_shapes,
    preset_config,
)
from pocketomni.convert.talker import talker_expected, talker_names, talker_plan
from pocketomni.convert.thinker import DIRECT_TYPES, thinker_names, thinker_plan
from pocketomni.convert.token2wav import (
    DEFAULT_TOKEN2WAV_TYPE,
    TOKEN2WAV_TYPES,
    check_token2wav_type,
    token2wav_plan,
)
from pocketomni.convert.tokenizer import load_tokenizer
from pocketomni.convert.writer import GGUFPlan
from pocketomni.engine import manifest as mf
from pocketomni.errors import ConversionError

SYNTH_FORMAT = 1  # bump when the generated values change (the demo model is rebuilt then)
CHUNK = 1 << 20  # elements per independently seeded piece of a tensor
SMALL = 1 << 24  # tensors up to this many elements are generated in one piece
SPEAKERS = {"Chelsie": (151870, 300), "Ethan": (151872, 260)}  # name -> (thinker bos token, ref mel frames)
BIGVGAN_POST_GAIN = 0.05  # keeps the random vocoder's output well inside [-1, 1]


@dataclass(frozen=True)
class Rule:
    """How one tensor is initialised: base + std * (unit-variance uniform noise); rows >= zero_from are 0."""

    base: float
    std: float
    zero_from: int | None = None


def _stack_depth(name: str, config: dict[str, Any]) -> int:
    """Number of residual blocks of the stack a tensor belongs to."""
    th, tw = config["thinker_config"], config["token2wav_config"]
    if name.startswith("thinker.model."):
        return int(th["text_config"]["num_hidden_layers"])
    if name.startswith("thinker.visual."):
        return int(th["vision_config"]["depth"])
    if name.startswith("thinker.audio_tower."):
        return int(th["audio_config"]["encoder_layers"])
    if name.startswith("talker."):
        return int(config["talker_config"]["num_hidden_layers"])
    return int(tw["dit_config"]["num_hidden_layers"])


RESIDUAL_OUT = (".o_proj.weight", ".down_proj.weight", ".fc2.weight", ".out_proj.weight", ".attn.proj.weight",
                ".to_out.0.weight", ".ff.ff.3.weight")
EMBEDDINGS = (".embed_tokens.weight", ".codec_embed.weight", ".audio_bos_eos_token.weight")


def init_rule(name: str, shape: tuple[int, ...], config: dict[str, Any]) -> Rule:
    """The initialisation of checkpoint tensor `name` (HF name) of `shape` under `config`."""
    if name.endswith((".act.alpha", ".act.beta")):
        return Rule(0.0, 0.1)  # SnakeBeta log-scales around exp(0) = 1
    if len(shape) == 1:
        return Rule(1.0, 0.05) if name.endswith(".weight") else Rule(0.0, 0.02)  # norm gains / biases
    if name.endswith(EMBEDDINGS):
        return Rule(0.0, 1.0)  # always followed by a norm or a projection
    fan_in = math.prod(shape[1:])
    if ".code2wav_bigvgan_model.ups." in name:  # ConvTranspose1d (in, out, k): k / stride taps per output
        i = int(name.split(".ups.")[1].split(".")[0])
        stride = config["token2wav_config"]["bigvgan_config"]["upsample_rates"][i]
        fan_in = shape[0] * max(1, shape[2] // stride)
    std = 1.0 / math.sqrt(fan_in)
    if name.endswith(RESIDUAL_OUT):
        std /= math.sqrt(2 * _stack_depth(name, config))
    if ".convs2." in name:
        std *= 0.5
    if name.endswith("conv_post.weight"):
        std *= BIGVGAN_POST_GAIN
    zero_from = None
    if name == "thinker.lm_head.weight":
        zero_from = qwen_vocab.NUM_RANKS
    elif name == "talker.codec_head.weight":
        zero_from = int(config["token2wav_config"]["dit_config"]["num_embeds"]) + 1
    return Rule(0.0, std, zero_from)


def _key(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:16], "little")


def noise_codes(seed: int, name: str, lo: int, hi: int) -> np.ndarray:
    """Elements [lo, hi) of tensor `name`'s stream of uniform 16-bit codes (independent of lo/hi)."""
    key, parts = _key(seed, name), []
    for c in range(lo // CHUNK, (hi - 1) // CHUNK + 1):
        a, b = max(lo - c * CHUNK, 0), min(hi - c * CHUNK, CHUNK)
        gen = np.random.Generator(np.random.SFC64(np.random.SeedSequence(key, spawn_key=(c,))))
        parts.append(gen.integers(0, 1 << 16, b, dtype=np.uint16)[a:])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _levels() -> np.ndarray:
    """The 65536 values a code stands for: uniform on [-sqrt(3), sqrt(3)] (unit variance), float64."""
    return ((np.arange(1 << 16, dtype=np.float64) + 0.5) / (1 << 15) - 1.0) * math.sqrt(3.0)


def unit_noise(seed: int, name: str, lo: int, hi: int) -> np.ndarray:
    """Elements [lo, hi) of the unit-variance uniform noise of `name`, float32."""
    return _levels().astype(np.float32)[noise_codes(seed, name, lo, hi)]


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def bf16_table(rule: Rule) -> np.ndarray:
    """bf16 bits of base + std * level for each of the 65536 codes."""
    return _bf16_bits((rule.base + rule.std * _levels()).astype(np.float32))


def tensor_bits(seed: int, name: str, shape: tuple[int, ...], rule: Rule, lo: int, hi: int,
                table: np.ndarray | None = None) -> np.ndarray:
    """Flat bf16 bit patterns of elements [lo, hi) of a synthetic tensor."""
    bits = (bf16_table(rule) if table is None else table)[noise_codes(seed, name, lo, hi)]
    if rule.zero_from is not None:
        first = rule.zero_from * math.prod(shape[1:])
        if hi > first:
            bits[max(first - lo, 0):] = 0
    return bits


class _LazyBF16:
    """The stored bf16 bits of a large synthetic tensor, generated when sliced (what `iter_rows_f32` does)."""

    def __init__(self, files: SyntheticFiles, info: TensorInfo) -> None:
        self._files, self._info = files, info
        self.size = info.n_elements
        self.shape = (self.size,)
        self.dtype = np.dtype("<u2")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi, step = s.indices(self.size)
        if step != 1:
            raise TypeError("synthetic tensors support contiguous slices only")
        return self._files.bits(self._info, lo, hi)

    def astype(self, dtype: Any) -> np.ndarray:
        return self[:].astype(dtype)


class SyntheticFiles(MappedFiles):
    """Stands in for the memory-mapped safetensors shards: tensor data is generated, never read."""

    def __init__(self, seed: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.seed, self.config = seed, config
        self._tables: dict[str, tuple[Rule, np.ndarray]] = {}

    def bits(self, info: TensorInfo, lo: int, hi: int) -> np.ndarray:
        """The stored bf16 bits of elements [lo, hi) of `info` (flat)."""
        if info.name not in self._tables:
            rule = init_rule(info.name, info.shape, self.config)
            self._tables = {info.name: (rule, bf16_table(rule))}  # tensors are written one after another
        rule, table = self._tables[info.name]
        return tensor_bits(self.seed, info.name, info.shape, rule, lo, hi, table)

    def raw(self, info: TensorInfo) -> Any:
        if info.n_elements <= SMALL:
            return self.bits(info, 0, info.n_elements)
        return _LazyBF16(self, info)

    def release(self, info: TensorInfo, lo: int, hi: int) -> None:
        pass


def synthetic_checkpoint(preset: str) -> Checkpoint:
    """A Checkpoint of `preset` whose tensor table is generated from config.json (no files behind it)."""
    config = preset_config(preset)
    path = Path(f"{MODEL_NAMES[preset]}-synthetic")
    tensors = {
        name: TensorInfo(name, path, "BF16", shape, 0, 2 * math.prod(shape))
        for name, shape in checkpoint_shapes(config).items()
    }
    return Checkpoint(path=path, config=config, tensors=tensors, preprocessor=dict(PREPROCESSOR_CONFIG))


def synthetic_speakers(seed: int) -> dict[str, dict[str, Any]]:
    """Chelsie and Ethan: a thinker bos token, a random ECAPA-free `cond` and a log-mel-like `ref_mel`."""
    out = {}
    for name, (bos, frames) in SPEAKERS.items():
        cond = unit_noise(seed, f"speaker.{name}.cond", 0, 192).reshape(1, 192)
        mel = unit_noise(seed, f"speaker.{name}.ref_mel", 0, frames * 80).reshape(1, frames, 80)
        out[name] = {"bos_token": bos, "cond": cond, "ref_mel": -5.0 + 2.0 * mel}
    return out


# Talker type per size when --talker-quant is not given and --quant is a llama.cpp quantization: the 3B
# talker (hidden 896) decodes fastest as q4_0 on this x86 machine, 65 codes/s against 48 for q8_0
# (q4_k_m falls back to q5_0 at that width; llama.cpp repacks only q4_0). Other sizes follow --quant.
DEFAULT_TALKER_QUANT = {"3b": "q4_0"}


def default_talker_quant(preset: str, quant: str) -> str:
    """The talker type `synth` writes for this size and thinker type when none is asked for."""
    return DEFAULT_TALKER_QUANT.get(preset, quant) if quant in LLAMA_QUANT_TYPES else quant


@dataclass
class _Job:
    component: str
    filename: str
    quant: str
    plan: GGUFPlan
    llama_quant: str | None = None


def synth_model(
    preset: str,
    out_dir: str | Path,
    quant: str = DEFAULT_QUANT,
    mmproj_quant: str = DEFAULT_MMPROJ_QUANT,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
    speech: bool = True,
    talker_quant: str | None = None,
    token2wav_type: str = DEFAULT_TOKEN2WAV_TYPE,
) -> ConversionResult:
    """Write a synthetic model folder for `preset` ("tiny", "3b", "7b"), like `convert_checkpoint` would.

    Files: thinker-<type>.gguf, mmproj-<mmproj_quant>.gguf, talker-<type>.gguf (`quant` a type or a
    QUANT_PRESETS name, by default the converter's; talker for a type: `default_talker_quant`),
    token2wav-<token2wav_type>.gguf and pocketomni.json (its source records the preset and seed). Same seed, same files.
    """
    t0 = time.perf_counter()
    if preset not in PRESETS:
        raise ConversionError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    if quant.lower() not in QUANT_PRESETS:
        quant = check_quant("--quant", quant, THINKER_QUANTS + tuple(QUANT_PRESETS))
        talker_quant = talker_quant or default_talker_quant(preset, quant)
    quant, talker_quant = resolve_quants(quant, talker_quant)
    mmproj_quant = check_quant("--mmproj-quant", mmproj_quant, MMPROJ_QUANTS)
    t2w_type = check_token2wav_type(token2wav_type)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConversionError(f"--seed {seed!r} must be a non-negative integer.")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out} exists and is not a folder. Choose a folder for OUT_DIR.")

    ckpt = synthetic_checkpoint(preset)
    shape, tnames = thinker_names(ckpt)
    thinker_shapes = {hf: s for hf, (_, s) in tnames.items()}
    check_shapes(ckpt, {**thinker_shapes, **mmproj_expected(ckpt), **(talker_expected(ckpt) if speech else {})})
    tok = load_tokenizer(qwen_vocab.vocab_dir(), ckpt.config, shape.vocab)
    version = converter_version()
    source = source_summary(ckpt, thinker_shapes, shape.summary())
    source["synthetic"] = {"preset": preset, "seed": seed, "format": SYNTH_FORMAT,
                           "note": "random weights with the real shapes; the output is meaningless"}
    if speech:  # which talker shape a folder holds (older 3B folders carry the 7B talker sizes)
        source["synthetic"]["talker"] = talker_names(ckpt)[0].summary()

    def meta(component: str) -> dict[str, str]:
        return {"name": f"{ckpt.path.name} {component}", "component": component, "converter_version": version}

    files = SyntheticFiles(seed, ckpt.config)
    mode = quant if quant in DIRECT_TYPES else "bf16"
    jobs = [
        _Job("thinker", f"thinker-{quant}.gguf", quant,
             thinker_plan(ckpt, files, tok, mode, DIRECT_TYPES.get(quant, 32), meta("thinker")),
             quant if quant in LLAMA_QUANT_TYPES else None),
        _Job("mmproj", f"mmproj-{mmproj_quant}.gguf", mmproj_quant,
             mmproj_plan(ckpt, files, mmproj_quant, meta("mmproj"))),
    ]
    if speech:
        tmode = talker_quant if talker_quant in DIRECT_TYPES else "bf16"
        jobs += [
            _Job("talker", f"talker-{talker_quant}.gguf", talker_quant,
                 talker_plan(ckpt, files, tmode, DIRECT_TYPES.get(talker_quant, 32), meta("talker")),
                 talker_quant if talker_quant in LLAMA_QUANT_TYPES else None),
            _Job("token2wav", f"token2wav-{t2w_type}.gguf", t2w_type,
                 token2wav_plan(ckpt, files, meta("token2wav"), speakers=synthetic_speakers(seed), wtype=t2w_type)),
        ]
    return write_folder(out, [(j, j.plan) for j in jobs], version=version, source=source, progress=progress,
                        threads=threads, verb="generating", t0=t0, force=True,
                        conversion_id=_synthetic_id(source, [j.filename for j in jobs]))


def _synthetic_id(source: dict[str, Any], names: list[str]) -> str:
    """Same preset, seed and file types, same id (and the same files): a pure function of the inputs."""
    key = json.dumps({"source": source, "files": names}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def add_synth_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `synth` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "synth",
        help="write a random-weight model folder with the exact shapes of Qwen2.5-Omni-3B/7B (for benchmarks)",
        description=(
            "Write a model folder (thinker, mmproj, talker, token2wav GGUFs + pocketomni.json) with the exact "
            "tensor shapes of Qwen2.5-Omni-3B or -7B (or a tiny one) and deterministic random weights, through "
            "the converter's own writer and quantizer. Speed and memory match the real model; the replies are "
            "meaningless. Needs the Qwen vocabulary: pip install 'pocketomni[synth]'."
        ),
    )
    p.add_argument("preset", choices=PRESETS, help="model size")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created if needed)")
    p.add_argument("--quant", default=DEFAULT_QUANT,
                   help=f"thinker type: {', '.join(THINKER_QUANTS)} or a preset: {', '.join(QUANT_PRESETS)} "
                        f"(default {DEFAULT_QUANT}, the converter's own default)")
    p.add_argument("--mmproj-quant", default=DEFAULT_MMPROJ_QUANT,
                   help=f"vision/audio projector type: {', '.join(MMPROJ_QUANTS)} (default {DEFAULT_MMPROJ_QUANT})")
    p.add_argument("--talker-quant", default=None,
                   help=f"talker type: {', '.join(THINKER_QUANTS)} (default: q4_0 at 3B when --quant is "
                        "a quantized type, else the same as --quant)")
    p.add_argument("--token2wav-type", default=DEFAULT_TOKEN2WAV_TYPE, choices=TOKEN2WAV_TYPES,
                   help=f"token2wav weight matrices: {', '.join(TOKEN2WAV_TYPES)} (default {DEFAULT_TOKEN2WAV_TYPE}; "
                        "computed in float32 either way)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, identical files; default 0)")
    p.add_argument("--no-speech", action="store_true", help="skip the talker and token2wav files")
    p.add_argument("--threads", type=int, default=None, help="threads for llama.cpp quantization")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run_synth)
    return p


def run_synth(args: argparse.Namespace) -> int:
    """Run `pocketomni synth` from parsed arguments."""
    res = synth_model(args.preset, args.out_dir, quant=args.quant, mmproj_quant=args.mmproj_quant,
                      seed=args.seed, progress=not args.no_progress, threads=args.threads,
                      speech=not args.no_speech, talker_quant=args.talker_quant,
                      token2wav_type=args.token2wav_type)
    for component, path in res.files.items():
        print(f"{component}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"manifest: {res.out_dir / mf.MANIFEST}  ({res.seconds:.1f} s; random weights, for benchmarks)")
    return 0


def tensor_rows(preset: str, seed: int, name: str, r0: int = 0, r1: int | None = None) -> np.ndarray:
    """Rows [r0, r1) of one synthetic checkpoint tensor as float32, as the writer sees them (inspection/tests)."""
    ckpt = synthetic_checkpoint(preset)
    info = ckpt.require(name)
    r1 = info.shape[0] if r1 is None else r1
    row = math.prod(info.shape[1:])
    bits = SyntheticFiles(seed, ckpt.config).bits(info, r0 * row, r1 * row)
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape((r1 - r0, *info.shape[1:]))
