"""Omni: a loaded model (thinker + multimodal projector), the factory of chats.

    async with po.Omni.load("model-folder") as omni:      # or: omni = po.Omni.load_sync(...)
        chat = omni.chat(system=None, speech=False)

Loading runs in a worker thread for the async form. Every llama.cpp call on the model takes the
model's one lock, so chats on it take turns safely; each chat has its own context (KV cache).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketomni.backend.llama import gpu_layers
from pocketomni.closing import Closable
from pocketomni.engine.encoders import MediaEncoders
from pocketomni.engine.model_folder import Capabilities, ModelFolder
from pocketomni.engine.runtime import ModelRuntime, SpeechLoad
from pocketomni.engine.thinker import ContextSettings, Thinker
from pocketomni.errors import FeatureUnavailableError, OptionsError
from pocketomni.media.image import ImageConfig
from pocketomni.media.video import VideoConfig
from pocketomni.options import GenerationOptions, resolve_options

if TYPE_CHECKING:
    from pocketomni.chat.chat import Chat
    from pocketomni.engine.speech import SpeechSettings
    from pocketomni.remote.client import RemoteOmni

__all__ = ["Omni"]


class Omni(Closable):
    """A loaded Qwen2.5-Omni model. Create with `Omni.load(...)` (async) or `Omni.load_sync(...)`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mmproj: str | os.PathLike[str] | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        kv_f32: bool = False,
        image_max_pixels: int | None = None,
        video_min_pixels: int | None = None,
        exact_audio: bool = True,
        use_gpu: bool | None = None,
    ) -> None:
        """Load the model files. Prefer `Omni.load` / `Omni.load_sync`; the arguments are the same.

        n_ctx: context window of each chat, in tokens (each chat allocates its own KV cache).
        n_threads: CPU threads for llama.cpp (default: all cores available to this process).
        n_batch: prompt rows per llama.cpp decode call.
        kv_f32: keep the KV cache in float32 (exact reference comparisons; the default f16 halves it).
        image_max_pixels: downscale images above this many pixels (default: the reference's 12845056).
        video_min_pixels: smallest video frame, in pixels (default: the reference's 128*28*28; smaller frames
            are enlarged to it). Lower it for cheap live-camera frames (VoiceSession(camera_pixels=...)).
        exact_audio: encode audio the reference's way (2 s windows); False uses stock mtmd's encoder.
        use_gpu: run the thinker, talker and vision tower on the GPU when llama.cpp was built with one
            (Metal on macOS); None (default) does so when a GPU is there, False keeps everything on
            the CPU. Audio encoding and token2wav always run on the CPU (numpy).
        """
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 16:
                raise OptionsError(f"{name}={v!r} must be an integer >= 16")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise OptionsError(f"n_threads={n_threads!r} must be a positive integer or None")
        image_cfg = ImageConfig()
        if image_max_pixels is not None:
            if not isinstance(image_max_pixels, int) or image_max_pixels < image_cfg.min_pixels:
                raise OptionsError(f"image_max_pixels must be an integer >= {image_cfg.min_pixels}")
            image_cfg = ImageConfig(max_pixels=image_max_pixels)
        video_cfg = VideoConfig(image=image_cfg)
        if video_min_pixels is not None:
            if isinstance(video_min_pixels, bool) or not isinstance(video_min_pixels, int) or not (
                    image_cfg.min_pixels <= video_min_pixels <= video_cfg.max_pixels):
                raise OptionsError(f"video_min_pixels={video_min_pixels!r} must be an integer from "
                                   f"{image_cfg.min_pixels} to {video_cfg.max_pixels} (pixels per video frame)")
            video_cfg = replace(video_cfg, min_pixels=video_min_pixels)
        if use_gpu is not None and not isinstance(use_gpu, bool):
            raise OptionsError(f"use_gpu={use_gpu!r} must be True, False or None (use a GPU when there is one)")
        n_gpu_layers = gpu_layers(use_gpu)
        if use_gpu and n_gpu_layers == 0:
            raise FeatureUnavailableError(
                "use_gpu=True, but this llama-cpp-python was built without a GPU backend. On macOS reinstall it "
                "with Metal: CMAKE_ARGS=\"-DGGML_METAL=on\" pip install --no-cache-dir --force-reinstall "
                "llama-cpp-python; or pass use_gpu=None to use a GPU only when there is one."
            )
        self.folder = ModelFolder.open(path, mmproj)
        settings = ContextSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, kv_f32=kv_f32)
        thinker = Thinker(self.folder.thinker, n_threads=n_threads, settings=settings, n_gpu_layers=n_gpu_layers)
        try:
            media = MediaEncoders(thinker.model, self.folder, n_threads=n_threads, image_config=image_cfg,
                                  video_config=video_cfg, exact_audio=exact_audio, use_gpu=n_gpu_layers != 0)
        except BaseException:
            thinker.close()
            raise
        # package-internal: what chats run on (tests and benchmarks reach the parts through it)
        self.runtime = ModelRuntime(self.folder, thinker, media, SpeechLoad(n_threads, kv_f32, n_gpu_layers))

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> _Loading:
        """Load in a worker thread: `async with Omni.load(folder) as omni:` or `omni = await Omni.load(folder)`."""
        return _Loading(cls, path, kwargs)

    @classmethod
    def connect(cls, base_url: str, model: str | None = None, **kwargs: Any) -> RemoteOmni:
        """The same chat API against an OpenAI-compatible server (`pocketomni serve`, vLLM-Omni,
        llama-server): `Omni.connect("http://127.0.0.1:8000/v1").chat(speech=True)`. kwargs: api_key,
        timeout, stream (False for servers that send speech only in whole replies, e.g. vLLM-Omni)."""
        from pocketomni.remote.client import RemoteOmni

        return RemoteOmni(base_url, model, **kwargs)

    @classmethod
    def load_sync(cls, path: str | os.PathLike[str], **kwargs: Any) -> Omni:
        """Load in the calling thread (use `with Omni.load_sync(folder) as omni:` to close it at the end)."""
        return cls(path, **kwargs)

    # ------------------------------------------------------------------ chats

    @property
    def capabilities(self) -> Capabilities:
        """What this model can do (vision, audio input, speech output)."""
        return self.folder.capabilities(exact_audio=self.runtime.media.exact_audio)

    @property
    def n_ctx(self) -> int:
        """Context window of each chat, in tokens."""
        return self.runtime.n_ctx

    def chat(self, system: str | None = None, speech: bool | SpeechSettings = False, *, voice: str | None = None,
             speech_preset: str | None = None, speech_options: Any = None, speech_streaming: str | None = None,
             options: Any = None, context_policy: Any = None, **overrides: Any) -> Chat:
        """A new conversation. `system`: the system prompt (None: the chat template's default, or for
        speech chats the prompt the model speaks with, `pocketomni.engine.speech.SPEECH_SYSTEM_PROMPT`).

        speech: also speak each reply: `AudioChunk` events (24 kHz float32) arrive beside the `TextDelta`s.
        True, or a `SpeechSettings(voice=, preset=, streaming=, options=)`; the keyword shorthands
        below set the same fields (each `send` may override them with `speech={...}`).
        voice: "Chelsie" (default) or "Ethan". speech_preset: "fast" (default) or "reference" (the
        reference's vocoder solver, ~18x the work). speech_options: SpeechOptions (or dict) for the
        talker. speech_streaming: "exact" or "chunked" (default: exact for fast, chunked for reference).
        The first speech chat loads the talker and token2wav files (a few seconds for real models).

        `options` (GenerationOptions or dict) and keyword overrides set the chat's default generation
        options; each `send` may override them again.
        context_policy: what a full context does: "trim" (default: old turns, media first, are dropped
        and the cache rebuilt right after a reply, so the chat never fills up), "error"
        (ContextOverflowError), or a `HistoryPolicy` / dict (headroom, keep, min_turns, media_turns).
        """
        from pocketomni.chat.chat import Chat
        from pocketomni.engine.speech import SPEECH_SYSTEM_PROMPT, SpeechSettings, check_system_prompt

        self._check_open()
        if not isinstance(speech, (bool, SpeechSettings)):
            raise OptionsError(f"speech must be True, False or a SpeechSettings, got {speech!r}")
        settings = None
        if speech:
            self.folder.require("speech_out")
            if isinstance(speech, SpeechSettings):
                if any(v is not None for v in (voice, speech_preset, speech_options, speech_streaming)):
                    raise OptionsError("pass either speech=SpeechSettings(...) or voice/speech_preset/speech_options/"
                                       "speech_streaming, not both")
                settings = SpeechSettings().override(speech)
            else:
                settings = SpeechSettings.resolve(voice, speech_preset, speech_options, speech_streaming)
            self.runtime.check_voice(settings.voice)
            if system is None:
                system = SPEECH_SYSTEM_PROMPT
            else:
                check_system_prompt(system)
        elif any(v is not None for v in (voice, speech_preset, speech_options, speech_streaming)):
            raise OptionsError("voice, speech_preset, speech_options and speech_streaming need chat(speech=True)")
        opts = resolve_options(GenerationOptions(), options, overrides)
        return Chat(self.runtime, system=system, speech=bool(speech), options=opts, speech_settings=settings,
                    context_policy=context_policy)

    async def achat(self, system: str | None = None, speech: bool = False, **kwargs: Any) -> Chat:
        """`chat(...)` in a worker thread (a chat allocates its context cache); same arguments."""
        return await asyncio.to_thread(self.chat, system, speech, **kwargs)

    def load_speech(self) -> None:
        """Load the talker and token2wav now instead of at the first spoken reply (a few seconds for
        real models); idempotent. FeatureUnavailableError when the folder has no speech files."""
        self._check_open()
        self.folder.require("speech_out")
        self.runtime.speech_engine()

    async def aload_speech(self) -> None:
        """`load_speech()` in a worker thread."""
        await asyncio.to_thread(self.load_speech)

    def restore_chat(self, path: str | os.PathLike[str]) -> Chat:
        """A chat saved with `chat.save(path)`, continuing exactly where it stopped."""
        from pocketomni.chat.chat import Chat

        self._check_open()
        return Chat.restore(self.runtime, Path(path))

    async def arestore_chat(self, path: str | os.PathLike[str]) -> Chat:
        """`restore_chat(path)` in a worker thread."""
        return await asyncio.to_thread(self.restore_chat, path)

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        self.runtime.check_open()

    @property
    def closed(self) -> bool:
        return self.runtime.closed

    def close(self) -> None:
        """Stop running turns, free every chat and the model (idempotent)."""
        self.runtime.close()

    def __repr__(self) -> str:
        c = self.capabilities if not self.closed else None
        return f"Omni({str(self.folder.root)!r}, {'closed' if c is None else c})"


class _Loading:
    """What `Omni.load` returns: awaitable, and an async context manager that closes the model."""

    def __init__(self, cls: type[Omni], path: Any, kwargs: dict[str, Any]) -> None:
        self._cls, self._path, self._kwargs = cls, path, kwargs
        self._omni: Omni | None = None

    async def _load(self) -> Omni:
        return await asyncio.to_thread(self._cls, self._path, **self._kwargs)

    def __await__(self) -> Generator[Any, None, Omni]:
        return self._load().__await__()

    async def __aenter__(self) -> Omni:
        self._omni = await self._load()
        return self._omni

    async def __aexit__(self, *exc: object) -> None:
        if self._omni is not None:
            await self._omni.aclose()
