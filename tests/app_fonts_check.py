"""Renders replies in Japanese, Chinese and emoji with the demo app's font chain (apps/kivy_demo/fonts.py)
under Xvfb and checks every glyph against the missing-glyph box of the font that draws it. Run in a
subprocess by tests/test_app_scripts.py; prints one JSON line; writes the screenshot given as argv[1]."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
APP_DIR = Path(__file__).resolve().parents[1] / "apps" / "kivy_demo"
sys.path.insert(0, str(APP_DIR))

import numpy as np
from kivy.config import Config

Config.set("graphics", "width", "720")
Config.set("graphics", "height", "300")
Config.set("graphics", "multisamples", "0")

from fonts import fallback_markup, font_chain, font_for, register_fonts
from kivy.base import EventLoop
from kivy.core.text import Label as CoreLabel
from kivy.core.window import Window
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.label import Label

REPLIES = {
    "japanese": "こんにちは！今日はいい天気ですね。カタカナも大丈夫。",
    "chinese": "你好！今天天气很好，我们去公园散步吧。",
    "emoji": "Great idea 😀 👍 🎉 ☕ ❤",
}
BOX_PROBE = "\U0010fffd"  # a private-use code point no font maps: drawn as the font's missing-glyph box


def pixels(text: str, font: str) -> np.ndarray:
    label = CoreLabel(text=text, font_name=font, font_size=32)
    label.refresh()
    t = label.texture
    return np.frombuffer(t.pixels, np.uint8).reshape(t.height, t.width, 4)[..., 3].copy()


def is_box(ch: str, font: str) -> bool:
    a, box = pixels(ch, font), pixels(BOX_PROBE, font)
    return a.shape == box.shape and np.array_equal(a, box)


def main() -> None:
    register_fonts()
    chain = font_chain()
    base = chain[0].path
    result: dict = {"chain": [(f.role, f.path) for f in chain], "replies": {}}
    for name, text in REPLIES.items():
        glyphs = [ch for ch in text if not ch.isspace()]
        chosen = {ch: font_for(ch) for ch in glyphs}
        result["replies"][name] = {
            "glyphs": len(glyphs),
            "no_font": [ch for ch, f in chosen.items() if f is None],
            "boxes": [ch for ch, f in chosen.items() if f is not None and is_box(ch, f.path)],
            # control: the same glyphs in the default font alone (what the app showed before)
            "boxes_in_base_font": sum(is_box(ch, base) for ch in glyphs),
            "markup": fallback_markup(text),
        }
    root = BoxLayout(orientation="vertical", padding=12, spacing=8)
    for text in REPLIES.values():
        root.add_widget(Label(text="[b]Assistant:[/b] " + fallback_markup(text), markup=True, font_size="22sp",
                              color=(0, 0, 0, 1)))
    Window.clearcolor = (1, 1, 1, 1)
    Window.add_widget(root)
    EventLoop.ensure_window()
    for _ in range(5):
        EventLoop.idle()
    shot = Path(Window.screenshot(name=sys.argv[1]))  # Kivy numbers the file: name0001.png
    shot.replace(sys.argv[1])
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
