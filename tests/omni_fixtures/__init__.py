"""Tiny random-weight Qwen2.5-Omni checkpoints in the exact Hugging Face repo layout, for tests.

    from omni_fixtures import VARIANTS, build_checkpoint, load_reference, load_processor

Names are imported lazily so `python -m omni_fixtures.tiny` and tokenizer-only users stay light.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["VARIANTS", "build_checkpoint", "cache_root", "load_processor", "load_reference"]


def cache_root() -> Path:
    """Cache directory: $POCKETOMNI_TEST_CACHE, else tests/.cache/ (gitignored)."""
    env = os.environ.get("POCKETOMNI_TEST_CACHE")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".cache"


def __getattr__(name: str):
    if name == "VARIANTS":
        from .config import VARIANTS

        return VARIANTS
    if name == "build_checkpoint":
        from .tiny import build_checkpoint

        return build_checkpoint
    if name in ("load_reference", "load_processor"):
        from . import reference

        return getattr(reference, name)
    raise AttributeError(name)
