"""GGUF tokenizer metadata from the Hugging Face tokenizer files (no transformers).

llama.cpp's Qwen2 BPE needs: the token strings in id order (padded with `[PAD<id>]` entries up to the
embedding rows), a type per token (normal, control, user-defined, unused), the merges, the `qwen2`
pre-tokenizer name, the special ids and the chat template.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from pocketomni.errors import ConversionError

log = logging.getLogger(__name__)

# The split regex of Qwen2/Qwen2.5 tokenizers; llama.cpp implements it as the `qwen2` pre-tokenizer.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass
class TokenizerMeta:
    """Everything the thinker GGUF stores about the tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: str | None = None
    pre: str = "qwen2"
    model: str = "gpt2"

    def add_to(self, w: gguf.GGUFWriter) -> None:
        """Write the tokenizer keys into a GGUF writer."""
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.token_types)
        w.add_token_merges(self.merges)
        for kind, tid in self.special_ids.items():
            getattr(w, f"add_{kind}_token_id")(tid)
        for kind, flag in self.add_special.items():
            getattr(w, f"add_add_{kind}_token")(flag)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}. Re-download this file.") from e


def looks_special(text: str) -> bool:
    """Added tokens like `<|fim_prefix|>` act as control tokens even when not flagged special."""
    return text.startswith("<|") and text.endswith("|>")


def _merge_text(pair: Any) -> str:
    if isinstance(pair, str):
        return pair
    a, b = pair
    if " " in a or " " in b:
        # Byte-level vocabularies never contain a raw space; encode one the way gguf does if it appears.
        a, b = (s.replace(" ", chr(ord(" ") + 256)) for s in (a, b))
    return f"{a} {b}"


def _read_merges_txt(path: Path) -> list[str]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConversionError(f"{path}: malformed merge line {line!r}. Re-download merges.txt.")
        merges.append(f"{parts[0]} {parts[1]}")
    return merges


def _vocab_and_added(hf: Path) -> tuple[dict[str, int], list[dict[str, Any]], list[str]]:
    """(base vocab, added tokens [{id, content, special}], merges) from tokenizer.json or vocab.json."""
    tj = hf / "tokenizer.json"
    if tj.is_file():
        data = _read_json(tj)
        model = data.get("model") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback"):
            raise ConversionError(
                f"{tj} is not a byte-level BPE tokenizer; Qwen2.5-Omni uses one. Re-download tokenizer.json."
            )
        merges = [_merge_text(m) for m in model.get("merges") or []]
        if not merges and (hf / "merges.txt").is_file():
            merges = _read_merges_txt(hf / "merges.txt")
        _check_pre_tokenizer(data.get("pre_tokenizer") or {})
        return dict(model["vocab"]), list(data.get("added_tokens") or []), merges
    vocab = _read_json(hf / "vocab.json")
    added_path = hf / "added_tokens.json"
    added_map = _read_json(added_path) if added_path.is_file() else {}
    added = [{"id": i, "content": t, "special": looks_special(t)} for t, i in added_map.items()]
    return vocab, added, _read_merges_txt(hf / "merges.txt")


def _chat_template(hf: Path, tok_cfg: dict[str, Any]) -> str | None:
    # The processor's template (chat_template.jinja / .json) is the one apply_chat_template renders
    # for multimodal turns, so it wins over the tokenizer's copy.
    jinja = hf / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cj = hf / "chat_template.json"
    if cj.is_file():
        tmpl = _read_json(cj).get("chat_template")
        if isinstance(tmpl, str):
            return tmpl
    tmpl = tok_cfg.get("chat_template")
    return tmpl if isinstance(tmpl, str) else None


def _special_ids(
    tok_cfg: dict[str, Any], ids_by_text: dict[str, int], config: dict[str, Any], n_vocab: int
) -> dict[str, int]:
    """Special ids from tokenizer_config.json's *_token entries, else config.json's *_token_id (top level,
    thinker_config, thinker text_config). The Omni release: eos <|im_end|>, pad <|endoftext|> from the
    tokenizer; bos (null there) from thinker_config.bos_token_id."""
    out: dict[str, int] = {}
    for kind in SPECIAL_KINDS:
        entry = tok_cfg.get(f"{kind}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(text, str) and text in ids_by_text:
            out[kind] = ids_by_text[text]
    thinker = config.get("thinker_config") or {}
    for kind in SPECIAL_KINDS:
        if kind in out:
            continue
        for src in (config, thinker, thinker.get("text_config") or {}):
            tid = src.get(f"{kind}_token_id")
            if isinstance(tid, int) and 0 <= tid < n_vocab:
                out[kind] = tid
                break
    return out


def load_tokenizer(hf_dir: str | Path, config: dict[str, Any], n_vocab: int) -> TokenizerMeta:
    """Build the GGUF tokenizer metadata for a thinker with `n_vocab` embedding rows."""
    hf = Path(hf_dir)
    tok_cfg = _read_json(hf / "tokenizer_config.json")
    vocab, added, merges = _vocab_and_added(hf)
    if not merges:
        raise ConversionError(f"no BPE merges found in {hf} (tokenizer.json / merges.txt). Re-download them.")

    tokens: list[str | None] = [None] * n_vocab
    types = [int(gguf.TokenType.UNUSED)] * n_vocab

    def place(text: str, tid: int, ttype: int) -> None:
        if not 0 <= tid < n_vocab:
            raise ConversionError(
                f"token {text!r} has id {tid}, outside the {n_vocab} embedding rows of the thinker. The "
                "tokenizer files and the weights come from different models; re-download them together."
            )
        tokens[tid] = text
        types[tid] = ttype

    for text, tid in vocab.items():
        place(text, int(tid), int(gguf.TokenType.NORMAL))
    decoder = tok_cfg.get("added_tokens_decoder") or {}
    added_special = {str(k): bool(v.get("special")) for k, v in decoder.items()}
    for tok in added:
        tid, text = int(tok["id"]), str(tok["content"])
        special = bool(tok.get("special")) or added_special.get(str(tid), False)
        if vocab.get(text) == tid and not special:
            continue  # an added token that is just a normal vocabulary entry
        ttype = gguf.TokenType.CONTROL if special or looks_special(text) else gguf.TokenType.USER_DEFINED
        place(text, tid, int(ttype))
    final = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]

    ids_by_text = {t: i for i, t in enumerate(final) if types[i] != gguf.TokenType.UNUSED}
    special_ids = _special_ids(tok_cfg, ids_by_text, config, n_vocab)
    add_special = {
        k: tok_cfg[f"add_{k}_token"] for k in SPECIAL_KINDS if isinstance(tok_cfg.get(f"add_{k}_token"), bool)
    }
    return TokenizerMeta(
        tokens=final,
        token_types=types,
        merges=merges,
        special_ids=special_ids,
        add_special=add_special,
        chat_template=_chat_template(hf, tok_cfg),
    )


def _check_pre_tokenizer(pre: dict[str, Any]) -> None:
    parts = pre.get("pretokenizers", [pre])
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if regexes and regexes[0] != QWEN2_SPLIT_REGEX:
        log.warning("tokenizer.json splits text with an unexpected regex; llama.cpp will use the qwen2 one")
