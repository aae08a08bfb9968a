"""Typed errors. Every message says what went wrong and how to fix it."""

from __future__ import annotations


class PocketOmniError(Exception):
    """Base class of every error PocketOmni raises on purpose."""


class ModelFileError(PocketOmniError):
    """A model file or folder is missing, corrupt, or does not match what was expected."""


class ConversionError(PocketOmniError):
    """A Hugging Face checkpoint cannot be converted (wrong model, missing files, bad shapes)."""


class MediaError(PocketOmniError):
    """An image, audio clip or video cannot be decoded or is outside the supported range."""


class CameraError(MediaError):
    """A live camera source failed, or gave a frame the model cannot take (see pocketomni.voice.camera)."""


class ContextOverflowError(PocketOmniError):
    """The prompt (with history and media) does not fit in the context window."""


class OptionsError(PocketOmniError, ValueError):
    """An option is unknown or has a value outside its allowed range."""


class FeatureUnavailableError(PocketOmniError):
    """The loaded model folder lacks a file a feature needs (e.g. speech without the talker)."""


class InternalError(RuntimeError):
    """A broken invariant inside PocketOmni: a bug to report, never caused by the input. Deliberately
    not a PocketOmniError, so handlers of user errors do not swallow it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} (a PocketOmni bug: please report it with the steps that led here)")
