"""Drives the Kivy demo (apps/kivy_demo) through a scripted interaction; run in a subprocess by the
tests/test_app_*.py tests under Xvfb + PulseAudio (scripts/services.sh).

    python tests/app_driver.py SCENARIO --model FOLDER --out DIR [--shots DIR] [--speech on|off]

Input is simulated the way a user gives it: touches dispatched through the window at the widgets'
positions (kivy.tests.common.UnitTestTouch), and espeak-ng speech played into the virtual microphone.
The microphone and the speaker monitor are recorded with parec meanwhile. The driver writes
DIR/result.json (transcript, history, event times, thread records, frame gaps, errors) and
DIR/mic.npy, DIR/monitor.npy, DIR/reply_audio.npy; screenshots go to --shots.

Instrumentation (no mocks): the model's load and turn functions are wrapped to record the thread
they run on, and a Clock callback every frame measures the gaps between frames, per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "apps" / "kivy_demo"
SCREENSHOTS = APP_DIR / "screenshots"
for _p in (str(ROOT / "tests"), str(APP_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
from audio_env import MIC, MIC_SINK, SPEAKER_MONITOR, Parec, espeak, pacat_play, silence

import pocketomni as po
from pocketomni.voice.session import BargeIn, ReplyDone, UserSpeaking, UserTurn

QUESTION = "What can you see in the kitchen? Please describe it."
QUESTION_2 = "And what colour is it?"
INTERRUPTION = "Wait, stop, stop please."
MIC_RATE, OUT_RATE = 16000, 24000

# ---------------------------------------------------------------- for the tests (no Kivy in pytest)


def run_driver(scenario: str, model: Path, out: Path, *, speech: str, shots: Path | None = None,
               max_tokens: int = 24, max_codes: int = 0, timeout: float = 900) -> dict[str, Any]:
    """Run the driver in a subprocess (its own Kivy window on $DISPLAY); returns result.json,
    with the recordings as arrays under "mic", "monitor" and "reply_audio" (one per reply)."""
    import json
    import subprocess

    env = dict(os.environ, KIVY_NO_ARGS="1", KIVY_WINDOW="sdl2", KIVY_GL_BACKEND="sdl2",
               KIVY_HOME=str(out / "kivy_home"), KIVY_NO_CONSOLELOG="0", KIVY_LOG_MODE="PYTHON",
               # Mesa's software GL draws in the UI thread itself: its time counts as "running" in the
               # frame probe instead of hiding among "blocked" (waiting for llvmpipe's worker threads)
               LP_NUM_THREADS="0")
    cmd = [sys.executable, __file__, scenario, "--model", str(model), "--out", str(out), "--speech", speech,
           "--max-tokens", str(max_tokens), "--max-codes", str(max_codes), "--timeout", str(timeout - 60)]
    if shots is not None:
        cmd += ["--shots", str(shots)]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          check=False)
    (out / "driver.log").write_text(proc.stdout + proc.stderr)
    res_file = out / "result.json"
    if not res_file.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise AssertionError(f"the app driver wrote no result (exit code {proc.returncode}):\n{tail}")
    r = json.loads(res_file.read_text())
    r["exit_code"] = proc.returncode
    for name in ("mic", "monitor"):
        r[name] = np.load(out / f"{name}.npy")
    r["reply_audio"] = [np.load(f) for f in sorted(out.glob("reply_audio_*.npy"))]
    return r


# ---------------------------------------------------------------- thread records (model work)

THREADS: list[dict[str, Any]] = []
PLANS: list[list[dict[str, Any]]] = []  # per chat turn: the media as prepared for the encoders
MAIN = threading.main_thread().ident


def _record(what: str) -> None:
    t = threading.current_thread()
    THREADS.append({"what": what, "thread": t.name, "main": t.ident == MAIN})


def _instrument() -> None:
    """Wrap the model's load and turn functions to record the thread they run on."""
    import pocketomni.chat.chat as chat_mod
    import pocketomni.engine.encoders as encoders_mod
    import pocketomni.omni as omni_mod

    orig_init, orig_run = omni_mod.Omni.__init__, chat_mod.Chat._run
    orig_prepare = encoders_mod.MediaEncoders.prepare

    def init(self: Any, *a: Any, **k: Any) -> None:
        _record("Omni.load")
        orig_init(self, *a, **k)

    def run(self: Any, *a: Any, **k: Any) -> Any:
        _record("Chat turn")
        PLANS.append([])  # a send() plans its media inside the turn, a live turn at its finish
        yield from orig_run(self, *a, **k)

    def prepare(self: Any, part: Any) -> Any:
        out = orig_prepare(self, part)
        if PLANS:
            PLANS[-1].append(_prepared(out))
        return out

    omni_mod.Omni.__init__ = init  # type: ignore[method-assign]
    chat_mod.Chat._run = run  # type: ignore[method-assign]
    encoders_mod.MediaEncoders.prepare = prepare  # type: ignore[method-assign]


def _prepared(p: Any) -> dict[str, Any]:
    """What the encoders get for one media item (a video: its frames, rate and sound track)."""
    out: dict[str, Any] = {"kind": p.part.kind, "label": p.part.label}
    if p.video is not None:
        out.update(frames=list(p.video.frames.shape), sample_fps=p.video.sample_fps, grid=list(p.video.grid_thw),
                   video_tokens=p.video.n_video_tokens,
                   audio_seconds=None if p.audio is None else p.audio.samples.size / 16000,
                   audio_tokens=None if p.audio is None else p.audio.n_tokens)
    return out


def _import_kivy() -> None:
    """Kivy and the app, in the driver process only (the app first: it sets the window size)."""
    global Clock, Window, UnitTestTouch, PocketOmniDemo
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    from main import PocketOmniDemo  # isort: skip

    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.tests.common import UnitTestTouch


# ---------------------------------------------------------------- helpers


class Failed(Exception):
    pass


class Until:
    """Yielded by a script: wait until `pred()` is true (fail after `timeout` seconds)."""

    def __init__(self, pred: Any, timeout: float, what: str) -> None:
        self.pred, self.deadline, self.what = pred, time.monotonic() + timeout, what


def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) of the calling thread, from Linux schedstat."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run_ns, wait_ns, _ = f.read().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


class StackSampler:
    """Diagnostics (POCKETOMNI_PROBE_STACKS=1): samples the UI thread's Python stack every 2 ms so
    that a slow frame can be attributed to the code that ran in it."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        threading.Thread(target=self._run, daemon=True, name="stack-sampler").start()

    def _run(self) -> None:
        while True:
            time.sleep(0.002)
            f = sys._current_frames().get(MAIN)
            stack = []
            while f is not None and len(stack) < 14:
                stack.append(f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}:{f.f_lineno}")
                f = f.f_back
            self.samples.append((time.perf_counter(), tuple(stack)))

    def between(self, t0: float, t1: float) -> list[tuple[str, int]]:
        from collections import Counter

        c = Counter(" < ".join(st[:8]) for t, st in self.samples if t0 <= t <= t1)
        return c.most_common(6)


class FrameProbe:
    """Gaps between consecutive frames (Clock callbacks), kept per phase. For the worst gap of each
    phase it also keeps how the UI thread spent it: running, waiting for a CPU (the machine is busy),
    or neither (blocked: the GIL, a lock, I/O), and how much of it was the buffer swap, where Mesa's
    software rasterizer (llvmpipe: no GPU here) draws the whole frame."""

    def __init__(self) -> None:
        self.phase = "startup"
        self.gaps: dict[str, list[float]] = {}
        self.flips: dict[str, list[float]] = {}  # per frame: seconds in Window.flip (0: nothing redrawn)
        self.worst: dict[str, dict[str, float]] = {}
        self.driver_time = 0.0  # time the driver itself spent on the UI thread (screenshots, touches)
        self.flip_time = 0.0
        swap = Window.flip

        def timed_flip() -> None:
            t0 = time.perf_counter()
            swap()
            self.flip_time += time.perf_counter() - t0

        Window.flip = timed_flip
        self._last = time.perf_counter()
        self._last_sched = _schedstat()
        self.sampler = StackSampler() if os.environ.get("POCKETOMNI_PROBE_STACKS") else None
        self.slow: list[dict[str, Any]] = []
        Clock.schedule_interval(self._tick, 0)

    def _tick(self, _dt: float) -> None:
        now, sched = time.perf_counter(), _schedstat()
        gap = now - self._last - self.driver_time
        self.gaps.setdefault(self.phase, []).append(gap)
        self.flips.setdefault(self.phase, []).append(self.flip_time)
        if gap > self.worst.get(self.phase, {}).get("gap_ms", 0.0) / 1000:
            run, wait = sched[0] - self._last_sched[0], sched[1] - self._last_sched[1]
            self.worst[self.phase] = {"gap_ms": 1000 * gap, "running_ms": 1000 * run, "cpu_wait_ms": 1000 * wait,
                                      "blocked_ms": 1000 * max(0.0, gap - run - wait), "swap_ms": 1000 * self.flip_time}
        if self.sampler is not None and gap > 0.06:
            self.slow.append({"phase": self.phase, "gap_ms": 1000 * gap, "stacks": self.sampler.between(self._last, now)})
        self._last, self._last_sched, self.driver_time, self.flip_time = now, sched, 0.0, 0.0

    def summary(self) -> dict[str, Any]:
        out = {}
        for p, g in self.gaps.items():
            flips = np.array(self.flips[p])
            app = np.array(g) - flips  # the frame without the software rasterizer's swap
            out[p] = {"frames": len(g), "max_ms": 1000 * max(g), "p99_ms": 1000 * float(np.percentile(g, 99)),
                      "median_ms": 1000 * float(np.median(g)), "worst": self.worst.get(p, {}),
                      "redrawn_frames": int(np.count_nonzero(flips)), "swap_max_ms": 1000 * float(flips.max()),
                      "swap_median_ms": 1000 * float(np.median(flips[flips > 0])) if flips.any() else 0.0,
                      "without_swap_max_ms": 1000 * float(app.max())}
        return out


def tap(widget: Any) -> None:
    """A touch down + up at the widget's centre, dispatched through the window like a real one."""
    x, y = widget.to_window(*widget.center)
    t = UnitTestTouch(x, y)
    t.touch_down()
    t.touch_up()


def press(widget: Any) -> UnitTestTouch:
    x, y = widget.to_window(*widget.center)
    t = UnitTestTouch(x, y)
    t.touch_down()
    return t


def shot(shots: Path, name: str) -> str:
    """Window screenshot as a small palette PNG."""
    from PIL import Image

    raw = Window.screenshot(name=str(shots / f".raw_{name}.png"))
    dest = shots / f"{name}.png"
    Image.open(raw).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
    os.remove(raw)
    return str(dest)


def find(root: Any, cls_name: str, text: str | None = None) -> Any:
    """A widget by class name (and text) under `root` (the Window: all its children)."""
    for top in (root.children if root is Window else [root]):
        for w in top.walk():
            if type(w).__name__ == cls_name and (text is None or getattr(w, "text", None) == text):
                return w
    raise Failed(f"no {cls_name} {text!r} on screen")


def transcript(app: Any) -> list[str]:
    conv = app.screens.get_screen("conversation")
    return [w.text for w in reversed(conv.ids.transcript.children)]


# ---------------------------------------------------------------- the scripted runs


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.out, self.shots = Path(args.out), Path(args.shots or args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shots.mkdir(parents=True, exist_ok=True)
        camera_file = None
        if args.scenario == "camera":
            camera_file = str(_scene_clip(self.out / "camera_scene.mp4"))
        self.app = PocketOmniDemo(None, n_threads=1, max_tokens=args.max_tokens, camera_file=camera_file)
        if args.max_codes:
            self.app.engine.speech_options = {"max_codes": args.max_codes}
        self.events: list[tuple[float, Any]] = []
        self.result: dict[str, Any] = {"scenario": args.scenario, "errors": [], "screenshots": []}
        self.reply_audio: list[list[np.ndarray]] = []  # per user turn
        self.listening_to: Any = None

    # -- session listener (the SDK's dispatch thread): exact times of events
    def _on_event(self, ev: Any) -> None:
        self.events.append((time.monotonic(), ev))
        if isinstance(ev, UserTurn):
            self.reply_audio.append([])
        elif isinstance(ev, po.AudioChunk) and self.reply_audio:
            self.reply_audio[-1].append(ev.samples)

    def _watch_session(self) -> None:
        s = self.app.engine.session
        if s is not None and s is not self.listening_to:
            s.add_listener(self._on_event)
            self.listening_to = s

    def count(self, cls: type) -> int:
        return sum(isinstance(e, cls) for _, e in self.events)

    def first(self, cls: type, after: float = 0.0) -> tuple[float, Any]:
        return next((t, e) for t, e in self.events if isinstance(e, cls) and t >= after)

    def events_of(self, cls: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, cls)]

    def screenshot(self, name: str) -> None:
        self.result["screenshots"].append(shot(self.shots, name))
        self.result.setdefault("transcript_at", {})[name] = transcript(self.app)

    def monitor_loud(self) -> bool:
        """Is the speaker playing right now (the last ~80 ms at its monitor)?"""
        data = b"".join(self.monitor._parts[-2:])
        x = np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")
        return x.size > 0 and float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) > 0.01

    def speak_into_mic(self, text: str) -> float:
        clip = np.concatenate([espeak(text, MIC_RATE), silence(0.3, MIC_RATE)])  # made (cached) in start()
        pacat_play(clip, MIC_RATE, MIC_SINK)
        return clip.size / MIC_RATE

    # -- runner
    def start(self, _dt: float) -> None:
        for text in (QUESTION, QUESTION_2, INTERRUPTION):
            espeak(text, MIC_RATE)  # synthesize now, not on the UI thread mid-scenario
        self.probe = FrameProbe()
        self.mic = Parec(MIC, MIC_RATE)
        self.monitor = Parec(SPEAKER_MONITOR, OUT_RATE)
        self.mic.wait_for_data()
        self.monitor.wait_for_data()
        self.script = getattr(self, f"scenario_{self.a.scenario}")()
        self.waiting: Any = None
        self.deadline = time.monotonic() + self.a.timeout
        Clock.schedule_interval(self.step, 1 / 30)

    def step(self, _dt: float) -> bool | None:
        t0 = time.perf_counter()
        try:
            return self._step()
        finally:
            self.probe.driver_time += time.perf_counter() - t0

    def _step(self) -> bool | None:
        self._watch_session()
        try:
            if time.monotonic() > self.deadline:
                raise Failed(f"scenario did not finish within {self.a.timeout} s")
            w = self.waiting
            if isinstance(w, Until):
                if not w.pred():
                    if time.monotonic() > w.deadline:
                        raise Failed(f"timed out waiting for: {w.what}")
                    return None
            elif isinstance(w, float) and time.monotonic() < w:
                return None
            nxt = next(self.script)
            self.waiting = time.monotonic() + nxt if isinstance(nxt, (int, float)) else nxt
            return None
        except StopIteration:
            self.finish()
        except Exception as e:  # noqa: BLE001 -- written to result.json for the test to show
            self.result["errors"].append("".join(traceback.format_exception(e)))
            try:
                self.result["screenshots"].append(shot(self.out, "failure"))  # not in the README folder
            except Exception as e2:  # noqa: BLE001
                self.result["errors"].append(f"failure screenshot: {e2!r}")
            self.finish()
        return False

    def finish(self) -> None:
        r = self.result
        r["transcript"] = transcript(self.app)
        try:
            r["history"] = [{"role": m.role, "interrupted": m.interrupted,
                             "kinds": [p.kind for p in m.parts], "text": m.text} for m in self.app.engine.history()]
        except Exception as e:  # noqa: BLE001
            r["errors"].append(f"history: {e!r}")
        r["threads"] = THREADS
        r["plans"] = PLANS
        s = self.app.engine.session
        r["camera_pixels"] = None if s is None else s.camera_pixels
        r["frames"] = self.probe.summary()
        r["slow_frames"] = self.probe.slow
        r["status"] = self.app.status
        r["capabilities"] = str(self.app.engine.capabilities)
        r["events"] = [{"t": t, "kind": type(e).__name__, **_fields(e)} for t, e in self.events]
        r["mic_t0"] = self.mic.time_of(0)
        r["monitor_t0"] = self.monitor.time_of(0)
        np.save(self.out / "mic.npy", self.mic.stop())
        np.save(self.out / "monitor.npy", self.monitor.stop())
        for i, parts in enumerate(self.reply_audio):
            np.save(self.out / f"reply_audio_{i}.npy", np.concatenate(parts) if parts else np.zeros(0, np.float32))
        (self.out / "result.json").write_text(json.dumps(r, indent=1, default=str))
        self.app.stop()

    # -- shared steps
    def load_model(self) -> Any:
        app = self.app
        picker = app.screens.get_screen("picker")
        models = self.out / "models"
        models.mkdir(exist_ok=True)
        link = models / "tiny-qwen2.5-omni"
        if not link.exists():
            link.symlink_to(Path(self.a.model).resolve())
        picker.ids.chooser.path = str(models)
        yield Until(lambda: any(getattr(w, "path", "").endswith("tiny-qwen2.5-omni")
                                for w in picker.ids.chooser.walk()), 10, "the folder list")
        entry = next(w for w in picker.ids.chooser.walk() if type(w).__name__ == "FileListEntry"
                     and w.path.endswith("tiny-qwen2.5-omni"))
        tap(entry)  # selecting the folder fills the path field
        yield 0.3
        if picker.ids.path.text != str(link):
            raise Failed(f"tapping the folder did not select it: {picker.ids.path.text!r}")
        if self.a.scenario == "conversation":  # (the README's picker screenshots come from one run)
            self.screenshot("01_model_picker")
        self.probe.phase = "load"
        tap(picker.ids.load_btn)
        yield Until(lambda: not picker.ids.start_btn.disabled or "could not" in picker.ids.load_info.text,
                    120, "the model to load")
        self.probe.phase = "idle"
        if picker.ids.start_btn.disabled:
            raise Failed(picker.ids.load_info.text)
        yield 0.3
        if self.a.scenario == "conversation":
            self.screenshot("02_model_loaded")
        tap(picker.ids.start_btn)
        conv = app.screens.get_screen("conversation")
        yield Until(lambda: app.screens.current == "conversation" and not app.screens.transition.is_active, 10,
                    "the conversation screen")
        if self.a.speech == "off" and conv.ids.speak.state == "down":
            tap(conv.ids.speak)  # speech off: a new text-only conversation
        yield Until(lambda: self.listening_to is not None and app.engine.conversation.speech == (
            self.a.speech == "on" and bool(app.engine.capabilities.speech_out)), 120, "the voice session")
        yield 1.0  # the VAD learns the (silent) noise floor
        return conv

    def ask(self, text: str, n_done: int) -> Any:
        """Speak into the microphone; wait for the reply (and its playback) to end."""
        self.probe.phase = "generate"
        self.result.setdefault("questions", []).append({"text": text, "t": time.monotonic(),
                                                        "seconds": self.speak_into_mic(text)})
        yield Until(lambda: self.count(ReplyDone) >= n_done, 300, f"reply {n_done}")
        yield Until(lambda: not self.app.engine.session.replying, 300, f"playback of reply {n_done}")
        self.probe.phase = "idle"

    # -- scenarios
    def scenario_conversation(self) -> Any:
        conv = yield from self.load_model()
        if self.a.speech == "on" and not conv.ids.voice.disabled:  # pick the other voice, by touch
            tap(conv.ids.voice)
            yield 0.5
            tap(find(Window, "SpinnerOption", "Ethan"))
            yield Until(lambda: self.app.engine.conversation.voice == "Ethan" and
                        self.app.engine.session is self.listening_to and self.listening_to is not None, 120,
                        "the Ethan voice session")
            yield 1.0
        yield from self.ask(QUESTION, 1)
        yield 0.5
        self.screenshot("03_conversation")
        # push-to-talk with an image
        tap(conv.ids.ptt)
        yield Until(lambda: "Hold" in conv.ids.state.text, 10, "push-to-talk mode")
        img = self.out / "kitchen.png"
        _kitchen_png(img)
        tap(conv.ids.image_btn)
        yield Until(lambda: conv.picker is not None and conv.picker._window is not None, 5, "the image picker")
        conv.picker.ids.chooser.path = str(self.out)
        yield Until(lambda: any(getattr(w, "path", "").endswith("kitchen.png")
                                for w in conv.picker.ids.chooser.walk()), 10, "the image list")
        tap(next(w for w in conv.picker.ids.chooser.walk() if type(w).__name__ == "FileIconEntry"
                 and w.path.endswith("kitchen.png")))
        yield 0.3
        self.screenshot("04_image_picker")
        tap(conv.picker.ids.attach_btn)
        yield Until(lambda: "kitchen.png" in conv.ids.image_info.text and conv.picker._window is None, 5,
                    "the attached image (popup closed)")
        self.probe.phase = "generate"
        n_speaking = self.count(UserSpeaking)
        touch = press(conv.ids.talk)
        yield Until(lambda: self.count(UserSpeaking) > n_speaking, 5, "push-to-talk press")
        seconds = self.speak_into_mic(QUESTION_2)
        self.result["questions"].append({"text": QUESTION_2, "t": time.monotonic(), "seconds": seconds})
        yield seconds + 0.4  # hold the button while speaking (pacat has ~0.2 s latency)
        touch.touch_up()
        yield Until(lambda: self.count(ReplyDone) >= 2, 300, "the push-to-talk reply")
        yield Until(lambda: not self.app.engine.session.replying, 300, "playback of the second reply")
        self.probe.phase = "idle"
        yield 0.5
        self.screenshot("05_push_to_talk_with_image")

    def scenario_barge_in(self) -> Any:
        yield from self.load_model()
        self.probe.phase = "generate"
        self.result["questions"] = [{"text": QUESTION, "t": time.monotonic(), "seconds": self.speak_into_mic(QUESTION)}]
        yield Until(lambda: self.count(UserTurn) >= 1, 60, "the question's turn")
        turn_t = self.first(UserTurn)[0]
        speaking = self.app.engine.conversation.speech
        # interrupt once the reply is under way: sound at the speaker monitor (speech) or text streaming
        yield Until(lambda: self.monitor_loud() if speaking else
                    any(isinstance(e, po.TextDelta) and t > turn_t for t, e in self.events), 300, "the reply to start")
        self.result["interruption"] = {"t": time.monotonic(), "seconds": self.speak_into_mic(INTERRUPTION)}
        yield Until(lambda: self.count(BargeIn) >= 1, 30, "barge-in")
        # the reply to the interruption: stopped with the Stop button once it is under way
        yield Until(lambda: self.count(UserTurn) >= 2, 60, "the interruption's turn")
        turn2 = self.events_of(UserTurn)[1][0]
        yield Until(lambda: any(isinstance(e, po.AudioChunk if speaking else po.TextDelta) and t > turn2
                                for t, e in self.events), 300, "the second reply to start")
        tap(self.app.screens.get_screen("conversation").ids.stop_btn)
        yield Until(lambda: self.count(BargeIn) >= 2, 30, "the Stop button")
        yield Until(lambda: self.count(ReplyDone) >= 2, 300, "the second reply to end")
        yield Until(lambda: not self.app.engine.session.replying, 300, "its playback")
        self.probe.phase = "idle"
        yield 0.5
        self.screenshot("06_barge_in")


    def scenario_camera(self) -> Any:
        conv = yield from self.load_model()
        if conv.ids.cam_btn.disabled:
            raise Failed("the camera button is disabled")
        tap(conv.ids.cam_btn)
        yield Until(lambda: conv.ids.cam_preview.texture is not None, 10, "the camera preview")
        yield Until(lambda: self.app.engine.session.camera is not None, 10, "the session's camera")
        yield 1.0
        yield from self.ask(QUESTION, 1)
        live = self.app.engine.session.last_live  # the camera turn, heard live: chunks of frames + voice
        self.result["camera_live"] = None if live is None else {
            "video": live.video, "frames_fed": live.n_frames, "chunks_streamed": live.windows_prefilled}
        yield 0.5
        self.screenshot("08_camera")
        tap(conv.ids.cam_btn)  # camera off: the next turn is voice only
        yield Until(lambda: self.app.engine.session.camera is None and conv.camera is None, 10, "camera off")
        yield 0.5
        yield from self.ask(QUESTION_2, 2)


def _fields(e: Any) -> dict[str, Any]:
    if isinstance(e, po.TextDelta):
        return {"text": e.text}
    if isinstance(e, po.AudioChunk):
        return {"seconds": e.duration}
    if isinstance(e, ReplyDone):
        return {"finish": e.done.finish_reason, "interrupted": e.interrupted, "first_text": e.first_text_latency,
                "first_audio": e.first_audio_latency, "decode_tps": e.done.timings.decode_tokens_per_second,
                "rtf": e.done.timings.real_time_factor, "text": e.done.text}
    if isinstance(e, UserTurn):
        return {**{k: v for k, v in vars(e).items() if k not in ("audio", "frames")},
                "frames": None if e.frames is None else list(e.frames.shape)}
    if isinstance(e, (BargeIn, UserSpeaking)):
        return {k: v for k, v in vars(e).items() if k != "audio"}
    return {k: str(v) for k, v in vars(e).items()} if hasattr(e, "__dict__") else {}


def _scene_clip(path: Path, seconds: int = 6, fps: int = 10) -> Path:
    """A kitchen-like test video for the file-backed camera: a counter, a red bowl sliding across."""
    import av
    from PIL import Image, ImageDraw

    w, h = 640, 480
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for i in range(seconds * fps):
            im = Image.new("RGB", (w, h), (230, 220, 200))
            d = ImageDraw.Draw(im)
            d.rectangle([0, 300, w, h], fill=(120, 90, 60))
            x = 20 + (i * 8) % (w - 300)
            d.ellipse([x, 160, x + 260, 340], fill=(200, 40, 40))
            for pkt in vs.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    return path


def _kitchen_png(path: Path) -> None:
    """A small synthetic picture (a counter with a red bowl) to attach."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (160, 112), (230, 220, 200))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 70, 160, 112], fill=(120, 90, 60))
    d.ellipse([50, 40, 110, 80], fill=(200, 40, 40))
    im.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["conversation", "barge_in", "camera"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shots", default=None)
    ap.add_argument("--speech", choices=["on", "off"], default="on")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-codes", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    _instrument()
    _import_kivy()
    d = Driver(a)
    Clock.schedule_once(d.start, 1.0)
    d.app.run()


if __name__ == "__main__":
    main()
