"""Converted files load in stock llama-cpp-python / mtmd and generate; quantized thinkers too.

Also holds the helpers the other test_convert_* modules share: `converted()` converts a tiny fixture
once per session, `Thinker` drives a converted thinker through llama.cpp's low-level API (logits and
final hidden state of one decode, greedy continuation).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import shutil
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp

_ROOT = Path(tempfile.mkdtemp(prefix="pocketomni-convert-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)


@functools.cache
def converted(variant: str, quant: str = "f32", mmproj_quant: str = "f32", token2wav_type: str = "f16") -> Path:
    """Output folder of `pocketomni convert` on tiny fixture `variant` (once per session)."""
    from omni_fixtures import build_checkpoint

    from pocketomni.convert import convert_checkpoint

    out = _ROOT / f"{variant}-{quant}-{mmproj_quant}-{token2wav_type}"
    convert_checkpoint(build_checkpoint(variant), out, quant=quant, mmproj_quant=mmproj_quant, progress=False,
                       token2wav_type=token2wav_type)
    return out


class Thinker:
    """A converted thinker in llama.cpp: one sequence, f32 KV cache, logits + hidden state per decode."""

    def __init__(self, path: Path, n_ctx: int = 512, fa: int = 0, kv_f32: bool = True) -> None:
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        assert self.model, f"llama.cpp could not load {path}"
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = 1
        # Exact settings for parity: f32 KV cache (GGML_TYPE_F32 = 0, else F16 = 1) and no flash
        # attention (the CPU flash-attention kernel alone costs ~4e-4 relative on the logits).
        cp.type_k = cp.type_v = 0 if kv_f32 else 1
        cp.flash_attn_type = fa
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        assert self.ctx
        llama_cpp.llama_set_embeddings(self.ctx, True)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_past = 0

    def decode(self, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Append `tokens`; return (logits, final normed hidden state) of the last one."""
        b = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, t in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i] = t, self.n_past + i, 1
                b.seq_id[i][0] = 0
                b.logits[i] = i == len(tokens) - 1
            b.n_tokens = len(tokens)
            assert llama_cpp.llama_decode(self.ctx, b) == 0
        finally:
            llama_cpp.llama_batch_free(b)
        self.n_past += len(tokens)
        as_array = np.ctypeslib.as_array
        logits = as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).copy()
        hidden = as_array(llama_cpp.llama_get_embeddings_ith(self.ctx, -1), shape=(self.n_embd,)).copy()
        return logits, hidden

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """Greedy continuation of `prompt` (fresh sequence), `n` tokens, no stop tokens."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.n_past = 0
        logits, _ = self.decode(prompt)
        out = []
        for _ in range(n):
            out.append(int(np.argmax(logits)))
            logits, _ = self.decode(out[-1:])
        return out

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (llama_cpp.llama_token * (len(raw) + 16))()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        assert n >= 0
        return list(buf[:n])

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


@functools.cache
def f32_logits(variant: str, prompt: tuple[int, ...]) -> np.ndarray:
    th = Thinker(converted(variant) / "thinker-f32.gguf")
    try:
        return th.decode(list(prompt))[0]
    finally:
        th.close()


PROMPT = (151644, 872, 198, 9707, 1879, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198)


def _mtmd(thinker: Thinker, mmproj: Path):
    p = mtmd_cpp.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.print_timings, p.warmup = False, 1, False, False
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), thinker.model, p)
    assert ctx, f"mtmd could not load {mmproj}"
    return ctx


def mtmd_embeddings(thinker: Thinker, mmproj: Path, bitmap) -> np.ndarray:
    """Embeddings mtmd produces for one image or audio bitmap (all media chunks, concatenated)."""
    ctx = _mtmd(thinker, mmproj)
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        text = mtmd_cpp.mtmd_input_text()
        marker = mtmd_cpp.mtmd_default_marker()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        arr = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(text), arr, 1) == 0
        out = []
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            ch = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            if mtmd_cpp.mtmd_input_chunk_get_type(ch) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                continue
            n = mtmd_cpp.mtmd_input_chunk_get_n_tokens(ch)
            assert mtmd_cpp.mtmd_encode_chunk(ctx, ch) == 0
            emb = mtmd_cpp.mtmd_get_output_embd(ctx)
            flat = np.ctypeslib.as_array(emb, shape=(n * thinker.n_embd,))
            out.append(flat.reshape(n, thinker.n_embd).copy())
        return np.concatenate(out)
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
        mtmd_cpp.mtmd_free(ctx)


def image_bitmap(img: np.ndarray):
    h, w, _ = img.shape
    buf = (ctypes.c_uint8 * img.size).from_buffer_copy(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
    return mtmd_cpp.mtmd_bitmap_init(w, h, buf)


def audio_bitmap(wav: np.ndarray):
    buf = (ctypes.c_float * wav.size).from_buffer_copy(np.ascontiguousarray(wav, dtype=np.float32).tobytes())
    return mtmd_cpp.mtmd_bitmap_init_from_audio(wav.size, buf)


def test_f32_files_load_and_generate() -> None:
    out = converted("base", token2wav_type="f32")
    assert sorted(p.name for p in out.iterdir()) == [
        "mmproj-f32.gguf", "pocketomni.json", "talker-f32.gguf", "thinker-f32.gguf", "token2wav-f32.gguf"]
    th = Thinker(out / "thinker-f32.gguf")
    try:
        toks = th.greedy(list(PROMPT), 8)
        assert len(toks) == 8 and all(0 <= t < th.n_vocab for t in toks)
        img = (np.random.default_rng(0).random((56, 84, 3)) * 255).astype(np.uint8)
        emb = mtmd_embeddings(th, out / "mmproj-f32.gguf", image_bitmap(img))
        assert emb.shape[1] == th.n_embd and np.isfinite(emb).all() and np.abs(emb).max() > 0
        wav = np.sin(np.arange(16000, dtype=np.float32) * 0.05) * 0.3
        emb = mtmd_embeddings(th, out / "mmproj-f32.gguf", audio_bitmap(wav))
        assert emb.shape[1] == th.n_embd and np.isfinite(emb).all() and np.abs(emb).max() > 0
    finally:
        th.close()


@pytest.mark.parametrize("quant,mmproj_quant,min_cos", [("q8_0", "q8_0", 0.999), ("q4_k_m", "f16", 0.99)])
def test_quantized_thinker_loads_and_generates(quant: str, mmproj_quant: str, min_cos: float) -> None:
    out = converted("gqa4", quant, mmproj_quant)
    from pocketomni.convert import read_manifest

    names = sorted(p.name for p in out.iterdir())
    assert names == [f"mmproj-{mmproj_quant}.gguf", "pocketomni.json", f"talker-{quant}.gguf",
                     f"thinker-{quant}.gguf", "token2wav-f16.gguf"]  # the default token2wav type
    assert read_manifest(out)["files"]["token2wav"]["type"] == "f16"
    t2w = gguf.GGUFReader(out / "token2wav-f16.gguf")
    assert int(t2w.fields["general.file_type"].contents()) == gguf.LlamaFileType.MOSTLY_F16
    talker_type = int(gguf.GGUFReader(out / f"talker-{quant}.gguf").fields["general.file_type"].contents())
    assert talker_type == {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}[quant]
    from pocketomni.backend import LlamaModel

    with LlamaModel(out / f"talker-{quant}.gguf") as talker:
        assert talker.n_vocab == 8448
    r = gguf.GGUFReader(out / f"thinker-{quant}.gguf")
    want = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}[quant]
    assert int(r.fields["general.file_type"].contents()) == want
    assert any(t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                     gguf.GGMLQuantizationType.BF16) for t in r.tensors)
    th = Thinker(out / f"thinker-{quant}.gguf")
    try:
        logits, _ = th.decode(list(PROMPT))
        ref = f32_logits("gqa4", PROMPT)
        cos = float(logits @ ref / np.linalg.norm(logits) / np.linalg.norm(ref))
        assert cos >= min_cos, f"{quant} logits drift from f32: cosine {cos:.5f}"
        toks = th.greedy(list(PROMPT), 8)
        assert len(toks) == 8
        img = (np.random.default_rng(1).random((56, 56, 3)) * 255).astype(np.uint8)
        emb = mtmd_embeddings(th, out / f"mmproj-{mmproj_quant}.gguf", image_bitmap(img))
        assert np.isfinite(emb).all()
    finally:
        th.close()


def test_mmproj_q8_0_keeps_what_clip_needs_in_float() -> None:
    r = gguf.GGUFReader(converted("gqa4", "q8_0", "q8_0") / "mmproj-q8_0.gguf")
    qt = gguf.GGMLQuantizationType
    types = {t.name: t.tensor_type for t in r.tensors}
    for t in r.tensors:
        if t.name.endswith(".bias") or len(t.shape) == 1:
            assert t.tensor_type == qt.F32, t.name
    assert types["a.position_embd.weight"] == qt.F32
    assert types["a.conv1d.1.weight"] == qt.F16 and types["v.patch_embd.weight"] == qt.F16
    floats = {"a.position_embd.weight", "a.conv1d.1.weight", "a.conv1d.2.weight", "v.patch_embd.weight",
              "v.patch_embd.weight.1"}
    for t in r.tensors:
        if len(t.shape) == 2 and not t.name.endswith(".bias") and t.name not in floats:
            # q8_0 blocks run along rows (ne[0]); rows that do not fit whole blocks stay f16
            assert t.tensor_type == (qt.Q8_0 if t.shape[0] % 32 == 0 else qt.F16), t.name
    assert types["mm.0.weight"] == qt.Q8_0  # 4 * 48 = 192 columns


def test_manifest_and_folder_recognition(tmp_path: Path) -> None:
    from pocketomni.convert import locate_model_files, read_manifest

    out = converted("base", token2wav_type="f32")
    m = read_manifest(out)
    assert m["format"] == "pocketomni" and m["format_version"] == 1
    assert m["files"]["thinker"] == {"path": "thinker-f32.gguf", "type": "f32",
                                     "bytes": (out / "thinker-f32.gguf").stat().st_size}
    assert m["files"]["mmproj"]["type"] == "f32"
    cfg = m["source"]
    assert cfg["thinker"]["hidden_size"] == 64 and cfg["thinker"]["mrope_section"] == [2, 3, 3]
    assert locate_model_files(out) == {"thinker": out / "thinker-f32.gguf", "mmproj": out / "mmproj-f32.gguf",
                                       "talker": out / "talker-f32.gguf", "token2wav": out / "token2wav-f32.gguf"}
    # A folder of community files (no manifest) is recognised by name.
    (tmp_path / "Qwen2.5-Omni-7B-Q4_K_M.gguf").symlink_to(out / "thinker-f32.gguf")
    (tmp_path / "mmproj-Qwen2.5-Omni-7B-Q8_0.gguf").symlink_to(out / "mmproj-f32.gguf")
    assert locate_model_files(tmp_path) == {
        "thinker": tmp_path / "Qwen2.5-Omni-7B-Q4_K_M.gguf",
        "mmproj": tmp_path / "mmproj-Qwen2.5-Omni-7B-Q8_0.gguf",
    }
