"""The real Qwen2.5 byte-level BPE tokenizer, rebuilt offline from the `qwen.tiktoken` ranks.

The `dashscope` wheel ships the 151,643 mergeable ranks of the Qwen tokenizer. From them we write the
Hugging Face files of the Qwen2.5-Omni repo: vocab.json, merges.txt, tokenizer.json,
tokenizer_config.json, special_tokens_map.json and added_tokens.json (plus the Omni special tokens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_RANKS = 151643

# (token, id, special) exactly as in Qwen/Qwen2.5-Omni-7B's tokenizer_config.json.
SPECIAL_TOKENS: list[tuple[str, int, bool]] = [
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
    ("<|AUDIO|>", 151646, True),
    ("<|audio_bos|>", 151647, True),
    ("<|audio_eos|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_bos|>", 151652, True),
    ("<|vision_eos|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|IMAGE|>", 151655, True),
    ("<|VIDEO|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
]
SPECIAL_IDS: dict[str, int] = {tok: i for tok, i, _ in SPECIAL_TOKENS}

ADDITIONAL_SPECIAL = [
    "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>",
    "<|IMAGE|>", "<|VIDEO|>",
]
# Named multimodal tokens the processor reads as tokenizer attributes (tokenizer.image_token, ...).
MODALITY_TOKENS = {
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "audio_token": "<|AUDIO|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}

CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiktoken_path() -> Path:
    """Path of the `qwen.tiktoken` rank file shipped in the installed `dashscope` wheel."""
    import dashscope

    return Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"


@lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    """Token bytes -> rank, as in `qwen.tiktoken`."""
    ranks: dict[bytes, int] = {}
    for line in tiktoken_path().read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != NUM_RANKS:
        raise RuntimeError(f"expected {NUM_RANKS} ranks in {tiktoken_path()}, got {len(ranks)}")
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_with_lower_ranks(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """Run rank-ordered BPE on `token` using only merges of rank < `limit`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the merge list (ordered by rank) that reproduces every multi-byte token."""
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _split_with_lower_ranks(token, ranks, rank)
        if len(parts) != 2:
            raise RuntimeError(f"token rank {rank} {token!r} does not split into two parts: {parts}")
        merges.append((parts[0], parts[1]))
    return merges


def _cache_dir() -> Path:
    from . import cache_root

    return cache_root() / "tokenizer"


def cached_merges() -> list[tuple[str, str]]:
    """The merges in byte-to-unicode form, derived once and cached on disk (about a minute cold)."""
    src = tiktoken_path().read_bytes()
    key = hashlib.sha256(src + Path(__file__).read_bytes()).hexdigest()[:16]
    path = _cache_dir() / f"merges-{key}.txt"
    if not path.exists():
        b2u = bytes_to_unicode()
        enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
        lines = [f"{enc(a)} {enc(b)}" for a, b in derive_merges(load_ranks())]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".merges-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    text = path.read_text(encoding="utf-8")
    return [tuple(line.split(" ")) for line in text.splitlines() if line]  # type: ignore[misc]


def vocab() -> dict[str, int]:
    """vocab.json content: byte-to-unicode token string -> id (the ranks; no special tokens)."""
    b2u = bytes_to_unicode()
    return {"".join(b2u[x] for x in tok): rank for tok, rank in load_ranks().items()}


def tokenizer_json(vocab_map: dict[str, int], merges: list[tuple[str, str]]) -> dict:
    """A Qwen2-style `tokenizers` definition (NFC, regex split, byte-level, BPE)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": s}
            for t, i, s in SPECIAL_TOKENS
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab_map,
            "merges": [list(m) for m in merges],
        },
    }


def tokenizer_config() -> dict:
    """tokenizer_config.json as in the Omni repo (chat template included)."""
    cfg: dict = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": s}
            for t, i, s in SPECIAL_TOKENS
        },
        "additional_special_tokens": list(ADDITIONAL_SPECIAL),
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    cfg.update(MODALITY_TOKENS)
    return cfg


def write_tokenizer(out: Path) -> None:
    """Write all tokenizer files of the Omni repo layout into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    vmap = vocab()
    merges = cached_merges()
    dump = lambda name, obj: (out / name).write_text(  # noqa: E731
        json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    dump("vocab.json", vmap)
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    dump("tokenizer.json", tokenizer_json(vmap, merges))
    dump("tokenizer_config.json", tokenizer_config())
    dump("added_tokens.json", {t: i for t, i, _ in sorted(SPECIAL_TOKENS)})
    dump("special_tokens_map.json", {
        "additional_special_tokens": list(ADDITIONAL_SPECIAL),
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
    })


def tiktoken_encoding():
    """A `tiktoken.Encoding` over the same ranks and special tokens (the ground truth for tests)."""
    import tiktoken

    return tiktoken.Encoding(
        name="qwen2_5_omni_test",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=load_ranks(),
        special_tokens=dict(SPECIAL_IDS),
    )
