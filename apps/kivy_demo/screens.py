"""The demo's screens: model picker and conversation (layout in pocketomni_demo.kv).

Widgets only talk to the Engine (which returns at once) and update themselves from events the
Engine posts to the UI thread; nothing here waits on the model.
"""

from __future__ import annotations

import os
import time
from typing import Any

from camera_view import GRAB_SECONDS, Preview, open_camera
from engine import Conversation
from fonts import fallback_markup
from kivy.app import App
from kivy.clock import Clock
from kivy.properties import ListProperty
from kivy.uix.label import Label
from kivy.uix.popup import Popup
from kivy.uix.screenmanager import Screen

import pocketomni as po
from pocketomni.voice.session import (
    BargeIn,
    Listening,
    OutputStatus,
    ReplyDone,
    UserSpeaking,
    UserTurn,
    VoiceError,
)

USER_BG = (0.80, 0.88, 1.0, 1)
MODEL_BG = (1.0, 1.0, 1.0, 1)
NOTE_BG = (0.93, 0.93, 0.88, 1)
ERROR_BG = (1.0, 0.82, 0.80, 1)


class TurnLabel(Label):
    """One line of the transcript (a bubble)."""

    bg = ListProperty(MODEL_BG)


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


class PickerScreen(Screen):
    """Choose a model folder, load it (off the UI thread) and show what it supports."""

    def on_kv_post(self, *_: Any) -> None:
        self._t0 = 0.0
        self._tick = None

    def on_chosen(self, selection: list[str]) -> None:
        if selection:
            self.ids.path.text = selection[0]

    def load(self) -> None:
        folder = self.ids.path.text.strip()
        app = App.get_running_app()
        if not folder:
            self.ids.load_info.text = "Pick a folder first."
            return
        self.ids.load_btn.disabled = self.ids.start_btn.disabled = True
        self.ids.load_info.text = f"Loading {os.path.basename(folder.rstrip('/'))} ..."
        self._t0 = time.monotonic()
        self._tick = Clock.schedule_interval(self._animate, 1 / 30)
        app.engine.load(folder, self._loaded, self._failed)

    def _animate(self, _dt: float) -> None:  # the model loads in the engine thread: keep the UI alive
        elapsed = time.monotonic() - self._t0
        self.ids.progress.value = (elapsed * 60) % 100
        App.get_running_app().status = f"Loading model ... {elapsed:.1f} s"

    def _stop_anim(self) -> float:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.ids.load_btn.disabled = False
        return time.monotonic() - self._t0

    def _loaded(self, caps: Any) -> None:
        took = self._stop_anim()
        self.ids.progress.value = 100
        for key, ok, label in (("cap_text", caps.text, "Text"), ("cap_speech", caps.speech_out, "Speech"),
                               ("cap_vision", caps.vision, "Vision"), ("cap_audio", caps.audio_in, "Audio in")):
            self.ids[key].ok = ok
            self.ids[key].text = f"[b]{label}[/b]: {_yes(ok)}"
        notes = []
        if not caps.speech_out:
            notes.append("no speech output in this folder (talker/token2wav missing): replies are text")
        if not caps.audio_in:
            notes.append("no audio encoder: voice turns are unavailable, type instead")
        self.ids.load_info.text = f"Loaded in {took:.1f} s." + ("  " + "; ".join(notes) if notes else "")
        self.ids.start_btn.disabled = False
        App.get_running_app().status = f"Model ready ({took:.1f} s)"

    def _failed(self, err: BaseException) -> None:
        self._stop_anim()
        self.ids.progress.value = 0
        self.ids.load_info.text = f"[could not load] {err}"
        App.get_running_app().status = "Load failed"

    def start(self) -> None:
        app = App.get_running_app()
        self.manager.current = "conversation"
        self.manager.get_screen("conversation").begin(app.engine.capabilities)


class ImagePicker(Popup):
    """Choose an image file for the next turn."""

    def __init__(self, on_choice: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self._on_choice = on_choice
        self.ids.chooser.path = os.path.expanduser("~")

    def choose(self, path: str | None) -> None:
        self._on_choice(path)
        self.dismiss()


class ConversationScreen(Screen):
    """The transcript, the talk controls and the reply settings."""

    def on_kv_post(self, *_: Any) -> None:
        self.active = False
        self.reply: TurnLabel | None = None
        self.reply_text = ""
        self._done = True
        self._t_first = 0.0
        self._n_deltas = 0
        self._audio_s = 0.0
        self.picker: ImagePicker | None = None
        self.camera: Any = None  # camera_view.FileCamera / DeviceCamera while the camera is on
        self._preview = Preview()
        self._grab: Any = None

    # -- setup
    def begin(self, caps: Any) -> None:
        speech = bool(caps and caps.speech_out)
        for key in ("speak", "voice", "preset"):
            self.ids[key].disabled = not speech
        self.ids.speak.state = "down" if speech else "normal"
        self.ids.image_btn.disabled = not (caps and caps.vision)
        self.ids.cam_btn.disabled = not (caps and caps.vision and caps.audio_in)
        self.active = True
        self._start(note="New conversation")

    def _conversation(self) -> Conversation:
        return Conversation(self.ids.speak.state == "down", self.ids.voice.text, self.ids.preset.text,
                            self.ids.ptt.state != "down")

    def _start(self, note: str) -> None:
        app = App.get_running_app()
        conv = self._conversation()
        self.ids.state.text = "Starting the voice session ..."
        spoken = f"spoken ({conv.voice}, {conv.preset})" if conv.speech else "text"
        self.add_line(f"{note}: replies {spoken}.", NOTE_BG)
        app.status = "Starting the conversation" + (" (loading the talker and vocoder) ..." if conv.speech else " ...")
        app.engine.start_conversation(conv, self._started, self._error)

    def _started(self, note: str) -> None:
        App.get_running_app().status = "Ready"
        if note:
            self.add_line(fallback_markup(note), NOTE_BG)

    def _error(self, err: BaseException) -> None:
        self.add_line(f"[b]Error:[/b] {fallback_markup(str(err))}", ERROR_BG)

    def restart(self) -> None:
        """Voice, speed or speech changed: a new conversation with those settings."""
        if not self.active:
            return
        conv = self._conversation()
        if conv == App.get_running_app().engine.conversation:
            return
        self._start(note="New conversation")

    def back(self) -> None:
        self.stop_reply()
        if self.camera is not None:
            self.ids.cam_btn.state = "normal"
            self.toggle_camera(False)
        self.manager.current = "picker"

    # -- controls
    def set_mode(self, hands_free: bool) -> None:
        App.get_running_app().engine.set_hands_free(hands_free)

    def talk_down(self) -> None:
        App.get_running_app().engine.press()

    def talk_up(self) -> None:
        App.get_running_app().engine.release()

    def stop_reply(self) -> None:
        App.get_running_app().engine.interrupt()

    def send_typed(self) -> None:
        text = self.ids.typed.text.strip()
        if text:
            self.ids.typed.text = ""
            App.get_running_app().engine.send_text(text)

    def open_image_picker(self) -> None:
        self.picker = ImagePicker(self.attach)
        self.picker.open()

    def attach(self, path: str | None) -> None:
        App.get_running_app().engine.attach_image(path)
        self.ids.thumb.source = path or ""
        self.ids.image_info.text = f"image for your next turn: {os.path.basename(path)}" if path else ""

    def toggle_camera(self, on: bool) -> None:
        """Camera on: spoken turns go to the model as video (2 fps) with your voice; the latest frame
        shows beside the state line."""
        app = App.get_running_app()
        if on and self.camera is None:
            try:
                self.camera = open_camera(getattr(app, "camera_file", None))
            except Exception as e:  # noqa: BLE001 -- no camera here: say so, keep the button off
                self.ids.cam_btn.state = "normal"
                self.add_line(f"[b]Camera:[/b] {fallback_markup(str(e))}", ERROR_BG)
                return
            app.engine.set_camera(self.camera.source)
            self._grab = Clock.schedule_interval(self._show_frame, GRAB_SECONDS)
            self.add_line(f"Camera on ({fallback_markup(os.path.basename(self.camera.name))}): the model sees "
                          "what it shows while you speak.", NOTE_BG)
        elif not on and self.camera is not None:
            app.engine.set_camera(None)
            if self._grab is not None:
                self._grab.cancel()
                self._grab = None
            self.camera.close()
            self.camera = None
            self.ids.cam_preview.texture = None

    def _show_frame(self, _dt: float) -> None:
        frame = self.camera.frame() if self.camera is not None else None
        if frame is not None:
            self.ids.cam_preview.texture = self._preview.update(frame)

    # -- transcript
    def add_line(self, markup: str, bg: tuple[float, ...]) -> TurnLabel:
        line = TurnLabel(text=markup, bg=bg)
        self.ids.transcript.add_widget(line)
        Clock.schedule_once(lambda _dt: self.ids.scroll.scroll_to(line), 0)
        return line

    def _show_reply(self, suffix: str = "") -> None:
        if self.reply is not None:
            body = fallback_markup(self.reply_text) if self.reply_text else "..."
            self.reply.text = f"[b]Assistant:[/b] {body}{suffix}"

    def on_session_event(self, ev: Any) -> None:
        """Every session event, on the UI thread (batched by the engine)."""
        app = App.get_running_app()
        ids = self.ids
        if isinstance(ev, Listening):
            ids.state.text = "Listening: just speak" if ev.hands_free else "Hold the button while you speak"
        elif isinstance(ev, OutputStatus):
            if not ev.speaking:
                self.add_line(fallback_markup(ev.reason), NOTE_BG)
        elif isinstance(ev, UserSpeaking):
            ids.state.text = "Hearing you ..."
        elif isinstance(ev, UserTurn):
            if self.reply is not None and not self._done and not self.reply_text:
                ids.transcript.remove_widget(self.reply)  # cut short by more speech: joins the next turn
            self._done = False
            what = fallback_markup(ev.text) if ev.text else f"(spoke {ev.audio_seconds:.1f} s)"
            seen = " + image" if ev.image else ""
            if ev.frames is not None:
                seen = f" + camera ({len(ev.frames)} frames)"
            self.add_line(f"[b]You:[/b] {what}{seen}", USER_BG)
            self.reply_text, self._n_deltas, self._audio_s, self._t_first = "", 0, 0.0, 0.0
            self.reply = self.add_line("[b]Assistant:[/b] ...", MODEL_BG)
            ids.state.text = "Thinking ..."
            ids.thumb.source, ids.image_info.text = "", ""
        elif isinstance(ev, po.TextDelta):
            self.reply_text += ev.text
            self._n_deltas += 1
            self._t_first = self._t_first or time.monotonic()
            self._show_reply()
            dt = time.monotonic() - self._t_first
            if dt > 0.5:
                app.status = f"Generating: {self._n_deltas / dt:.1f} pieces/s"
        elif isinstance(ev, po.AudioChunk):
            self._audio_s += ev.duration
            ids.state.text = f"Speaking ... ({self._audio_s:.1f} s of audio)"
        elif isinstance(ev, ReplyDone):
            self._done = True
            self._show_reply(" [i](interrupted)[/i]" if ev.interrupted else "")
            t = ev.done.timings
            parts = [f"{t.decode_tokens_per_second:.1f} tok/s"]
            if t.real_time_factor:
                parts.append(f"RTF {t.real_time_factor:.2f}")
            if ev.first_text_latency:
                parts.append(f"first text {ev.first_text_latency:.2f} s after your turn")
            if ev.first_audio_latency:
                parts.append(f"first audio {ev.first_audio_latency:.2f} s")
            app.status = "Reply: " + ", ".join(parts)
        elif isinstance(ev, BargeIn):
            ids.state.text = f"Interrupted ({ev.source}); stopped in {ev.stop_seconds * 1000:.0f} ms"
        elif isinstance(ev, VoiceError):
            self.add_line(f"[b]Error:[/b] {fallback_markup(ev.message)}", ERROR_BG)
