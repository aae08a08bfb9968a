"""End-to-end parity through the public API: a 3-turn chat (image, audio, text) against transformers.

The tiny checkpoint is converted with `pocketomni convert` (f32 thinker and mmproj) and chatted with
through `pocketomni.Omni` / `Chat` exactly as an app would. The reference is
`Qwen2_5OmniForConditionalGeneration.generate` (text mode, greedy) on the same conversation, rendered
with the same chat template and system prompt by the reference processor.

Turn 1's input ids come from the reference processor alone and must equal ours. For turns 2 and 3 the
reference's input ids are built from the token ids our KV cache holds for the earlier turns (the
previous prompt + the reply tokens), followed by the reference processor's ids for the new part of
the conversation: decoding a random model's reply to text and tokenizing it again need not give the
same ids back, so re-rendering the whole conversation as text would not be the same conversation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from omni_fixtures import build_checkpoint, load_processor, load_reference

import pocketomni as po

torch.set_num_threads(1)

SYSTEM = "You are a careful assistant that answers briefly."
N_REPLY = 10


def _image() -> np.ndarray:
    return (np.random.default_rng(7).random((56, 84, 3)) * 255).astype(np.uint8)  # 84 x 56: multiples of 28


def _audio() -> np.ndarray:
    t = np.arange(int(16000 * 2.5)) / 16000
    noise = np.random.default_rng(8).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * 330 * t) + noise).astype(np.float32)


@pytest.fixture(params=["base", "gqa4", "odd"])
def variant(request) -> str:
    return request.param


@pytest.fixture
def folder(converted_tiny, variant):
    return converted_tiny(variant, "f32")


@pytest.fixture
def reference(variant):
    ckpt = build_checkpoint(variant)
    return load_reference(ckpt), load_processor(ckpt)


def _ref_generate(model, ids: list[int], media: dict) -> list[int]:
    inp = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), generation_mode="text",
                             thinker_max_new_tokens=N_REPLY, thinker_do_sample=False, **media)
    seq = out.sequences if hasattr(out, "sequences") else out
    return seq[0, len(ids):].tolist()


def test_three_turn_chat_matches_transformers_generate(folder, reference) -> None:
    model, proc = reference
    from PIL import Image

    img, aud = _image(), _audio()
    turns = [
        {"text": "What is in this picture?", "images": [img]},
        {"text": "And what do you hear?", "audio": [(aud, 16000)]},
        {"text": "Summarize both."},
    ]
    conv: list[dict] = [{"role": "system", "content": SYSTEM}]
    ref_ids: list[int] = []
    prev_text = ""
    with po.Omni.load_sync(folder, n_threads=1, kv_f32=True) as omni:
        chat = omni.chat(system=SYSTEM, max_tokens=N_REPLY)
        for k, turn in enumerate(turns):
            content = [{"type": "image"} for _ in turn.get("images", [])]
            content += [{"type": "audio"} for _ in turn.get("audio", [])]
            content.append({"type": "text", "text": turn["text"]})
            conv.append({"role": "user", "content": content})
            full = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            assert full.startswith(prev_text)
            delta = full[len(prev_text):]  # the reference's text for the new part of the conversation
            enc = proc(text=[delta], images=[Image.fromarray(img)] if "images" in turn else None,
                       audio=[aud] if "audio" in turn else None, return_tensors="pt")
            ref_ids = ref_ids + enc["input_ids"][0].tolist()

            n_cached = len(chat.tokens)
            done = next(ev for ev in chat.send_sync(turn["text"], images=turn.get("images"), audio=turn.get("audio"))
                    if isinstance(ev, po.Done))
            # Everything up to the first reply token: the cache before the turn + this turn's prefill.
            assert chat.tokens[: n_cached + done.usage.prompt_tokens] == ref_ids, f"turn {k + 1}: prompt ids differ"

            ref_reply = _ref_generate(model, ref_ids, _all_media(proc, conv, img, aud, with_audio=k >= 1))
            stopped = bool(ref_reply) and ref_reply[-1] in (151645, 151643)
            ref_core = ref_reply[:-1] if stopped else ref_reply
            assert list(done.tokens) == ref_core, f"turn {k + 1}: greedy replies differ"
            assert done.finish_reason == ("stop" if stopped else "length")

            # The next turn continues from the ids our cache holds (prompt + reply), never re-tokenized.
            ref_ids = ref_ids + ref_core
            reply_text = proc.tokenizer.decode(ref_core)
            conv.append({"role": "assistant", "content": reply_text})
            prev_text = full + reply_text


def _all_media(proc, conv, img, aud, with_audio: bool) -> dict:
    """pixel_values / input_features of every media item in the conversation so far."""
    from PIL import Image

    has_audio = with_audio
    text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    enc = proc(text=[text], images=[Image.fromarray(img)], audio=[aud] if has_audio else None, return_tensors="pt")
    keys = ["pixel_values", "image_grid_thw"] + (["input_features", "feature_attention_mask"] if has_audio else [])
    return {k: enc[k] for k in keys}
