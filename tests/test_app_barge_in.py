"""Barge-in in the Kivy demo, on real (PulseAudio) devices: while the app speaks a reply, speech
played into the virtual microphone stops the playback (checked at the speaker monitor) and cancels
generation; the history keeps the interrupted reply, marked interrupted, and the interruption
becomes the next turn. The stop latency (VAD speech_start detection -> silence at the speaker
monitor) and the worst frame are printed (pytest -s); no timing asserts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from app_driver import SCREENSHOTS, run_driver
from audio_env import audio_devices, first_loud_index, last_loud_index  # noqa: F401 (fixture)
from test_app_conversation import (
    check_model_work_off_the_ui_thread,
    events_of,
    mic_time,
    monitor_time,
    report_frames,
    require_app_env,
)

LOUD = 0.005  # monitor RMS over 2 ms frames that counts as sound


def test_app_barge_in_stops_playback_and_keeps_the_interrupted_reply(converted_tiny, audio_devices: None,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    require_app_env()
    # a long reply (text and speech keep pace): still being written when the user speaks over it
    r = run_driver("barge_in", converted_tiny("base", "f32"), tmp_path, shots=SCREENSHOTS, speech="on",
                   max_tokens=300, max_codes=300)
    assert not r["errors"], "\n".join(r["errors"])
    assert "speech_out=True" in r["capabilities"], r["capabilities"]
    assert (SCREENSHOTS / "06_barge_in.png").is_file()

    barge = events_of(r, "BargeIn")  # the user's voice, then the Stop button on the next reply
    assert [b["source"] for b in barge] == ["voice", "interrupt"]
    assert barge[0]["was_playing"], "the reply was not playing when the user spoke"
    detected = barge[0]["detected_at"]
    done = events_of(r, "ReplyDone")
    assert len(done) == 2 and all(d["interrupted"] and d["finish"] == "cancelled" for d in done)
    hist = [m for m in r["history"] if m["role"] != "system"]
    assert [(m["role"], m["interrupted"]) for m in hist] == [("user", False), ("assistant", True), ("user", False),
                                                             ("assistant", True)]
    assert hist[1]["text"] == done[0]["text"] and hist[3]["text"] == done[1]["text"]
    shown = r["transcript_at"]["06_barge_in"]
    assert sum(ln.endswith("[i](interrupted)[/i]") for ln in shown) == 2, shown

    # playback stopped: from shortly after the detection until the next reply's first audio, the
    # speaker monitor is silent (the stopped reply would have gone on playing there)
    mon = r["monitor"]
    next_audio = min(e["t"] for e in events_of(r, "AudioChunk") if e["t"] > events_of(r, "UserTurn")[1]["t"])
    a = int((detected + 1.0 - r["monitor_t0"]) * 24000)
    # up to shortly before the next reply's first chunk arrived: the event times and the monitor's clock
    # are aligned only to within PulseAudio's latency (a stopped reply would sound for seconds here)
    b = int((next_audio - 0.25 - r["monitor_t0"]) * 24000)
    assert b - a > 12000, "no stretch to check between the barge-in and the next reply"
    assert last_loud_index(mon[a:b], 24000, LOUD) == 0, "the speaker kept playing after the barge-in"

    # figures: was sound coming out at the detection, and when did the monitor go silent?
    d = int((detected - r["monitor_t0"]) * 24000)
    before = mon[max(0, d - 2400): d]
    audible = float(np.sqrt(np.mean(before.astype(np.float64) ** 2))) if before.size else 0.0
    end = last_loud_index(mon[: d + 24000], 24000, LOUD)
    stop_ms = (monitor_time(r, end) - detected) * 1000
    # when the interruption started at the microphone (its onset) -> VAD detection
    it = r["interruption"]
    start = max(0, int((it["t"] - r["mic_t0"]) * 16000))
    onset = first_loud_index(r["mic"][start:], 16000, 0.01)
    onset_ms = (detected - mic_time(r, start + onset)) * 1000 if onset >= 0 else float("nan")
    check_model_work_off_the_ui_thread(r, 2)
    print(f"\n[app barge-in] sound at the detection: RMS {audible:.3f}; detection -> speaker silent "
          f"{stop_ms:+.0f} ms at the monitor (Player.stop returned {barge[0]['stop_seconds'] * 1000:.1f} ms after "
          f"the detection); interruption onset at the mic -> detection {onset_ms:.0f} ms; "
          f"interrupted after {len(hist[1]['text'])} characters; frames: {report_frames(r)}")
