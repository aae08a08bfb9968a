"""Media parts -> embedding rows for the thinker: images through mtmd, audio through our exact encoder.

Images are resized by the reference's rule in Python first (sdk/media), so mtmd, whose token limits
are widened to the reference's (4 .. 16384 tokens), encodes them at exactly that size. Video frames
(sampled at 2 fps, sized by the reference's budget) go through mtmd's vision tower in temporal pairs;
a video's sound track through the same exact audio encoder as audio clips. Audio goes
through `AudioEncoder` (the reference's 2 s windows) built from the mmproj's own tensors; only when
the mmproj lacks them does it fall back to stock mtmd's audio path (30 s windows, more tokens, not the
reference's numbers), which `exact_audio` reports.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.audio.features import log_mel, split_segments
from pocketomni.audio.tower import (
    AudioEncoder,
    AudioEncoderConfig,
    EncodingStopped,
    audio_gguf_name,
    audio_tower_names,
)
from pocketomni.backend.llama import LlamaModel
from pocketomni.backend.mtmd import MtmdContext
from pocketomni.chat.conversation import Part
from pocketomni.engine.model_folder import ModelFolder
from pocketomni.engine.positions import (
    KIND_AUDIO,
    KIND_IMAGE,
    KIND_VIDEO,
    AudioSegment,
    ImageSegment,
    VideoSegment,
)
from pocketomni.errors import FeatureUnavailableError, InternalError, ModelFileError, PocketOmniError
from pocketomni.gguf_file import GGUFFile
from pocketomni.media.audio import PreparedAudio, prepare_audio
from pocketomni.media.image import ImageConfig, PreparedImage, prepare_image
from pocketomni.media.video import PreparedVideo, VideoConfig, prepare_video

__all__ = ["MediaEncoders", "PreparedMedia", "load_audio_encoder"]

log = logging.getLogger("pocketomni")

F32_RESIDENT_LIMIT = 512 << 20  # audio towers larger than this in float32 keep their f16 matrices as stored


@dataclass
class PreparedMedia:
    """A decoded, resized media item with its prompt segment, not yet encoded."""

    part: Part
    kind: int  # KIND_IMAGE, KIND_AUDIO or KIND_VIDEO
    segment: ImageSegment | AudioSegment | VideoSegment
    image: PreparedImage | None = None
    audio: PreparedAudio | None = None  # an audio clip, or a video's sound track when it is used
    video: PreparedVideo | None = None

    @property
    def n_tokens(self) -> int:
        """Embedding rows of the item (a video: frames plus its sound track)."""
        if self.image is not None:
            return self.image.n_tokens
        if isinstance(self.segment, VideoSegment):
            assert self.video is not None
            return self.video.n_video_tokens + (self.segment.audio_tokens or 0)
        assert isinstance(self.segment, AudioSegment)
        return self.segment.n_tokens


def _audio_config(meta: dict[str, Any]) -> AudioEncoderConfig:
    def get(key: str) -> Any:
        v = meta.get(f"clip.audio.{key}")
        if v is None:
            raise ModelFileError(f"the mmproj lacks clip.audio.{key}")
        return v

    return AudioEncoderConfig(
        num_mel_bins=int(get("num_mel_bins")), d_model=int(get("embedding_length")),
        encoder_layers=int(get("block_count")), encoder_attention_heads=int(get("attention.head_count")),
        encoder_ffn_dim=int(get("feed_forward_length")), output_dim=int(get("projection_dim")),
        layer_norm_eps=float(get("attention.layer_norm_epsilon")),
    )


def audio_encoder_available(mmproj: Path) -> bool:
    """True when the mmproj holds every tensor and key our exact audio encoder needs."""
    g = GGUFFile.open(mmproj)
    try:
        cfg = _audio_config(g.metadata)
    except ModelFileError:
        return False
    return all(audio_gguf_name(n) in g.tensors for n in audio_tower_names(cfg))


def load_audio_encoder(mmproj: Path) -> AudioEncoder:
    """Our exact (2 s window) audio encoder on the audio tensors of an mmproj GGUF."""
    g = GGUFFile.open(mmproj)
    cfg = _audio_config(g.metadata)
    names = audio_tower_names(cfg)
    tensors = {audio_gguf_name(n): g.read_array(audio_gguf_name(n)) for n in names}
    f32_bytes = 4 * sum(math.prod(s) for s in names.values())
    return AudioEncoder.from_gguf_tensors(cfg, tensors, audio_gguf_name, weights_f32=f32_bytes <= F32_RESIDENT_LIMIT)


class MediaEncoders:
    """Prepares and encodes the media of a turn for one thinker model."""

    def __init__(self, model: LlamaModel, folder: ModelFolder, *, n_threads: int | None = None,
                 image_config: ImageConfig | None = None, exact_audio: bool = True,
                 video_config: VideoConfig | None = None, use_gpu: bool = False) -> None:
        self.model = model
        self.folder = folder
        self.image_config = cfg = image_config or ImageConfig()
        self.video_config = video_config or VideoConfig(image=cfg)
        self.mtmd: MtmdContext | None = None  # loaded by the first image (or stock-audio) encode: ~2.6 GB at 3B
        unit = cfg.factor * cfg.factor  # pixels per merged token
        self._mtmd_kw = {"n_threads": n_threads, "use_gpu": use_gpu, "image_min_tokens": max(1, cfg.min_pixels // unit),
                         "image_max_tokens": max(1, -(-cfg.max_pixels // unit))}
        self.exact_audio = bool(exact_audio and folder.audio_in and audio_encoder_available(folder.mmproj))  # type: ignore[arg-type]
        if folder.audio_in and not self.exact_audio:
            log.warning("%s: audio goes through stock mtmd (30 s windows), not the reference's 2 s windows",
                        folder.mmproj)
        self._audio: AudioEncoder | None = None
        self._audio_lock = threading.Lock()

    def close(self) -> None:
        """Free the projector (idempotent)."""
        with self._audio_lock:
            if self.mtmd is not None:
                self.mtmd.close()
            self._audio = None

    # ------------------------------------------------------------------ prepare (cheap, before any decode)

    def prepare(self, part: Part) -> PreparedMedia:
        """Decode and resize one media part; MediaError / FeatureUnavailableError on bad or unsupported input."""
        if part.kind == "image":
            self.folder.require("vision")
            img = prepare_image(part.source, self.image_config)
            return PreparedMedia(part, KIND_IMAGE, ImageSegment(img.grid_thw), image=img)
        if part.kind == "audio":
            self.folder.require("audio_in")
            aud = prepare_audio(part.source)
            n = aud.n_tokens if self.exact_audio else self._mtmd().count_audio_tokens(aud.samples.shape[0])
            return PreparedMedia(part, KIND_AUDIO, AudioSegment(n), audio=aud)
        if part.kind == "video":
            return self._prepare_video(part)
        raise FeatureUnavailableError(f"{part.kind} input is not supported by this version of the chat API")

    # ------------------------------------------------------------------ encode

    def _mtmd(self) -> MtmdContext:
        if self.folder.mmproj is None:
            raise FeatureUnavailableError("this model has no multimodal projector (mmproj)")
        with self._audio_lock:
            if self.mtmd is None:
                self.mtmd = MtmdContext(self.folder.mmproj, self.model, **self._mtmd_kw)  # type: ignore[arg-type]
            return self.mtmd

    def _audio_encoder(self) -> AudioEncoder:
        with self._audio_lock:
            if self._audio is None:
                assert self.folder.mmproj is not None
                self._audio = load_audio_encoder(self.folder.mmproj)
            return self._audio

    def live_audio_encoder(self) -> AudioEncoder | None:
        """The exact (2 s window) audio encoder that live turns feed window by window, or None when
        audio goes through stock mtmd (30 s windows: a live turn then encodes the whole clip at its end)."""
        self.folder.require("audio_in")
        return self._audio_encoder() if self.exact_audio else None

    def _prepare_video(self, part: Part) -> PreparedMedia:
        self.folder.require("vision")
        use_audio = bool(getattr(part, "use_audio", True))
        vid = prepare_video(part.source, use_audio=use_audio, config=self.video_config)
        if vid.audio is not None:
            try:
                self.folder.require("audio_in")
            except FeatureUnavailableError as e:
                raise FeatureUnavailableError(f"{e} Or send the video with use_audio_in_video=False.") from e
            if not self.exact_audio:
                raise FeatureUnavailableError(
                    "a video's sound track needs the exact audio encoder (its 2 s windows set the interleaving), "
                    f"and {self.folder.mmproj} lacks its tensors. Re-convert the model with `pocketomni convert`, "
                    "or send the video with use_audio_in_video=False")
        seg = vid.segment(use_audio)
        return PreparedMedia(part, KIND_VIDEO, seg, audio=vid.audio if seg.audio_tokens else None, video=vid)

    def encode(self, item: PreparedMedia) -> np.ndarray:
        """Embedding rows (n_tokens, n_embd) of one prepared image or audio item (videos: encode_parts)."""
        if item.video is not None:
            raise InternalError("encode() got a video, which has frame rows and sound rows; use encode_parts")
        return self.encode_parts(item)[item.kind]

    def encode_parts(self, item: PreparedMedia, should_stop: Callable[[], bool] | None = None) -> dict[int, np.ndarray]:
        """Rows of one prepared item by kind: {KIND_IMAGE: ...}, {KIND_AUDIO: ...} or, for a video,
        {KIND_VIDEO: frame rows in temporal order, KIND_AUDIO: its sound track's rows (if used)}."""
        if item.video is not None:
            out = {KIND_VIDEO: self._encode_video(item.video)}
            if item.audio is not None:
                out[KIND_AUDIO] = self._encode_audio(item.audio.samples, should_stop)
            n = sum(v.shape[0] for v in out.values())
        elif item.image is not None:
            out = {KIND_IMAGE: self._encode_image(item.image)}
            n = out[KIND_IMAGE].shape[0]
        else:
            assert item.audio is not None
            out = {KIND_AUDIO: self._encode_audio(item.audio.samples, should_stop)}
            n = out[KIND_AUDIO].shape[0]
        if n != item.n_tokens:
            raise PocketOmniError(
                f"the {item.part.label or 'media'} encoded to {n} rows, expected {item.n_tokens}; "
                "this model's projector does not match the thinker"
            )
        return out

    def _encode_video(self, vid: PreparedVideo) -> np.ndarray:
        return self.encode_frames(vid.frames)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Rows of video frames (T, H, W, 3) uint8, T even, already at a video frame size (prepare_video's).
        The vision tower encodes each frame pair on its own, so a video's pairs may be encoded as they
        come (live turns) and give the rows of the whole video."""
        self.folder.require("vision")
        emb = self._mtmd().encode_video_frames(frames)
        p = self.image_config.patch_size
        grid = (frames.shape[0] // 2, frames.shape[1] // p, frames.shape[2] // p)
        self._check_grid(emb.grid, grid, f"{frames.shape[2]}x{frames.shape[1]} video frames")
        return emb.embd

    def _encode_image(self, img: PreparedImage) -> np.ndarray:
        emb = self._mtmd().encode_image(img.pixels)
        self._check_grid(emb.grid, img.grid_thw, f"a {img.pixels.shape[1]}x{img.pixels.shape[0]} image")
        return emb.embd

    def _check_grid(self, grid: tuple[int, int] | None, grid_thw: tuple[int, int, int], what: str) -> None:
        """mtmd must encode at exactly the reference's size (we resized first); say so if it did not."""
        _, gh, gw = grid_thw
        m = self.image_config.merge_size
        if grid != (gw // m, gh // m):
            raise PocketOmniError(
                f"mtmd resampled {what} to a {grid} token grid instead of {(gw // m, gh // m)}; "
                "its pixel limits differ from the reference's"
            )

    def _encode_audio(self, samples: np.ndarray, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        if not self.exact_audio:
            return self._mtmd().encode_audio(samples).embd
        enc = self._audio_encoder()
        parts = [enc.encode(log_mel(seg), should_stop) for seg in split_segments(samples)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def encode_all(self, items: list[PreparedMedia], should_stop: Callable[[], bool] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[int, np.ndarray]:
        """Rows of every item, concatenated per kind in prompt order (KIND_* -> rows). A video's sound
        rows join KIND_AUDIO in its place, which is the order the prompt layout uses them.
        progress(items_done, items_total) follows the items."""
        by_kind: dict[int, list[np.ndarray]] = {}
        for i, item in enumerate(items):
            if should_stop is not None and should_stop():
                break
            try:
                parts = self.encode_parts(item, should_stop)
            except EncodingStopped:
                return {}  # the turn was cancelled mid-item: the caller sees should_stop() and drops it
            for kind, rows in parts.items():
                by_kind.setdefault(kind, []).append(rows)
            if progress is not None:
                progress(i + 1, len(items))
        return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in by_kind.items()}
