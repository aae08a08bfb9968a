"""Shape variants and the config.json of a tiny Qwen2.5-Omni, written in the hub's own key style.

The dict mirrors `Qwen/Qwen2.5-Omni-7B/config.json` (old-style `rope_scaling` + `rope_theta`, the
thinker's vision/audio/text sub-configs, talker, token2wav with dit/bigvgan); only sizes are tiny.
Real vocabularies stay real: thinker 152064, talker 8448, DiT codec 8193.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """Sizes of one tiny checkpoint. Every other size is derived so the reference's constraints hold."""

    name: str
    seed: int
    # thinker LLM
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    mrope: tuple[int, int, int]  # sums to head_dim // 2
    layers: int = 2
    # vision encoder
    vis_hidden: int = 32
    vis_heads: int = 2
    vis_intermediate: int = 48
    vis_depth: int = 2
    vis_fullatt: tuple[int, ...] = (1,)
    # audio encoder
    aud_d_model: int = 32
    aud_heads: int = 2
    aud_ffn: int = 64
    aud_layers: int = 2
    # talker (head_dim * heads need not equal hidden: the 7B talker is 12 x 128 on 896, the 3B 14 x 64)
    tk_hidden: int = 32
    tk_heads: int = 4
    tk_kv_heads: int = 2
    tk_head_dim: int = 16
    tk_intermediate: int = 64
    tk_mrope: tuple[int, int, int] = (2, 3, 3)
    tk_layers: int = 2
    tk_rope_theta: float = 1000000.0
    # token2wav
    dit_hidden: int = 64
    dit_heads: int = 4
    dit_head_dim: int = 16
    dit_layers: int = 4
    dit_look_ahead: tuple[int, ...] = (1,)
    dit_look_backward: tuple[int, ...] = (0, 3)
    dit_emb_dim: int = 32
    ecapa_channels: tuple[int, ...] = (32, 32, 32, 32, 96)
    ecapa_attention: int = 16
    ecapa_se: int = 16
    ecapa_dim: int = 32
    bigvgan_channels: int = 128

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


VARIANT_SPECS: dict[str, Variant] = {
    # GQA ratio 1, M-RoPE (2, 3, 3) on head_dim 16.
    "base": Variant(name="base", seed=1, hidden=64, heads=4, kv_heads=4, intermediate=128, mrope=(2, 3, 3)),
    # GQA ratio 4, head_dim 32, M-RoPE (4, 6, 6) (the real 7B ratio of sections), 3 vision blocks with
    # full attention in the last only.
    "gqa4": Variant(
        name="gqa4", seed=2, hidden=128, heads=4, kv_heads=1, intermediate=256, mrope=(4, 6, 6),
        vis_hidden=48, vis_heads=3, vis_intermediate=64, vis_depth=3, vis_fullatt=(2,),
        aud_d_model=48, aud_heads=3, aud_ffn=96,
        tk_hidden=48, tk_heads=6, tk_kv_heads=2, tk_head_dim=8, tk_intermediate=96, tk_mrope=(2, 1, 1),
        dit_hidden=48, dit_heads=3, dit_head_dim=16, dit_layers=3, dit_look_ahead=(2,), dit_look_backward=(0,),
    ),
    # Odd head count (7 heads, 1 KV head: GQA 7), odd M-RoPE split (2, 2, 4), 3 thinker layers.
    "odd": Variant(
        name="odd", seed=3, hidden=112, heads=7, kv_heads=1, intermediate=160, mrope=(2, 2, 4), layers=3,
        vis_hidden=40, vis_heads=5, vis_intermediate=56, vis_fullatt=(0, 1),
        aud_d_model=40, aud_heads=5, aud_ffn=72,
        tk_hidden=40, tk_heads=5, tk_kv_heads=5, tk_head_dim=8, tk_intermediate=80, tk_mrope=(1, 1, 2),
        dit_hidden=80, dit_heads=5, dit_head_dim=16, dit_layers=2, dit_look_ahead=(1,), dit_look_backward=(0,),
        bigvgan_channels=64,
    ),
    # The real 3B talker's traits at tiny size: M-RoPE (4, 4, 0) with an empty width section (the 3B's
    # [16, 16, 0]), GQA 7 (its 14 / 2 heads), 3 layers; attention 7 x 16 = 112 wide on a 96 hidden state.
    # Rope base 100 instead of 1e6: with 8 frequencies per head the height section's would otherwise
    # turn by under 1e-3 rad per position, too little for a wrong split to show in the logits.
    "talker3b": Variant(
        name="talker3b", seed=4, hidden=64, heads=4, kv_heads=2, intermediate=128, mrope=(2, 3, 3),
        tk_hidden=96, tk_heads=7, tk_kv_heads=1, tk_head_dim=16, tk_intermediate=208, tk_mrope=(4, 4, 0),
        tk_layers=3, tk_rope_theta=100.0,
    ),
}
VARIANTS: tuple[str, ...] = tuple(VARIANT_SPECS)


def _check(v: Variant) -> None:
    assert v.hidden % v.heads == 0 and v.heads % v.kv_heads == 0, v
    assert sum(v.mrope) == v.head_dim // 2, v
    assert sum(v.tk_mrope) == v.tk_head_dim // 2, v
    assert v.tk_heads % v.tk_kv_heads == 0, v
    assert v.vis_hidden % v.vis_heads == 0 and all(0 <= i < v.vis_depth for i in v.vis_fullatt), v
    # Full-attention blocks every p-th layer (p-1, 2p-1, ...), the only layout mtmd can express.
    p = v.vis_fullatt[0] + 1
    assert list(v.vis_fullatt) == list(range(p - 1, v.vis_depth, p)), v
    assert v.aud_d_model % v.aud_heads == 0, v
    assert all(0 <= i < v.dit_layers for i in v.dit_look_ahead + v.dit_look_backward), v
    assert v.bigvgan_channels >= 64, "six upsample stages halve the channels"


def hub_config(v: Variant) -> dict:
    """config.json for variant `v`, in the key style of the real Qwen2.5-Omni-7B repo."""
    _check(v)
    rope = lambda sec: {"mrope_section": list(sec), "rope_type": "default", "type": "default"}
    audio = {
        "model_type": "qwen2_5_omni_audio_encoder",
        "activation_dropout": 0.0, "activation_function": "gelu", "attention_dropout": 0.0,
        "d_model": v.aud_d_model, "dropout": 0.0,
        "encoder_attention_heads": v.aud_heads, "encoder_ffn_dim": v.aud_ffn,
        "encoder_layerdrop": 0.0, "encoder_layers": v.aud_layers, "init_std": 0.02,
        "max_source_positions": 1500, "n_window": 100, "num_hidden_layers": v.aud_layers,
        "num_mel_bins": 128, "output_dim": v.hidden, "scale_embedding": False,
    }
    vision = {
        "model_type": "qwen2_5_omni_vision_encoder",
        "depth": v.vis_depth, "embed_dim": v.vis_hidden, "fullatt_block_indexes": list(v.vis_fullatt),
        "hidden_act": "silu", "hidden_size": v.vis_hidden, "in_channels": 3, "in_chans": 3,
        "intermediate_size": v.vis_intermediate, "num_heads": v.vis_heads,
        "out_hidden_size": v.hidden, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "temporal_patch_size": 2, "tokens_per_second": 25, "window_size": 112,
    }
    text = {
        "model_type": "qwen2_5_omni_text",
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": v.hidden, "init_std": 0.02,
        "intermediate_size": v.intermediate, "max_position_embeddings": 32768, "max_window_layers": 28,
        "num_attention_heads": v.heads, "num_hidden_layers": v.layers, "num_key_value_heads": v.kv_heads,
        "rms_norm_eps": 1e-06, "rope_scaling": rope(v.mrope), "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": False, "use_cache": True,
        "use_sliding_window": False, "vocab_size": 152064,
    }
    thinker = {
        "model_type": "qwen2_5_omni_thinker",
        "architectures": ["Qwen2_5OmniThinkerForConditionalGeneration"],
        "audio_config": audio, "vision_config": vision, "text_config": text,
        "audio_end_token_id": 151648, "audio_start_token_id": 151647, "audio_token_index": 151646,
        "bos_token_id": 151644, "eos_token_id": 151645, "ignore_index": -100,
        "image_token_index": 151655, "init_std": 0.02, "pad_token_id": 151643,
        "position_id_per_seconds": 25, "seconds_per_chunk": 2, "torch_dtype": "bfloat16",
        "user_token_id": 872, "video_token_index": 151656,
        "vision_end_token_id": 151653, "vision_start_token_id": 151652, "vision_token_id": 151654,
    }
    talker = {
        "model_type": "qwen2_5_omni_talker",
        "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        "attention_dropout": 0.0, "audio_end_token_id": 151648, "audio_start_token_id": 151647,
        "audio_token_index": 151646, "embedding_size": v.hidden, "head_dim": v.tk_head_dim,
        "hidden_act": "silu", "hidden_size": v.tk_hidden, "image_token_index": 151655, "init_std": 0.02,
        "initializer_range": 0.02, "intermediate_size": v.tk_intermediate,
        "max_position_embeddings": 32768, "max_window_layers": 28,
        "num_attention_heads": v.tk_heads, "num_hidden_layers": v.tk_layers,
        "num_key_value_heads": v.tk_kv_heads, "position_id_per_seconds": 25, "rms_norm_eps": 1e-06,
        "rope_scaling": rope(v.tk_mrope), "rope_theta": v.tk_rope_theta, "seconds_per_chunk": 2,
        "sliding_window": 32768, "spatial_merge_size": 2, "torch_dtype": "bfloat16",
        "tts_codec_end_token_id": 8294, "tts_codec_mask_token_id": 8296, "tts_codec_pad_token_id": 8292,
        "tts_codec_start_token_id": 8293, "tts_text_end_token_id": 151861, "tts_text_pad_token_id": 151859,
        "tts_text_start_token_id": 151860, "use_cache": True, "use_sliding_window": False,
        "video_token_index": 151656, "vision_end_token_id": 151653, "vision_start_token_id": 151652,
        "vocab_size": 8448,
    }
    ch = list(v.ecapa_channels)
    dit = {
        "model_type": "qwen2_5_omni_dit",
        # The hub file carries both spellings (dim/depth/heads and hidden_size/...); keep both.
        "block_size": 24, "depth": v.dit_layers, "dim": v.dit_hidden, "dropout": 0.1,
        "emb_dim": v.dit_emb_dim, "enc_attention_channels": v.ecapa_attention, "enc_channels": ch,
        "enc_dilations": [1, 2, 3, 4, 1], "enc_dim": v.ecapa_dim, "enc_emb_dim": 192,
        "enc_global_context": True, "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_lin_neurons": 192,
        "enc_res2net_scale": 2, "enc_se_channels": v.ecapa_se, "ff_mult": 2,
        "head_dim": v.dit_head_dim, "heads": v.dit_heads, "hidden_size": v.dit_hidden,
        "look_ahead_layers": list(v.dit_look_ahead), "look_backward_layers": list(v.dit_look_backward),
        "max_position_embeddings": 32768, "mel_dim": 80, "num_attention_heads": v.dit_heads,
        "num_embeds": 8193, "num_hidden_layers": v.dit_layers, "repeats": 2,
        "rope_theta": 10000.0,
    }
    bigvgan = {
        "model_type": "qwen2_5_omni_bigvgan",
        "mel_dim": 80, "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11], "upsample_initial_channel": v.bigvgan_channels,
        "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4], "upsample_rates": [5, 3, 2, 2, 2, 2],
        "use_bias_at_final": False,
    }
    return {
        "architectures": ["Qwen2_5OmniModel"],
        "enable_audio_output": True,
        "enable_talker": True,
        "model_type": "qwen2_5_omni",
        "talker_config": talker,
        "thinker_config": thinker,
        "token2wav_config": {"model_type": "qwen2_5_omni_token2wav", "dit_config": dit, "bigvgan_config": bigvgan},
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
    }
