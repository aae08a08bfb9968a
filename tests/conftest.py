"""Shared pytest setup: offline Hugging Face, `omni_fixtures` importable, tiny checkpoint fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import logging

import pytest


class _DropOmniTokenRangeWarnings(logging.Filter):
    """The real Omni config puts thinker-vocabulary ids (tts_text_*, vision_*) in the talker config;
    transformers warns about it on every config load. Drop just that message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "must be `None` or an integer within the vocabulary" not in record.getMessage()


logging.getLogger("transformers.configuration_utils").addFilter(_DropOmniTokenRangeWarnings())


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """Folder of the "base" tiny Qwen2.5-Omni checkpoint (hub layout), built once and cached."""
    from omni_fixtures import build_checkpoint

    return build_checkpoint("base")


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict[str, Path]:
    """All tiny checkpoint variants by name ("base", "gqa4", "odd")."""
    from omni_fixtures import VARIANTS, build_checkpoint

    return {name: build_checkpoint(name) for name in VARIANTS}


def _convert_cached(checkpoint: Path, quant: str, mmproj_quant: str, token2wav_type: str = "f16") -> Path:
    """Run `pocketomni convert` on a tiny checkpoint once; reuse the folder while the checkpoint and
    the converter sources are unchanged (keyed by their hash), under the test cache."""
    import fcntl
    import hashlib
    import shutil
    import time

    from omni_fixtures import cache_root

    import pocketomni.convert as conv
    from pocketomni.convert.pipeline import convert_checkpoint

    h = hashlib.sha256(f"{checkpoint.resolve()}|{quant}|{mmproj_quant}|{token2wav_type}".encode())
    for src in sorted(Path(conv.__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    root = cache_root() / "converted"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"{checkpoint.name}-{quant}-{mmproj_quant}-t2w{token2wav_type}-{h.hexdigest()[:12]}"
    with open(root / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "pocketomni.json").is_file():
            tmp = root / f".{out.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            convert_checkpoint(checkpoint, tmp, quant=quant, mmproj_quant=mmproj_quant, progress=False, threads=1,
                               token2wav_type=token2wav_type)
            os.replace(tmp, out)
            stem = out.name[: out.name.rindex("-") + 1]
            for old in root.glob(stem + "*"):  # conversions by older converter sources, unused for an hour
                if old != out and old.is_dir() and time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def converted_tiny():
    """Factory `converted_tiny(variant="base", quant="f32", mmproj_quant=None, token2wav_type="f16")
    -> model folder`: the tiny checkpoint converted with `pocketomni convert` once per variant and types
    (cached on disk). mmproj_quant defaults to f32 for an f32 thinker, else f16; token2wav_type to the
    converter's default."""
    from omni_fixtures import build_checkpoint

    made: dict[tuple[str, str, str, str], Path] = {}

    def get(variant: str = "base", quant: str = "f32", mmproj_quant: str | None = None,
            token2wav_type: str = "f16") -> Path:
        key = (variant, quant, mmproj_quant or ("f32" if quant == "f32" else "f16"), token2wav_type)
        if key not in made:
            made[key] = _convert_cached(build_checkpoint(variant), *key[1:])
        return made[key]

    return get
