"""PocketOmni voice demo (Kivy): pick a model folder, then talk to it.

    python apps/kivy_demo/main.py [--model FOLDER] [--threads N] [--max-tokens N] [--camera-file VIDEO]

Model work runs on an asyncio loop in a background thread (engine.py); the UI thread only draws and
reacts to events posted with Clock.schedule_once. Uses only the public `pocketomni` API.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("KIVY_NO_ARGS", "1")  # our own command line, not Kivy's
if sys.platform.startswith("linux"):
    os.environ.setdefault("KIVY_CLIPBOARD", "sdl2")  # Kivy would otherwise probe for xsel / xclip
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import pocketomni  # noqa: F401  before anything loads numpy: OpenBLAS's idle spin (pocketomni.blas_spin)

# isort: split
from kivy.config import Config

logging.getLogger("pocketomni").setLevel(logging.WARNING)  # Kivy's logger would print llama.cpp's debug lines

Config.set("input", "mouse", "mouse,disable_multitouch")
Config.set("kivy", "exit_on_escape", "0")
# No multisampling: a flat 2D UI gains nothing from it, and it multiplies the cost of every frame where
# the GPU is weak or absent (Mesa's software renderer: 27 ms -> 3.5 ms per 960x640 frame here). The
# transcript bubbles' rounded corners are antialiased by SmoothRoundedRectangle instead.
Config.set("graphics", "multisamples", "0")
if "ANDROID_ARGUMENT" not in os.environ:
    Config.set("graphics", "width", os.environ.get("POCKETOMNI_DEMO_WIDTH", "960"))
    Config.set("graphics", "height", os.environ.get("POCKETOMNI_DEMO_HEIGHT", "640"))

from engine import Engine
from fonts import missing_roles, register_fonts
from kivy.app import App
from kivy.clock import Clock
from kivy.lang import Builder
from kivy.properties import StringProperty
from kivy.uix.boxlayout import BoxLayout
from screens import ConversationScreen, ImagePicker, PickerScreen, TurnLabel  # noqa: F401 (kv rules)

register_fonts()  # DejaVu Sans, then CJK and emoji fonts per character (fonts.py)
for _role in missing_roles():
    logging.getLogger("pocketomni.app").warning("no %s font found: some replies may show empty boxes", _role)


class RootView(BoxLayout):
    """Screens above, the status line below."""


class PocketOmniDemo(App):
    """The app. `engine` holds the model side; `status` is the status line."""

    title = "PocketOmni"
    status = StringProperty("Choose a model folder and press Load.")

    def __init__(self, model: str | None = None, n_threads: int | None = None, max_tokens: int = 512,
                 camera_file: str | None = None, camera_pixels: int | None = None, **kw: object) -> None:
        super().__init__(**kw)
        self.initial_model = model
        self.camera_file = camera_file  # a video played as the camera (else the device's camera)
        self.engine = Engine(self.post, n_threads=n_threads, max_tokens=max_tokens, camera_pixels=camera_pixels)

    @staticmethod
    def post(fn) -> None:  # type: ignore[no-untyped-def]
        """Run `fn()` on the UI thread at the next frame (called from the engine thread)."""
        Clock.schedule_once(lambda _dt: fn(), 0)

    def build(self) -> RootView:
        if "ANDROID_ARGUMENT" in os.environ:  # Android asks for the microphone at run time
            try:
                from android.permissions import Permission, request_permissions  # type: ignore[import-not-found]

                request_permissions([Permission.RECORD_AUDIO, Permission.CAMERA])
            except ImportError:
                pass
        Builder.load_file(str(HERE / "pocketomni_demo.kv"))
        root = RootView()
        self.screens = root.ids.screens
        picker = self.screens.get_screen("picker")
        conv = self.screens.get_screen("conversation")
        self.engine.on_event = conv.on_session_event
        start = self.initial_model or os.path.expanduser("~")
        if os.path.isdir(start):
            picker.ids.chooser.path = str(Path(start).parent if self.initial_model else start)
        if self.initial_model:
            picker.ids.path.text = self.initial_model
        return root

    def on_stop(self) -> None:
        self.engine.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder to preselect")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp")
    ap.add_argument("--max-tokens", type=int, default=512, help="longest reply, in tokens")
    ap.add_argument("--camera-file", help="a video file played as the camera (default: the device's camera)")
    ap.add_argument("--camera-pixels", type=int, default=None,
                    help="pixels per camera frame sent to the model (default: the SDK's, 160*28*28)")
    a = ap.parse_args(argv)
    PocketOmniDemo(a.model, a.threads, a.max_tokens, a.camera_file, a.camera_pixels).run()


if __name__ == "__main__":
    main()
