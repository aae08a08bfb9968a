"""Images -> RGB pixels sized by the reference's rule, their patch grid and token count (Pillow + numpy).

Accepted inputs: a path, ``data:image/...;base64,`` URL, raw bytes, a ``PIL.Image.Image`` or a
numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 / integers in 0..255 or floats in 0..1.

Policy for very large images: files and bytes are decoded only when their header says at most
``MAX_DECODE_PIXELS`` (100 megapixels, above any phone camera); larger ones are refused with a
MediaError before any pixel is decoded (a 20000 x 20000 picture would need 1.2 GB). Images already
in memory (PIL, numpy) of any size are accepted and downscaled by the rule below.

Resize rule (Qwen2-VL ``smart_resize``, as transformers' Qwen2VLImageProcessor): both sides become
multiples of 28 (patch 14 x merge 2) near the original, the area is kept within
[min_pixels, max_pixels] (3136 .. 12845056 for Qwen2.5-Omni) at the same aspect ratio, and
the aspect ratio must not exceed 200. Resampling is PIL bicubic, as the reference's PIL backend.
EXIF orientation is applied and transparency is composited onto white.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pocketomni.errors import MediaError

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_DECODE_PIXELS",
    "ImageConfig",
    "ImageInput",
    "PreparedImage",
    "image_patches",
    "load_image",
    "prepare_image",
    "smart_resize",
]

MAX_DECODE_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 200

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


@dataclass(frozen=True)
class ImageConfig:
    """Vision preprocessing constants (preprocessor_config.json of Qwen2.5-Omni)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        """Side multiple of a resized image: patch_size * merge_size (28)."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_preprocessor_config(cls, cfg: Mapping[str, Any]) -> ImageConfig:
        """Read the keys this module needs from a preprocessor_config.json dict."""
        size = cfg.get("size") or {}
        return cls(
            patch_size=int(cfg.get("patch_size", cls.patch_size)),
            merge_size=int(cfg.get("merge_size", cls.merge_size)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", cls.temporal_patch_size)),
            min_pixels=int(cfg.get("min_pixels", size.get("shortest_edge", cls.min_pixels))),
            max_pixels=int(cfg.get("max_pixels", size.get("longest_edge", cls.max_pixels))),
            image_mean=tuple(cfg.get("image_mean", CLIP_MEAN)),  # type: ignore[arg-type]
            image_std=tuple(cfg.get("image_std", CLIP_STD)),  # type: ignore[arg-type]
        )


@dataclass
class PreparedImage:
    """A resized RGB image ready for the vision encoder."""

    pixels: np.ndarray  # (H, W, 3) uint8, H and W multiples of 28
    grid_thw: tuple[int, int, int]  # patch grid before merging: (1, H / 14, W / 14)
    n_tokens: int  # LLM tokens: h * w / merge_size**2
    original_size: tuple[int, int]  # (width, height) before resizing


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 12845056
) -> tuple[int, int]:
    """Target (height, width): multiples of factor, area within [min_pixels, max_pixels], same aspect."""
    if height <= 0 or width <= 0:
        raise MediaError(f"the image is empty ({width}x{height} pixels); pass an image with visible content")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise MediaError(
            f"the image is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1; the model accepts at most "
            f"{MAX_ASPECT_RATIO}:1. Crop it or pad it to a less elongated shape."
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _too_large(size: str) -> MediaError:
    return MediaError(
        f"the image is {size}; PocketOmni decodes at most {MAX_DECODE_PIXELS // 1_000_000} megapixels "
        "from a file. Downscale it first (e.g. PIL.Image.thumbnail((4096, 4096))) and pass the smaller "
        "image; the model sees at most ~12.8 megapixels anyway."
    )


def _open_encoded(data: io.BytesIO | str, label: str) -> Image.Image:
    """Decode a file or byte stream with the size guard; returns a fully loaded PIL image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(data)
            w, h = img.size
            if w * h > MAX_DECODE_PIXELS:
                raise _too_large(f"{w}x{h} pixels ({w * h / 1e6:.0f} megapixels)")
            if w == 0 or h == 0:
                raise MediaError(f"{label} is an empty {w}x{h} image; pass an image with visible content")
            img.load()
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(f"far larger than {MAX_DECODE_PIXELS // 1_000_000} megapixels") from exc
    except FileNotFoundError as exc:
        raise MediaError(f"image file not found: {label}; check the path") from exc
    except IsADirectoryError as exc:
        raise MediaError(f"{label} is a directory, not an image file") from exc
    except UnidentifiedImageError as exc:
        raise MediaError(
            f"cannot decode {label}: not an image format Pillow knows (or the data is corrupt); "
            "convert it to PNG or JPEG"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"cannot decode {label}: {exc}; the file is truncated or corrupt, re-export it") from exc
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 -- a broken EXIF block must not make a readable image unusable
        return img


def _from_data_url(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or ";base64" not in head:
        raise MediaError("an image data URL must look like 'data:image/png;base64,<data>'")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"the image data URL holds invalid base64 ({exc})") from exc


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        raise MediaError(
            f"image array of shape {a.shape} looks channels-first; pass (H, W, C), e.g. arr.transpose(1, 2, 0)"
        )
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise MediaError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise MediaError(f"the image array is empty (shape {a.shape}); pass an image with visible content")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise MediaError(f"image array dtype {a.dtype} is not supported; use uint8 (0..255) or float (0..1)")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise MediaError("a float image array must hold finite values in 0..1; scale it or pass uint8")
        a = np.round(a.astype(np.float64) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise MediaError(f"an integer image array must hold values in 0..255 (got {a.min()}..{a.max()})")
        a = a.astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        alpha = a[..., 3:4].astype(np.float64) / 255.0
        a = np.round(alpha * a[..., :3] + (1.0 - alpha) * 255.0).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(src: ImageInput) -> Image.Image:
    """Decode any accepted input to an RGB PIL image (not resized). Raises MediaError."""
    if isinstance(src, Image.Image):
        if src.width == 0 or src.height == 0:
            raise MediaError(f"the image is empty ({src.width}x{src.height}); pass an image with visible content")
        try:
            img = ImageOps.exif_transpose(src)
        except Exception:  # noqa: BLE001 -- ignore a broken EXIF block, keep the pixels
            img = src
        return _to_rgb(img)
    if isinstance(src, np.ndarray):
        return _array_to_pil(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise MediaError("the image bytes are empty; pass the contents of an image file")
        return _to_rgb(_open_encoded(io.BytesIO(bytes(src)), "the image bytes"))
    if isinstance(src, str) and src.startswith("data:"):
        return load_image(_from_data_url(src))
    if isinstance(src, str) and src.startswith(("http://", "https://")):
        raise MediaError("PocketOmni runs offline and does not download images; save the file and pass its path")
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise MediaError(f"image file not found: {path}; check the path")
        return _to_rgb(_open_encoded(str(path), str(path)))
    raise MediaError(
        f"unsupported image input {type(src).__name__}; pass a path, bytes, a PIL image or a numpy array"
    )


def prepare_image(src: ImageInput, config: ImageConfig | None = None) -> PreparedImage:
    """Load, convert to RGB and resize by the reference's rule; returns pixels, grid and token count."""
    cfg = config or ImageConfig()
    img = load_image(src)
    w, h = img.size
    new_h, new_w = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    grid = (1, new_h // cfg.patch_size, new_w // cfg.patch_size)
    return PreparedImage(
        pixels=np.asarray(img, dtype=np.uint8),
        grid_thw=grid,
        n_tokens=grid[1] * grid[2] // cfg.merge_size**2,
        original_size=(w, h),
    )


def image_patches(frames: np.ndarray, config: ImageConfig | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Normalized, flattened patches in the reference's pixel_values order, and the grid (t, h, w).

    frames: (H, W, 3) uint8 for an image, or (T, H, W, 3) uint8 for video frames (T is padded to a
    multiple of temporal_patch_size by repeating the last frame, as the reference does).
    Returns float32 (t*h*w, 3 * temporal_patch_size * patch * patch).
    """
    cfg = config or ImageConfig()
    x = np.asarray(frames)
    if x.ndim == 3:
        x = np.repeat(x[None], cfg.temporal_patch_size, axis=0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise MediaError(f"expected (H, W, 3) or (T, H, W, 3) pixels, got shape {x.shape}")
    if -x.shape[0] % cfg.temporal_patch_size:
        pad = -x.shape[0] % cfg.temporal_patch_size
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    t, hgt, wid, _ = x.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if hgt % (p * m) or wid % (p * m):
        raise MediaError(f"pixels of {wid}x{hgt} are not multiples of {p * m}; resize with prepare_image first")
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    norm = ((x.astype(np.float32) * np.float32(1 / 255) - mean) / std).transpose(0, 3, 1, 2)  # T C H W
    gt, gh, gw = t // tp, hgt // p, wid // p
    v = norm.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    v = v.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, bh, bw, mh, mw, C, tp, ph, pw
    return np.ascontiguousarray(v.reshape(gt * gh * gw, 3 * tp * p * p)), (gt, gh, gw)
