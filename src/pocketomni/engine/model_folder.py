"""What a model folder holds and which features it supports (text, vision, audio in, speech out).

A folder is either one written by `pocketomni convert` (it has a `pocketomni.json` manifest) or a
community download holding one `*Qwen2.5-Omni*.gguf` thinker and at most one `mmproj-*.gguf`.
A single thinker `.gguf` file (with an optional separate mmproj) is accepted too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pocketomni.errors import FeatureUnavailableError, ModelFileError
from pocketomni.gguf_file import GGUFFile

__all__ = ["Capabilities", "ModelFolder"]

FEATURES = ("text", "vision", "audio_in", "speech_out")


@dataclass(frozen=True)
class Capabilities:
    """Features the loaded files support.

    text: always True. vision: images in (the mmproj has a vision encoder). audio_in: audio clips in
    (the mmproj has an audio encoder). speech_out: spoken replies (talker + token2wav files present).
    exact_audio: audio is encoded the reference's way (2 s windows) rather than by stock mtmd.
    """

    text: bool = True
    vision: bool = False
    audio_in: bool = False
    speech_out: bool = False
    exact_audio: bool = False


def _mmproj_flags(path: Path) -> tuple[bool, bool]:
    meta = GGUFFile.open(path).metadata
    if meta.get("general.architecture") != "clip":
        raise ModelFileError(f"{path} is not a multimodal projector (mmproj) file; pass the mmproj-*.gguf file.")
    return bool(meta.get("clip.has_vision_encoder", False)), bool(meta.get("clip.has_audio_encoder", False))


@dataclass(frozen=True)
class ModelFolder:
    """The files of one model and the features they support."""

    root: Path
    thinker: Path
    mmproj: Path | None = None
    talker: Path | None = None
    token2wav: Path | None = None
    vision: bool = False
    audio_in: bool = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], mmproj: str | os.PathLike[str] | None = None) -> ModelFolder:
        """Find the files of a model folder (or a thinker .gguf plus an optional mmproj)."""
        from pocketomni.engine.manifest import locate_model_files

        p = Path(path).expanduser()
        if not p.exists():
            raise ModelFileError(
                f"model folder not found: {p}. Pass a folder written by `pocketomni convert HF_DIR OUT_DIR` "
                "or one holding a Qwen2.5-Omni thinker .gguf and its mmproj-*.gguf."
            )
        if p.is_file():
            files: dict[str, Path] = {"thinker": p}
            root = p.parent
        else:
            files = dict(locate_model_files(p))
            root = p
        if mmproj is not None:
            m = Path(mmproj).expanduser()
            if not m.is_file():
                raise ModelFileError(f"mmproj file not found: {m}; check the path.")
            files["mmproj"] = m
        if "thinker" not in files:
            raise ModelFileError(f"{root} has no thinker model file. Re-run `pocketomni convert`.")
        vision = audio = False
        if "mmproj" in files:
            vision, audio = _mmproj_flags(files["mmproj"])
        return cls(
            root=root, thinker=files["thinker"], mmproj=files.get("mmproj"), talker=files.get("talker"),
            token2wav=files.get("token2wav"), vision=vision, audio_in=audio,
        )

    @property
    def has_speech_files(self) -> bool:
        """True when the talker and token2wav files are both present."""
        return self.talker is not None and self.token2wav is not None

    def capabilities(self, exact_audio: bool = False) -> Capabilities:
        """The features these files support (speech only when the runtime can speak, too)."""
        return Capabilities(
            text=True, vision=self.vision, audio_in=self.audio_in,
            speech_out=self.has_speech_files, exact_audio=exact_audio and self.audio_in,
        )

    def require(self, feature: str) -> None:
        """Raise FeatureUnavailableError, saying what to do, if `feature` is not supported."""
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; one of {FEATURES}")
        if feature == "vision" and not self.vision:
            raise FeatureUnavailableError(self._missing_mmproj("images", "vision"))
        if feature == "audio_in" and not self.audio_in:
            raise FeatureUnavailableError(self._missing_mmproj("audio input", "audio"))
        if feature == "speech_out" and not self.has_speech_files:
            missing = [n for n in ("talker", "token2wav") if getattr(self, n) is None]
            raise FeatureUnavailableError(
                f"speech output needs the talker and token2wav files, and {self.root} has no "
                f"{' or '.join(missing)} file. Convert the full Hugging Face Qwen2.5-Omni checkpoint with "
                "`pocketomni convert HF_DIR OUT_DIR` to get them (community thinker + mmproj downloads serve "
                "text replies only), or use chat(speech=False)."
            )

    def _missing_mmproj(self, what: str, encoder: str) -> str:
        if self.mmproj is None:
            return (
                f"{what} needs the multimodal projector (mmproj-*.gguf) and {self.root} has none. Put the "
                "mmproj file next to the thinker (or pass mmproj=...), or convert the checkpoint with "
                "`pocketomni convert`."
            )
        return f"{self.mmproj.name} has no {encoder} encoder, so this model cannot take {what}; use a Qwen2.5-Omni mmproj."
