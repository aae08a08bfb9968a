"""PocketOmni: Qwen2.5-Omni offline through llama.cpp, from Python."""

from __future__ import annotations

from pocketomni.errors import (
    ContextOverflowError,
    ConversionError,
    FeatureUnavailableError,
    MediaError,
    ModelFileError,
    OptionsError,
    PocketOmniError,
)

__version__ = "0.1.0"

__all__ = [
    "ContextOverflowError",
    "ConversionError",
    "FeatureUnavailableError",
    "MediaError",
    "ModelFileError",
    "OptionsError",
    "PocketOmniError",
    "__version__",
]
