"""The thinker GGUF: Qwen2 decoder as llama.cpp's `qwen2vl` architecture (M-RoPE) plus the tokenizer.

Every size comes from `thinker_config.text_config`. The decoder-layer helpers are shared with the
talker (same Qwen2 layer layout under another prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
from gguf import GGMLQuantizationType as QT

from pocketomni.convert.checkpoint import Checkpoint, cfg_get
from pocketomni.convert.safetensors import MappedFiles, TensorInfo, iter_rows_f32
from pocketomni.convert.tokenizer import TokenizerMeta
from pocketomni.convert.writer import GGUFPlan, TensorSpec, add_meta_strings
from pocketomni.errors import ConversionError

ARCH = "qwen2vl"
PREFIX = "thinker."

# Output file types written directly (the quantized ones come from llama.cpp: quantize.LLAMA_QUANT_TYPES).
DIRECT_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}


@dataclass(frozen=True)
class DecoderShape:
    """Sizes of a Qwen2 decoder read from its config block."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    rope_theta: float
    sections: tuple[int, int, int, int]
    context: int

    def summary(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "intermediate_size": self.ffn,
            "vocab_size": self.vocab, "mrope_section": list(self.sections[:3]),
        }


def rope_sections(cfg: dict[str, Any], head_dim: int, where: str) -> tuple[tuple[int, int, int, int], float]:
    """M-RoPE sections padded to 4 (llama.cpp layout [t, h, w, extra]) and the rope base."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "mrope"):
        raise ConversionError(
            f"config.json {where} uses rope type {kind!r}; the Qwen2.5-Omni release uses plain M-RoPE. "
            "Remove the rope scaling override from config.json."
        )
    sec = rope.get("mrope_section")
    if not isinstance(sec, list) or not 1 <= len(sec) <= 4:
        raise ConversionError(
            f"config.json {where} lacks rope mrope_section (e.g. [16, 24, 24]). Re-download config.json."
        )
    sections = [int(s) for s in sec] + [0] * (4 - len(sec))
    if sum(sections) * 2 != head_dim:
        raise ConversionError(
            f"config.json {where}: mrope_section {sec} covers {sum(sections) * 2} rotary dims but the head "
            f"dim is {head_dim}; they must agree. Re-download config.json."
        )
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 1000000.0)))
    return (sections[0], sections[1], sections[2], sections[3]), theta


def decoder_shape(cfg: dict[str, Any], where: str) -> DecoderShape:
    """Read and sanity-check the decoder sizes of a Qwen2-style config block."""
    g = lambda *k, d=None: cfg_get(cfg, *k, default=d, where=where)
    hidden, heads = int(g("hidden_size")), int(g("num_attention_heads"))
    kv = int(g("num_key_value_heads", d=heads))
    head_dim = int(g("head_dim", d=hidden // heads if heads else 0))
    if heads <= 0 or heads % kv:
        raise ConversionError(f"config.json {where}: {heads} heads cannot share {kv} key/value heads.")
    if cfg.get("use_sliding_window"):
        raise ConversionError(
            f"config.json {where} enables sliding-window attention, which Qwen2.5-Omni does not use."
        )
    sections, theta = rope_sections(cfg, head_dim, where)
    return DecoderShape(
        hidden=hidden, layers=int(g("num_hidden_layers")), heads=heads, kv_heads=kv, head_dim=head_dim,
        ffn=int(g("intermediate_size")), vocab=int(g("vocab_size")), eps=float(g("rms_norm_eps", d=1e-6)),
        rope_theta=theta, sections=sections, context=int(g("max_position_embeddings", d=32768)),
    )


def layer_names(hf_layer: str, i: int, s: DecoderShape) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF name -> (GGUF name, expected HF shape) for one decoder layer."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    b, h = f"blk.{i}.", hf_layer
    return {
        f"{h}input_layernorm.weight": (f"{b}attn_norm.weight", (s.hidden,)),
        f"{h}self_attn.q_proj.weight": (f"{b}attn_q.weight", (q, s.hidden)),
        f"{h}self_attn.q_proj.bias": (f"{b}attn_q.bias", (q,)),
        f"{h}self_attn.k_proj.weight": (f"{b}attn_k.weight", (kv, s.hidden)),
        f"{h}self_attn.k_proj.bias": (f"{b}attn_k.bias", (kv,)),
        f"{h}self_attn.v_proj.weight": (f"{b}attn_v.weight", (kv, s.hidden)),
        f"{h}self_attn.v_proj.bias": (f"{b}attn_v.bias", (kv,)),
        f"{h}self_attn.o_proj.weight": (f"{b}attn_output.weight", (s.hidden, q)),
        f"{h}post_attention_layernorm.weight": (f"{b}ffn_norm.weight", (s.hidden,)),
        f"{h}mlp.gate_proj.weight": (f"{b}ffn_gate.weight", (s.ffn, s.hidden)),
        f"{h}mlp.up_proj.weight": (f"{b}ffn_up.weight", (s.ffn, s.hidden)),
        f"{h}mlp.down_proj.weight": (f"{b}ffn_down.weight", (s.hidden, s.ffn)),
    }


def decoder_names(model_prefix: str, s: DecoderShape) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF name -> (GGUF name, expected shape) for all layers plus the final norm (no embeddings/head)."""
    names: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in range(s.layers):
        names.update(layer_names(f"{model_prefix}layers.{i}.", i, s))
    names[f"{model_prefix}norm.weight"] = ("output_norm.weight", (s.hidden,))
    return names


def float_type(mode: str, info: TensorInfo) -> QT:
    """Stored type of a copied tensor: f32 mode keeps f32; f16 mode halves matrices; `bf16` (the lossless
    intermediate for llama.cpp's quantizer) keeps matrices in their stored 16-bit type. Vectors stay f32."""
    if len(info.shape) < 2 or mode == "f32":
        return QT.F32
    if mode == "f16":
        return QT.F16
    return {"BF16": QT.BF16, "F16": QT.F16}.get(info.dtype, QT.F32)


def copy_spec(files: MappedFiles, info: TensorInfo, gguf_name: str, qtype: QT) -> TensorSpec:
    """A tensor copied unchanged (HF row-major layout equals GGUF's reversed-dims layout)."""
    return TensorSpec(gguf_name, info.shape, qtype, lambda: iter_rows_f32(files, info))


def thinker_names(ckpt: Checkpoint) -> tuple[DecoderShape, dict[str, tuple[str, tuple[int, ...]]]]:
    """Thinker sizes and the HF -> GGUF name/shape map, output head included when stored."""
    s = decoder_shape(ckpt.text, "thinker_config.text_config")
    names = decoder_names(f"{PREFIX}model.", s)
    names[f"{PREFIX}model.embed_tokens.weight"] = ("token_embd.weight", (s.vocab, s.hidden))
    tied = bool(ckpt.text.get("tie_word_embeddings", False)) and f"{PREFIX}lm_head.weight" not in ckpt.tensors
    if not tied:
        names[f"{PREFIX}lm_head.weight"] = ("output.weight", (s.vocab, s.hidden))
    return s, names


def thinker_plan(
    ckpt: Checkpoint, files: MappedFiles, tok: TokenizerMeta, mode: str, ftype: int, meta: dict[str, str]
) -> GGUFPlan:
    """The thinker GGUF plan; `mode` is f32, f16 or bf16 (quantizer intermediate)."""
    s, names = thinker_names(ckpt)
    order = sorted(names, key=lambda n: _order_key(names[n][0]))
    tensors = [
        copy_spec(files, ckpt.tensors[hf], names[hf][0], float_type(mode, ckpt.tensors[hf])) for hf in order
    ]

    def kv(w: gguf.GGUFWriter) -> None:
        add_decoder_kv(w, s, meta.get("name", "Qwen2.5-Omni thinker"), ftype,
                       head_dim=s.head_dim != s.hidden // s.heads)
        tok.add_to(w)
        add_meta_strings(w, meta)

    return GGUFPlan(arch=ARCH, kv=kv, tensors=tensors)


def add_decoder_kv(w: gguf.GGUFWriter, s: DecoderShape, name: str, ftype: int, head_dim: bool) -> None:
    """The llama.cpp hyper-parameters of a Qwen2 M-RoPE decoder (thinker or talker).
    `head_dim`: write key/value lengths (needed when heads x head_dim != hidden)."""
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(ftype)
    w.add_context_length(s.context)
    w.add_embedding_length(s.hidden)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    if head_dim:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_dimension_sections(list(s.sections))


def _order_key(gguf_name: str) -> tuple[int, int, str]:
    """token_embd first, then blocks in numeric order, then output tensors (llama.cpp's usual order)."""
    if gguf_name.startswith("blk."):
        return (1, int(gguf_name.split(".")[1]), gguf_name)
    return (0 if gguf_name.startswith("token_embd") else 2, 0, gguf_name)
