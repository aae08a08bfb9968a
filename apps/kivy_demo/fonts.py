"""Every script the model writes, on screen: a font chain and per-character fallback in Kivy markup.

Kivy draws a Label with one font, and no single free font covers Latin, CJK and emoji. So the app
registers a chain of fonts found on the system (DejaVu Sans for Latin/Greek/Cyrillic/Arabic/Hebrew,
Noto Sans CJK for Chinese/Japanese/Korean, Symbola for emoji and symbols; the Android and macOS system
fonts where those are absent) and `fallback_markup` wraps each run of characters the default font
lacks in `[font=...]` with the first font of the chain whose character map has them (read with
fontTools). Colour emoji fonts (Noto Color Emoji) are bitmap strikes that Kivy's SDL2 text provider
draws at their native 109 px whatever the font size, so a monochrome emoji font is preferred.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kivy.utils import escape_markup

# (role, fontconfig pattern, fixed candidates for systems without fontconfig: Android, macOS)
CHAIN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("base", "DejaVu Sans", ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/system/fonts/Roboto-Regular.ttf",
                             "/System/Library/Fonts/Helvetica.ttc")),
    ("cjk", "sans-serif:lang=ja", ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                                   "/system/fonts/NotoSansCJK-Regular.ttc", "/System/Library/Fonts/PingFang.ttc",
                                   "/System/Library/Fonts/Hiragino Sans GB.ttc")),
    ("symbols", "Symbola", ("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
                            "/usr/share/fonts/truetype/ancient-scripts/Symbola.ttf")),
)


@dataclass(frozen=True)
class ChainFont:
    role: str
    path: str
    codepoints: frozenset[int]

    def has(self, ch: str) -> bool:
        return ord(ch) in self.codepoints


def _fc_match(pattern: str) -> str | None:
    if not shutil.which("fc-match"):
        return None
    out = subprocess.run(["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, timeout=10,
                         check=False).stdout.strip()
    return out or None


def _codepoints(path: str) -> frozenset[int]:
    """Every code point the font maps to a glyph (the first face of a collection, as SDL_ttf opens it)."""
    import logging

    from fontTools.ttLib import TTCollection, TTFont

    logging.getLogger("fontTools").setLevel(logging.WARNING)  # its debug lines would flood Kivy's log
    font = TTCollection(path, lazy=True).fonts[0] if path.lower().endswith(".ttc") else TTFont(path, lazy=True)
    cmap = font.getBestCmap() or {}
    return frozenset(cmap)


def _locate(role: str, pattern: str, candidates: tuple[str, ...]) -> str | None:
    for path in candidates:
        if os.path.isfile(path):
            return path
    found = _fc_match(pattern) if sys.platform.startswith("linux") and "ANDROID_ARGUMENT" not in os.environ else None
    # fontconfig answers with its best substitute; keep it only if it is the kind of font asked for
    if found and os.path.isfile(found) and (role != "symbols" or "symbola" in found.lower()):
        return found
    return None


@cache
def font_chain() -> tuple[ChainFont, ...]:
    """The fonts of the chain that this system has, in order (the first is the default font)."""
    chain = []
    for role, pattern, candidates in CHAIN:
        path = _locate(role, pattern, candidates)
        if path is not None:
            chain.append(ChainFont(role, path, _codepoints(path)))
    return tuple(chain)


def register_fonts() -> None:
    """Make the chain's first font Kivy's default and register the others by role name."""
    from kivy.core.text import DEFAULT_FONT, LabelBase

    chain = font_chain()
    if not chain:
        return
    base = chain[0].path
    bold = base.replace(".ttf", "-Bold.ttf")
    LabelBase.register(DEFAULT_FONT, base, fn_bold=bold if bold != base and os.path.isfile(bold) else None)
    for f in chain[1:]:
        LabelBase.register(f"pocketomni-{f.role}", f.path)


def font_for(ch: str) -> ChainFont | None:
    """The first font of the chain that has `ch`, else any installed font fontconfig finds for it
    (None: none has it, or it is whitespace/control)."""
    if ch.isspace() or not ch.isprintable():
        return None
    for f in font_chain():
        if f.has(ch):
            return f
    return _system_font_for(ord(ch))


@cache
def _system_font_for(cp: int) -> ChainFont | None:
    """A font fontconfig knows that maps `cp` (Thai, Devanagari, ... when installed), registered with
    Kivy under its own name. Linux only; colour-bitmap fonts are skipped (see the module docstring)."""
    if not shutil.which("fc-list") or "ANDROID_ARGUMENT" in os.environ:
        return None
    out = subprocess.run(["fc-list", "--format", "%{file}\n", f":charset={cp:x}"], capture_output=True,
                         text=True, timeout=10, check=False).stdout.split()
    for path in sorted(p for p in out if "color" not in p.lower() and p.lower().endswith((".ttf", ".otf", ".ttc"))):
        font = ChainFont(f"fc-{Path(path).stem}", path, frozenset((cp,)))
        from kivy.core.text import LabelBase

        LabelBase.register(f"pocketomni-{font.role}", path)
        return font
    return None


def fallback_markup(text: str) -> str:
    """`text` escaped for Kivy markup, with every run the default font lacks set in a font that has it."""
    chain = font_chain()
    if not chain:
        return escape_markup(text)
    base = chain[0]
    out: list[str] = []
    run, run_font = "", base
    for ch in text:
        f = run_font if ch.isspace() else (font_for(ch) or run_font)  # spaces join the current run
        if f.path != run_font.path and run:
            out.append(_wrap(run, run_font, base))
            run = ""
        run_font = f
        run += ch
    if run:
        out.append(_wrap(run, run_font, base))
    return "".join(out)


def _wrap(run: str, font: ChainFont, base: ChainFont) -> str:
    body = escape_markup(run)
    return body if font.path == base.path else f"[font=pocketomni-{font.role}]{body}[/font]"


def missing_roles() -> list[str]:
    """Roles of the chain this system lacks (shown once in the app's log)."""
    have = {f.role for f in font_chain()}
    return [role for role, _, _ in CHAIN if role not in have]


__all__ = ["ChainFont", "fallback_markup", "font_chain", "font_for", "missing_roles", "register_fonts"]


if __name__ == "__main__":  # list the chain: python apps/kivy_demo/fonts.py
    for f in font_chain():
        print(f"{f.role:8} {f.path} ({len(f.codepoints)} code points)")
    print("missing:", ", ".join(missing_roles()) or "none")
