"""The tiny Qwen2.5-Omni fixture checkpoints: hub layout, reference round trip, processor, tokenizer."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omni_fixtures import VARIANTS, build_checkpoint, load_processor, load_reference
from omni_fixtures.config import VARIANT_SPECS
from omni_fixtures.corpus import CORPUS
from omni_fixtures.reference import has_video_processor
from omni_fixtures.tokenizer import SPECIAL_IDS, tiktoken_encoding

HUB_FILES = [
    "added_tokens.json", "chat_template.json", "config.json", "generation_config.json", "merges.txt",
    "model.safetensors.index.json", "preprocessor_config.json", "special_tokens_map.json", "spk_dict.pt",
    "tokenizer.json", "tokenizer_config.json", "vocab.json",
]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    torch.set_num_threads(1)
    return load_reference(tiny_checkpoint)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return load_processor(tiny_checkpoint)


def _chat(processor, content) -> str:
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hub_layout_and_config(tiny_checkpoints, variant):
    path = tiny_checkpoints[variant]
    for name in HUB_FILES:
        assert (path / name).is_file(), name
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2_5OmniModel"] and cfg["model_type"] == "qwen2_5_omni"
    assert cfg["enable_audio_output"] is True
    th = cfg["thinker_config"]
    expected = {"vision_start_token_id": 151652, "vision_end_token_id": 151653, "audio_token_index": 151646,
                "image_token_index": 151655, "video_token_index": 151656, "audio_start_token_id": 151647,
                "audio_end_token_id": 151648, "user_token_id": 872, "position_id_per_seconds": 25,
                "seconds_per_chunk": 2}
    assert {k: th[k] for k in expected} == expected
    text, vis, aud = th["text_config"], th["vision_config"], th["audio_config"]
    assert text["vocab_size"] == 152064 and cfg["talker_config"]["vocab_size"] == 8448
    assert cfg["token2wav_config"]["dit_config"]["num_embeds"] == 8193
    assert vis["out_hidden_size"] == aud["output_dim"] == cfg["talker_config"]["embedding_size"] == text["hidden_size"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["rope_scaling"]["mrope_section"]) == head_dim // 2
    big = cfg["token2wav_config"]["bigvgan_config"]
    full = vis["fullatt_block_indexes"]  # regular pattern p-1, 2p-1, ... (what mtmd can express)
    assert full == list(range(full[0], vis["depth"], full[0] + 1))
    assert int(np.prod(big["upsample_rates"])) == 240  # 24 kHz at 100 mel frames per second
    if variant == "odd":
        assert text["num_attention_heads"] % 2 == 1
    if variant == "gqa4":
        assert text["num_attention_heads"] == 4 * text["num_key_value_heads"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_bf16_safetensors_with_hub_names(tiny_checkpoints, variant):
    from safetensors import safe_open

    path = tiny_checkpoints[variant]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    seen = {}
    for shard in shards:
        with safe_open(str(path / shard), framework="pt") as f:
            for key in f.keys():
                seen[key] = f.get_slice(key).get_dtype()
    assert set(seen) == set(index["weight_map"])
    assert set(seen.values()) == {"BF16"}
    assert {k.split(".")[0] for k in seen} == {"thinker", "talker", "token2wav"}
    for key in ["thinker.model.embed_tokens.weight", "thinker.lm_head.weight", "thinker.model.norm.weight",
                "thinker.model.layers.0.self_attn.q_proj.bias", "thinker.visual.blocks.0.attn.q.weight",
                "thinker.visual.merger.mlp.0.weight", "thinker.audio_tower.audio_bos_eos_token.weight",
                "thinker.audio_tower.conv1.weight", "talker.thinker_to_talker_proj.weight",
                "talker.codec_head.weight", "talker.model.embed_tokens.weight",
                "token2wav.code2wav_dit_model.text_embed.codec_embed.weight",
                "token2wav.code2wav_bigvgan_model.conv_pre.weight"]:
        assert key in seen, key
    # The transformers-internal names must not leak into the hub file.
    assert not [k for k in seen if "language_model" in k or k.startswith("thinker.model.visual")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_reloads_with_transformers(tiny_checkpoints, variant):
    from safetensors import safe_open
    from transformers import PreTrainedModel, Qwen2_5OmniForConditionalGeneration

    path = tiny_checkpoints[variant]
    # The Omni override of from_pretrained breaks on output_loading_info: call the base loader.
    model, info = PreTrainedModel.from_pretrained.__func__(
        Qwen2_5OmniForConditionalGeneration, str(path), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(load_reference(path).speaker_map) == {"Chelsie", "Ethan"}
    spec = VARIANT_SPECS[variant]
    text = model.config.thinker_config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (
        spec.hidden, spec.heads, spec.kv_heads)
    assert text.rope_parameters["mrope_section"] == list(spec.mrope)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    state = model.state_dict()
    for key in ["thinker.model.layers.0.self_attn.q_proj.weight", "thinker.visual.blocks.0.attn.k.bias",
                "thinker.audio_tower.proj.weight", "talker.codec_head.weight",
                "token2wav.code2wav_dit_model.proj_out.weight"]:
        with safe_open(str(path / index[key]), framework="pt") as f:
            stored = f.get_tensor(key).float()
        assert torch.equal(state[_internal_name(model, key)], stored), key


def _internal_name(model, hub_key: str) -> str:
    names = set(model.state_dict())
    if hub_key in names:
        return hub_key
    for a, b in [("thinker.model.", "thinker.model.language_model."), ("thinker.visual.", "thinker.model.visual."),
                 ("thinker.audio_tower.", "thinker.model.audio_tower.")]:
        if hub_key.startswith(a) and hub_key.replace(a, b, 1) in names:
            return hub_key.replace(a, b, 1)
    raise KeyError(hub_key)


def test_reference_text_forward_and_greedy(reference, processor):
    text = _chat(processor, [{"type": "text", "text": "Hello, how are you today?"}])
    inputs = processor(text=[text], return_tensors="pt")
    with torch.no_grad():
        out = reference.thinker(**inputs)
    logits = out.logits[0]
    assert logits.shape == (inputs["input_ids"].shape[1], 152064)
    assert torch.isfinite(logits).all() and 0.1 < float(logits.std()) < 10.0
    seq = reference.generate(**inputs, generation_mode="text", thinker_max_new_tokens=12,
                             thinker_do_sample=False)
    new = seq[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(new) == 12 and len(set(new)) > 3, new


def test_reference_generate_speech(reference, processor):
    text = _chat(processor, [{"type": "text", "text": "Say something."}])
    inputs = processor(text=[text], return_tensors="pt")
    waves = {}
    for speaker in ("Chelsie", "Ethan"):
        torch.manual_seed(0)
        seq, wav = reference.generate(**inputs, speaker=speaker, thinker_max_new_tokens=3,
                                      thinker_do_sample=False, talker_max_new_tokens=10)
        assert seq.shape[1] == inputs["input_ids"].shape[1] + 3
        assert wav.ndim == 1 and wav.numel() > 0 and wav.numel() % 480 == 0  # 2 mel frames x 240 per code
        assert torch.isfinite(wav).all() and float(wav.abs().max()) <= 1.0
        assert float((wav.abs() >= 1.0).float().mean()) < 0.05 and float(wav.std()) > 1e-3
        waves[speaker] = wav
    n = min(w.numel() for w in waves.values())
    assert not torch.allclose(waves["Chelsie"][:n], waves["Ethan"][:n])


def test_processor_text_image_audio(reference, processor):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8))
    audio = (0.1 * rng.standard_normal(16000 * 3 // 2)).astype(np.float32)
    content = [{"type": "image", "image": image}, {"type": "audio", "audio": audio},
               {"type": "text", "text": "What do you see and hear?"}]
    text = _chat(processor, content)
    assert "<|vision_bos|><|IMAGE|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>" in text
    inputs = processor(text=[text], images=[image], audio=[audio], return_tensors="pt")
    ids = inputs["input_ids"][0]
    grid = inputs["image_grid_thw"][0]
    assert grid.tolist() == [1, 4, 6]
    assert int((ids == 151655).sum()) == int(grid.prod()) // 4
    frames = int(inputs["feature_attention_mask"][0].sum())
    assert frames == 150
    assert int((ids == 151646).sum()) == ((frames - 1) // 2 + 1 - 2) // 2 + 1
    assert inputs["input_features"].shape[1] == 128
    with torch.no_grad():
        out = reference.thinker(**inputs)
    assert torch.isfinite(out.logits).all()


def test_processor_video_needs_torchvision(processor):
    if has_video_processor():
        assert processor.video_processor is not None
    else:
        assert processor.video_processor is None


def test_tokenizer_matches_tiktoken(processor):
    enc = tiktoken_encoding()
    tok = processor.tokenizer
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == text


def test_special_tokens(tiny_checkpoint, processor):
    tok = processor.tokenizer
    for token, idx in SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(token) == idx
        assert tok.encode(token, add_special_tokens=False) == [idx]
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert len(json.loads((tiny_checkpoint / "vocab.json").read_text())) == 151643
    merges = (tiny_checkpoint / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) - 1 == 151643 - 256
    assert json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())["chat_template"] == (
        json.loads((tiny_checkpoint / "chat_template.json").read_text())["chat_template"])


def test_speaker_dict(tiny_checkpoint):
    spk = torch.load(tiny_checkpoint / "spk_dict.pt", weights_only=True)
    assert set(spk) == {"Chelsie", "Ethan"}
    for entry in spk.values():
        assert set(entry) == {"bos_token", "cond", "ref_mel"}
        assert isinstance(entry["bos_token"], int) and 151665 <= entry["bos_token"] < 152064
        assert entry["cond"].shape == (1, 192) and entry["ref_mel"].shape[0::2] == (1, 80)
    assert spk["Chelsie"]["bos_token"] != spk["Ethan"]["bos_token"]
    assert not torch.equal(spk["Chelsie"]["cond"], spk["Ethan"]["cond"])


def test_build_concurrent_and_deterministic(tiny_checkpoint, tmp_path):
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build_checkpoint("base", root=tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] == tmp_path / "base"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".base-")] == []
    for f in sorted(tiny_checkpoint.iterdir()):
        if f.suffix in (".safetensors", ".json", ".txt"):
            assert f.read_bytes() == (results[0] / f.name).read_bytes(), f.name
