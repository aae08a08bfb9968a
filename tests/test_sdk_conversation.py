"""Message model and rendering: OpenAI-style parsing, incremental template rendering, stop strings."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from omni_fixtures.tokenizer import CHAT_TEMPLATE

from pocketomni.chat.conversation import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    ChatTemplate,
    Message,
    Part,
    parse_messages,
    render_delta,
    split_rendered,
    user_message,
)
from pocketomni.chat.decoding import StopScanner
from pocketomni.errors import MediaError, ModelFileError, OptionsError


def _asst(text: str) -> Message:
    return Message("assistant", (Part("text", text=text),))


def test_user_message_orders_images_audio_then_text() -> None:
    img = np.zeros((28, 28, 3), np.uint8)
    m = user_message("hi", images=[img, "b.png"], audio=(np.zeros(10), 8000))
    assert [p.kind for p in m.parts] == ["image", "image", "audio", "text"]
    assert m.parts[0].label == "image array 28x28x3" and m.parts[1].label == "b.png"
    assert m.parts[2].label == "audio (10 samples at 8000 Hz)" and m.text == "hi"
    with pytest.raises(OptionsError):
        user_message()
    with pytest.raises(OptionsError):
        user_message(3)  # type: ignore[arg-type]


def test_parse_openai_messages() -> None:
    wav = base64.b64encode(b"RIFF....WAVE").decode()
    msgs = parse_messages([
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "text", "text": "reply"}]},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image_url", "image_url": "file:///tmp/x.png"},
            {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
            {"type": "image", "image": "y.jpg"},
            {"type": "text", "text": "what?"},
        ]},
    ])
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    last = msgs[-1]
    assert [p.kind for p in last.parts] == ["image", "image", "audio", "image", "text"]
    assert last.parts[1].source == "/tmp/x.png" and last.parts[2].source == b"RIFF....WAVE"
    for bad in ([], [{"role": "user"}], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}],
                [{"role": "user", "content": [{"type": "bogus"}]}], [{"role": "assistant", "content": "x"}],
                [{"role": "assistant", "content": [{"type": "image", "image": "a"}]}, {"role": "user", "content": "q"}],
                {"role": "user", "content": "not a list"}):
        with pytest.raises(OptionsError):
            parse_messages(bad)  # type: ignore[arg-type]
    with pytest.raises(MediaError):
        parse_messages([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}])
    (msg,) = parse_messages([{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}])
    assert [p.kind for p in msg.parts] == ["video"]  # video parts are accepted (decoded when sent)


def test_delta_rendering_continues_the_full_rendering() -> None:
    t = ChatTemplate(CHAT_TEMPLATE)
    img = Part("image", label="i")
    u1 = Message("user", (img, Part("text", text="look")))
    u2 = Message("user", (Part("audio", label="a"), Part("text", text="listen")))
    u3 = Message("user", (Part("text", text="bye"),))
    for system in (None, Message("system", (Part("text", text="S"),))):
        head = [system] if system else []
        history: list[Message] = []
        text = ""
        for u, reply in ((u1, "r1"), (u2, "r2 with <b>markup</b>"), (u3, "")):
            new = (head + [u]) if not history else [u]
            text += render_delta(t, history, new)
            history += new
            assert text == t.render(history, add_generation_prompt=True)
            text += reply
            history.append(_asst(reply))
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n" + IMAGE_PLACEHOLDER + "look")
    pieces = split_rendered(t.render([u1, _asst("x"), u2]), [img, u2.parts[0]])
    assert [type(p).__name__ for p in pieces] == ["str", "Part", "str", "Part", "str"]
    assert pieces[1] is img and pieces[2].endswith("<|im_start|>user\n")
    with pytest.raises(MediaError):
        split_rendered("x" + AUDIO_PLACEHOLDER, [])
    with pytest.raises(ModelFileError):
        split_rendered("no placeholders", [img])
    with pytest.raises(ModelFileError):
        ChatTemplate("{% for x in %}")


def test_stop_scanner_holds_back_possible_starts() -> None:
    s = StopScanner(["STOP", "\n\n"])
    out = []
    for piece in ["Hello S", "TO", "x and ", "ST", "OP here"]:
        text, hit = s.feed(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "Hello STOx and " and hit
    s = StopScanner(["abc"])
    assert s.feed("xxab") == ("xx", False) and s.flush() == "ab"
    assert StopScanner([]).feed("anything") == ("anything", False)


def test_media_arguments_take_one_item_or_a_list_or_tuple() -> None:
    """images=("a.jpg", "b.jpg") is two images; (samples, rate) is one clip but a tuple of paths is
    several; video= takes one source (a tuple is one video) or a list like the other kinds."""
    img = np.zeros((4, 4, 3), np.uint8)
    clip = np.zeros(1600, np.float32)
    frames = np.zeros((2, 28, 28, 3), np.uint8)
    kinds = lambda m: [p.kind for p in m.parts]
    assert kinds(user_message("x", images=("a.jpg", "b.png"))) == ["image", "image", "text"]
    assert kinds(user_message("x", images=(img, img, img))) == ["image"] * 3 + ["text"]
    assert kinds(user_message(audio=(clip, 16000))) == ["audio"]
    assert kinds(user_message(audio=("a.wav", "b.wav"))) == ["audio", "audio"]
    assert kinds(user_message(audio=[(clip, 16000), (clip, 8000)])) == ["audio", "audio"]
    assert kinds(user_message(video=(frames, 2.0))) == ["video"]
    assert kinds(user_message(video=(frames, 2.0, clip, 16000))) == ["video"]
    assert kinds(user_message("x", video=["a.mp4", (frames, 2.0)], images="c.jpg")) == ["video", "video", "image",
                                                                                       "text"]
    with pytest.raises(OptionsError, match="tuple of 3 items"):
        user_message(video=[(frames, 2.0, clip)])
    with pytest.raises(OptionsError, match="need their fps"):
        user_message(video=frames)
    with pytest.raises(OptionsError, match="images must be one input or a list"):
        user_message(images=3)


def test_a_misspelt_media_argument_is_named(converted_tiny) -> None:
    import pocketomni as po

    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as omni, omni.chat() as chat:
        with pytest.raises(OptionsError, match=r"no argument 'image'; did you mean images="):
            chat.send_sync("x", image="a.jpg")
        with pytest.raises(OptionsError, match=r"no argument 'videos'; did you mean video="):
            chat.send_sync("x", videos="a.mp4")
        with pytest.raises(OptionsError, match="unknown GenerationOptions option"):
            chat.send_sync("x", max_tokenz=3)  # a misspelt option still gets the option list
