"""`pocketomni synth` presets: every tensor shape equals the reference model's for the same config.json.

The reference is transformers' Qwen2_5OmniForConditionalGeneration, instantiated on the meta device (no
memory), for the 3B and 7B presets; a saved tiny fixture checkpoint confirms the hub's tensor names.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from pocketomni.convert.checkpoint import check_shapes
from pocketomni.convert.mmproj import mmproj_expected
from pocketomni.convert.synth import synthetic_checkpoint
from pocketomni.convert.synth_shapes import PRESETS, checkpoint_shapes, parameter_count, preset_config
from pocketomni.convert.talker import talker_expected
from pocketomni.convert.thinker import thinker_names

# transformers 5 nests the thinker's parts under `thinker.model.`; checkpoints (and save_pretrained) use
# the hub names below (confirmed by test_names_match_a_saved_checkpoint).
HUB_PREFIXES = (
    ("thinker.model.language_model.", "thinker.model."),
    ("thinker.model.visual.", "thinker.visual."),
    ("thinker.model.audio_tower.", "thinker.audio_tower."),
)


def _hub_name(name: str) -> str:
    for new, hub in HUB_PREFIXES:
        if name.startswith(new):
            return hub + name[len(new):]
    return name


def reference_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the reference model's state dict for `config` (meta device, hub names)."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(**json.loads(json.dumps(config))))
    return {_hub_name(k): tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_shapes_equal_the_reference_model(preset: str) -> None:
    config = preset_config(preset)
    ours, ref = checkpoint_shapes(config), reference_shapes(config)
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    wrong = {k: (ours[k], ref[k]) for k in ours if ours[k] != ref[k]}
    assert wrong == {}


def test_real_sizes() -> None:
    """The sizes the benchmarks rely on (Qwen2.5-Omni-7B / -3B config.json, thinker and encoders)."""
    s7, s3 = checkpoint_shapes(preset_config("7b")), checkpoint_shapes(preset_config("3b"))
    assert s7["thinker.model.embed_tokens.weight"] == (152064, 3584)
    assert s7["thinker.model.layers.27.mlp.up_proj.weight"] == (18944, 3584)
    assert s7["thinker.model.layers.0.self_attn.k_proj.weight"] == (512, 3584)  # 4 KV heads x 128
    assert "thinker.model.layers.28.input_layernorm.weight" not in s7
    assert s3["thinker.model.embed_tokens.weight"] == (151936, 2048)
    assert s3["thinker.model.layers.35.mlp.down_proj.weight"] == (2048, 11008)
    assert s3["thinker.model.layers.0.self_attn.k_proj.weight"] == (256, 2048)  # 2 KV heads x 128
    for s, width in ((s7, 3584), (s3, 2048)):
        assert s["thinker.visual.blocks.31.mlp.up_proj.weight"] == (3420, 1280)
        assert s["thinker.visual.merger.mlp.2.weight"] == (width, 5120)
        assert s["thinker.audio_tower.layers.31.fc1.weight"] == (5120, 1280)
        assert s["thinker.audio_tower.proj.weight"] == (width, 1280)
        assert s["talker.model.embed_tokens.weight"] == (8448, width)
        assert s["token2wav.code2wav_dit_model.transformer_blocks.21.ff.ff.0.weight"] == (2048, 1024)
        assert s["token2wav.code2wav_bigvgan_model.ups.0.0.weight"] == (1536, 768, 11)
    assert round(parameter_count(s7) / 1e9, 1) == 10.7  # the 7B release: 10.7B parameters


def _talker_parameters(c: dict) -> int:
    """Parameters of a talker checkpoint from its config.json sizes alone (Qwen2 layers with q/k/v biases)."""
    h, n, kv, d, ff = (c[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                      "intermediate_size"))
    vocab, width = c["vocab_size"], c["embedding_size"]
    layer = (h + 1) * n * d + 2 * (h + 1) * kv * d + n * d * h + 3 * h * ff + 2 * h
    return c["num_hidden_layers"] * layer + h + vocab * width + vocab * h + (width + 1) * h


def test_talker_sizes() -> None:
    """The 3B talker is not the 7B one: config.json of Qwen2.5-Omni-3B (talker_config) vs -7B."""
    c7, c3 = preset_config("7b"), preset_config("3b")
    s7, s3 = checkpoint_shapes(c7), checkpoint_shapes(c3)
    t3 = c3["talker_config"]
    real = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "head_dim": 64, "intermediate_size": 4864, "embedding_size": 2048, "vocab_size": 8448}
    assert {k: t3[k] for k in real} == real
    assert t3["rope_scaling"]["mrope_section"] == [16, 16, 0]
    assert c3["thinker_config"]["text_config"]["rope_scaling"]["mrope_section"] == [16, 24, 24]
    assert c3["thinker_config"]["text_config"]["tie_word_embeddings"] is False
    layer = "talker.model.layers.23."
    assert s3[layer + "self_attn.q_proj.weight"] == (896, 896)  # 14 heads x 64 = the hidden size
    assert s3[layer + "self_attn.k_proj.weight"] == s3[layer + "self_attn.v_proj.weight"] == (128, 896)
    assert s3[layer + "self_attn.o_proj.weight"] == (896, 896)
    assert s3[layer + "mlp.gate_proj.weight"] == (4864, 896)
    assert s3[layer + "mlp.down_proj.weight"] == (896, 4864)
    assert s3["talker.thinker_to_talker_proj.weight"] == (896, 2048)
    assert s3["talker.codec_head.weight"] == (8448, 896)
    assert "talker.model.layers.24.input_layernorm.weight" not in s3
    assert s7[layer + "self_attn.q_proj.weight"] == (1536, 896)  # 12 heads x 128, wider than the hidden size
    assert s7[layer + "self_attn.k_proj.weight"] == (512, 896)
    assert s7[layer + "mlp.gate_proj.weight"] == (18944, 896)
    assert s7["talker.thinker_to_talker_proj.weight"] == (896, 3584)
    # parameter counts: the shapes agree with the config arithmetic (0.38B at 3B, 1.35B at 7B)
    n3, n7 = parameter_count(s3, "talker."), parameter_count(s7, "talker.")
    assert n3 == _talker_parameters(t3) == 384_604_928
    assert n7 == _talker_parameters(c7["talker_config"]) == 1_351_360_256
    assert round(n3 / 1e9, 2) == 0.38 and round(n7 / 1e9, 2) == 1.35


def test_talker_gguf_plan_takes_every_size_from_config(tmp_path) -> None:
    """The 3B talker GGUF's hyper-parameters and tensor shapes come from talker_config: head_dim 64 (not
    hidden / heads by accident: 14 x 64 = 896 here, 12 x 128 = 1536 at 7B), 2 KV heads, FFN 4864, and the
    M-RoPE sections [16, 16, 0] padded to llama.cpp's four ([16, 16, 0, 0]: rotary dims 0-31 temporal,
    32-63 height, none width). The file holds 0.37B parameters: its token_embd folds the 2048-wide codec
    table through the projection (8448 x 896)."""
    from pocketomni.convert.synth import SyntheticFiles
    from pocketomni.convert.talker import talker_plan
    from pocketomni.convert.writer import GGUFPlan, write_gguf
    from pocketomni.engine.weights import read_metadata

    want = {
        "3b": dict(hidden=896, heads=14, kv=2, head_dim=64, ffn=4864, sections=[16, 16, 0, 0],
                   params=373_036_928),
        "7b": dict(hidden=896, heads=12, kv=4, head_dim=128, ffn=18944, sections=[16, 24, 24, 0],
                   params=1_325_439_872),
    }
    for preset, w in want.items():
        ckpt = synthetic_checkpoint(preset)
        plan = talker_plan(ckpt, SyntheticFiles(0, ckpt.config), "bf16", 32, {"name": f"{preset} talker"})
        shapes = {t.name: t.shape for t in plan.tensors}
        q, kv = w["heads"] * w["head_dim"], w["kv"] * w["head_dim"]
        assert shapes["token_embd.weight"] == shapes["output.weight"] == (8448, w["hidden"])
        assert shapes["blk.23.attn_q.weight"] == (q, w["hidden"]) and shapes["blk.23.attn_q.bias"] == (q,)
        assert shapes["blk.23.attn_k.weight"] == shapes["blk.23.attn_v.weight"] == (kv, w["hidden"])
        assert shapes["blk.23.attn_output.weight"] == (w["hidden"], q)
        assert shapes["blk.23.ffn_up.weight"] == (w["ffn"], w["hidden"])
        assert shapes["blk.23.ffn_down.weight"] == (w["hidden"], w["ffn"])
        assert "blk.24.attn_norm.weight" not in shapes
        assert sum(math.prod(s) for s in shapes.values()) == w["params"]
        path = tmp_path / f"{preset}-kv.gguf"
        write_gguf(path, GGUFPlan(plan.arch, plan.kv, []))  # hyper-parameters only
        meta = read_metadata(path)
        a = meta["general.architecture"]
        assert a == "paddleocr"
        got = {k: meta[f"{a}.{k}"] for k in ("embedding_length", "block_count", "feed_forward_length",
                                             "attention.head_count", "attention.head_count_kv",
                                             "attention.key_length", "attention.value_length",
                                             "rope.dimension_sections")}
        assert got == {"embedding_length": w["hidden"], "block_count": 24, "feed_forward_length": w["ffn"],
                       "attention.head_count": w["heads"], "attention.head_count_kv": w["kv"],
                       "attention.key_length": w["head_dim"], "attention.value_length": w["head_dim"],
                       "rope.dimension_sections": w["sections"]}
        assert 2 * sum(w["sections"]) == w["head_dim"]  # llama.cpp's n_rot = key_length: every dim rotated
    assert round(want["3b"]["params"] / 1e9, 2) == 0.37


@pytest.mark.parametrize("preset", ["3b", "7b"])
def test_converter_accepts_the_synthetic_checkpoint(preset: str) -> None:
    ckpt = synthetic_checkpoint(preset)
    _, names = thinker_names(ckpt)
    check_shapes(ckpt, {**{hf: s for hf, (_, s) in names.items()}, **mmproj_expected(ckpt), **talker_expected(ckpt)})


def test_names_match_a_saved_checkpoint(tiny_checkpoint) -> None:
    """save_pretrained's tensor names and shapes (the hub layout the converter reads) for a tiny config."""
    from pocketomni.convert.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny_checkpoint, need_speech=True)
    saved = {name: tuple(info.shape) for name, info in ckpt.tensors.items()}
    assert saved == checkpoint_shapes(ckpt.config)


def test_talker_type_defaults_per_size() -> None:
    from pocketomni.convert.synth import default_talker_quant

    assert default_talker_quant("3b", "q4_k_m") == "q4_0"  # the 3B talker: q4_0 measured fastest (issue 14)
    assert default_talker_quant("3b", "q8_0") == "q4_0"
    assert default_talker_quant("3b", "f32") == "f32"  # an unquantized thinker keeps an unquantized talker
    assert default_talker_quant("7b", "q4_k_m") == "q4_k_m"
    assert default_talker_quant("tiny", "q8_0") == "q8_0"
