"""LlamaModel: loading, metadata, tokenizer, UTF-8 streaming, embedding rows, bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_backend_tinymodel import (
    CHAT_TEMPLATE,
    TinySpec,
    build_tiny_gguf,
    converted_tiny,
    tiny_weights,
    token_id,
)

from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.errors import ModelFileError, PocketOmniError
from pocketomni.gguf_file import EmbeddingRows, GGUFFile


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="module")
def model(tiny_path: Path):
    with LlamaModel(tiny_path, n_threads=1) as m:
        yield m


def test_metadata(model: LlamaModel) -> None:
    spec = TinySpec()
    assert model.arch == "qwen2vl" and model.uses_mrope and model.n_pos_per_embd == 4
    assert (model.n_vocab, model.n_embd, model.n_embd_inp, model.n_layer) == (spec.n_vocab, 64, 64, 2)
    assert model.n_ctx_train == spec.n_ctx_train
    assert model.chat_template == CHAT_TEMPLATE
    assert model.eos_id == token_id("<|im_end|>") and model.is_eog(model.eos_id)
    assert model.metadata["qwen2vl.rope.dimension_sections"] == spec.mrope_section + [0]
    assert not model.is_eog(token_id("he"))


def test_tokenize_special_and_merges(model: LlamaModel) -> None:
    ids = model.tokenize("<|im_start|>user\nhello the cat<|im_end|>")
    assert ids[0] == token_id("<|im_start|>") and ids[-1] == token_id("<|im_end|>")
    assert token_id("hello") in ids and token_id("Ġthe") in ids and token_id("Ġcat") in ids
    plain = model.tokenize("<|im_end|>", parse_special=False)
    assert token_id("<|im_end|>") not in plain and len(plain) > 1
    assert model.token_id("<|im_end|>") == token_id("<|im_end|>")
    assert model.token_id("hello world") is None
    assert model.detokenize(ids) == "user\nhello the cat"
    assert model.detokenize(ids, special=True) == "<|im_start|>user\nhello the cat<|im_end|>"
    assert model.token_to_piece(token_id("<|im_end|>")) == b""
    assert model.token_to_piece(token_id("<|im_end|>"), special=True) == b"<|im_end|>"


def test_utf8_streaming_of_split_characters(model: LlamaModel) -> None:
    text = "a 你好😀 b"
    ids = model.tokenize(text)
    pieces = [model.token_to_piece(t) for t in ids]
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces), "tiny vocab should split multibyte chars"
    stream = model.text_stream()
    emitted, acc = "", b""
    for t, p in zip(ids, pieces):
        acc += p
        emitted += stream.push(t)
        cut = len(acc)  # everything up to the last complete character is out, nothing more
        while True:
            try:
                expected = acc[:cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                cut -= 1
        assert emitted == expected
    assert emitted + stream.flush() == text
    # an incomplete character at the end becomes U+FFFD on flush
    s2 = model.text_stream()
    assert s2.push(ids[pieces.index(b"\xe4")]) == "" and s2.pending
    assert s2.flush() == "\ufffd"


def test_token_range_checks(model: LlamaModel) -> None:
    with pytest.raises(ValueError):
        model.token_to_piece(-1)
    with pytest.raises(ValueError):
        model.detokenize([model.n_vocab])
    with pytest.raises(ValueError):
        model.embed_tokens([model.n_vocab])
    with pytest.raises(ValueError):
        model.is_eog(10**9)


def test_embedding_rows_f32_exact(model: LlamaModel) -> None:
    table = tiny_weights(TinySpec())["token_embd.weight"]
    ids = [0, 5, 283, 5]
    assert np.array_equal(model.embed_tokens(ids), table[ids])


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16,
                                   gguf.GGMLQuantizationType.BF16])
def test_embedding_rows_dequantize(tmp_path: Path, qtype: gguf.GGMLQuantizationType) -> None:
    p = build_tiny_gguf(tmp_path / "q.gguf", embd_type=qtype)
    g = GGUFFile.open(p)
    rows = EmbeddingRows(g)
    try:
        t = g.tensor("token_embd.weight")
        raw = np.fromfile(p, dtype=np.uint8, count=t.n_bytes, offset=t.offset).reshape(t.shape[0], -1)
        full = gguf.quants.dequantize(raw, qtype).reshape(t.shape)
        ids = np.array([3, 0, 200, 3])
        assert np.array_equal(rows.rows(ids), full[ids].astype(np.float32))
        assert np.abs(full - tiny_weights(TinySpec())["token_embd.weight"]).max() < 0.05
    finally:
        rows.close()


def test_no_vocab_model(tmp_path: Path) -> None:
    p = build_tiny_gguf(tmp_path / "talker.gguf", TinySpec(vocab=False, n_vocab_none=300))
    with LlamaModel(p, n_threads=1) as m:
        assert not m.has_vocab and m.n_vocab == 300
        with pytest.raises(PocketOmniError):
            m.tokenize("hi")
        assert m.embed_tokens([299]).shape == (1, 64)
        with LlamaContext(m, n_ctx=64, n_batch=16) as c:  # the talker's way: embeddings in, logits out
            out = c.decode_embeddings(m.embed_tokens([5, 7, 299]), logits="all")
            assert out.logits.shape == (3, 300) and np.all(np.isfinite(out.logits))


def test_close_is_idempotent_and_closes_contexts(tiny_path: Path) -> None:
    m = LlamaModel(tiny_path, n_threads=1)
    ctx = LlamaContext(m, n_ctx=64, n_batch=16)
    m.close()
    m.close()
    assert m.closed and ctx.closed
    with pytest.raises(PocketOmniError):
        m.tokenize("hello")
    for call in (lambda: ctx.decode_tokens([1, 2]), lambda: ctx.remove(0, 0), lambda: ctx.fork(0, 1),
                 lambda: ctx.clear(), lambda: ctx.get_state(0), lambda: ctx.output_logits()):
        with pytest.raises(PocketOmniError):
            call()


# ------------------------------------------------------------------ bad files: ModelFileError, never a crash


def _patch(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    b = bytearray(src.read_bytes())
    b[offset:offset + len(data)] = data
    dst.write_bytes(bytes(b))
    return dst


def _tensor_type_offset(path: Path, name: str) -> int:
    """Byte offset of the ggml type field of tensor `name` in the header."""
    b = path.read_bytes()
    key = struct.pack("<Q", len(name)) + name.encode()
    i = b.index(key) + len(key)
    n_dims = struct.unpack_from("<I", b, i)[0]
    return i + 4 + 8 * n_dims


def _bad_files(src: Path, tmp: Path) -> dict[str, Path]:
    size = src.stat().st_size
    header_end = GGUFFile.open(src).tensor("token_embd.weight").offset
    files = {
        "missing": tmp / "nope.gguf",
        "directory": tmp,
        "empty": tmp / "empty.gguf",
        "wrong_magic": _patch(src, tmp / "magic.gguf", 0, b"GGML"),
        "png": tmp / "png.gguf",
        "version_9": _patch(src, tmp / "v9.gguf", 4, struct.pack("<I", 9)),
        "huge_kv_count": _patch(src, tmp / "kv.gguf", 16, struct.pack("<Q", 2**40)),
        "bad_tensor_type": _patch(src, tmp / "ttype.gguf", _tensor_type_offset(src, "blk.0.attn_q.weight"),
                                  struct.pack("<I", 9999)),
        "bad_value_type": _patch(src, tmp / "vtype.gguf", 24 + 8 + len(b"general.architecture"), struct.pack("<I", 77)),
    }
    (tmp / "empty.gguf").write_bytes(b"")
    (tmp / "png.gguf").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    data = src.read_bytes()
    for frac in (0.01, 0.2, 0.5, 0.9):  # inside the header (vocab, merges, tensor table)
        cut = int(header_end * frac)
        files[f"truncated_header_{frac}"] = tmp / f"th{frac}.gguf"
        files[f"truncated_header_{frac}"].write_bytes(data[:cut])
    for frac in (0.3, 0.999):  # inside the tensor data
        cut = header_end + int((size - header_end) * frac)
        files[f"truncated_data_{frac}"] = tmp / f"td{frac}.gguf"
        files[f"truncated_data_{frac}"].write_bytes(data[:cut])
    return files


def test_bad_files_raise_model_file_error(tiny_path: Path, tmp_path: Path) -> None:
    for name, path in _bad_files(tiny_path, tmp_path).items():
        with pytest.raises(ModelFileError):
            LlamaModel(path, n_threads=1)
            pytest.fail(f"{name} loaded")
    with LlamaModel(tiny_path, n_threads=1) as m:  # the process is fine afterwards
        assert m.tokenize("hello") == [token_id("hello")]


@pytest.mark.parametrize("hparams", [
    {"block_count": 0},  # llama.cpp aborts the process on this one
    {"attention.head_count": 0},
    {"attention.head_count_kv": 3},
    {"rope.dimension_sections": [100, 3, 3, 0]},  # ggml asserts at the first decode
])
def test_bad_hyperparameters_rejected_before_llama(tmp_path: Path, hparams: dict) -> None:
    spec = TinySpec()
    w = gguf.GGUFWriter(str(tmp_path / "h.gguf"), "qwen2vl")
    vals = {"context_length": 64, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
            "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_sections": [2, 3, 3, 0]}
    vals.update(hparams)
    for k, v in vals.items():
        if isinstance(v, list):
            w.add_array(f"qwen2vl.{k}", v)
        else:
            w.add_uint32(f"qwen2vl.{k}", v)
    w.add_tokenizer_model("none")
    w.add_vocab_size(spec.n_vocab)
    for n, a in tiny_weights(spec).items():
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError):
        LlamaModel(tmp_path / "h.gguf", n_threads=1)


def test_llama_rejections_become_model_file_errors(tmp_path: Path) -> None:
    spec = TinySpec()
    # missing a required tensor: passes our header checks, llama.cpp refuses it
    w = gguf.GGUFWriter(str(tmp_path / "missing.gguf"), "qwen2vl")
    for k, v in (("context_length", 64), ("embedding_length", 64), ("block_count", 2), ("feed_forward_length", 128),
                 ("attention.head_count", 4), ("attention.head_count_kv", 2)):
        w.add_uint32(f"qwen2vl.{k}", v)
    w.add_array("qwen2vl.rope.dimension_sections", [2, 3, 3, 0])
    w.add_tokenizer_model("none")
    w.add_vocab_size(spec.n_vocab)
    for n, a in tiny_weights(spec).items():
        if n != "blk.1.ffn_up.weight":
            w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="blk.1.ffn_up"):
        LlamaModel(tmp_path / "missing.gguf", n_threads=1)
    with pytest.raises(ModelFileError, match="expected one of"):
        LlamaModel(build_tiny_gguf(tmp_path / "ok.gguf"), n_threads=1, expect_arch="qwen2")


# ------------------------------------------------------------------ real Qwen vocabulary (converted tiny checkpoint)


def test_real_tokenizer_matches_hugging_face(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    files = converted_tiny(tmp_path_factory, tiny_checkpoint)
    hf = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    texts = ["Hello, world!", "  two spaces\tand a tab\n", "中文测试，还有 emoji 😀🎉", "naïve café — ½",
             "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\n<|vision_bos|><|IMAGE|><|vision_eos|>hi"]
    with LlamaModel(files["thinker"], n_threads=1) as m:
        assert m.n_vocab == 152064 and m.eos_id == hf.convert_tokens_to_ids("<|im_end|>")
        for text in texts:
            ids = m.tokenize(text)
            assert ids == hf.encode(text, add_special_tokens=False), text
            stream = m.text_stream(special=True)
            assert "".join(stream.push(t) for t in ids) + stream.flush() == text
        assert m.chat_template and "<|im_start|>" in m.chat_template


def test_mapped_or_read_into_memory(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a macOS/Windows CPU read into memory when the file fits (no mapped pages beside llama.cpp's
    repacked copy); mapped for GPU offload, when the file would take over half the available memory, and
    on Linux/Android (where the copied pages are dropped). Both load modes give the same logits."""
    import pocketomni.backend.llama as llama_mod

    size = tiny_path.stat().st_size
    monkeypatch.setattr(llama_mod, "available_memory", lambda: 4 * size)
    assert not llama_mod.should_mmap(tiny_path, 0, platform="darwin")
    assert llama_mod.should_mmap(tiny_path, 0, platform="linux")
    assert llama_mod.should_mmap(tiny_path, 99, platform="darwin")
    monkeypatch.setattr(llama_mod, "available_memory", lambda: size)
    assert llama_mod.should_mmap(tiny_path, 0, platform="darwin")
    monkeypatch.setattr(llama_mod, "available_memory", lambda: None)
    assert llama_mod.should_mmap(tiny_path, 0, platform="darwin")
    monkeypatch.undo()
    assert llama_mod.available_memory() > 0

    ids = [1, 5, 9, 14, 2]
    logits = {}
    for mapped in (True, False):
        with LlamaModel(tiny_path, n_threads=1, use_mmap=mapped) as m, LlamaContext(m, n_ctx=32) as c:
            assert m.use_mmap is mapped
            logits[mapped] = c.decode_tokens(ids, logits="last").logits
    np.testing.assert_array_equal(logits[True], logits[False])
    with LlamaModel(tiny_path, n_threads=1) as m:
        assert m.use_mmap is llama_mod.should_mmap(tiny_path, 0)  # the choice is the one applied
