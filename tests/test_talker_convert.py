"""Talker + token2wav GGUF conversion on the tiny checkpoints: contents, names, llama.cpp loading, and
the talker decoder's logits against the reference decoder on the same input rows (M-RoPE positions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketomni.convert.checkpoint import check_shapes, open_checkpoint
from pocketomni.convert.safetensors import MappedFiles
from pocketomni.convert.speakers import read_speakers
from pocketomni.convert.talker import talker_expected, talker_plan
from pocketomni.convert.token2wav import token2wav_plan
from pocketomni.convert.writer import write_gguf
from pocketomni.engine.weights import (
    GGUF_NAME_MAX,
    gguf_to_hf_name,
    hf_to_gguf_name,
    load_token2wav,
    read_metadata,
    read_tensors,
)

torch.set_num_threads(1)

FTYPES = {"f32": 0, "f16": 1, "bf16": 32}


def convert_speech(ckpt_dir: Path, out: Path, mode: str = "f32", t2w_type: str = "f32") -> tuple[Path, Path]:
    """Write talker-<mode>.gguf and token2wav.gguf (`t2w_type` weights) for a checkpoint folder; returns
    their paths."""
    ck = open_checkpoint(ckpt_dir, need_speech=True)
    check_shapes(ck, talker_expected(ck))
    out.mkdir(parents=True, exist_ok=True)
    talker, t2w = out / f"talker-{mode}.gguf", out / f"token2wav-{t2w_type}.gguf"
    with MappedFiles() as files:
        write_gguf(
            talker, talker_plan(ck, files, mode, FTYPES[mode], {"name": "talker", "component": "talker"})
        )
        write_gguf(t2w, token2wav_plan(ck, files, {"name": "token2wav", "component": "token2wav"}, wtype=t2w_type))
    return talker, t2w


def hf_tensors(ckpt_dir: Path, prefix: str) -> dict[str, np.ndarray]:
    """Checkpoint tensors starting with `prefix` as float32 numpy (via safetensors + torch for bf16)."""
    from safetensors.torch import load_file

    out: dict[str, np.ndarray] = {}
    for shard in sorted(ckpt_dir.glob("model-*.safetensors")):
        for k, v in load_file(str(shard)).items():
            if k.startswith(prefix):
                out[k] = v.float().numpy()
    return out


def reference_talker(ckpt_dir: Path):
    """The reference talker module alone, with the checkpoint's talker weights (float32)."""
    from transformers import AutoConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniTalkerForConditionalGeneration,
    )

    cfg = AutoConfig.from_pretrained(str(ckpt_dir), local_files_only=True).talker_config
    model = Qwen2_5OmniTalkerForConditionalGeneration(cfg).float().eval()
    state = {k[len("talker.") :]: torch.from_numpy(v) for k, v in hf_tensors(ckpt_dir, "talker.").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


@pytest.fixture(scope="module", params=["base", "gqa4", "talker3b"])
def converted(request, tmp_path_factory):
    from omni_fixtures import build_checkpoint

    ckpt = build_checkpoint(request.param)
    talker, t2w = convert_speech(ckpt, tmp_path_factory.mktemp(f"speech-{request.param}"))
    return ckpt, talker, t2w


@pytest.fixture(scope="module", params=["base", "talker3b"])
def converted_f16(request, tmp_path_factory):
    from omni_fixtures import build_checkpoint

    ckpt = build_checkpoint(request.param)
    _, t2w = convert_speech(ckpt, tmp_path_factory.mktemp(f"speech16-{request.param}"), t2w_type="f16")
    return ckpt, t2w


def test_token2wav_f16_file_holds_weights_rounded_to_f16(converted_f16):
    """`--token2wav-type f16`: every matrix/kernel is the HF weight rounded to float16 (round to nearest
    even, numpy's cast), read back as a float16 view; vectors, speakers and the talker projection stay
    exact float32."""
    from pocketomni.gguf_file import GGUFFile

    ckpt, t2w = converted_f16
    ref = hf_tensors(ckpt, "token2wav.")
    w = load_token2wav(t2w)
    assert set(w.weights) == set(ref)
    n16 = 0
    for k, v in ref.items():
        got = w.weights[k]
        if v.ndim >= 2:
            assert got.dtype == np.float16 and isinstance(got, np.memmap), k  # used in place, not copied
            np.testing.assert_array_equal(got, v.astype(np.float16), err_msg=k)
            n16 += got.size
        else:
            assert got.dtype == np.float32, k
            np.testing.assert_array_equal(got, v, err_msg=k)
    assert n16 > 0.99 * sum(v.size for v in ref.values())
    proj = hf_tensors(ckpt, "talker.thinker_to_talker_proj.")
    assert w.proj_weight.dtype == np.float32
    np.testing.assert_array_equal(w.proj_weight, proj["talker.thinker_to_talker_proj.weight"])
    for name, s in read_speakers(ckpt / "spk_dict.pt").items():
        assert w.speakers[name].cond.dtype == w.speakers[name].ref_mel.dtype == np.float32
        np.testing.assert_array_equal(w.speakers[name].ref_mel, s["ref_mel"])
    assert read_metadata(t2w)["general.file_type"] == 1  # MOSTLY_F16
    g = GGUFFile.open(t2w)
    assert g.tensor("bigvgan.conv_pre.weight").ggml_type == 1 and g.tensor("bigvgan.conv_pre.bias").ggml_type == 0


def test_token2wav_f16_refuses_values_beyond_its_range(tmp_path, monkeypatch):
    """A weight float16 cannot hold (|x| > 65504) fails the f16 conversion with a typed error naming the
    tensor and the f32 way out, instead of writing an infinity."""
    from omni_fixtures import build_checkpoint

    import pocketomni.convert.token2wav as t2w_mod
    from pocketomni.errors import ConversionError

    real = t2w_mod.iter_rows_f32

    def scaled(files, info):
        for block in real(files, info):
            yield block * 1e6 if info.name.endswith("proj_out.weight") else block

    monkeypatch.setattr(t2w_mod, "iter_rows_f32", scaled)
    with pytest.raises(ConversionError, match=r"proj_out\.weight.*--token2wav-type f32"):
        convert_speech(build_checkpoint("base"), tmp_path, t2w_type="f16")


def test_token2wav_file_holds_every_weight_speakers_and_ids(converted):
    ckpt, _, t2w = converted
    cfg = json.loads((ckpt / "config.json").read_text())
    ref = hf_tensors(ckpt, "token2wav.")
    meta = read_metadata(t2w)
    names = [n for n in read_tensors(t2w)]
    assert all(len(n.encode()) <= GGUF_NAME_MAX for n in names)
    assert all(gguf_to_hf_name(hf_to_gguf_name(n)) == n for n in ref)
    w = load_token2wav(t2w)
    assert set(w.weights) == set(ref)
    for k, v in ref.items():
        assert w.weights[k].dtype == np.float32
        np.testing.assert_array_equal(w.weights[k], v, err_msg=k)
    proj = hf_tensors(ckpt, "talker.thinker_to_talker_proj.")
    np.testing.assert_array_equal(w.proj_weight, proj["talker.thinker_to_talker_proj.weight"])
    np.testing.assert_array_equal(w.proj_bias, proj["talker.thinker_to_talker_proj.bias"])
    spk = read_speakers(ckpt / "spk_dict.pt")
    assert list(w.speakers) == list(spk) == ["Chelsie", "Ethan"]
    for name, s in spk.items():
        assert w.speakers[name].bos_token == s["bos_token"]
        np.testing.assert_array_equal(w.speakers[name].cond, s["cond"])
        np.testing.assert_array_equal(w.speakers[name].ref_mel, s["ref_mel"])
    tk = cfg["talker_config"]
    assert (w.ids.codec_pad, w.ids.codec_bos, w.ids.codec_eos, w.ids.codec_mask) == (
        tk["tts_codec_pad_token_id"],
        tk["tts_codec_start_token_id"],
        tk["tts_codec_end_token_id"],
        tk["tts_codec_mask_token_id"],
    )
    assert (w.ids.text_bos, w.ids.text_eos, w.ids.text_pad) == (
        tk["tts_text_start_token_id"],
        tk["tts_text_end_token_id"],
        tk["tts_text_pad_token_id"],
    )
    assert w.config == cfg["token2wav_config"] and w.talker_config == tk
    assert meta["general.architecture"] == "qwen2_5_omni_token2wav"


def test_talker_file_tables_and_hparams(converted):
    ckpt, talker, _ = converted
    tk = json.loads((ckpt / "config.json").read_text())["talker_config"]
    ref = hf_tensors(ckpt, "talker.")
    got = read_tensors(talker)
    w, b = ref["talker.thinker_to_talker_proj.weight"], ref["talker.thinker_to_talker_proj.bias"]
    want = ref["talker.model.embed_tokens.weight"].astype(np.float64) @ w.T.astype(np.float64) + b
    assert got["token_embd.weight"].shape == (tk["vocab_size"], tk["hidden_size"])
    assert np.abs(got["token_embd.weight"] - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(got["output.weight"], ref["talker.codec_head.weight"])
    np.testing.assert_array_equal(
        got["blk.1.attn_q.bias"], ref["talker.model.layers.1.self_attn.q_proj.bias"]
    )
    assert "talker.proj.weight" not in got and len(got) == 3 + 12 * tk["num_hidden_layers"]
    meta = read_metadata(talker)
    a = meta["general.architecture"]
    assert a == "paddleocr" and meta["tokenizer.ggml.model"] == "none"
    assert meta[f"{a}.vocab_size"] == tk["vocab_size"] and meta[f"{a}.attention.key_length"] == tk["head_dim"]
    assert meta[f"{a}.rope.dimension_sections"] == tk["rope_scaling"]["mrope_section"] + [0]


# A 2x3 image-like block (same t, distinct h/w) between text tokens: M-RoPE rows t, h, w.
GRID_T = np.array([0, 1, 2, 2, 2, 2, 2, 2, 5])
GRID_H = np.array([0, 1, 2, 2, 2, 3, 3, 3, 5])
GRID_W = np.array([0, 1, 2, 3, 4, 2, 3, 4, 5])


def reference_logits(ref, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Codec logits of the reference talker decoder for input rows x at M-RoPE positions pos (3, n)."""
    with torch.no_grad():
        hs = ref.model(
            inputs_embeds=torch.from_numpy(x)[None],
            position_ids=torch.from_numpy(pos)[:, None].long(),
            use_cache=False,
        ).last_hidden_state
        return ref.codec_head(hs)[0].numpy()


def test_talker_decoder_matches_reference_on_llama_cpp(converted):
    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel

    ckpt, talker, _ = converted
    ref = reference_talker(ckpt)
    rng = np.random.default_rng(0)
    t, h, wp = GRID_T, GRID_H, GRID_W
    n = len(t)
    with LlamaModel(talker, n_threads=1) as m:
        assert m.arch == "paddleocr" and m.uses_mrope and not m.has_vocab and m.n_vocab == 8448
        pos = np.stack([t, h, wp])
        x = rng.standard_normal((n, m.n_embd_inp)).astype(np.float32)
        want = reference_logits(ref, x, pos)
        with LlamaContext(m, n_ctx=64, kv_f32=True, n_seq_max=1) as ctx:
            got = ctx.decode(
                embeddings=x, positions=np.concatenate([pos, np.zeros((1, n), int)]), logits="all"
            ).logits
            ctx.clear()  # the same rows at text positions (t = h = w): the h/w rows must matter
            flat = ctx.decode(embeddings=x, positions=t, logits="all").logits
            # the width distances tripled (same order, so llama.cpp's 2-D causal mask among the tokens of
            # one temporal position is unchanged): matters exactly when the width section is not empty
            ctx.clear()
            moved = np.stack([t, h, 3 * wp, np.zeros(n, int)])
            w_moved = ctx.decode(embeddings=x, positions=moved, logits="all").logits
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, rel
    assert np.abs(flat[4] - want[4]).max() > 1e-2 * np.abs(want[4]).max()
    tk = json.loads((ckpt / "config.json").read_text())["talker_config"]
    width_section = tk["rope_scaling"]["mrope_section"][2]  # the 3B talker's [16, 16, 0]: none
    w_rel = np.abs(w_moved - got).max() / np.abs(got).max()
    # measured: base (2, 3, 3) 2.2e-4, gqa4 (2, 1, 1) 4.9e-5 (the slowest frequencies at rope base 1e6);
    # exactly 0 when the section is empty
    assert (w_rel > 1e-5) if width_section else (w_rel == 0.0), (width_section, w_rel)


@pytest.mark.parametrize("split", [(4, 2, 2), (2, 3, 3), (4, 3, 1)])
def test_a_wrong_rope_split_fails_the_parity_check(split, tmp_path):
    """The tiny 3B-like talker (mrope_section (4, 4, 0), rope base 100) written with the right head size
    but another split of its 8 rotary frequencies: llama.cpp's logits then leave the reference by over
    20x the 1e-4 the decoder parity test allows, so that test catches a mis-written split."""
    import copy
    import dataclasses

    from omni_fixtures import build_checkpoint

    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel

    ckpt = build_checkpoint("talker3b")
    ck = open_checkpoint(ckpt, need_speech=True)
    assert ck.config["talker_config"]["rope_scaling"]["mrope_section"] == [4, 4, 0]
    config = copy.deepcopy(ck.config)
    config["talker_config"]["rope_scaling"]["mrope_section"] = list(split)
    path = tmp_path / "talker-wrong-split.gguf"
    with MappedFiles() as files:
        plan = talker_plan(dataclasses.replace(ck, config=config), files, "f32", 0, {"name": "talker"})
        write_gguf(path, plan)
    assert read_metadata(path)["paddleocr.rope.dimension_sections"] == [*split, 0]
    ref = reference_talker(ckpt)
    pos = np.stack([GRID_T, GRID_H, GRID_W])
    rows = np.concatenate([pos, np.zeros((1, len(GRID_T)), int)])
    with LlamaModel(path, n_threads=1) as m, LlamaContext(m, n_ctx=64, kv_f32=True, n_seq_max=1) as ctx:
        x = np.random.default_rng(0).standard_normal((len(GRID_T), m.n_embd_inp)).astype(np.float32)
        got = ctx.decode(embeddings=x, positions=rows, logits="all").logits
    want = reference_logits(ref, x, pos)
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel > 2e-3, rel  # measured: (4, 2, 2) 1.2e-2, (2, 3, 3) 5.2e-2, (4, 3, 1) 6.3e-3


@pytest.mark.parametrize("mode", ["f16", "bf16"])
def test_talker_16bit_files_load_and_stay_close(mode, tmp_path):
    from omni_fixtures import build_checkpoint

    from pocketomni.backend.context import LlamaContext
    from pocketomni.backend.llama import LlamaModel
    from pocketomni.convert.quantize import llama_quantize

    ckpt = build_checkpoint("base")
    f32, _ = convert_speech(ckpt, tmp_path, "f32")
    other, _ = convert_speech(ckpt, tmp_path, mode)
    files = [other]
    if mode == "bf16":  # the lossless intermediate llama.cpp's quantizer reads
        files.append(tmp_path / "talker-q8_0.gguf")
        llama_quantize(other, files[-1], "q8_0", threads=1)
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)

    def logits(path: Path) -> np.ndarray:
        with LlamaModel(path, n_threads=1) as m, LlamaContext(m, n_ctx=32, n_seq_max=1) as ctx:
            return ctx.decode(embeddings=x, logits="all").logits

    # measured: f16 9e-4, bf16 6e-3 (ggml rounds activations to bf16 too), q8_0 3.5e-2 on 32-wide rows
    tolerance = {"f16": 5e-3, "bf16": 2e-2, "q8_0": 0.1}
    want = logits(f32)
    for path in files:
        got = logits(path)
        kind = path.stem.split("-")[1]
        assert np.abs(got - want).max() < tolerance[kind] * np.abs(want).max(), path.name
