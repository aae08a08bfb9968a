"""The real Qwen2.5 byte-level BPE tokenizer, rebuilt offline from the `qwen.tiktoken` ranks.

The ranks -> vocab.json / merges.txt logic, the special tokens and the chat template live in the
package (`pocketomni.convert.qwen_vocab`, also used by `pocketomni synth`); this module adds what only
the fixtures need: tokenizer.json, the Omni repo's other tokenizer files, and a tiktoken encoding as
ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from pocketomni.convert.qwen_vocab import (  # noqa: F401  (re-exported for the fixtures and tests)
    ADDITIONAL_SPECIAL,
    CHAT_TEMPLATE,
    MODALITY_TOKENS,
    NUM_RANKS,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    bytes_to_unicode,
    cached_merges,
    derive_merges,
    load_ranks,
    tiktoken_path,
    tokenizer_config,
    vocab,
)

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


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


def write_tokenizer(out: Path) -> None:
    """Write all tokenizer files of the Omni repo layout into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    vmap = vocab()
    merges = cached_merges()
    dump = lambda name, obj: (out / name).write_text(
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
