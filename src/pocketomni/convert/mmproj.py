"""The mmproj GGUF: the thinker's vision and audio encoders for stock mtmd (projector `qwen2.5o`).

What clip.cpp expects (tools/mtmd of the vendored llama.cpp), and so what we write:
- vision (run as `qwen2.5vl_merger`): the Conv3d patch embedding split into its two temporal slices
  `v.patch_embd.weight` / `.weight.1`; separate q/k/v; RMS norms `ln1`/`ln2`; SiLU-gated MLP; the merger
  norm as `v.post_ln`; merger MLP as `mm.0` / `mm.2`; window attention as `n_wa_pattern` (the gap between
  full-attention blocks). clip.cpp fixes the merge size to 2, the temporal patch to 2 and the window
  to 112 pixels, so other values are refused here rather than silently mis-encoded.
- audio (run as `qwen2a`, the Whisper-style encoder): `a.conv1d.1/2` (weights f16, biases as [d, 1]
  columns), LayerNorms with biases, `a.post_ln`, projection `mm.a.fc`, and `a.position_embd` holding the
  encoder's sinusoidal table (not stored in the checkpoint), at least 1500 rows because mtmd always
  encodes 30 s windows (3000 mel frames -> 1500 positions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from pocketomni.audio.tower import AudioEncoderConfig, audio_gguf_name, audio_tower_names
from pocketomni.convert.checkpoint import Checkpoint, cfg_get
from pocketomni.convert.safetensors import MappedFiles, TensorInfo, iter_rows_f32, read_f32
from pocketomni.convert.writer import GGUFPlan, TensorSpec, add_meta_strings, can_store, one_block
from pocketomni.errors import ConversionError

PROJECTOR = "qwen2.5o"
V, A = "thinker.visual.", "thinker.audio_tower."
MMPROJ_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
VISION_EPS = 1e-6  # Qwen2_5OmniRMSNorm(eps=1e-6) is hard-coded in the reference vision blocks
AUDIO_EPS = 1e-5  # nn.LayerNorm default in the reference audio encoder
MTMD_AUDIO_POSITIONS = 1500  # one 30 s window after the stride-2 conv
CLIP_WINDOW = 112  # clip.cpp's window size for qwen2.5vl (it does not read the key)


def _fail(msg: str) -> ConversionError:
    return ConversionError(
        f"config.json thinker_config: {msg} Stock llama.cpp mtmd cannot encode this checkpoint; use the "
        "original Qwen2.5-Omni config.json."
    )


def vision_names(ckpt: Checkpoint) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """Vision sizes and HF name -> (GGUF name, expected HF shape); the patch embedding is split later."""
    vc, where = ckpt.vision, "thinker_config.vision_config"
    g = lambda *k, d=None: cfg_get(vc, *k, default=d, where=where)
    d, ff = int(g("hidden_size", "embed_dim")), int(g("intermediate_size"))
    heads, depth = int(g("num_heads", "num_attention_heads")), int(g("depth", "num_hidden_layers"))
    patch, tp = int(g("patch_size", "spatial_patch_size")), int(g("temporal_patch_size", d=2))
    merge, chans = int(g("spatial_merge_size", d=2)), int(g("in_channels", d=3))
    out = int(g("out_hidden_size"))
    text_hidden = int(cfg_get(ckpt.text, "hidden_size", where="thinker_config.text_config"))
    if tp != 2 or merge != 2 or chans != 3:
        raise _fail(f"vision temporal_patch_size={tp}, spatial_merge_size={merge}, in_channels={chans}; "
                    "clip.cpp needs 2, 2, 3.")
    if d % heads or (d // heads) % 4:
        raise _fail(f"vision hidden_size {d} over {heads} heads must give a head dim divisible by 4.")
    if ff == d:
        raise _fail(f"vision intermediate_size equals hidden_size ({d}); clip.cpp then swaps the MLP "
                    "up/down weights.")
    if out != text_hidden:
        raise _fail(f"vision out_hidden_size {out} differs from the text hidden_size {text_hidden}.")
    if g("hidden_act", d="silu") != "silu":
        raise _fail(f"vision hidden_act {vc.get('hidden_act')!r}; clip.cpp runs the gated MLP with SiLU.")
    if int(g("window_size", d=CLIP_WINDOW)) != CLIP_WINDOW:
        raise _fail(f"vision window_size {vc.get('window_size')}; clip.cpp always uses {CLIP_WINDOW}.")
    full = [int(i) for i in g("fullatt_block_indexes")]
    period = full[0] + 1 if full else 0
    if not full or sorted(full) != [i for i in range(depth) if (i + 1) % period == 0]:
        raise _fail(f"vision fullatt_block_indexes {full} are not evenly spaced within {depth} blocks.")
    # Every block full-attention: clip.cpp must not build window inputs at all (pattern 0 = no windows).
    wa_pattern = 0 if period == 1 else period
    sizes = {"hidden": d, "ffn": ff, "heads": heads, "depth": depth, "patch": patch, "merge": merge,
             "out": out, "wa_pattern": wa_pattern}
    names = {f"{V}patch_embed.proj.weight": ("v.patch_embd.weight", (d, chans, tp, patch, patch))}
    for i in range(depth):
        h, b = f"{V}blocks.{i}.", f"v.blk.{i}."
        names.update({
            f"{h}norm1.weight": (f"{b}ln1.weight", (d,)),
            f"{h}norm2.weight": (f"{b}ln2.weight", (d,)),
            f"{h}attn.proj.weight": (f"{b}attn_out.weight", (d, d)),
            f"{h}attn.proj.bias": (f"{b}attn_out.bias", (d,)),
            f"{h}mlp.gate_proj.weight": (f"{b}ffn_gate.weight", (ff, d)),
            f"{h}mlp.gate_proj.bias": (f"{b}ffn_gate.bias", (ff,)),
            f"{h}mlp.up_proj.weight": (f"{b}ffn_up.weight", (ff, d)),
            f"{h}mlp.up_proj.bias": (f"{b}ffn_up.bias", (ff,)),
            f"{h}mlp.down_proj.weight": (f"{b}ffn_down.weight", (d, ff)),
            f"{h}mlp.down_proj.bias": (f"{b}ffn_down.bias", (d,)),
        })
        for p in "qkv":
            names[f"{h}attn.{p}.weight"] = (f"{b}attn_{p}.weight", (d, d))
            names[f"{h}attn.{p}.bias"] = (f"{b}attn_{p}.bias", (d,))
    m = d * merge * merge
    names.update({
        f"{V}merger.ln_q.weight": ("v.post_ln.weight", (d,)),
        f"{V}merger.mlp.0.weight": ("mm.0.weight", (m, m)),
        f"{V}merger.mlp.0.bias": ("mm.0.bias", (m,)),
        f"{V}merger.mlp.2.weight": ("mm.2.weight", (out, m)),
        f"{V}merger.mlp.2.bias": ("mm.2.bias", (out,)),
    })
    return sizes, names


def audio_names(ckpt: Checkpoint) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """Audio sizes and HF name -> (GGUF name, expected HF shape)."""
    ac, where = ckpt.audio, "thinker_config.audio_config"
    g = lambda *k, d=None: cfg_get(ac, *k, default=d, where=where)
    d, ff, heads = int(g("d_model")), int(g("encoder_ffn_dim")), int(g("encoder_attention_heads"))
    layers, mels, out = int(g("encoder_layers")), int(g("num_mel_bins")), int(g("output_dim"))
    positions = int(g("max_source_positions", d=MTMD_AUDIO_POSITIONS))
    text_hidden = int(cfg_get(ckpt.text, "hidden_size", where="thinker_config.text_config"))
    if out != text_hidden:
        raise _fail(f"audio output_dim {out} differs from the text hidden_size {text_hidden}.")
    if d % heads or d % 2:
        raise _fail(f"audio d_model {d} must be even and divisible by its {heads} heads.")
    if g("activation_function", d="gelu") != "gelu" or ac.get("scale_embedding"):
        raise _fail("audio encoder must use activation 'gelu' without embedding scaling (as released).")
    sizes = {"hidden": d, "ffn": ff, "heads": heads, "layers": layers, "mels": mels, "out": out,
             "positions": positions}
    cfg = AudioEncoderConfig(num_mel_bins=mels, d_model=d, encoder_layers=layers, encoder_attention_heads=heads,
                             encoder_ffn_dim=ff, output_dim=out)
    # the runtime's own table of the tower's weights and their mmproj names: written as they are read
    names = {f"{A}{hf}": (audio_gguf_name(hf), shape) for hf, shape in audio_tower_names(cfg).items()}
    return sizes, names


def sinusoid_positions(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The audio encoder's fixed sin/cos position table with the reference's float32 rounding steps.

    The reference builds it in float32 with torch (exponent, then position * inverse timescale); we
    take a correctly rounded float32 exponent and evaluate sin/cos in float64. Large positions amplify
    1-ulp differences of torch's exp, so entries can differ by a few 1e-5 (see test_convert_units).
    """
    inc = np.log(max_timescale) / (channels // 2 - 1)
    arg = np.float32(-inc) * np.arange(channels // 2, dtype=np.float32)
    inv = np.exp(arg.astype(np.float64)).astype(np.float32)
    t = (np.arange(length, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def _stored_type(gguf_name: str, shape: tuple[int, ...], mode: str) -> QT:
    """clip.cpp's needs: vectors, biases and position tables f32; conv kernels f16; patch kernel f16 (f32
    in f32 mode); matrices in the requested type when their rows fit whole blocks, else f16."""
    if len(shape) < 2 or gguf_name.endswith(".bias") or ".position_embd." in gguf_name:
        return QT.F32
    if gguf_name.startswith("a.conv1d."):
        return QT.F16  # ggml's conv_1d runs the product in f16 whatever the kernel type
    if gguf_name.startswith("v.patch_embd."):
        return QT.F32 if mode == "f32" else QT.F16
    want = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0}[mode]
    return want if can_store(shape, want) else QT.F16


def _patch_slice(files: MappedFiles, info: TensorInfo, t: int) -> Any:
    def gen() -> Iterator[np.ndarray]:
        yield np.ascontiguousarray(read_f32(files, info)[:, :, t])

    return gen


def _column(files: MappedFiles, info: TensorInfo) -> Any:
    def gen() -> Iterator[np.ndarray]:
        yield read_f32(files, info).reshape(-1, 1)

    return gen


def mmproj_plan(ckpt: Checkpoint, files: MappedFiles, mode: str, meta: dict[str, str]) -> GGUFPlan:
    """The mmproj GGUF plan for `mode` f32, f16 or q8_0."""
    vs, vnames = vision_names(ckpt)
    as_, anames = audio_names(ckpt)
    tensors: list[TensorSpec] = []
    for hf, (name, shape) in {**vnames, **anames}.items():
        info = ckpt.tensors[hf]
        if name == "v.patch_embd.weight":
            sl = (shape[0], shape[1], shape[3], shape[4])
            for t, suffix in ((0, ""), (1, ".1")):
                qt = _stored_type(name, sl, mode)
                tensors.append(TensorSpec(name + suffix, sl, qt, _patch_slice(files, info, t)))
        elif name.startswith("a.conv1d.") and name.endswith(".bias"):
            tensors.append(TensorSpec(name, (shape[0], 1), QT.F32, _column(files, info)))
        else:
            tensors.append(TensorSpec(name, info.shape, _stored_type(name, info.shape, mode),
                                      lambda info=info: iter_rows_f32(files, info)))
    n_pos = max(as_["positions"], MTMD_AUDIO_POSITIONS)
    tensors.append(TensorSpec("a.position_embd.weight", (n_pos, as_["hidden"]), QT.F32,
                              one_block(lambda: sinusoid_positions(n_pos, as_["hidden"]))))
    pre = ckpt.preprocessor
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
        raise ConversionError(
            "preprocessor_config.json lacks image_mean / image_std (3 values each). Re-download it."
        )

    def kv(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MMPROJ)
        w.add_name(meta.get("name", "Qwen2.5-Omni mmproj"))
        w.add_file_type(MMPROJ_TYPES[mode])
        w.add_clip_projector_type(PROJECTOR)
        w.add_clip_has_vision_encoder(True)
        w.add_clip_has_audio_encoder(True)
        w.add_vision_projection_dim(vs["out"])
        w.add_vision_image_size(560)  # unused by the qwen2.5vl path (it resizes dynamically); as llama.cpp
        w.add_vision_patch_size(vs["patch"])
        w.add_vision_embedding_length(vs["hidden"])
        w.add_vision_feed_forward_length(vs["ffn"])
        w.add_vision_block_count(vs["depth"])
        w.add_vision_head_count(vs["heads"])
        w.add_vision_attention_layernorm_eps(VISION_EPS)
        w.add_vision_image_mean([float(x) for x in mean])
        w.add_vision_image_std([float(x) for x in std])
        w.add_vision_use_silu(True)
        w.add_vision_n_wa_pattern(vs["wa_pattern"])
        w.add_vision_spatial_merge_size(vs["merge"])
        w.add_vision_window_size(CLIP_WINDOW)
        w.add_audio_projection_dim(as_["out"])
        w.add_audio_embedding_length(as_["hidden"])
        w.add_audio_feed_forward_length(as_["ffn"])
        w.add_audio_block_count(as_["layers"])
        w.add_audio_head_count(as_["heads"])
        w.add_audio_num_mel_bins(as_["mels"])
        w.add_audio_attention_layernorm_eps(AUDIO_EPS)
        add_meta_strings(w, meta)

    return GGUFPlan(arch="clip", kv=kv, tensors=tensors)


def mmproj_expected(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """HF name -> expected shape for every tensor the mmproj needs."""
    _, vn = vision_names(ckpt)
    _, an = audio_names(ckpt)
    return {hf: shape for hf, (_, shape) in {**vn, **an}.items()}
