"""`pocketomni synth tiny`: the folder loads in stock llama.cpp / mtmd and our token2wav loader and
generates; same seed, same bytes; weights are generated block-independently with the intended scales."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from pocketomni.cli.main import main
from pocketomni.convert.synth import CHUNK, noise_codes, synth_model, tensor_rows, unit_noise
from pocketomni.errors import ConversionError

NUM_RANKS = 151643  # BPE tokens; the thinker's head rows above are zero
DIT_CODES = 8194  # the talker's head rows above (stop codes included) are zero


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth_model("tiny", tmp_path_factory.mktemp("synth") / "tiny", quant="q8_0", seed=0,
                       progress=False, threads=1).out_dir


def _files(folder: Path) -> dict[str, Path]:
    return {k: folder / v["path"] for k, v in json.loads((folder / "pocketomni.json").read_text())["files"].items()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_thinker_generates_in_stock_llama_cpp(tiny: Path) -> None:
    L = llama_cpp
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(_files(tiny)["thinker"]).encode(), L.llama_model_default_params())
    assert model
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 256
    cp.n_threads = cp.n_threads_batch = 1
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    try:
        assert n_vocab == 152064
        text = b"<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n"
        buf = (L.llama_token * 64)()
        n = L.llama_tokenize(vocab, text, len(text), buf, 64, False, True)
        prompt = list(buf[:n])
        assert prompt[0] == 151644 and prompt[-3:] == [151644, 77091, 198]  # real Qwen2.5 token ids
        out, pos, feed = [], 0, prompt
        for _ in range(24):
            arr = (L.llama_token * len(feed))(*feed)  # kept alive until the decode returns
            assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(feed))) == 0
            pos += len(feed)
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            assert np.isfinite(logits).all() and 0.1 < logits.std() < 10
            out.append(int(np.argmax(logits)))
            feed = out[-1:]
        assert max(out) < NUM_RANKS  # ordinary tokens only: no stop, special or padding token
        assert len(set(out)) > 1
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


def test_mmproj_encodes_image_and_audio_in_mtmd(tiny: Path) -> None:
    from pocketomni.backend import LlamaModel, MtmdContext

    f = _files(tiny)
    with LlamaModel(f["thinker"], n_threads=1) as model, MtmdContext(f["mmproj"], model, n_threads=1) as mt:
        img = (np.random.default_rng(0).random((84, 112, 3)) * 255).astype(np.uint8)
        e = mt.encode_image(img)
        assert e.embd.shape == (12, 128)  # (84/28) x (112/28) merged patches and np.isfinite(e.embd).all() and e.embd.std() > 0.1
        a = mt.encode_audio(np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3)
        assert a.embd.shape[1] == 128 and np.isfinite(a.embd).all() and a.embd.std() > 0.1


def test_talker_decodes_embeddings_to_dit_codes(tiny: Path) -> None:
    from pocketomni.backend import LlamaContext, LlamaModel

    with LlamaModel(_files(tiny)["talker"], n_threads=1) as tm, LlamaContext(tm, n_ctx=128, n_threads=1) as ctx:
        assert tm.arch == "paddleocr" and tm.n_vocab == 8448 and tm.n_embd_inp == 64
        x = np.random.default_rng(1).standard_normal((12, 64)).astype(np.float32)
        pos = np.vstack([np.tile(np.arange(12), (3, 1)), np.zeros((1, 12), int)])
        lg = ctx.decode_embeddings(x, positions=pos, logits="all").logits
        assert np.isfinite(lg).all() and lg[:, :DIT_CODES].std() > 0.1
        assert np.all(lg[:, DIT_CODES:] == 0) and np.all(lg.argmax(1) < DIT_CODES)


def test_token2wav_renders_speech(tiny: Path) -> None:
    from pocketomni.engine.weights import load_token2wav
    from pocketomni.token2wav import Token2Wav

    w = load_token2wav(_files(tiny)["token2wav"])
    assert sorted(w.speakers) == ["Chelsie", "Ethan"] and w.speakers["Ethan"].bos_token == 151872
    assert w.proj_weight.shape == (64, 128) and w.ids.codec_eos == 8294
    tw = Token2Wav.from_weights(w.weights, w.config)
    spk = w.speaker("Chelsie")
    wav = tw.render(np.random.default_rng(2).integers(0, 8193, 24), tw.speaker(spk.cond, spk.ref_mel), seed=0)
    assert wav.shape == (24 * 2 * 240,) and np.isfinite(wav).all()
    assert 0.005 < wav.std() and np.mean(np.abs(wav) > 0.99) < 0.01  # audible, not stuck in the clamp


def test_same_seed_same_files(tiny: Path, tmp_path: Path) -> None:
    again = synth_model("tiny", tmp_path / "again", quant="q8_0", seed=0, progress=False, threads=1).out_dir
    a, b = _files(tiny), _files(again)
    assert {k: _sha(p) for k, p in a.items()} == {k: _sha(p) for k, p in b.items()}
    ma, mb = (json.loads((d / "pocketomni.json").read_text()) for d in (tiny, again))
    ma.pop("created"), mb.pop("created")
    assert ma == mb and ma["source"]["synthetic"]["seed"] == 0
    # Another seed through the CLI: other weights (the f16 mmproj is written the same way in both).
    assert main(["synth", "tiny", str(tmp_path / "seed1"), "--quant", "f16", "--seed", "1", "--no-progress",
                 "--no-speech", "--threads", "1"]) == 0
    other = _files(tmp_path / "seed1")
    assert sorted(other) == ["mmproj", "thinker"] and _sha(other["mmproj"]) != _sha(a["mmproj"])


def test_noise_is_block_independent_and_unit_variance() -> None:
    whole = noise_codes(7, "t", 0, 3 * CHUNK + 11)
    for lo, hi in ((0, 5), (CHUNK - 3, CHUNK + 4), (5, 2 * CHUNK + 7), (3 * CHUNK, 3 * CHUNK + 11)):
        assert np.array_equal(noise_codes(7, "t", lo, hi), whole[lo:hi])
    assert not np.array_equal(noise_codes(8, "t", 0, 100), whole[:100])
    u = unit_noise(7, "t", 0, 1 << 20).astype(np.float64)
    assert abs(u.mean()) < 0.01 and abs(u.std() - 1) < 0.01


def test_weight_scales() -> None:
    """Fan-in scaled matrices, residual outputs shrunk by depth, zeroed head rows, unit norms."""
    up = tensor_rows("7b", 0, "thinker.model.layers.3.mlp.up_proj.weight", 0, 1024)
    assert abs(up.std() * math.sqrt(3584) - 1) < 0.02
    down = tensor_rows("7b", 0, "thinker.model.layers.3.mlp.down_proj.weight", 100, 400)
    assert abs(down.std() * math.sqrt(18944 * 56) - 1) < 0.02
    head = tensor_rows("7b", 0, "thinker.lm_head.weight", NUM_RANKS - 500)
    assert np.all(head[500:] == 0) and np.all(head[:500].std(axis=1) > 0.5 / math.sqrt(3584))
    norm = tensor_rows("3b", 0, "thinker.model.norm.weight")
    assert norm.shape == (2048,) and abs(norm.mean() - 1) < 0.01


def test_missing_vocabulary_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "dashscope" else real(n, *a))
    monkeypatch.setenv("POCKETOMNI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConversionError, match=r"pip install 'pocketomni\[synth\]'"):
        synth_model("tiny", tmp_path / "out", quant="f32", progress=False)
    assert not (tmp_path / "out").exists()


def test_tokenizer_equals_the_hub_files(tiny_checkpoint: Path) -> None:
    """The synthetic folders' tokenizer (from qwen.tiktoken) is what converting the hub files gives."""
    from pocketomni.convert.qwen_vocab import vocab_dir
    from pocketomni.convert.tokenizer import load_tokenizer

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    ours, hub = load_tokenizer(vocab_dir(), config, 152064), load_tokenizer(tiny_checkpoint, config, 152064)
    assert ours.tokens == hub.tokens and ours.token_types == hub.token_types and ours.merges == hub.merges
    assert ours.special_ids == hub.special_ids == {"eos": 151645, "pad": 151643, "bos": 151644}
    assert ours.chat_template == hub.chat_template
