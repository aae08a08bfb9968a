"""The real Qwen2.5 byte-level BPE vocabulary, rebuilt offline from the `qwen.tiktoken` ranks.

The `dashscope` wheel ships the 151,643 mergeable ranks of the Qwen tokenizer (`pip install
'pocketomni[synth]'`). From them we derive what a Hugging Face Qwen2.5-Omni repository carries:
vocab.json (token string -> id), merges.txt (the merge list in rank order), added_tokens.json and
tokenizer_config.json (special tokens and the Omni chat template). Deriving the merges takes about a
minute, so they are cached under ~/.cache/pocketomni (or $POCKETOMNI_CACHE).

Used by `pocketomni synth` (synthetic model folders) and the test fixtures; stdlib only.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from pocketomni.errors import ConversionError

NUM_RANKS = 151643
MERGES_FORMAT = 1  # bump when the cached merges' content changes

# (token, id, special) as in Qwen/Qwen2.5-Omni-7B's tokenizer_config.json.
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


def cache_dir() -> Path:
    """PocketOmni's cache folder: $POCKETOMNI_CACHE, else $XDG_CACHE_HOME/pocketomni, else ~/.cache/pocketomni."""
    env = os.environ.get("POCKETOMNI_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "pocketomni"


def tiktoken_path() -> Path:
    """Path of `qwen.tiktoken` in the installed `dashscope` package (found without importing it)."""
    spec = importlib.util.find_spec("dashscope")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    raise ConversionError(
        "the Qwen2.5 vocabulary (qwen.tiktoken) comes from the `dashscope` package, which is not installed"
        + (" or lacks resources/qwen.tiktoken" if locations else "")
        + ". Install it with: pip install 'pocketomni[synth]'"
    )


@lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    """Token bytes -> rank, as in `qwen.tiktoken`."""
    path = tiktoken_path()
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != NUM_RANKS or sorted(ranks.values()) != list(range(NUM_RANKS)):
        raise ConversionError(
            f"{path} holds {len(ranks)} ranks, expected 0..{NUM_RANKS - 1}. Reinstall it: "
            "pip install --force-reinstall 'pocketomni[synth]'"
        )
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


def _bpe_below(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """Rank-ordered BPE of `token` using only merges whose result has rank < `limit`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list (in rank order) that rebuilds every multi-byte token from its two halves."""
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _bpe_below(token, ranks, rank)
        if len(parts) != 2:
            raise ConversionError(f"qwen.tiktoken token {rank} {token!r} does not split in two: {parts}")
        merges.append((parts[0], parts[1]))
    return merges


def _unicode(token: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in token)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ranks_key(extra: bytes = b"") -> str:
    h = hashlib.sha256(tiktoken_path().read_bytes())
    h.update(f"format{MERGES_FORMAT}".encode() + extra)
    return h.hexdigest()[:16]


def cached_merges() -> list[tuple[str, str]]:
    """The merges in byte-to-unicode form, derived once (about a minute) and cached on disk."""
    path = cache_dir() / "vocab" / f"merges-{_ranks_key()}.txt"
    if not path.is_file():
        table = bytes_to_unicode()
        lines = [f"{_unicode(a, table)} {_unicode(b, table)}" for a, b in derive_merges(load_ranks())]
        _atomic_write(path, "\n".join(lines) + "\n")
    text = path.read_text(encoding="utf-8")
    return [(a, b) for a, b in (line.split(" ") for line in text.splitlines() if line)]


def vocab() -> dict[str, int]:
    """vocab.json content: byte-to-unicode token string -> id (the ranks; no special tokens)."""
    table = bytes_to_unicode()
    return {_unicode(tok, table): rank for tok, rank in load_ranks().items()}


def tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json as in the Omni repository (chat template included)."""
    cfg: dict[str, Any] = {
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


def write_vocab_files(out: Path) -> None:
    """Write vocab.json, merges.txt, added_tokens.json and tokenizer_config.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    dump = lambda obj: json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
    merges = cached_merges()
    _atomic_write(out / "vocab.json", dump(vocab()))
    _atomic_write(out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    _atomic_write(out / "added_tokens.json", dump({t: i for t, i, _ in sorted(SPECIAL_TOKENS)}))
    _atomic_write(out / "tokenizer_config.json", dump(tokenizer_config()))


def vocab_dir() -> Path:
    """A cached folder holding the tokenizer files of `write_vocab_files` (built on first use)."""
    path = cache_dir() / "vocab" / f"tokenizer-{_ranks_key(Path(__file__).read_bytes())}"
    if not (path / "tokenizer_config.json").is_file():  # written last
        write_vocab_files(path)
    return path
