"""`pocketomni demo`: builds the tiny synthetic model once, then chats through the public API end to end."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import llama_cpp  # noqa: F401  (hard dependency: fail loudly if missing)
import numpy as np
import pytest

from pocketomni.cli.demo import SCRIPT, STAMP, demo_audio, demo_image, ensure_demo_model
from pocketomni.cli.main import main


@pytest.fixture
def cache(tmp_path_factory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.getbasetemp() / "demo-cache"  # shared by this module's tests
    monkeypatch.setenv("POCKETOMNI_CACHE", str(root))
    return root


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_demo_runs_end_to_end(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pocketomni as po

    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--threads", "1", "--speak"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "building the demo model" in stderr
    assert "RANDOM weights" in stdout and "gibberish" in stdout
    replies = stdout.split("assistant: ")[1:]  # random replies may hold newlines of their own
    assert len(replies) == len(SCRIPT) and all(len(r.split("  [finish:")[0].strip()) > 5 for r in replies)
    stats = [line for line in stdout.splitlines() if line.startswith("  [finish:")]
    # The synthetic thinker never emits a stop token: every reply runs to its max_tokens.
    assert [f"reply {n} tok" in s and "finish: length" in s for s, (_, _, n) in zip(stats, SCRIPT)] == [True] * 2
    assert "(media 0)" not in stats[0] and "(media 0)" in stats[1]
    assert _wav_seconds(out / "demo-input.wav") == 2.0 and (out / "demo-input.png").is_file()
    with po.Omni.load_sync(cache / "demo-tiny", n_threads=1) as omni:
        speech = omni.capabilities.speech_out
    if speech:
        for turn in range(1, len(SCRIPT) + 1):
            assert _wav_seconds(out / f"demo-reply-{turn}.wav") == 3.0  # SPEECH_MAX_CODES: the talker never stops
    else:
        assert "speech: not available" in stdout and not list(out.glob("demo-reply-*.wav"))


def test_demo_model_is_reused_and_rebuilt_when_stale(cache: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = ensure_demo_model(progress=False)
    stamp = folder / STAMP
    first = stamp.stat().st_mtime_ns
    assert ensure_demo_model(progress=False) == folder and stamp.stat().st_mtime_ns == first
    stamp.write_text(json.dumps({"key": "pocketomni 0.0.0"}))  # as left by an older version
    ensure_demo_model(progress=False)
    assert "building the demo model" in capsys.readouterr().err
    assert json.loads(stamp.read_text())["key"] != "pocketomni 0.0.0"
    assert main(["demo", "--out", str(tmp_path), "--threads", "1"]) == 0
    assert "building" not in capsys.readouterr().err


def test_generated_inputs() -> None:
    img = demo_image()
    assert img.shape == (224, 336, 3) and img.dtype == np.uint8 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    pcm, rate = demo_audio()
    assert rate == 16000 and pcm.shape == (32000,) and pcm.dtype == np.float32 and 0.05 < np.abs(pcm).max() <= 0.6
