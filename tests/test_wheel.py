"""The package as users get it: a built wheel (not the editable checkout) holds every subpackage,
imports from where it was installed, and runs the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("audio", "backend", "chat", "cli", "convert", "engine", "media", "remote", "serve", "token2wav", "voice")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, so the test needs no package index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, timeout=600)
    (found,) = out.glob("pocketomni-*.whl")
    return found


def test_wheel_holds_every_subpackage_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"pocketomni/{sub}/__init__.py" in names, sub
    assert "pocketomni/engine/manifest.py" in names and "pocketomni/cli/main.py" in names
    assert "pocketomni/serve/static/voice.html" in names  # the page `pocketomni serve` hosts (package data)
    top = {n.split("/")[0] for n in names}
    assert top == {"pocketomni", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pocketomni = pocketomni.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_wheel_imports_and_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=600)
    # PYTHONPATH comes before the editable checkout's path entry, so the installed copy is the one used.
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import pocketomni; print(pocketomni.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(target)
    res = subprocess.run([sys.executable, "-m", "pocketomni.cli.main", "demo", "--no-speak", "--threads", "1",
                          "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RANDOM weights" in res.stdout and res.stdout.count("assistant: ") == 2
