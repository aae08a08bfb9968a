"""The multimodal projector (mmproj, ~2.6 GB resident at 3B) is loaded by the first image, not at load time:
text and audio turns (our exact audio encoder) never pay for it."""

from __future__ import annotations

import numpy as np
import pytest

import pocketomni as po


def _run(chat, *args, **kw) -> po.Done:
    return next(ev for ev in chat.send_sync(*args, **kw) if isinstance(ev, po.Done))


def test_mmproj_loads_on_first_image_only(converted_tiny) -> None:
    folder = converted_tiny("base", "f32")
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=512) as omni:
        media = omni.runtime.media
        assert omni.capabilities.vision and omni.capabilities.exact_audio
        assert media.mtmd is None  # nothing loaded yet
        chat = omni.chat(max_tokens=2)
        assert _run(chat, "hello").finish_reason == "length"
        t = np.arange(16000) / 16000
        heard = _run(chat, "listen", audio=[(0.1 * np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000)])
        # 1 s through the exact encoder: 100 mel frames -> 25 audio tokens (mtmd would pad to 30 s: 750)
        assert heard.usage.media_tokens == 25 and heard.finish_reason == "length"
        assert media.mtmd is None  # text and exact audio did not need the projector
        img = np.full((56, 84, 3), 128, np.uint8)
        done = _run(chat, "look", images=[img])
        assert done.usage.media_tokens > 0
        assert media.mtmd is not None and not media.mtmd.closed
        first = media.mtmd
        _run(chat, "again", images=[img])
        assert media.mtmd is first  # loaded once
    assert first.closed


def test_no_mmproj_still_says_what_is_missing(converted_tiny, tmp_path) -> None:
    import shutil

    src = converted_tiny("base", "f32")
    shutil.copy(next(src.glob("thinker-*.gguf")), tmp_path / "Qwen2.5-Omni-tiny-F32.gguf")
    with po.Omni.load_sync(tmp_path, n_threads=1, n_ctx=256) as omni, pytest.raises(
        po.FeatureUnavailableError, match="mmproj"
    ):
        omni.runtime.media._mtmd()
