"""The Kivy demo's live camera under Xvfb + PulseAudio on the tiny model: the camera toggle (here a
file-backed camera playing a test video; on a device Kivy's Camera widget) shows the latest frame
small; a question spoken into the virtual microphone goes to the chat as video at 2 fps within the
pixel budget with the voice as its sound track, streamed in 2 s chunks while it is spoken, and a reply
comes back; camera off, the next turn is
voice only. Writes the README screenshot apps/kivy_demo/screenshots/08_camera.png."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from app_driver import SCREENSHOTS, run_driver
from audio_env import audio_devices  # noqa: F401 (fixture)
from test_app_conversation import (
    USER_BG,
    check_model_work_off_the_ui_thread,
    color_pixels,
    events_of,
    report_frames,
    require_app_env,
    without_font_runs,
)


def test_app_camera_turn(converted_tiny, audio_devices: None, tmp_path: Path) -> None:  # noqa: F811
    require_app_env()
    r = run_driver("camera", converted_tiny("base", "f32"), tmp_path, shots=SCREENSHOTS, speech="off", max_tokens=16)
    assert not r["errors"], "\n".join(r["errors"])
    assert r["exit_code"] == 0
    budget = r["camera_pixels"]
    assert isinstance(budget, int) and budget > 0

    # the spoken turn went with the camera's frames; the next one (camera off) without
    turns = events_of(r, "UserTurn")
    assert len(turns) == 2 and turns[0]["video"] and turns[1]["frames"] is None and not turns[1]["video"]
    t, h, w, c = turns[0]["frames"]
    assert t == max(2, 2 * math.floor(turns[0]["audio_seconds"])) and c == 3
    # heard live: the camera's 2 s chunks (4 frames + 2 s of voice) went in while the user spoke
    live = r["camera_live"]
    assert live is not None and live["video"] and live["chunks_streamed"] >= 1 and live["frames_fed"] >= 4
    # what the chat prepared for the encoders: those frames at 2 fps, within the budget, with the voice
    plans = [p for p in r["plans"] if p]  # turns with media
    video = plans[0][0]
    assert len(plans[0]) == 1 and video["kind"] == "video" and "with sound" in video["label"]
    assert video["frames"] == [t, h, w, 3] and video["sample_fps"] == 2.0
    assert h % 28 == 0 and w % 28 == 0 and h * w <= budget
    assert video["audio_seconds"] == turns[0]["audio_seconds"] and video["audio_tokens"] > 0
    assert video["video_tokens"] == t // 2 * (h // 28) * (w // 28)
    hist = [m for m in r["history"] if m["role"] != "system"]
    assert [(m["role"], m["kinds"]) for m in hist] == [("user", ["video"]), ("assistant", ["text"]),
                                                       ("user", ["audio"]), ("assistant", ["text"])]
    done = events_of(r, "ReplyDone")
    assert len(done) == 2 and done[0]["text"] and not done[0]["interrupted"]  # a reply came back
    assert hist[1]["text"] == done[0]["text"]

    # the screenshot: the transcript says the camera was on, the preview shows the scene (the red bowl)
    png = SCREENSHOTS / "08_camera.png"
    lines = [without_font_runs(ln) for ln in r["transcript_at"]["08_camera"]]
    assert any(ln.startswith("[b]You:[/b]") and ln.endswith(f"+ camera ({t} frames)") for ln in lines), lines
    assert any(ln.startswith("Camera on (camera_scene.mp4)") for ln in lines), lines
    from PIL import Image

    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert im.shape == (640, 960, 3) and png.stat().st_size < 150_000
    red = im[..., 0] - im[..., 1:].max(axis=-1) > 60  # the bowl (the 64-colour palette darkens it)
    assert red.sum() > 200, "the camera preview (the red bowl) is not on screen"
    assert color_pixels(png, USER_BG) > 3000
    check_model_work_off_the_ui_thread(r, 2)
    print(f"\n[app camera] {t} frames {w}x{h} (budget {budget} px), {video['video_tokens']} video + "
          f"{video['audio_tokens']} audio tokens ({live['chunks_streamed']} chunks streamed); first text {done[0]['first_text'] * 1000:.0f} ms after the turn; "
          f"frames: {report_frames(r)}")
