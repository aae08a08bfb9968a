"""The Kivy demo end to end, under Xvfb with PulseAudio null sinks as microphone and speaker: the app
(a subprocess run by tests/app_driver.py) is driven by simulated touches on the tiny converted model,
questions made with espeak-ng are played into the virtual microphone, and the transcript, the
history, the speaker monitor and the screenshots are checked. The speech run writes the README
screenshots to apps/kivy_demo/screenshots/. Figures (latencies, worst frame) are printed (pytest -s)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from app_driver import SCREENSHOTS, run_driver
from audio_env import align, audio_devices, first_loud_index, last_loud_index  # noqa: F401 (fixture)

SHOTS = ["01_model_picker", "02_model_loaded", "03_conversation", "04_image_picker", "05_push_to_talk_with_image"]
USER_BG = (204, 224, 255)  # screens.USER_BG in 8-bit
MODEL_BG = (255, 255, 255)


def require_app_env() -> None:
    """Fail (with the fix) when Kivy or the X display is missing."""
    if importlib.util.find_spec("kivy") is None:
        pytest.fail("kivy is not installed: .venv/bin/pip install -e '.[app]' (kivy==2.3.1)")
    disp = os.environ.get("DISPLAY")
    if not disp:
        pytest.fail("DISPLAY is not set: `source scripts/services.sh` starts Xvfb (scripts/test.sh does)")
    if shutil.which("xdpyinfo") and subprocess.run(["xdpyinfo", "-display", disp], capture_output=True,
                                                   timeout=10, check=False).returncode != 0:
        pytest.fail(f"the X display {disp} does not answer; `source scripts/services.sh` restarts Xvfb")


def escape_markup(text: str) -> str:
    """What the app shows for model text inside Kivy markup (kivy.utils.escape_markup)."""
    return text.replace("&", "&amp;").replace("[", "&bl;").replace("]", "&br;")


def without_font_runs(line: str) -> str:
    """A transcript line without the [font=...] runs the app's per-character fallback adds (fonts.py;
    tests/test_app_scripts.py checks those)."""
    return re.sub(r"\[font=[^\]]*\]|\[/font\]", "", line)


def color_pixels(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(np.count_nonzero(np.all(np.abs(a - np.array(rgb)) <= tol, axis=-1)))


def events_of(r: dict, kind: str) -> list[dict]:
    return [e for e in r["events"] if e["kind"] == kind]


def report_frames(r: dict) -> str:
    """Worst frame per phase, and how the UI thread spent it (running / waiting for a CPU / blocked)."""
    out = []
    for p in ("load", "generate", "idle"):
        if p in r["frames"]:
            f, w = r["frames"][p], r["frames"][p]["worst"]
            out.append(f"{p}: worst {f['max_ms']:.0f} ms (running {w.get('running_ms', 0):.0f}, waiting for a CPU "
                       f"{w.get('cpu_wait_ms', 0):.0f}, blocked {w.get('blocked_ms', 0):.0f}; buffer swap "
                       f"{w.get('swap_ms', 0):.0f}), p99 {f['p99_ms']:.0f}, median {f['median_ms']:.0f} ms over "
                       f"{f['frames']} frames ({f['redrawn_frames']} redrawn, swap median {f['swap_median_ms']:.0f} "
                       f"ms); worst without the swap {f['without_swap_max_ms']:.0f} ms")
    return "; ".join(out)


def check_model_work_off_the_ui_thread(r: dict, n_turns: int) -> None:
    whats = [t["what"] for t in r["threads"]]
    assert whats.count("Omni.load") == 1 and whats.count("Chat turn") >= n_turns, whats
    on_main = [t for t in r["threads"] if t["main"]]
    assert not on_main, f"model work ran on the Kivy main thread: {on_main}"


def mic_time(r: dict, index: int) -> float:
    return r["mic_t0"] + index / 16000


def monitor_time(r: dict, index: int) -> float:
    return r["monitor_t0"] + index / 24000


@pytest.mark.parametrize("speech", ["text", "speech"])
def test_app_answers_spoken_questions(converted_tiny, audio_devices: None, tmp_path: Path,  # noqa: F811
                                      speech: str) -> None:
    require_app_env()
    shots = SCREENSHOTS if speech == "speech" else tmp_path / "shots"
    r = run_driver("conversation", converted_tiny("base", "f32"), tmp_path, shots=shots,
                   speech="on" if speech == "speech" else "off", max_tokens=24, max_codes=100)
    assert not r["errors"], "\n".join(r["errors"])
    assert r["exit_code"] == 0

    # screenshots of every screen: real renders, small files
    from PIL import Image

    for name in SHOTS:
        png = shots / f"{name}.png"
        assert png.is_file(), f"missing screenshot {png}"
        assert png.stat().st_size < 150_000, f"{png} is {png.stat().st_size} bytes"
        im = np.asarray(Image.open(png).convert("L"))
        assert im.shape == (640, 960) and im.std() > 10, f"{png} looks blank"
    # the conversation screenshot shows both turns: the user's and the model's bubbles are drawn ...
    conv_png = shots / "03_conversation.png"
    assert color_pixels(conv_png, USER_BG) > 5000 and color_pixels(conv_png, MODEL_BG) > 5000
    # ... and hold what was said and replied (the transcript at the moment of the screenshot)
    hist = [m for m in r["history"] if m["role"] != "system"]  # speech chats carry the speech system prompt
    assert [(m["role"], m["kinds"], m["interrupted"]) for m in hist] == [
        ("user", ["audio"], False), ("assistant", ["text"], False),
        ("user", ["image", "audio"], False), ("assistant", ["text"], False)]
    lines = [without_font_runs(ln) for ln in r["transcript_at"]["03_conversation"]]
    you = [ln for ln in lines if ln.startswith("[b]You:[/b]")]
    said = [ln for ln in lines if ln.startswith("[b]Assistant:[/b]")]
    assert len(you) == 1 and "spoke" in you[0] and len(said) == 1
    assert hist[1]["text"] and said[0] == f"[b]Assistant:[/b] {escape_markup(hist[1]['text'])}"
    final = [without_font_runs(ln) for ln in r["transcript_at"]["05_push_to_talk_with_image"]]
    assert any(ln.startswith("[b]You:[/b]") and ln.endswith("+ image") for ln in final)
    assert f"[b]Assistant:[/b] {escape_markup(hist[3]['text'])}" in final
    assert "tok/s" in r["status"]

    # the spoken turns hold the questions (the VAD / push-to-talk did not cut them)
    turns = events_of(r, "UserTurn")
    assert len(turns) == 2 and not turns[0]["image"] and turns[1]["image"]
    for turn, q in zip(turns, r["questions"]):
        assert turn["audio_seconds"] >= q["seconds"] - 0.5, (turn, q)

    check_model_work_off_the_ui_thread(r, 2)
    caps = r["capabilities"]
    if speech == "speech":
        assert "speech_out=True" in caps, caps
        check_speech_reached_the_speaker(r)
    else:
        assert not r["reply_audio"] or all(a.size == 0 for a in r["reply_audio"])
        assert "text only" in " ".join(r["transcript_at"]["03_conversation"])
    done = events_of(r, "ReplyDone")
    print(f"\n[app {speech}] first text {done[0]['first_text'] * 1000:.0f} ms after the end of the spoken turn "
          f"(SDK), decode {done[0]['decode_tps']:.0f} tok/s; frames: {report_frames(r)}")


def check_speech_reached_the_speaker(r: dict) -> None:
    """Every chunk of the first reply is found, intact, in the speaker monitor's recording."""
    audio, monitor = r["reply_audio"][0], r["monitor"]
    assert audio.size > 0, "no AudioChunk in the first reply"
    turn_t = events_of(r, "UserTurn")[0]["t"]
    chunks = [e for e in events_of(r, "AudioChunk") if e["t"] > turn_t][: len(audio)]
    bounds = np.cumsum([0] + [round(c["seconds"] * 24000) for c in chunks])
    found = 0
    for a, b in itertools.pairwise(bounds):
        if b > audio.size or b - a < 12000:  # long chunks only: short ones may be merged at the edges
            continue
        ncc, _ = align(audio[a:b], monitor)
        assert ncc >= 0.9, f"a reply chunk ({(b - a) / 24000:.2f} s) is not in the speaker recording (NCC {ncc:.3f})"
        found += 1
    assert found >= 1, "no reply chunk long enough to check"
    # end of the user's speech (at the microphone) -> first reply sound at the speaker
    q = r["questions"][0]
    mic = r["mic"]
    start = max(0, int((q["t"] - r["mic_t0"]) * 16000))
    end_speech = mic_time(r, start + last_loud_index(mic[start: start + int((q["seconds"] + 1.0) * 16000)],
                                                     16000, 0.01))
    after = max(0, int((end_speech - r["monitor_t0"]) * 24000))
    first_out = first_loud_index(monitor[after:], 24000, 0.005)
    assert first_out >= 0, "the reply was never heard at the speaker"
    latency = monitor_time(r, after + first_out) - end_speech
    done = events_of(r, "ReplyDone")[0]
    print(f"\n[app speech] end of user speech -> first reply sound at the speaker {latency:.2f} s "
          f"(SDK: first audio handed to the Player {done['first_audio']:.2f} s after the turn ended; "
          f"RTF {done['rtf']:.2f}); {found} chunks matched at the monitor")
