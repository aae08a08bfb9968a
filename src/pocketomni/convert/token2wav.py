"""The token2wav GGUF: everything speech needs besides the talker decoder, read by our numpy code.

Contents (whatever the thinker's quantization):
- every `token2wav.*` tensor of the checkpoint (DiT, its ECAPA speaker encoder, BigVGAN) under a short
  name (`pocketomni.engine.weights.hf_to_gguf_name`: `dit.`, `ecapa.`, `bigvgan.` prefixes): matrices
  and kernels (2 or more dims) as float16 by default (`wtype="f32"`: float32), vectors as float32;
- the speaker table of spk_dict.pt: tensors `speaker.<i>.cond`, `speaker.<i>.ref_mel`, names and thinker
  bos token ids as metadata arrays;
- the talker's input projection `talker.proj.weight` / `.bias` (thinker width -> talker width), float32;
- the token ids of the talker feed and the HF token2wav / talker configs as JSON metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from pocketomni.convert.checkpoint import Checkpoint, cfg_get
from pocketomni.convert.safetensors import MappedFiles, iter_rows_f32
from pocketomni.convert.speakers import read_speakers
from pocketomni.convert.talker import PROJ_B, PROJ_W, talker_config
from pocketomni.convert.writer import GGUFPlan, TensorSpec, add_meta_strings, one_block
from pocketomni.engine.weights import (
    GGUF_NAME_MAX,
    ID_KEYS,
    KEY_SPEAKER_BOS,
    KEY_SPEAKERS,
    KEY_T2W_CONFIG,
    KEY_TALKER_CONFIG,
    PROJ_BIAS,
    PROJ_WEIGHT,
    TOKEN2WAV_ARCH,
    hf_to_gguf_name,
    speaker_tensor_names,
)
from pocketomni.errors import ConversionError

PREFIX = "token2wav."
TOKEN2WAV_TYPES = ("f16", "f32")
DEFAULT_TOKEN2WAV_TYPE = "f16"
F16_MAX = 65504.0  # the largest finite float16
SPEAKER_FILE = "spk_dict.pt"
# TalkerIds field -> talker_config key.
ID_CONFIG = {
    "codec_pad": "tts_codec_pad_token_id",
    "codec_bos": "tts_codec_start_token_id",
    "codec_eos": "tts_codec_end_token_id",
    "codec_mask": "tts_codec_mask_token_id",
    "text_bos": "tts_text_start_token_id",
    "text_eos": "tts_text_end_token_id",
    "text_pad": "tts_text_pad_token_id",
}


def token2wav_names(ckpt: Checkpoint) -> dict[str, str]:
    """HF name -> GGUF name of every token2wav tensor; ConversionError if none or a name is too long."""
    cfg = ckpt.config.get("token2wav_config")
    if (
        not isinstance(cfg, dict)
        or not isinstance(cfg.get("dit_config"), dict)
        or not isinstance(cfg.get("bigvgan_config"), dict)
    ):
        raise ConversionError(
            f"{ckpt.path / 'config.json'} lacks token2wav_config with dit_config and bigvgan_config; speech "
            "output needs the full Qwen2.5-Omni config.json. Re-download it."
        )
    names: dict[str, str] = {}
    for hf in sorted(n for n in ckpt.tensors if n.startswith(PREFIX)):
        try:
            short = hf_to_gguf_name(hf)
        except ValueError:
            raise ConversionError(
                f"unexpected tensor {hf} in the checkpoint; token2wav holds only code2wav_dit_model and "
                "code2wav_bigvgan_model. This is not an original Qwen2.5-Omni checkpoint."
            ) from None
        if len(short.encode()) > GGUF_NAME_MAX:
            raise ConversionError(f"internal error: GGUF name {short!r} exceeds {GGUF_NAME_MAX} bytes")
        names[hf] = short
    for part in ("code2wav_dit_model.", "code2wav_bigvgan_model."):
        if not any(n.startswith(PREFIX + part) for n in names):
            raise ConversionError(
                f"the checkpoint in {ckpt.path} has no {PREFIX}{part}* tensors; speech output needs the full "
                "Qwen2.5-Omni weights. Download every model-*.safetensors file."
            )
    return names


def talker_ids(ckpt: Checkpoint) -> dict[str, int]:
    """The token ids of the talker feed, read from talker_config."""
    cfg = talker_config(ckpt)
    return {f: int(cfg_get(cfg, key, where="talker_config")) for f, key in ID_CONFIG.items()}


def load_speakers(ckpt: Checkpoint) -> dict[str, dict[str, Any]]:
    """The speaker table of the checkpoint's spk_dict.pt, checked against the thinker vocabulary."""
    speakers = read_speakers(ckpt.path / SPEAKER_FILE)
    vocab = int(cfg_get(ckpt.text, "vocab_size", where="thinker_config.text_config"))
    for name, s in speakers.items():
        if not 0 <= s["bos_token"] < vocab:
            raise ConversionError(
                f"{ckpt.path / SPEAKER_FILE}: speaker {name!r} has bos_token {s['bos_token']} outside the "
                "thinker "
                f"vocabulary ({vocab}). spk_dict.pt and the weights come from different models; re-download."
            )
    return speakers


def _f32(files: MappedFiles, ckpt: Checkpoint, hf: str, name: str) -> TensorSpec:
    info = ckpt.tensors[hf]
    return TensorSpec(name, info.shape, QT.F32, lambda: iter_rows_f32(files, info))


def _weight(files: MappedFiles, ckpt: Checkpoint, hf: str, name: str, wtype: str) -> TensorSpec:
    """A DiT/ECAPA/BigVGAN tensor: float16 for matrices and kernels when `wtype` is f16 (checked to fit
    its range), float32 otherwise."""
    info = ckpt.tensors[hf]
    if wtype == "f32" or len(info.shape) < 2:
        return _f32(files, ckpt, hf, name)

    def rows() -> Iterator[np.ndarray]:
        for block in iter_rows_f32(files, info):
            if block.size and not np.abs(block).max() <= F16_MAX:
                raise ConversionError(
                    f"{hf} holds values beyond float16's range (|x| > {F16_MAX:g} or not finite); "
                    "convert with --token2wav-type f32."
                )
            yield block

    return TensorSpec(name, info.shape, QT.F16, rows)


def check_token2wav_type(wtype: str) -> str:
    """The token2wav storage type, lower-cased; ConversionError for anything but f16 / f32."""
    t = str(wtype).lower()
    if t not in TOKEN2WAV_TYPES:
        raise ConversionError(f"--token2wav-type {wtype!r} is not one of {', '.join(TOKEN2WAV_TYPES)}.")
    return t


def _array(name: str, value: np.ndarray) -> TensorSpec:
    arr = np.ascontiguousarray(value, dtype=np.float32)
    return TensorSpec(name, arr.shape, QT.F32, one_block(lambda: arr))


def token2wav_plan(
    ckpt: Checkpoint,
    files: MappedFiles,
    meta: dict[str, str],
    speakers: dict[str, dict[str, Any]] | None = None,
    wtype: str = DEFAULT_TOKEN2WAV_TYPE,
) -> GGUFPlan:
    """The token2wav GGUF plan: network matrices as `wtype` ("f16" or "f32"), everything else float32.
    `speakers` defaults to the checkpoint's spk_dict.pt."""
    wtype = check_token2wav_type(wtype)
    names = token2wav_names(ckpt)
    ids = talker_ids(ckpt)
    spk = load_speakers(ckpt) if speakers is None else speakers
    if not spk:
        raise ConversionError(f"{ckpt.path / SPEAKER_FILE} holds no speakers.")
    for hf in (PROJ_W, PROJ_B):
        ckpt.require(hf)
    tensors = [_weight(files, ckpt, hf, short, wtype) for hf, short in names.items()]
    tensors += [_f32(files, ckpt, PROJ_W, PROJ_WEIGHT), _f32(files, ckpt, PROJ_B, PROJ_BIAS)]
    order = list(spk)
    for i, name in enumerate(order):
        c, m = speaker_tensor_names(i)
        tensors += [_array(c, spk[name]["cond"]), _array(m, spk[name]["ref_mel"])]
    t2w_cfg = json.dumps(ckpt.config["token2wav_config"], sort_keys=True)
    tk_cfg = json.dumps(talker_config(ckpt), sort_keys=True)

    def kv(w: gguf.GGUFWriter) -> None:
        w.add_name(meta.get("name", "Qwen2.5-Omni token2wav"))
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if wtype == "f16" else gguf.LlamaFileType.ALL_F32)
        w.add_string(KEY_T2W_CONFIG, t2w_cfg)
        w.add_string(KEY_TALKER_CONFIG, tk_cfg)
        w.add_array(KEY_SPEAKERS, order)
        w.add_array(KEY_SPEAKER_BOS, [int(spk[n]["bos_token"]) for n in order])
        for field, key in ID_KEYS.items():
            w.add_uint32(key, ids[field])
        add_meta_strings(w, meta)

    return GGUFPlan(arch=TOKEN2WAV_ARCH, kv=kv, tensors=tensors)


def speech_files_present(hf_dir: str | Path) -> bool:
    """Whether a checkpoint folder has what the speech components need besides weights (spk_dict.pt)."""
    return (Path(hf_dir) / SPEAKER_FILE).is_file()
