"""The talker GGUF: the Qwen2.5-Omni talker decoder for stock llama.cpp, fed with embeddings.

Architecture `paddleocr`, not `qwen2vl`: both are the same Qwen2 layer with M-RoPE in llama.cpp, but
`qwen2vl` requires heads * head_dim == hidden, while the talker has head_dim set on its own (the 7B
one: 12 heads x 128 = 1536 wide attention on an 896 hidden state; the 3B one: 14 x 64 = 896). llama.cpp's
`paddleocr` sizes the attention from `attention.key_length` and takes the q/k/v biases (optional there),
so the talker loads unchanged. Every size comes from config.json's talker_config, the M-RoPE sections
padded to llama.cpp's four: the 3B's [16, 16, 0] is written [16, 16, 0, 0] and llama.cpp's M-RoPE then
turns rotary frequencies 0-15 by the temporal and 16-31 by the height position, none by the width,
as the reference does (tests/test_talker_convert.py checks both, and that a wrong split fails).

The talker embeds codec ids in the thinker's width and projects every input row with
`thinker_to_talker_proj` (W, b). Input rows are therefore W @ (codec_embed + thinker part) + b; the
file's `token_embd` holds W @ codec_embed[c] + b for every codec id, so the runtime feeds
`token_embd[c] + W @ x`. W and b themselves live in the token2wav GGUF (llama.cpp rejects unknown
tensors in a model file). The codec head becomes `output`; the file has no tokenizer
(`tokenizer.ggml.model = "none"`, `vocab_size` rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from pocketomni.convert.checkpoint import Checkpoint, cfg_get
from pocketomni.convert.safetensors import MappedFiles, iter_rows_f32, read_f32
from pocketomni.convert.thinker import (
    DecoderShape,
    add_decoder_kv,
    copy_spec,
    decoder_names,
    decoder_shape,
    float_type,
)
from pocketomni.convert.writer import GGUFPlan, TensorSpec, add_meta_strings
from pocketomni.errors import ConversionError

ARCH = "paddleocr"
PREFIX = "talker."
EMBED = f"{PREFIX}model.embed_tokens.weight"
HEAD = f"{PREFIX}codec_head.weight"
PROJ_W = f"{PREFIX}thinker_to_talker_proj.weight"
PROJ_B = f"{PREFIX}thinker_to_talker_proj.bias"


def talker_config(ckpt: Checkpoint) -> dict[str, Any]:
    """The talker_config block of config.json (ConversionError if the checkpoint has no talker)."""
    cfg = ckpt.config.get("talker_config")
    if not isinstance(cfg, dict):
        raise ConversionError(
            f"{ckpt.path / 'config.json'} has no talker_config; speech output needs the full Qwen2.5-Omni "
            "checkpoint (config.json with talker_config and token2wav_config). Re-download config.json."
        )
    return cfg


def talker_names(ckpt: Checkpoint) -> tuple[DecoderShape, int, dict[str, tuple[str, tuple[int, ...]]]]:
    """Talker sizes, the thinker width it embeds in, and HF -> (GGUF name, expected shape) of copied tensors.

    token_embd is computed (not copied), so its sources (embed_tokens, the projection) are listed with
    an empty GGUF name."""
    cfg = talker_config(ckpt)
    s = decoder_shape(cfg, "talker_config")
    width = int(cfg_get(cfg, "embedding_size", where="talker_config"))
    names = decoder_names(f"{PREFIX}model.", s)
    names[HEAD] = ("output.weight", (s.vocab, s.hidden))
    names[EMBED] = ("", (s.vocab, width))
    names[PROJ_W] = ("", (s.hidden, width))
    names[PROJ_B] = ("", (s.hidden,))
    return s, width, names


def talker_expected(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """HF name -> expected shape of every tensor the talker GGUF reads (for `check_shapes`)."""
    return {hf: shape for hf, (_, shape) in talker_names(ckpt)[2].items()}


def _token_embd(ckpt: Checkpoint, files: MappedFiles) -> Iterator[np.ndarray]:
    """Rows W @ codec_embed[c] + b, computed block by block in float32."""
    w = read_f32(files, ckpt.tensors[PROJ_W])
    b = read_f32(files, ckpt.tensors[PROJ_B])
    wt = np.ascontiguousarray(w.T)
    for block in iter_rows_f32(files, ckpt.tensors[EMBED]):
        yield block @ wt + b


def _order(gguf_name: str) -> tuple[int, int, str]:
    """Blocks in numeric order, then the output tensors (token_embd is emitted first separately)."""
    if gguf_name.startswith("blk."):
        return (0, int(gguf_name.split(".")[1]), gguf_name)
    return (1, 0, gguf_name)


def talker_plan(
    ckpt: Checkpoint, files: MappedFiles, mode: str, ftype: int, meta: dict[str, str]
) -> GGUFPlan:
    """The talker GGUF plan; `mode` is f32, f16 or bf16 (lossless intermediate for llama.cpp's quantizer)."""
    s, _, names = talker_names(ckpt)
    if s.context < 1 or s.vocab < 1:
        raise ConversionError("config.json talker_config has an empty vocabulary or context.")
    copied = [hf for hf, (g, _) in names.items() if g]
    embd_type = QT.F16 if mode == "f16" else QT.F32  # computed rows: no stored 16-bit type to keep
    tensors = [
        TensorSpec("token_embd.weight", (s.vocab, s.hidden), embd_type, lambda: _token_embd(ckpt, files))
    ]
    for hf in sorted(copied, key=lambda n: _order(names[n][0])):
        tensors.append(copy_spec(files, ckpt.tensors[hf], names[hf][0], float_type(mode, ckpt.tensors[hf])))

    def kv(w: gguf.GGUFWriter) -> None:
        add_decoder_kv(w, s, meta.get("name", "Qwen2.5-Omni talker"), ftype, head_dim=True)
        w.add_vocab_size(s.vocab)
        w.add_tokenizer_model("none")
        add_meta_strings(w, meta)

    return GGUFPlan(arch=ARCH, kv=kv, tensors=tensors)
