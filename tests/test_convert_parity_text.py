"""Text parity: the converted f32 thinker in stock llama.cpp against the transformers reference thinker.

Bounds (issue 2, item 4): last-position logits and final normed hidden state within
1e-3 * max|reference|, and a greedy 32-token continuation identical, on every tiny shape variant.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_convert_files import Thinker, converted

MESSAGES = [{"role": "user", "content": "Write a short poem about rivers, please."}]
N_GREEDY = 32


def _reference(variant: str):
    from omni_fixtures import build_checkpoint, load_reference
    from transformers import AutoTokenizer

    path = build_checkpoint(variant)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    return load_reference(path).thinker, ids


@torch.no_grad()
def _hf_greedy(thinker, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):  # full recompute per step: exact, and cheap at this size
        logits = thinker(input_ids=torch.tensor([seq])).logits[0, -1]
        seq.append(int(torch.argmax(logits)))
    return seq[len(ids):]


@pytest.mark.parametrize("variant", ["base", "gqa4", "odd"])
def test_text_parity(variant: str) -> None:
    torch.set_num_threads(1)
    thinker, ids = _reference(variant)
    with torch.no_grad():
        out = thinker(input_ids=torch.tensor([ids]), output_hidden_states=True)
    ref_logits = out.logits[0, -1].numpy()
    ref_hidden = out.hidden_states[-1][0, -1].numpy()

    th = Thinker(converted(variant) / "thinker-f32.gguf")
    try:
        logits, hidden = th.decode(ids)
        gap_l = float(np.abs(logits - ref_logits).max())
        gap_h = float(np.abs(hidden - ref_hidden).max())
        print(f"{variant}: logits gap {gap_l:.3g} (max|logit| {np.abs(ref_logits).max():.3g}), "
              f"hidden gap {gap_h:.3g} (max|h| {np.abs(ref_hidden).max():.3g})")
        assert gap_l <= 1e-3 * np.abs(ref_logits).max()
        assert gap_h <= 1e-3 * np.abs(ref_hidden).max()
        assert th.greedy(ids, N_GREEDY) == _hf_greedy(thinker, ids, N_GREEDY)
    finally:
        th.close()
