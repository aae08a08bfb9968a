"""Memory budget of a model folder, per component, from its files and the SDK's own settings.

    budget = memory_budget("models/qwen2.5-omni-3b")        # a spoken turn at Omni.load's defaults
    budget.total_mb("spoken")                               # what a spoken turn needs, MiB
    for item in budget.items: print(item.name, item.mb, item.when)

Every figure comes from the folder's GGUF headers and file sizes plus the settings the SDK runs with
(thinker n_ctx and micro-batch, the talker's first cache step, token2wav's released modulation weights),
by the same arithmetic llama.cpp and our numpy code allocate with (tests/test_memory_budget.py checks the
cache and compute figures against what llama.cpp allocates); RUNTIME_MB is measured (benchmarks/memory.py;
the README's "Memory budget" sets budget and measured peaks side by side). It is an upper bound for a
full context: a short chat touches less of the caches and of the mapped weights.

Components and when they are resident (`when`): "text" for every chat, "speech" from the first spoken
reply, "media" from the first image, audio or video input (the projector loads lazily).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pocketomni.gguf_file import GGUFFile

__all__ = ["RUNTIME_MB", "BudgetItem", "MemoryBudget", "kv_bytes_per_cell", "memory_budget"]

MB = 1 << 20
# The interpreter, numpy, llama.cpp's code, the SDK's objects and the work arrays of a spoken turn (token2wav's
# activations, the hidden-state history, allocator slack): a spoken turn's measured peak minus every other
# item as measured (benchmarks/results/memory.md, 2026-12-03): 372 MiB at 3B, 364 MiB at 7B.
RUNTIME_MB = 370.0
SCENARIOS = {"text": ("text",), "spoken": ("text", "speech"), "media": ("text", "speech", "media")}


@dataclass(frozen=True)
class BudgetItem:
    """One component: its MiB, when it is resident ("text", "speech" or "media") and how it was sized."""

    name: str
    mb: float
    when: str
    note: str


@dataclass(frozen=True)
class MemoryBudget:
    path: str
    items: tuple[BudgetItem, ...]

    def total_mb(self, scenario: str = "spoken") -> float:
        """MiB of a text chat ("text"), a spoken turn ("spoken") or a spoken turn after media input ("media")."""
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")
        return sum(i.mb for i in self.items if i.when in SCENARIOS[scenario])


def _hparams(g: GGUFFile) -> tuple[int, int, int, int, int]:
    """(n_layer, n_head, n_head_kv, head_dim, n_vocab) of a llama.cpp text model file."""
    a, m = g.arch, g.metadata
    n_layer, n_embd = int(m[f"{a}.block_count"]), int(m[f"{a}.embedding_length"])
    n_head = int(m[f"{a}.attention.head_count"])
    n_kv = int(m.get(f"{a}.attention.head_count_kv") or n_head)
    head_dim = int(m.get(f"{a}.attention.key_length") or n_embd // n_head)
    return n_layer, n_head, n_kv, head_dim, int(g.tensor("token_embd.weight").shape[0])


def kv_bytes_per_cell(path: str | os.PathLike[str], kv_bytes: int = 2) -> int:
    """Bytes one KV cell takes in llama.cpp's cache (K and V of every layer; f16 = 2 bytes a value)."""
    n_layer, _, n_kv, head_dim, _ = _hparams(GGUFFile.open(Path(path)))
    return 2 * n_layer * n_kv * head_dim * kv_bytes


def compute_bytes(path: str | os.PathLike[str], n_ctx: int, n_ubatch: int) -> int:
    """llama.cpp's CPU compute buffer for one micro-batch without flash attention: the larger of the
    micro-batch's logits (n_ubatch x n_vocab floats) and its attention scores (n_ctx x n_ubatch x n_head
    floats), which the graph allocator lays over each other, plus the rows of one layer's activations."""
    g = GGUFFile.open(Path(path))
    _, n_head, _, _, n_vocab = _hparams(g)
    n_embd = int(g.metadata[f"{g.arch}.embedding_length"])
    n_ff = int(g.metadata[f"{g.arch}.feed_forward_length"])
    return 4 * (max(n_ubatch * n_vocab, n_ctx * n_ubatch * n_head) + n_ubatch * (2 * n_ff + 4 * n_embd))


def _released_bytes(token2wav: Path) -> int:
    """Bytes of token2wav's DiT modulation weights (read once at load, then dropped from memory)."""
    g = GGUFFile.open(token2wav)
    return sum(t.n_bytes for name, t in g.tensors.items() if name.endswith("attn_norm.linear.weight"))


def memory_budget(path: str | os.PathLike[str], n_ctx: int | None = None, n_ubatch: int | None = None,
                  prompt_tokens: int = 512) -> MemoryBudget:
    """The budget of a model folder at Omni.load's defaults (or the given thinker n_ctx / micro-batch),
    with the talker's cache sized for a `prompt_tokens` prompt and its first step of codes."""
    import inspect

    from pocketomni.engine.model_folder import ModelFolder
    from pocketomni.engine.talker import TALKER_CTX_STEP, TALKER_UBATCH
    from pocketomni.engine.thinker import THINKER_CTX_STEP, THINKER_UBATCH
    from pocketomni.omni import Omni

    folder = ModelFolder.open(path)
    if n_ctx is None:
        n_ctx = int(inspect.signature(Omni.__init__).parameters["n_ctx"].default)
    ub = n_ubatch or THINKER_UBATCH
    size = lambda p: p.stat().st_size / MB
    items = [
        BudgetItem("runtime", RUNTIME_MB, "text", "Python, numpy, llama.cpp code, SDK objects, work arrays (measured)"),
        BudgetItem("thinker weights", size(folder.thinker), "text", f"{folder.thinker.name}"),
        BudgetItem("thinker KV cache", kv_bytes_per_cell(folder.thinker) * n_ctx / MB, "text",
                   f"f16, n_ctx {n_ctx} (a chat starts at {THINKER_CTX_STEP} cells and grows)"),
        BudgetItem("thinker compute", compute_bytes(folder.thinker, n_ctx, ub) / MB, "text",
                   f"micro-batch {ub} rows"),
    ]
    if folder.talker is not None and folder.token2wav is not None:
        cells = -(-(prompt_tokens + 2 + TALKER_CTX_STEP) // TALKER_CTX_STEP) * TALKER_CTX_STEP
        per = kv_bytes_per_cell(folder.talker)
        items += [
            BudgetItem("talker weights", size(folder.talker), "speech", f"{folder.talker.name}"),
            BudgetItem("talker KV cache", per * cells / MB, "speech",
                       f"f16, {cells} cells ({prompt_tokens}-token prompt + {TALKER_CTX_STEP} codes); "
                       f"+{per * TALKER_CTX_STEP / MB:.0f} MiB per {TALKER_CTX_STEP} more codes"),
            BudgetItem("talker compute", compute_bytes(folder.talker, cells, TALKER_UBATCH) / MB, "speech",
                       f"micro-batch {TALKER_UBATCH} rows"),
            BudgetItem("token2wav weights", (folder.token2wav.stat().st_size - _released_bytes(folder.token2wav)) / MB,
                       "speech", f"{folder.token2wav.name}, mapped; modulation weights released"),
        ]
    if folder.mmproj is not None:
        items.append(BudgetItem("media encoders", size(folder.mmproj), "media",
                                f"{folder.mmproj.name}, loaded on the first image/audio/video"))
    return MemoryBudget(str(folder.root), tuple(items))
