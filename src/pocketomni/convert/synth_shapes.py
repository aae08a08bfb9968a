"""config.json of Qwen2.5-Omni-7B / -3B (and a tiny preset), and every checkpoint tensor's name and shape.

`CONFIG_7B` mirrors the hub's `Qwen/Qwen2.5-Omni-7B/config.json` (hub key style: `rope_scaling` +
`rope_theta`, both spellings of the DiT sizes). `CHANGES_3B` holds what `Qwen/Qwen2.5-Omni-3B/config.json`
changes, read from that file (not assumed): the thinker's text model (hidden 2048, 36 layers, 16 heads,
2 KV heads, FFN 11008, vocabulary 151936, mrope_section [16, 24, 24], separate `lm_head`), hence every
width that feeds it (vision/audio outputs, the talker's `embedding_size` 2048), and a smaller talker:
hidden 896, 24 layers, 14 heads x head_dim 64 (= 896, where the 7B's 12 x 128 = 1536 is wider than its
896 hidden state), 2 KV heads, FFN 4864, vocabulary 8448, mrope_section [16, 16, 0] (no width section).
That is 0.38B talker parameters in the checkpoint (0.37B in the talker GGUF, whose token_embd folds the
2048-wide codec table through the projection), against 1.35B for the 7B talker.

`checkpoint_shapes(config)` lists what `Qwen2_5OmniForConditionalGeneration(config).state_dict()`
holds (checked against transformers on the meta device in tests/test_synth_shapes.py).
"""

from __future__ import annotations

import copy
from typing import Any

_ROPE = {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}

CONFIG_7B: dict[str, Any] = {
    "architectures": ["Qwen2_5OmniModel"],
    "enable_audio_output": True,
    "enable_talker": True,
    "model_type": "qwen2_5_omni",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "thinker_config": {
        "model_type": "qwen2_5_omni_thinker",
        "architectures": ["Qwen2_5OmniThinkerForConditionalGeneration"],
        "audio_end_token_id": 151648, "audio_start_token_id": 151647, "audio_token_index": 151646,
        "bos_token_id": 151644, "eos_token_id": 151645, "ignore_index": -100,
        "image_token_index": 151655, "init_std": 0.02, "pad_token_id": 151643,
        "position_id_per_seconds": 25, "seconds_per_chunk": 2, "torch_dtype": "bfloat16",
        "user_token_id": 872, "video_token_index": 151656,
        "vision_end_token_id": 151653, "vision_start_token_id": 151652, "vision_token_id": 151654,
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder",
            "activation_dropout": 0.0, "activation_function": "gelu", "attention_dropout": 0.0,
            "d_model": 1280, "dropout": 0.0, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
            "encoder_layerdrop": 0.0, "encoder_layers": 32, "init_std": 0.02, "max_source_positions": 1500,
            "n_window": 100, "num_hidden_layers": 32, "num_mel_bins": 128, "output_dim": 3584,
            "scale_embedding": False,
        },
        "vision_config": {
            "model_type": "qwen2_5_omni_vision_encoder",
            "depth": 32, "embed_dim": 1280, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu",
            "hidden_size": 1280, "in_channels": 3, "in_chans": 3, "intermediate_size": 3420, "num_heads": 16,
            "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2, "tokens_per_second": 25, "window_size": 112,
        },
        "text_config": {
            "model_type": "qwen2_5_omni_text",
            "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 3584, "init_std": 0.02,
            "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
            "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06, "rope_scaling": dict(_ROPE), "rope_theta": 1000000.0,
            "sliding_window": 32768, "tie_word_embeddings": False, "use_cache": True,
            "use_sliding_window": False, "vocab_size": 152064,
        },
    },
    "talker_config": {
        "model_type": "qwen2_5_omni_talker",
        "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        "attention_dropout": 0.0, "audio_end_token_id": 151648, "audio_start_token_id": 151647,
        "audio_token_index": 151646, "embedding_size": 3584, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 896, "image_token_index": 151655, "init_std": 0.02, "initializer_range": 0.02,
        "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
        "num_attention_heads": 12, "num_hidden_layers": 24, "num_key_value_heads": 4,
        "position_id_per_seconds": 25, "rms_norm_eps": 1e-06, "rope_scaling": dict(_ROPE),
        "rope_theta": 1000000.0, "seconds_per_chunk": 2, "sliding_window": 32768, "spatial_merge_size": 2,
        "torch_dtype": "bfloat16", "tts_codec_end_token_id": 8294, "tts_codec_mask_token_id": 8296,
        "tts_codec_pad_token_id": 8292, "tts_codec_start_token_id": 8293, "tts_text_end_token_id": 151861,
        "tts_text_pad_token_id": 151859, "tts_text_start_token_id": 151860, "use_cache": True,
        "use_sliding_window": False, "video_token_index": 151656, "vision_end_token_id": 151653,
        "vision_start_token_id": 151652, "vocab_size": 8448,
    },
    "token2wav_config": {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {
            "model_type": "qwen2_5_omni_dit",
            "block_size": 24, "depth": 22, "dim": 1024, "dropout": 0.1, "emb_dim": 512,
            "enc_attention_channels": 64, "enc_channels": [256, 256, 256, 256, 768],
            "enc_dilations": [1, 2, 3, 4, 1], "enc_dim": 128, "enc_emb_dim": 192, "enc_global_context": True,
            "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_lin_neurons": 192, "enc_res2net_scale": 2,
            "enc_se_channels": 64, "ff_mult": 2, "head_dim": 64, "heads": 16, "hidden_size": 1024,
            "look_ahead_layers": [10], "look_backward_layers": [0, 20], "max_position_embeddings": 32768,
            "mel_dim": 80, "num_attention_heads": 16, "num_embeds": 8193, "num_hidden_layers": 22,
            "repeats": 2, "rope_theta": 10000.0,
        },
        "bigvgan_config": {
            "model_type": "qwen2_5_omni_bigvgan",
            "mel_dim": 80, "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "resblock_kernel_sizes": [3, 7, 11], "upsample_initial_channel": 1536,
            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4], "upsample_rates": [5, 3, 2, 2, 2, 2],
            "use_bias_at_final": False,
        },
    },
}

# What the 3B changes (nested keys, merged into a copy of CONFIG_7B).
CHANGES_3B: dict[str, Any] = {
    "thinker_config": {
        "audio_config": {"output_dim": 2048},
        "vision_config": {"out_hidden_size": 2048},
        "text_config": {
            "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
            "num_hidden_layers": 36, "num_key_value_heads": 2, "vocab_size": 151936,
        },
    },
    "talker_config": {
        "embedding_size": 2048, "head_dim": 64, "hidden_size": 896, "intermediate_size": 4864,
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "vocab_size": 8448,
        "rope_scaling": {"mrope_section": [16, 16, 0], "rope_type": "default", "type": "default"},
    },
}

# The tiny preset (the demo model): every size small, vocabularies and token ids real.
_TINY_ROPE = {"mrope_section": [4, 6, 6], "rope_type": "default", "type": "default"}
CHANGES_TINY: dict[str, Any] = {
    "thinker_config": {
        "audio_config": {"d_model": 64, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                         "encoder_layers": 2, "num_hidden_layers": 2, "output_dim": 128},
        "vision_config": {"depth": 2, "embed_dim": 64, "hidden_size": 64, "num_heads": 2,
                          "intermediate_size": 96, "fullatt_block_indexes": [1], "out_hidden_size": 128},
        "text_config": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
                        "num_hidden_layers": 2, "num_key_value_heads": 2, "rope_scaling": _TINY_ROPE},
    },
    "talker_config": {
        "embedding_size": 128, "head_dim": 16, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
    },
    "token2wav_config": {
        "dit_config": {"depth": 4, "dim": 64, "emb_dim": 32, "enc_attention_channels": 16,
                       "enc_channels": [32, 32, 32, 32, 96], "enc_dim": 32, "enc_se_channels": 16,
                       "head_dim": 16, "heads": 4, "hidden_size": 64, "look_ahead_layers": [1],
                       "look_backward_layers": [0, 3], "num_attention_heads": 4, "num_hidden_layers": 4},
        "bigvgan_config": {"upsample_initial_channel": 128},
    },
}

PRESETS = ("tiny", "3b", "7b")
MODEL_NAMES = {"tiny": "Qwen2.5-Omni-tiny", "3b": "Qwen2.5-Omni-3B", "7b": "Qwen2.5-Omni-7B"}

# preprocessor_config.json of the Omni repository (image normalisation is what the mmproj stores).
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "chunk_length": 300, "dither": 0.0, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128,
    "hop_length": 160, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_pixels": 12845056, "merge_size": 2, "min_pixels": 3136, "n_fft": 400, "n_samples": 4800000,
    "nb_max_frames": 30000, "padding_side": "right", "padding_value": 0.0, "patch_size": 14,
    "processor_class": "Qwen2_5OmniProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "return_attention_mask": True, "sampling_rate": 16000, "temporal_patch_size": 2,
}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("rope_scaling",):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def preset_config(preset: str) -> dict[str, Any]:
    """A fresh copy of the config.json dict of `preset` ("tiny", "3b" or "7b")."""
    changes = {"7b": {}, "3b": CHANGES_3B, "tiny": CHANGES_TINY}.get(preset)
    if changes is None:
        raise KeyError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return _merge(copy.deepcopy(CONFIG_7B), changes)


Shapes = dict[str, tuple[int, ...]]


def _decoder(prefix: str, c: dict[str, Any], width: int) -> Shapes:
    """A Qwen2 decoder stack (q/k/v biases, gated MLP, RMS norms) plus its final norm."""
    h, ff = c["hidden_size"], c["intermediate_size"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out: Shapes = {}
    for i in range(c["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        })
    out[prefix + "norm.weight"] = (h,)
    out[prefix + "embed_tokens.weight"] = (c["vocab_size"], width)
    return out


def _vision(c: dict[str, Any]) -> Shapes:
    d, ff, p, t = c["hidden_size"], c["intermediate_size"], c["patch_size"], c["temporal_patch_size"]
    m = d * c["spatial_merge_size"] ** 2
    v = "thinker.visual."
    out: Shapes = {v + "patch_embed.proj.weight": (d, c["in_channels"], t, p, p)}
    for i in range(c["depth"]):
        b = f"{v}blocks.{i}."
        out.update({b + "norm1.weight": (d,), b + "norm2.weight": (d,),
                    b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                    b + "mlp.gate_proj.weight": (ff, d), b + "mlp.gate_proj.bias": (ff,),
                    b + "mlp.up_proj.weight": (ff, d), b + "mlp.up_proj.bias": (ff,),
                    b + "mlp.down_proj.weight": (d, ff), b + "mlp.down_proj.bias": (d,)})
        for x in "qkv":
            out[f"{b}attn.{x}.weight"], out[f"{b}attn.{x}.bias"] = (d, d), (d,)
    out.update({v + "merger.ln_q.weight": (d,), v + "merger.mlp.0.weight": (m, m), v + "merger.mlp.0.bias": (m,),
                v + "merger.mlp.2.weight": (c["out_hidden_size"], m),
                v + "merger.mlp.2.bias": (c["out_hidden_size"],)})
    return out


def _audio(c: dict[str, Any]) -> Shapes:
    d, ff, o, a = c["d_model"], c["encoder_ffn_dim"], c["output_dim"], "thinker.audio_tower."
    out: Shapes = {a + "conv1.weight": (d, c["num_mel_bins"], 3), a + "conv1.bias": (d,),
                   a + "conv2.weight": (d, d, 3), a + "conv2.bias": (d,),
                   a + "audio_bos_eos_token.weight": (2, o)}
    for i in range(c["encoder_layers"]):
        b = f"{a}layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{b}self_attn.{n}.weight"] = (d, d)
            if n != "k_proj":  # the key projection has no bias
                out[f"{b}self_attn.{n}.bias"] = (d,)
        for n in ("self_attn_layer_norm", "final_layer_norm"):
            out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = (d,), (d,)
        out.update({b + "fc1.weight": (ff, d), b + "fc1.bias": (ff,), b + "fc2.weight": (d, ff), b + "fc2.bias": (d,)})
    out.update({a + "ln_post.weight": (d,), a + "ln_post.bias": (d,), a + "proj.weight": (o, d), a + "proj.bias": (o,)})
    return out


def _conv(out: Shapes, name: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    out[name + ".weight"] = (cout, cin, k)
    if bias:
        out[name + ".bias"] = (cout,)


def _ecapa(c: dict[str, Any], e: str) -> Shapes:
    ch, ks, scale = c["enc_channels"], c["enc_kernel_sizes"], c["enc_res2net_scale"]
    out: Shapes = {}
    _conv(out, e + "blocks.0.conv", ch[0], c["mel_dim"], ks[0])
    for i in range(1, len(ch) - 1):
        b, co = f"{e}blocks.{i}.", ch[i]
        _conv(out, b + "tdnn1.conv", co, ch[i - 1], 1)
        for j in range(scale - 1):
            _conv(out, f"{b}res2net_block.blocks.{j}.conv", co // scale, co // scale, ks[i])
        _conv(out, b + "tdnn2.conv", co, co, 1)
        _conv(out, b + "se_block.conv1", c["enc_se_channels"], co, 1)
        _conv(out, b + "se_block.conv2", co, c["enc_se_channels"], 1)
    _conv(out, e + "mfa.conv", ch[-1], ch[-1], ks[-1])
    _conv(out, e + "asp.tdnn.conv", c["enc_attention_channels"], ch[-1] * 3, 1)
    _conv(out, e + "asp.conv", ch[-1], c["enc_attention_channels"], 1)
    _conv(out, e + "fc", c["enc_dim"], ch[-1] * 2, 1)
    return out


def _linear(out: Shapes, name: str, cout: int, cin: int) -> None:
    out[name + ".weight"], out[name + ".bias"] = (cout, cin), (cout,)


def _dit(c: dict[str, Any]) -> Shapes:
    x, h, inner = "token2wav.code2wav_dit_model.", c["hidden_size"], c["head_dim"] * c["num_attention_heads"]
    out: Shapes = {x + "text_embed.codec_embed.weight": (c["num_embeds"] + 1, c["emb_dim"])}
    _linear(out, x + "time_embed.time_mlp.0", h, 256)
    _linear(out, x + "time_embed.time_mlp.2", h, h)
    _linear(out, x + "input_embed.proj", h, c["mel_dim"] + c["enc_dim"] + c["enc_emb_dim"] + c["emb_dim"])
    out.update(_ecapa(c, x + "input_embed.spk_encoder."))
    for i in range(c["num_hidden_layers"]):
        b = f"{x}transformer_blocks.{i}."
        _linear(out, b + "attn_norm.linear", 6 * h, h)
        for n in ("to_q", "to_k", "to_v"):
            _linear(out, b + "attn." + n, inner, h)
        _linear(out, b + "attn.to_out.0", h, inner)
        _linear(out, b + "ff.ff.0", h * c["ff_mult"], h)
        _linear(out, b + "ff.ff.3", h, h * c["ff_mult"])
    _linear(out, x + "norm_out.linear", 2 * h, h)
    _linear(out, x + "proj_out", c["mel_dim"], h)
    return out


def _bigvgan(c: dict[str, Any]) -> Shapes:
    g, ch0 = "token2wav.code2wav_bigvgan_model.", c["upsample_initial_channel"]
    out: Shapes = {}
    _conv(out, g + "conv_pre", ch0, c["mel_dim"], 7)
    kernels, dilations = c["resblock_kernel_sizes"], c["resblock_dilation_sizes"]
    for i, k in enumerate(c["upsample_kernel_sizes"]):
        cin, cout = ch0 // 2**i, ch0 // 2 ** (i + 1)
        out[f"{g}ups.{i}.0.weight"], out[f"{g}ups.{i}.0.bias"] = (cin, cout, k), (cout,)  # ConvTranspose1d
        for j, (rk, dil) in enumerate(zip(kernels, dilations)):
            r = f"{g}resblocks.{i * len(kernels) + j}."
            for n in range(len(dil)):
                _conv(out, f"{r}convs1.{n}", cout, cout, rk)
                _conv(out, f"{r}convs2.{n}", cout, cout, rk)
            for n in range(2 * len(dil)):
                out[f"{r}activations.{n}.act.alpha"] = out[f"{r}activations.{n}.act.beta"] = (cout,)
    last = ch0 // 2 ** len(c["upsample_rates"])
    out[g + "activation_post.act.alpha"] = out[g + "activation_post.act.beta"] = (last,)
    _conv(out, g + "conv_post", 1, last, 7, bias=False)
    return out


def checkpoint_shapes(config: dict[str, Any]) -> Shapes:
    """Name -> shape of every tensor of a Qwen2.5-Omni checkpoint with this config.json (hub names)."""
    th, tk, tw = config["thinker_config"], config["talker_config"], config["token2wav_config"]
    text = th["text_config"]
    out: Shapes = _decoder("thinker.model.", text, text["hidden_size"])
    if not text.get("tie_word_embeddings", False):
        out["thinker.lm_head.weight"] = (text["vocab_size"], text["hidden_size"])
    out.update(_vision(th["vision_config"]))
    out.update(_audio(th["audio_config"]))
    out.update(_decoder("talker.model.", tk, tk["embedding_size"]))
    out["talker.codec_head.weight"] = (tk["vocab_size"], tk["hidden_size"])
    _linear(out, "talker.thinker_to_talker_proj", tk["hidden_size"], tk["embedding_size"])
    out.update(_dit(tw["dit_config"]))
    out.update(_bigvgan(tw["bigvgan_config"]))
    return out


def parameter_count(shapes: Shapes, prefix: str = "") -> int:
    """Number of elements of the tensors whose name starts with `prefix`."""
    total = 0
    for name, shape in shapes.items():
        if name.startswith(prefix):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total
