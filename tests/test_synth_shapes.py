"""`pocketomni synth` presets: every tensor shape equals the reference model's for the same config.json.

The reference is transformers' Qwen2_5OmniForConditionalGeneration, instantiated on the meta device (no
memory), for the 3B and 7B presets; a saved tiny fixture checkpoint confirms the hub's tensor names.
"""

from __future__ import annotations

import json

import pytest
from pocketomni.convert.checkpoint import check_shapes
from pocketomni.convert.mmproj import mmproj_expected
from pocketomni.convert.synth import synthetic_checkpoint
from pocketomni.convert.synth_shapes import PRESETS, checkpoint_shapes, parameter_count, preset_config
from pocketomni.convert.talker import talker_expected
from pocketomni.convert.thinker import thinker_names

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

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
        assert s["talker.model.layers.23.self_attn.q_proj.weight"] == (1536, 896)  # 12 heads x 128
        assert s["token2wav.code2wav_dit_model.transformer_blocks.21.ff.ff.0.weight"] == (2048, 1024)
        assert s["token2wav.code2wav_bigvgan_model.ups.0.0.weight"] == (1536, 768, 11)
    assert round(parameter_count(s7) / 1e9, 1) == 10.7  # the 7B release: 10.7B parameters


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
