"""The chat template stored in the converted thinker GGUF renders exactly what the HF processor renders."""

from __future__ import annotations

import pytest
from omni_fixtures import load_processor

from pocketomni.backend import LlamaModel
from pocketomni.chat.conversation import ChatTemplate, parse_messages

CONVERSATIONS = {
    "text": [{"role": "user", "content": [{"type": "text", "text": "Hello, who are you?"}]}],
    "image": [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                            {"type": "text", "text": "What is this?"}]}],
    "audio": [{"role": "user", "content": [{"type": "audio", "audio": "q.wav"},
                                            {"type": "text", "text": "Answer the question."}]}],
    "system_and_turns": [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "audio", "audio": "b.wav"},
                                     {"type": "text", "text": "Describe both."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat; a bell."}]},
        {"role": "user", "content": [{"type": "text", "text": "日本語で? 🙂\n\n  code: `x = 1`"}]},
    ],
}


def _as_openai(conv: list[dict]) -> list[dict]:
    """The same conversation in the OpenAI message format the SDK accepts."""
    out = []
    for m in conv:
        parts = []
        for p in m["content"]:
            if p["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": p["image"]}})
            elif p["type"] == "audio":
                parts.append({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}})
            else:
                parts.append(p)
        out.append({"role": m["role"], "content": parts})
    return out


@pytest.fixture(scope="module")
def gguf_template(converted_tiny) -> ChatTemplate:
    with LlamaModel(converted_tiny("base") / "thinker-f32.gguf", vocab_only=True) as model:
        return ChatTemplate(model.chat_template)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_gguf_template_renders_like_the_processor(name: str, gguf_template: ChatTemplate, tiny_checkpoint) -> None:
    conv = CONVERSATIONS[name]
    want = load_processor(tiny_checkpoint).apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    got = gguf_template.render(parse_messages(_as_openai(conv)), add_generation_prompt=True)
    assert got == want
