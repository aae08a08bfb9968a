"""`pocketomni chat`: scripted sessions through stdin, one-shot --prompt, errors reported, chat goes on."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from pocketomni.cli.main import main


def _files(tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((56, 84, 3)) * 255).astype(np.uint8)).save(img)
    import wave

    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000) * 0.1) * 8000).astype("<i2").tobytes())
    return img, wav


def test_scripted_chat_session(converted_tiny, tmp_path, monkeypatch, capsys) -> None:
    folder = converted_tiny("base", "f32")
    img, wav = _files(tmp_path)
    script = "\n".join([
        "Hello", f"/image {img}", f"/audio {wav}", "What is this?", "/image /no/such/file.png", "Again?",
        "Still there?", f"/save {tmp_path / 's.pochat'}", "/bogus", "/reset", f"/load {tmp_path / 's.pochat'}",
        "Go on", "/quit", "never sent",
    ]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    rc = main(["chat", str(folder), "--max-tokens", "3", "--threads", "1", "--stats"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "[attached" in out and "[saved to" in out and "[continuing" in out and "[conversation cleared]" in out
    assert err.count("error:") == 2 and "image file not found" in err and "unknown command" in err
    stats = [line for line in err.splitlines() if line.startswith("[length")]
    assert len(stats) == 4 and "media 31" in stats[1]  # 6 image + 25 audio tokens (1 s) in the second turn


def test_one_shot_prompt_and_bad_folder(converted_tiny, tmp_path, capsys) -> None:
    folder = converted_tiny("base", "f32")
    img, _ = _files(tmp_path)
    assert main(["chat", str(folder), "--prompt", "Describe", "--image", str(img), "--max-tokens", "4",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out.strip()) > 0
    assert main(["chat", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["chat"])
