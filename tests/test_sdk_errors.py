"""Bad inputs raise typed PocketOmniError subclasses with a fix in the message, before anything is
decoded, and the same chat then answers the next valid turn with nothing already said lost."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import pocketomni as po


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels (the data is a stub: it must never be decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, n_ctx=512) as o:
        yield o


def _run(chat, *args, **kw) -> po.Done:
    return next(ev for ev in chat.send_sync(*args, **kw) if isinstance(ev, po.Done))


def _bad_cases(tmp: Path) -> list[tuple[str, type, dict, tuple[str, ...]]]:
    """(name, error type, send() arguments, what the message must name: the culprit and the fix)."""
    (tmp / "noise.png").write_bytes(b"this is not an image at all")
    (tmp / "noise.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    (tmp / "noise.mp3").write_bytes(b"\x00\x01\x02 definitely not audio " * 10)
    huge = _png_header_only(tmp / "huge.png", 20000, 20000)
    overflow_fix = ("chat.reset()", "larger n_ctx")  # free the context or load a bigger one
    return [
        ("missing image file", po.MediaError, {"text": "look", "images": [tmp / "absent.jpg"]},
         ("absent.jpg", "check the path")),
        ("missing audio file", po.MediaError, {"text": "listen", "audio": [str(tmp / "absent.wav")]},
         ("absent.wav", "check the path")),
        ("undecodable image file", po.MediaError, {"text": "look", "images": [tmp / "noise.png"]},
         ("noise.png", "convert it to PNG or JPEG")),
        ("undecodable image bytes", po.MediaError, {"text": "look", "images": [b"\x00\x01garbage"]},
         ("image bytes", "convert it to PNG or JPEG")),
        ("undecodable wav", po.MediaError, {"text": "listen", "audio": [tmp / "noise.wav"]},
         ("noise.wav", "truncated or corrupt")),
        ("undecodable audio", po.MediaError, {"text": "listen", "audio": [tmp / "noise.mp3"]},
         ("noise.mp3", "convert it to WAV, FLAC or MP3")),
        ("zero-length audio", po.MediaError, {"text": "listen", "audio": [(np.zeros(0, np.float32), 16000)]},
         ("no samples", "pass a recording")),
        ("20000x20000 image", po.MediaError, {"text": "look", "images": [huge]},
         ("100 megapixels", "Downscale it")),
        ("too elongated image", po.MediaError,
         {"text": "look", "images": [np.zeros((28, 28 * 250, 3), np.uint8)]},
         ("7000x28", "200:1", "Crop it or pad it")),
        ("unsupported image type", po.MediaError, {"text": "look", "images": [12345]},
         ("int", "pass a path, bytes, a PIL image or a numpy array")),
        ("prompt beyond the context window", po.ContextOverflowError, {"text": "word " * 600},
         ("512-token context", *overflow_fix)),
        ("media beyond the context window", po.ContextOverflowError,
         {"text": "look", "images": [np.zeros((28 * 24, 28 * 24, 3), np.uint8)]},
         ("576 of them for media", "image_max_pixels", *overflow_fix)),
        ("unknown option", po.OptionsError, {"text": "hi", "max_tokenz": 3},
         ("max_tokenz", "valid options are", "max_tokens")),
        ("bad option value", po.OptionsError, {"text": "hi", "temperature": -1.0},
         ("temperature=-1.0", "[0.0, 10.0]")),
        ("empty turn", po.OptionsError, {}, ("needs text, images, audio or a video",)),
    ]


def test_bad_inputs_raise_typed_errors_and_the_chat_goes_on(omni, tmp_path) -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((56, 56, 3)) * 255).astype(np.uint8)
    chat = omni.chat(max_tokens=4)
    _run(chat, "First question", images=[img])
    for name, err, kw, names in _bad_cases(tmp_path):
        before_tokens, before_msgs = chat.tokens, chat.messages
        with pytest.raises(err) as info:
            text = kw.pop("text", None)
            _run(chat, text, **kw)
        assert isinstance(info.value, po.PocketOmniError), name
        missing = [part for part in names if part not in str(info.value)]
        assert not missing, f"{name}: the message should name {missing} (culprit and fix): {info.value}"
        assert chat.tokens == before_tokens and chat.messages == before_msgs, f"{name} changed the chat"
        assert chat.n_tokens == len(before_tokens)
    done = _run(chat, "Second question", max_tokens=4)
    # The same two turns in a chat that never saw an error give the same reply.
    clean = omni.chat(max_tokens=4)
    _run(clean, "First question", images=[img])
    assert _run(clean, "Second question").tokens == done.tokens
    assert clean.tokens == chat.tokens


def test_context_fills_up_during_a_reply(omni) -> None:
    chat = omni.chat(max_tokens=10_000, context_policy="error")
    done = _run(chat, "word " * 400)
    assert done.finish_reason == "length" and chat.n_tokens == omni.n_ctx
    with pytest.raises(po.ContextOverflowError, match="reset"):
        _run(chat, "more")
    chat.reset()
    assert _run(chat, "fresh start", max_tokens=2).finish_reason == "length"
    # the default policy drops the turn that filled the context (nothing else is left to drop)
    chat = omni.chat(max_tokens=10_000)
    events = list(chat.send_sync("word " * 400))
    trimmed, done = events[-2:]
    assert isinstance(trimmed, po.HistoryTrimmed) and trimmed.tokens_before == omni.n_ctx
    assert done.finish_reason == "length" and chat.n_tokens == trimmed.tokens_after == 0
    assert [m.dropped for m in chat.messages] == [True, True]
    assert _run(chat, "more", max_tokens=2).finish_reason == "length"


def test_features_missing_from_the_folder(omni, converted_tiny, tmp_path) -> None:
    assert omni.capabilities.vision and omni.capabilities.audio_in and omni.capabilities.exact_audio
    if not omni.capabilities.speech_out:  # until spoken replies are wired into Chat
        with pytest.raises(po.FeatureUnavailableError):
            omni.chat(speech=True)
    # A community-style folder with only the thinker: text works, images and audio say what is missing.
    src = converted_tiny("base", "f32")
    shutil.copy(next(src.glob("thinker-*.gguf")), tmp_path / "Qwen2.5-Omni-tiny-F32.gguf")
    with po.Omni.load_sync(tmp_path, n_threads=1, n_ctx=256) as text_only:
        caps = text_only.capabilities
        assert not caps.vision and not caps.audio_in and not caps.speech_out
        with pytest.raises(po.FeatureUnavailableError, match="talker and token2wav"):
            text_only.chat(speech=True)
        chat = text_only.chat(max_tokens=2)
        with pytest.raises(po.FeatureUnavailableError, match="mmproj"):
            _run(chat, "look", images=[np.zeros((56, 56, 3), np.uint8)])
        with pytest.raises(po.FeatureUnavailableError, match="mmproj"):
            _run(chat, "listen", audio=[(np.zeros(8000, np.float32), 16000)])
        assert _run(chat, "hello").finish_reason == "length"
    with pytest.raises(po.ModelFileError, match="not found"):
        po.Omni.load_sync(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(po.ModelFileError):
        po.Omni.load_sync(tmp_path / "empty")


def test_gpu_option(converted_tiny) -> None:
    """use_gpu: None uses a GPU only when llama.cpp has one; True without a GPU backend says how to get
    one, and with one loads onto it; False keeps the CPU; anything else is a wrong option. Holds on CPU-only
    builds and on Metal/CUDA/Vulkan builds alike."""
    from pocketomni.backend.llama import gpu_available, gpu_layers

    folder = converted_tiny("base", "f32")
    assert gpu_layers(False) == 0
    with pytest.raises(po.OptionsError, match="use_gpu"):
        po.Omni.load_sync(folder, use_gpu="yes")
    if gpu_available():
        assert gpu_layers(None) == gpu_layers(True) == -1  # every layer on the GPU
        with po.Omni.load_sync(folder, n_threads=1, n_ctx=256, use_gpu=True) as o:
            assert _run(o.chat(max_tokens=2), "hello").finish_reason == "length"
    else:
        assert gpu_layers(None) == 0 and gpu_layers(True) == 0
        with pytest.raises(po.FeatureUnavailableError, match="GGML_METAL") as info:
            po.Omni.load_sync(folder, use_gpu=True)
        assert "use_gpu=None" in str(info.value)  # ... or the way to use a GPU only when there is one
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=256, use_gpu=False) as o:
        assert _run(o.chat(max_tokens=2), "hello").finish_reason == "length"


def test_closed_model_and_chat(converted_tiny) -> None:
    omni = po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, n_ctx=256)
    chat = omni.chat()
    omni.close()
    with pytest.raises(po.PocketOmniError, match="closed"):
        _run(chat, "hi")
    with pytest.raises(po.PocketOmniError, match="closed"):
        omni.chat()
