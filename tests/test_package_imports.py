"""`import pocketomni` (and its converter) stays light: no torch, transformers or kivy, no llama.cpp load."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

HEAVY = ("torch", "transformers", "kivy")


@pytest.mark.parametrize("module", ["pocketomni", "pocketomni.convert", "pocketomni.cli.main"])
def test_import_pulls_no_reference_or_ui_packages(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m == 'llama_cpp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded == [], f"`import {module}` loaded {loaded}"


def test_public_names_resolve() -> None:
    """Every name in __all__ resolves (lazy ones too) to pocketomni's own object of that name, once."""

    import pocketomni as po

    assert len(set(po.__all__)) == len(po.__all__), "duplicate names in __all__"
    for name in po.__all__:
        obj = getattr(po, name)  # AttributeError if __all__ lists a name the package does not have
        if name == "__version__":
            from importlib.metadata import (
                version,  # the installed distribution's (pyproject reads __version__)
            )

            assert obj == version("pocketomni"), "pocketomni.__version__ is out of step with the installed package"
            continue
        if isinstance(obj, types.UnionType):  # event unions: every member is one of ours
            assert all(a.__module__.startswith("pocketomni.") for a in obj.__args__), f"po.{name} is {obj!r}"
            continue
        assert getattr(obj, "__name__", None) == name, f"po.{name} is {obj!r}"
        assert obj.__module__.startswith("pocketomni."), f"po.{name} comes from {obj.__module__}"
        if name.endswith("Error"):  # our exceptions, or the voice event that reports one
            assert issubclass(obj, po.PocketOmniError) or obj in po.VoiceEvent.__args__, name


def test_readme_api_matches_the_exports() -> None:
    """The README's API table lists exactly `__all__`, and every `po.X` the README uses is exported."""
    import re
    from pathlib import Path

    import pocketomni as po

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### API at a glance", 1)[1].split("\n## ", 1)[0]
    exported = set(po.__all__) - {"__version__"}
    table_names = set(re.findall(r"^\| `([A-Za-z_]+)`", section, re.MULTILINE))
    assert table_names == exported, (sorted(table_names - exported), sorted(exported - table_names))
    used = set(re.findall(r"\bpo\.([A-Za-z_]+)", readme))
    assert used <= exported, f"the README uses names that are not exported: {sorted(used - exported)}"
