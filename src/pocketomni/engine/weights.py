"""Read GGUF tensors and metadata into numpy, and the token2wav GGUF as one typed bundle.

The token2wav GGUF (written by `pocketomni convert`) holds float16 (or, with `--token2wav-type f32`,
float32) weight matrices and float32 vectors under short names derived
from the Hugging Face ones (`token2wav.code2wav_dit_model.` -> `dit.`, its speaker encoder
`...input_embed.spk_encoder.` -> `ecapa.`, `token2wav.code2wav_bigvgan_model.` -> `bigvgan.`), the
speaker table, the talker's input projection and the ids the talker feed needs. Read with the
defensive header reader (gguf_file.py) and numpy; the file is memory-mapped and float32 and float16
tensors are used in place (`load_token2wav`; token2wav converts a float16 matrix to float32 right
before each product, so the model is never held in float32 as a whole).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketomni.errors import ModelFileError, OptionsError
from pocketomni.gguf_file import GGUFFile

TOKEN2WAV_ARCH = "qwen2_5_omni_token2wav"
GGUF_NAME_MAX = 63  # ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL

# HF prefix -> GGUF prefix, most specific first (the mapping must stay invertible).
NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("token2wav.code2wav_dit_model.input_embed.spk_encoder.", "ecapa."),
    ("token2wav.code2wav_dit_model.", "dit."),
    ("token2wav.code2wav_bigvgan_model.", "bigvgan."),
)
PROJ_WEIGHT = "talker.proj.weight"
PROJ_BIAS = "talker.proj.bias"

# Metadata keys of the token2wav GGUF.
KEY_T2W_CONFIG = "pocketomni.token2wav_config"  # JSON of the HF token2wav_config
KEY_TALKER_CONFIG = "pocketomni.talker_config"  # JSON of the HF talker_config
KEY_SPEAKERS = "pocketomni.speakers"  # array of names; tensors speaker.<i>.cond / speaker.<i>.ref_mel
KEY_SPEAKER_BOS = "pocketomni.speaker_bos_tokens"  # array of thinker token ids, same order
ID_KEYS = {  # field of TalkerIds -> metadata key
    "codec_pad": "pocketomni.codec.pad_id",
    "codec_bos": "pocketomni.codec.bos_id",
    "codec_eos": "pocketomni.codec.eos_id",
    "codec_mask": "pocketomni.codec.mask_id",
    "text_bos": "pocketomni.text.bos_id",
    "text_eos": "pocketomni.text.eos_id",
    "text_pad": "pocketomni.text.pad_id",
}


def hf_to_gguf_name(name: str) -> str:
    """Short GGUF name of a token2wav tensor (HF name, with the `token2wav.` prefix)."""
    for hf, short in NAME_PREFIXES:
        if name.startswith(hf):
            return short + name[len(hf) :]
    raise ValueError(f"{name} is not a token2wav tensor")


def gguf_to_hf_name(name: str) -> str | None:
    """The HF name of a token2wav GGUF tensor, None for tensors that are not DiT/ECAPA/BigVGAN weights."""
    for hf, short in NAME_PREFIXES:
        if name.startswith(short):
            return hf + name[len(short) :]
    return None


def speaker_tensor_names(i: int) -> tuple[str, str]:
    """GGUF names of speaker i's `cond` and `ref_mel`."""
    return f"speaker.{i}.cond", f"speaker.{i}.ref_mel"


def _tensors(g: GGUFFile, copy: bool = True) -> dict[str, np.ndarray]:
    """float32 tensors; `copy=False` returns float32 and float16 ones as they are stored (read-only views
    of the file's memory map), other types converted to float32."""
    out: dict[str, np.ndarray] = {}
    for name in g.tensors:
        arr = g.read_array(name)
        in_place = not copy and arr.dtype in (np.float32, np.float16)
        out[name] = arr if in_place else np.array(arr, dtype=np.float32)
    return out


def read_tensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as float32 numpy (quantized types dequantized), numpy shape order."""
    return _tensors(GGUFFile.open(path))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every key/value of a GGUF file (arrays as lists, strings decoded; arrays longer than 64 items,
    such as a vocabulary, as `LongArray` placeholders)."""
    return dict(GGUFFile.open(path).metadata)


@dataclass(frozen=True)
class TalkerIds:
    """Token ids of the talker feed: codec ids (talker vocabulary) and tts text ids (thinker vocabulary)."""

    codec_pad: int
    codec_bos: int
    codec_eos: int
    codec_mask: int
    text_bos: int
    text_eos: int
    text_pad: int


@dataclass(frozen=True)
class Speaker:
    """One voice: the thinker token whose embedding starts the talker's reply, and the DiT conditioning."""

    name: str
    bos_token: int
    cond: np.ndarray  # (1, enc_emb_dim) as stored
    ref_mel: np.ndarray  # (1, frames, mel_dim) as stored


@dataclass(frozen=True)
class Token2WavWeights:
    """Contents of a token2wav GGUF."""

    weights: dict[str, np.ndarray]  # DiT/ECAPA/BigVGAN tensors under their HF names (`token2wav.` prefix)
    config: dict[str, Any]  # HF token2wav_config (dit_config, bigvgan_config)
    talker_config: dict[str, Any]
    speakers: dict[str, Speaker]
    proj_weight: np.ndarray  # (talker hidden, thinker hidden): thinker space -> talker input space
    proj_bias: np.ndarray  # (talker hidden,)
    ids: TalkerIds

    def speaker(self, name: str) -> Speaker:
        """The speaker `name`; OptionsError listing the available ones otherwise."""
        try:
            return self.speakers[name]
        except KeyError:
            raise OptionsError(
                f"unknown voice {name!r}; this model has {', '.join(sorted(self.speakers))}."
            ) from None


def load_token2wav(path: str | os.PathLike[str]) -> Token2WavWeights:
    """Read a token2wav GGUF written by `pocketomni convert`.

    float32 and float16 tensors are read-only views of the file's memory map, not copies (float16 ones
    stay float16): their pages are clean file pages (shared, reclaimable), and loading never holds the
    weights twice. Speaker tables and the talker projection are float32 in files this converter writes."""
    g = GGUFFile.open(path)
    meta = g.metadata
    if meta.get("general.architecture") != TOKEN2WAV_ARCH:
        raise ModelFileError(
            f"{path} has architecture {meta.get('general.architecture')!r}, not {TOKEN2WAV_ARCH!r}; "
            "it is not a "
            "PocketOmni token2wav file. Convert the model again with `pocketomni convert`."
        )
    missing = [
        k
        for k in (KEY_T2W_CONFIG, KEY_TALKER_CONFIG, KEY_SPEAKERS, KEY_SPEAKER_BOS, *ID_KEYS.values())
        if k not in meta
    ]
    tensors = _tensors(g, copy=False)
    missing += [n for n in (PROJ_WEIGHT, PROJ_BIAS) if n not in tensors]
    if missing:
        raise ModelFileError(
            f"{path} lacks {', '.join(missing)}. Convert the model again with `pocketomni convert`."
        )
    names, bos = list(meta[KEY_SPEAKERS]), [int(x) for x in meta[KEY_SPEAKER_BOS]]
    if len(names) != len(bos):
        raise ModelFileError(f"{path}: {len(names)} speaker names but {len(bos)} bos tokens; the file is corrupt.")
    speakers: dict[str, Speaker] = {}
    for i, (name, b) in enumerate(zip(names, bos)):
        c, m = speaker_tensor_names(i)
        if c not in tensors or m not in tensors:
            raise ModelFileError(f"{path} lacks the tensors of speaker {name!r}. Convert the model again.")
        speakers[name] = Speaker(name, b, tensors[c], tensors[m])
    weights = {hf: v for k, v in tensors.items() if (hf := gguf_to_hf_name(k)) is not None}
    return Token2WavWeights(
        weights=weights,
        config=json.loads(meta[KEY_T2W_CONFIG]),
        talker_config=json.loads(meta[KEY_TALKER_CONFIG]),
        speakers=speakers,
        proj_weight=tensors[PROJ_WEIGHT],
        proj_bias=tensors[PROJ_BIAS],
        ids=TalkerIds(**{f: int(meta[k]) for f, k in ID_KEYS.items()}),
    )
