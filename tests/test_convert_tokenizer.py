"""The thinker GGUF's tokenizer metadata round-trips the Hugging Face files, and tokenizes like them."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import gguf
import llama_cpp
import pytest
from test_convert_files import converted

TT = gguf.TokenType


@pytest.fixture(scope="module")
def meta() -> dict:
    r = gguf.GGUFReader(converted("base") / "thinker-f32.gguf")
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}


def test_tokens_types_and_merges_equal_the_hf_files(meta: dict, tiny_checkpoint: Path) -> None:
    tj = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    vocab = json.loads((tiny_checkpoint / "vocab.json").read_text())
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    n_rows = config["thinker_config"]["text_config"]["vocab_size"]
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(tokens) == len(types) == n_rows  # one entry per embedding row
    assert tj["model"]["vocab"] == vocab
    for text, i in vocab.items():
        assert tokens[i] == text and types[i] == TT.NORMAL
    added = {t["id"]: t for t in tj["added_tokens"]}
    assert added, "fixture has added tokens"
    for i, t in added.items():
        assert tokens[i] == t["content"]
        looks = t["content"].startswith("<|") and t["content"].endswith("|>")
        assert types[i] == (TT.CONTROL if t["special"] or looks else TT.USER_DEFINED), t
    assert types[added_id(tj, "<tool_call>")] == TT.USER_DEFINED
    used = set(vocab.values()) | set(added)
    pads = [i for i in range(n_rows) if i not in used]
    assert pads and all(tokens[i] == f"[PAD{i}]" and types[i] == TT.UNUSED for i in pads)
    merges_txt = [ln for ln in (tiny_checkpoint / "merges.txt").read_text(encoding="utf-8").splitlines()
                  if ln and not ln.startswith("#version")]
    assert meta["tokenizer.ggml.merges"] == merges_txt


def added_id(tj: dict, text: str) -> int:
    return next(t["id"] for t in tj["added_tokens"] if t["content"] == text)


def test_special_ids_and_chat_template(meta: dict, tiny_checkpoint: Path) -> None:
    tj = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    cfg = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert meta["tokenizer.ggml.eos_token_id"] == added_id(tj, cfg["eos_token"]) == 151645
    assert meta["tokenizer.ggml.padding_token_id"] == added_id(tj, cfg["pad_token"]) == 151643
    # tokenizer_config.json has bos_token null: thinker_config.bos_token_id fills the gap
    assert cfg["bos_token"] is None
    tcfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert meta["tokenizer.ggml.bos_token_id"] == tcfg["thinker_config"]["bos_token_id"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    tmpl = json.loads((tiny_checkpoint / "chat_template.json").read_text())["chat_template"]
    assert meta["tokenizer.chat_template"] == tmpl


def test_llama_tokenization_equals_hf(tiny_checkpoint: Path) -> None:
    from omni_fixtures.corpus import CORPUS
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_checkpoint), local_files_only=True)
    p = llama_cpp.llama_model_default_params()
    p.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(converted("base") / "thinker-f32.gguf").encode(), p)
    assert model
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        for text in CORPUS:
            raw = text.encode()
            buf = (llama_cpp.llama_token * (len(raw) + 8))()
            n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, True)
            assert list(buf[:n]) == hf.encode(text, add_special_tokens=False), text
            piece = ctypes.create_string_buffer(len(raw) * 4 + 64)
            m = llama_cpp.llama_detokenize(vocab, buf, n, piece, len(piece), False, True)
            assert piece.raw[:m].decode() == text
    finally:
        llama_cpp.llama_model_free(model)
