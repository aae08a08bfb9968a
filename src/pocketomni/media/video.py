"""Video -> frames sampled at 2 fps, sized by the reference's pixel budget, plus its sound track.

Frame count (the Qwen video reader's rule): from ``total`` frames at ``fps``, take
``total / fps * 2`` frames, at least 4 and at most min(768, total), rounded down to a multiple of 2
(one temporal patch = 2 frames = 1 s at 2 fps); indices are ``linspace(0, total - 1, n)`` rounded.
The actual sampling rate ``n / total * fps`` gives ``seconds_per_grid = 2 / sample_fps`` for TMRoPE.

Frame size: per-frame budget ``max(min(768*28*28, total_pixels / n * 2), 1.05 * 128*28*28)`` with
``total_pixels`` 128000*28*28*0.9 by default (the reference's), then smart_resize with at least
128*28*28 pixels; the transformers video processor's own smart_resize is applied on top, as in the
reference pipeline. ``VideoConfig.with_token_budget`` derives total_pixels from a context budget.

Inputs: ``(frames, fps)`` or ``(frames, fps, audio, sample_rate)`` with frames (T, H, W, 3) uint8 or
a sequence of images, or a file path decoded with PyAV (``pip install av``, the optional "video"
extra). Resampling of frames is PIL bicubic (the reference uses torchvision's antialiased bicubic:
sizes are identical, pixels differ slightly).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pocketomni.engine.positions import VideoSegment
from pocketomni.errors import FeatureUnavailableError, MediaError
from pocketomni.media.audio import PreparedAudio, prepare_audio, to_mono
from pocketomni.media.image import ImageConfig, load_image, smart_resize

__all__ = [
    "PreparedVideo",
    "VideoConfig",
    "VideoInput",
    "frame_array",
    "frame_size",
    "iter_video_frames",
    "prepare_video",
    "resize_frames",
    "sample_indices",
    "smart_nframes",
]

VideoInput = str | os.PathLike | tuple


@dataclass(frozen=True)
class VideoConfig:
    """Sampling and size rules (defaults: the reference's)."""

    fps: float = 2.0
    frame_factor: int = 2
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = int(128000 * 28 * 28 * 0.9)
    max_seconds: float = 1800.0  # longest video accepted at all (decode safety)
    image: ImageConfig = field(default_factory=ImageConfig)

    def with_token_budget(self, max_video_tokens: int) -> VideoConfig:
        """Same rules with total_pixels set so that the frames cost at most ~max_video_tokens tokens."""
        per_token = self.image.factor**2  # 784 pixels per merged token (per temporal patch)
        return replace(self, total_pixels=int(max_video_tokens) * per_token)


@dataclass
class PreparedVideo:
    """Sampled, resized frames and (optionally) the sound track, ready for the encoders."""

    frames: np.ndarray  # (T, H, W, 3) uint8, T a multiple of 2
    grid_thw: tuple[int, int, int]  # (T / 2, H / 14, W / 14)
    sample_fps: float
    seconds_per_grid: float  # temporal_patch_size / sample_fps, for TMRoPE
    n_video_tokens: int
    audio: PreparedAudio | None

    def segment(self, use_audio: bool = True) -> VideoSegment:
        """The prompt segment for pocketomni.engine.positions (with the sound interleaved when present)."""
        tokens = self.audio.n_tokens if (use_audio and self.audio is not None) else None
        return VideoSegment(self.grid_thw, self.seconds_per_grid, tokens)


def smart_nframes(total_frames: int, video_fps: float, cfg: VideoConfig | None = None) -> int:
    """Number of frames the reference samples from a video of total_frames at video_fps."""
    c = cfg or VideoConfig()
    f = c.frame_factor
    min_frames = math.ceil(c.min_frames / f) * f
    max_frames = math.floor(min(c.max_frames, total_frames) / f) * f
    n = total_frames / video_fps * c.fps
    n = min(min(max(n, min_frames), max_frames), total_frames)
    n = math.floor(n / f) * f
    if not (f <= n <= total_frames):
        raise MediaError(
            f"the video has {total_frames} frame(s); at least {f} are needed. Send a single picture as an image"
        )
    return int(n)


def sample_indices(total_frames: int, n: int) -> np.ndarray:
    """round(linspace(0, total - 1, n)) computed in float32 like the reference (round half to even)."""
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    start, end = np.float32(0.0), np.float32(total_frames - 1)
    step = (end - start) / np.float32(n - 1)
    idx = np.arange(n)
    half = n // 2
    vals = np.empty(n, dtype=np.float32)
    vals[:half] = start + step * idx[:half].astype(np.float32)
    vals[half:] = end - step * (n - 1 - idx[half:]).astype(np.float32)
    return np.rint(vals).astype(np.int64)


def _qwen_utils_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: float) -> tuple[int, int]:
    """The video reader's smart_resize: like the image rule but never below one factor per side."""
    if max(height, width) / min(height, width) > 200:
        raise MediaError(f"the video is {width}x{height}, an aspect ratio above 200:1; crop it")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_size(height: int, width: int, n_frames: int, cfg: VideoConfig | None = None) -> tuple[int, int]:
    """Resized (height, width) of every sampled frame of an n_frames video."""
    c = cfg or VideoConfig()
    if height <= 0 or width <= 0:
        raise MediaError(f"the video frames are empty ({width}x{height}); pass frames with visible content")
    budget = max(min(c.max_pixels, c.total_pixels / n_frames * c.frame_factor), int(c.min_pixels * 1.05))
    h, w = _qwen_utils_resize(height, width, c.image.factor, c.min_pixels, budget)
    if h <= 0 or w <= 0:
        raise MediaError(f"the video frames ({width}x{height}) cannot be fitted to the pixel budget; crop them")
    return smart_resize(h, w, c.image.factor, c.min_pixels, c.max_pixels)


def frame_array(frame: Any) -> np.ndarray:
    """One video frame as an (H, W, 3) uint8 array (arrays of another kind and PIL images converted)."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] == 3:
        return frame
    return np.asarray(load_image(frame), dtype=np.uint8)


def resize_frames(frames: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames at size (height, width), PIL bicubic (frames already that size: copied)."""
    h, w = size
    out = np.empty((len(frames), h, w, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        img = Image.fromarray(f)
        out[i] = np.asarray(img if img.size == (w, h) else img.resize((w, h), Image.Resampling.BICUBIC))
    return out


def _finish(selected: list[np.ndarray], total: int, fps: float, audio: PreparedAudio | None,
            cfg: VideoConfig) -> PreparedVideo:
    n = len(selected)
    shapes = {f.shape for f in selected}
    if len(shapes) != 1:
        raise MediaError(f"all video frames must have the same size; got {sorted(shapes)}")
    height, width = selected[0].shape[:2]
    frames = resize_frames(selected, frame_size(height, width, n, cfg))
    tp, p, m = cfg.image.temporal_patch_size, cfg.image.patch_size, cfg.image.merge_size
    if n % tp:  # cannot happen with frame_factor 2; mirrors the processor's padding otherwise
        frames = np.concatenate([frames, np.repeat(frames[-1:], tp - n % tp, axis=0)])
    grid = (frames.shape[0] // tp, frames.shape[1] // p, frames.shape[2] // p)
    sample_fps = n / max(total, 1e-6) * fps
    return PreparedVideo(
        frames=frames,
        grid_thw=grid,
        sample_fps=sample_fps,
        seconds_per_grid=tp / sample_fps,
        n_video_tokens=grid[0] * grid[1] * grid[2] // (m * m),
        audio=audio,
    )


def _check_fps(fps: Any) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError) as exc:
        raise MediaError(f"the video frame rate must be a number of frames per second, got {fps!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise MediaError(f"the video frame rate must be positive, got {fps!r}")
    return value


def _from_frames(frames: Any, fps: Any, audio: Any, rate: Any, cfg: VideoConfig) -> PreparedVideo:
    fps = _check_fps(fps)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
            raise MediaError(f"video frames must be (T, H, W, 3); got shape {frames.shape}")
        seq: Sequence[Any] = list(frames)
    else:
        seq = list(frames)
    total = len(seq)
    if total == 0:
        raise MediaError("the video has no frames; pass at least 2 frames")
    if total / fps > cfg.max_seconds:
        raise MediaError(
            f"the video lasts {total / fps:.0f} s; at most {cfg.max_seconds:.0f} s are accepted. Cut it shorter"
        )
    n = smart_nframes(total, fps, cfg)
    selected = [frame_array(seq[i]) for i in sample_indices(total, n)]
    prepared_audio = None if audio is None else prepare_audio((audio, rate))
    return _finish(selected, total, fps, prepared_audio, cfg)


def _require_av():
    try:
        import av  # type: ignore[import-not-found]
    except ImportError as exc:
        raise FeatureUnavailableError(
            "reading video files needs PyAV: pip install 'pocketomni[video]' (or pip install av). "
            "Without it, pass video=(frames, fps) or (frames, fps, audio, sample_rate)"
        ) from exc
    return av


def _ffmpeg_s16(x: np.ndarray) -> np.ndarray:
    """Quantize like the reference's ffmpeg -> 16-bit PCM pipe (audioread), back to float32."""
    return (np.clip(np.rint(x.astype(np.float64) * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def _decode_track(av: Any, path: str) -> PreparedAudio | None:
    parts = []
    with av.open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            a = frame.to_ndarray()
            a = a.T if frame.format.is_planar else a.reshape(-1, len(frame.layout.channels))
            if np.issubdtype(a.dtype, np.integer):
                a = a.astype(np.float64) / float(np.iinfo(a.dtype).max + 1)
            parts.append(_ffmpeg_s16(a))
    if not parts:
        return None
    return prepare_audio((to_mono(np.concatenate(parts)), rate))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise MediaError(f"video file not found: {path}; check the path")


def _video_stream(container: Any, path: Path) -> tuple[Any, float]:
    """The first video stream of an open PyAV container and its frame rate (0 when unknown)."""
    if not container.streams.video:
        raise MediaError(f"{path} has no video stream; pass it as audio instead")
    stream = container.streams.video[0]
    return stream, float(stream.average_rate or stream.guessed_rate or 0)


def _from_file(path: Path, with_audio: bool, cfg: VideoConfig) -> PreparedVideo:
    av = _require_av()
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            stream, fps = _video_stream(container, path)
            total = sum(1 for pkt in container.demux(stream) if pkt.size)
        if total == 0 or fps <= 0:
            raise MediaError(f"{path} holds no decodable video frames")
        if total / fps > cfg.max_seconds:
            raise MediaError(f"{path} lasts {total / fps:.0f} s; at most {cfg.max_seconds:.0f} s are accepted")
        n = smart_nframes(total, fps, cfg)
        wanted = sample_indices(total, n)
        wanted_set = set(wanted.tolist())
        keep: dict[int, np.ndarray] = {}
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i > wanted[-1]:
                    break
                if i in wanted_set:
                    keep[i] = frame.to_ndarray(format="rgb24")
        if not keep:
            raise MediaError(f"{path} holds no decodable video frames")
        last = keep[max(keep)]
        selected = [keep.get(int(i), last) for i in wanted]  # frames missing at the end repeat the last one
        track = _decode_track(av, str(path)) if with_audio else None
    except (MediaError, FeatureUnavailableError):
        raise
    except Exception as exc:
        raise MediaError(f"cannot decode {path}: {exc}; re-encode it (e.g. H.264 MP4)") from exc
    return _finish(selected, total, fps, track, cfg)


def iter_video_frames(path: str | os.PathLike) -> tuple[float, Iterator[np.ndarray]]:
    """(fps, frames): every frame of a video file in order, decoded lazily as RGB (H, W, 3) uint8 (needs
    PyAV). For players (a file played as a live camera); prepare_video samples a file for the model."""
    av = _require_av()
    p = Path(path)
    _check_file(p)
    try:
        with av.open(str(p)) as container:
            fps = _video_stream(container, p)[1]
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"cannot decode {p}: {exc}; re-encode it (e.g. H.264 MP4)") from exc
    if fps <= 0:
        raise MediaError(f"{p} has no frame rate; re-encode it (e.g. H.264 MP4)")

    def frames() -> Iterator[np.ndarray]:
        with av.open(str(p)) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")

    return fps, frames()


def prepare_video(src: VideoInput, *, use_audio: bool = True, config: VideoConfig | None = None) -> PreparedVideo:
    """Sample frames at 2 fps, resize them by the budget rule and load the sound track (if any, if wanted).

    src: a file path (needs PyAV), (frames, fps) or (frames, fps, audio, sample_rate).
    """
    cfg = config or VideoConfig()
    if isinstance(src, tuple):
        if len(src) == 2:
            return _from_frames(src[0], src[1], None, None, cfg)
        if len(src) == 4:
            audio, rate = (src[2], src[3]) if use_audio else (None, None)
            return _from_frames(src[0], src[1], audio, rate, cfg)
        raise MediaError("pass video as (frames, fps) or (frames, fps, audio, sample_rate)")
    if isinstance(src, (str, os.PathLike)):
        if str(src).startswith(("http://", "https://")):
            raise MediaError("PocketOmni runs offline and does not download videos; save the file and pass its path")
        return _from_file(Path(src), use_audio, cfg)
    raise MediaError(f"unsupported video input {type(src).__name__}; pass a path, (frames, fps) or (frames, fps, audio, sr)")
