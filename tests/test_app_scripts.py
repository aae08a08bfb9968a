"""The demo app renders every script the model writes (issue: Japanese, Chinese, emoji showed as empty
boxes): tests/app_fonts_check.py draws replies with the app's font chain under Xvfb and compares each
glyph with the missing-glyph box of the font that draws it. Writes the app README's screenshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_app_conversation import require_app_env

ROOT = Path(__file__).resolve().parents[1]
SHOT = ROOT / "apps" / "kivy_demo" / "screenshots" / "07_every_script.png"


def test_japanese_chinese_and_emoji_replies_have_no_missing_glyph_boxes() -> None:
    require_app_env()
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "app_fonts_check.py"), str(SHOT)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    roles = [role for role, _ in out["chain"]]
    assert roles == ["base", "cjk", "symbols"], f"fonts missing (scripts/system_deps.sh installs them): {out['chain']}"
    for name, r in out["replies"].items():
        assert r["glyphs"] > 10
        assert r["no_font"] == [], f"{name}: no font of the chain has {r['no_font']}"
        assert r["boxes"] == [], f"{name}: drawn as the missing-glyph box: {r['boxes']}"
    # the control: the default font alone draws boxes for these replies, so the comparison sees boxes
    assert out["replies"]["japanese"]["boxes_in_base_font"] == out["replies"]["japanese"]["glyphs"]
    assert out["replies"]["chinese"]["boxes_in_base_font"] == out["replies"]["chinese"]["glyphs"]
    assert out["replies"]["emoji"]["boxes_in_base_font"] >= 1
    assert "[font=pocketomni-cjk]" in out["replies"]["japanese"]["markup"]
    assert SHOT.is_file()
