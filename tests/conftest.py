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

import logging  # noqa: E402

import pytest  # noqa: E402


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
