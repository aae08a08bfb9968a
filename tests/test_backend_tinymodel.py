"""Tiny random-weight GGUF models for the backend tests, written with gguf-py at test time.

`build_tiny_gguf` writes a Qwen2-style decoder (arch ``qwen2vl`` with M-RoPE by default) with a
small byte-level BPE vocabulary (256 byte tokens, a few merges, the Qwen chat special tokens),
so tokenization, multibyte UTF-8 pieces and the chat template can be tested for real.
Other backend test modules import the helpers from here; the tests in this module check the
files themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>",
]
MERGES = [
    ("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "r"),
    ("l", "l"), ("Ġ", "w"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("e", "l"), ("he", "ll"),
    ("hell", "o"), ("Ġ", "s"), ("i", "s"), ("Ġ", "is"),
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_alphabet() -> list[str]:
    """Byte-level BPE alphabet: printable bytes map to themselves, the rest to U+0100 upwards."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """Token strings, token types and merges of the tiny vocabulary."""
    tokens = byte_alphabet()
    merges = []
    for a, b in MERGES:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for s in SPECIAL_TOKENS:
        tokens.append(s)
        types.append(int(gguf.TokenType.CONTROL))
    return tokens, types, merges


def token_id(text: str) -> int:
    """Id of a whole token string in the tiny vocabulary."""
    return tiny_vocab()[0].index(text)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny decoder. mrope_section is HF's (t, h, w) split of head_dim / 2."""

    arch: str = "qwen2vl"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 4096
    rope_theta: float = 1000000.0
    rms_eps: float = 1e-6
    vocab: bool = True  # False: tokenizer "none" with n_vocab_none rows (like the talker)
    n_vocab_none: int = 300
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mrope_section(self) -> list[int]:
        half = self.head_dim // 2
        s1 = half * 3 // 8
        return [half - 2 * s1, s1, s1]

    @property
    def n_vocab(self) -> int:
        return len(tiny_vocab()[0]) if self.vocab else self.n_vocab_none


def tiny_weights(spec: TinySpec) -> dict[str, np.ndarray]:
    """Deterministic random float32 weights under their GGUF names (numpy shapes, rows first)."""
    rng = np.random.default_rng(spec.seed)

    def rnd(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    e, kv, ff = spec.n_embd, spec.n_head_kv * spec.head_dim, spec.n_ff
    w = {
        "token_embd.weight": rnd(spec.n_vocab, e, scale=0.5),
        "output_norm.weight": 1.0 + rnd(e),
        "output.weight": rnd(spec.n_vocab, e, scale=0.3),
    }
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        w.update({
            p + "attn_norm.weight": 1.0 + rnd(e),
            p + "attn_q.weight": rnd(e, e), p + "attn_q.bias": rnd(e),
            p + "attn_k.weight": rnd(kv, e), p + "attn_k.bias": rnd(kv),
            p + "attn_v.weight": rnd(kv, e), p + "attn_v.bias": rnd(kv),
            p + "attn_output.weight": rnd(e, e),
            p + "ffn_norm.weight": 1.0 + rnd(e),
            p + "ffn_gate.weight": rnd(ff, e), p + "ffn_up.weight": rnd(ff, e), p + "ffn_down.weight": rnd(e, ff),
        })
    return w


def build_tiny_gguf(
    path: Path | str,
    spec: TinySpec = TinySpec(),
    embd_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
) -> Path:
    """Write the tiny decoder of `spec` as a GGUF file and return its path."""
    path = Path(path)
    w = gguf.GGUFWriter(str(path), spec.arch)
    w.add_name("pocketomni-tiny")
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.arch == "qwen2vl":
        w.add_rope_dimension_sections(spec.mrope_section + [0])
    if spec.vocab:
        tokens, types, merges = tiny_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_pad_token_id(tokens.index("<|endoftext|>"))
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
    else:
        w.add_tokenizer_model("none")
        w.add_vocab_size(spec.n_vocab_none)
    for name, arr in tiny_weights(spec).items():
        if name == "token_embd.weight" and embd_type != gguf.GGMLQuantizationType.F32:
            q = gguf.quants.quantize(arr, embd_type)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=embd_type)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_gguf(src: Path, dst: Path, ftype: int, embd_type: int | None = None, n_threads: int = 1) -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (test helper); embd_type forces token_embd's type."""
    import llama_cpp.llama_cpp as L

    params = L.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = ftype
    if embd_type is not None:
        params.token_embedding_type = embd_type
    rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed ({rc})"
    return dst


_CONVERTED: dict[str, dict[str, Path]] = {}


def converted_tiny(tmp_path_factory, checkpoint: Path, quant: str = "q4_k_m") -> dict[str, Path]:
    """Convert the tiny HF checkpoint with `pocketomni convert` once per session: {"thinker", "mmproj"}."""
    from pocketomni.convert import pipeline
    key = f"{checkpoint}:{quant}"
    if key not in _CONVERTED:
        out = tmp_path_factory.mktemp(f"converted-{quant}")
        res = pipeline.convert_checkpoint(checkpoint, out, quant=quant, progress=False, threads=1)
        _CONVERTED[key] = {k: Path(v) for k, v in res.files.items()}
    return _CONVERTED[key]


# ---------------------------------------------------------------- tests of the helpers themselves


def test_tiny_gguf_header_scan(tmp_path: Path) -> None:
    from pocketomni.gguf_file import GGUFFile

    p = build_tiny_gguf(tmp_path / "m.gguf", TinySpec(n_layer=1))
    info = GGUFFile.open(p)
    assert info.arch == "qwen2vl"
    assert info.metadata["qwen2vl.block_count"] == 1
    assert len(info.metadata["tokenizer.ggml.tokens"]) == len(tiny_vocab()[0])  # long arrays: length only
    assert info.tensor("token_embd.weight").shape == (len(tiny_vocab()[0]), 64)


def test_byte_alphabet_is_a_bijection() -> None:
    alpha = byte_alphabet()
    assert len(set(alpha)) == 256
    assert alpha[ord("a")] == "a" and alpha[ord(" ")] == "Ġ"
