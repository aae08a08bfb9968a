"""`import pocketomni` (and its converter) stays light: no torch, transformers or kivy, no llama.cpp load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "kivy")


@pytest.mark.parametrize("module", ["pocketomni", "pocketomni.convert", "pocketomni.cli"])
def test_import_pulls_no_reference_or_ui_packages(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m == 'llama_cpp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded == [], f"`import {module}` loaded {loaded}"


def test_public_names_resolve() -> None:
    import pocketomni as po

    for name in po.__all__:
        assert getattr(po, name) is not None, name
