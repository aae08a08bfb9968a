"""MtmdContext: the multimodal projector (mmproj GGUF) through libmtmd.

We use mtmd only as an encoder: an image (RGB uint8 HxWx3) or a clip (float32 mono at
`audio_sample_rate`) becomes embedding rows (n_tokens, n_embd) that the caller places in its own
batch with its own (TMRoPE) positions. `eval_stock` keeps mtmd's own prompt path
(`mtmd_helper_eval_chunks`) for baseline comparisons.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as L
import llama_cpp.mtmd_cpp as M
import numpy as np

from pocketomni.backend import _log
from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel, default_threads
from pocketomni.errors import MediaError, ModelFileError, PocketOmniError
from pocketomni.gguf_file import GGUFFile

if TYPE_CHECKING:
    from typing_extensions import Self

MAX_IMAGE_SIDE = 16384
MIN_AUDIO_SAMPLES = 2  # libmtmd aborts on a one-sample clip


@dataclass
class MediaEmbedding:
    """Encoder output for one image or audio clip."""

    kind: str  # "image", "audio" or "video" (frame pairs)
    embd: np.ndarray  # float32 (n_tokens, n_embd)
    grid: tuple[int, int] | None  # image: (nx, ny) tokens after merging (width, height); audio: None
    n_pos: int  # positions mtmd's own path advances by (image: max(nx, ny); audio: n_tokens)
    chunk_tokens: list[int]  # tokens per mtmd chunk (audio: one per 30 s window)

    @property
    def n_tokens(self) -> int:
        return int(self.embd.shape[0])

    def mrope_positions(self, p0: int) -> np.ndarray:
        """(4, n) positions the way stock mtmd lays them out from start position p0:
        image t=p0, h=p0+row, w=p0+col; audio sequential."""
        n = self.n_tokens
        if self.kind == "image" and self.grid is not None:
            nx, _ = self.grid
            i = np.arange(n)
            return np.stack([np.full(n, p0), p0 + i // nx, p0 + i % nx, np.zeros(n, int)]).astype(np.int32)
        t = np.arange(p0, p0 + n)
        return np.stack([t, t, t, np.zeros(n, int)]).astype(np.int32)


def _check_image(rgb: Any) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise MediaError(f"image must be an RGB uint8 array of shape (H, W, 3), got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise MediaError(f"image is {w}x{h}; each side must be between 1 and {MAX_IMAGE_SIDE} pixels. Resize it first.")
    return np.ascontiguousarray(a)


def _check_audio(pcm: Any) -> np.ndarray:
    a = np.asarray(pcm)
    if a.ndim != 1 or a.dtype.kind != "f":
        raise MediaError(f"audio must be a 1-D float array (mono PCM), got {a.dtype} {a.shape}")
    if a.size < MIN_AUDIO_SAMPLES:
        raise MediaError("audio clip is empty or too short; record at least a few milliseconds")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise MediaError("audio contains NaN or infinite samples")
    return a


class _Chunks:
    """Owns an mtmd_input_chunks list; frees it on exit."""

    def __init__(self) -> None:
        self.ptr = M.mtmd_input_chunks_init()
        if not self.ptr:
            raise PocketOmniError("mtmd_input_chunks_init failed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        M.mtmd_input_chunks_free(self.ptr)

    def __iter__(self) -> Any:
        for i in range(int(M.mtmd_input_chunks_size(self.ptr))):
            yield M.mtmd_input_chunks_get(self.ptr, i)


class _Bitmaps:
    """Owns mtmd bitmaps created from numpy media (None data = placeholder for counting)."""

    def __init__(self) -> None:
        self.ptrs: list[int] = []

    def image(self, rgb: np.ndarray | None, w: int = 0, h: int = 0) -> int:
        if rgb is not None:
            h, w = rgb.shape[:2]
        data = None if rgb is None else rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return self._keep(M.mtmd_bitmap_init(w, h, data))

    def audio(self, pcm: np.ndarray | None, n: int = 0) -> int:
        if pcm is not None:
            n = pcm.size
        data = None if pcm is None else pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        return self._keep(M.mtmd_bitmap_init_from_audio(n, data))

    def _keep(self, ptr: Any) -> int:
        if not ptr:
            raise PocketOmniError("mtmd could not allocate a bitmap")
        self.ptrs.append(ptr)
        return ptr

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.ptrs:
            M.mtmd_bitmap_free(p)


class MtmdContext:
    """An mmproj loaded with libmtmd for a given text model. Close it (or use `with`) when done."""

    def __init__(
        self,
        mmproj_path: str | os.PathLike[str],
        text_model: LlamaModel,
        *,
        n_threads: int | None = None,
        use_gpu: bool = False,
        warmup: bool = False,
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
    ) -> None:
        self.gguf = GGUFFile.open(mmproj_path)
        if self.gguf.arch != "clip":
            raise ModelFileError(
                f"{mmproj_path} is not a multimodal projector (architecture {self.gguf.arch!r}, expected 'clip')."
            )
        self.model = text_model
        self.lock = text_model.lock
        _log.install_mtmd(M)
        p = M.mtmd_context_params_default()
        p.use_gpu = bool(use_gpu)
        p.print_timings = False
        p.n_threads = int(n_threads or text_model.n_threads or default_threads())
        p.warmup = bool(warmup)
        if image_min_tokens is not None:
            p.image_min_tokens = int(image_min_tokens)
        if image_max_tokens is not None:
            p.image_max_tokens = int(image_max_tokens)
        with self.lock:
            mark = _log.mark()
            ptr = M.mtmd_init_from_file(str(mmproj_path).encode("utf-8"), text_model.ptr, p)
            if not ptr:
                raise ModelFileError(
                    f"libmtmd could not load {mmproj_path}: {_log.recent_errors(mark)}. "
                    "Check that this mmproj belongs to the loaded thinker (same n_embd) and is not corrupt."
                )
            self._ptr: Any = ptr
            self._finalizer = weakref.finalize(self, M.mtmd_free, ptr)
            self._finalizer.atexit = False  # the model's exit hook frees it (backend/lifetime.py)
            text_model._register(self)
        self.supports_vision = bool(M.mtmd_support_vision(ptr))
        self.supports_audio = bool(M.mtmd_support_audio(ptr))
        self.audio_sample_rate = int(M.mtmd_get_audio_sample_rate(ptr)) if self.supports_audio else None
        self.uses_mrope = bool(M.mtmd_decode_use_mrope(ptr))
        marker = M.mtmd_get_marker(ptr)
        self.marker = marker.decode("utf-8") if marker else M.mtmd_default_marker().decode("utf-8")

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def ptr(self) -> Any:
        if self._ptr is None:
            raise PocketOmniError("this multimodal projector is closed")
        return self._ptr

    def keep_at_exit(self) -> None:
        """Process exit with a native call still running: never free this (backend/lifetime.py)."""
        self._finalizer.detach()

    def close(self) -> None:
        """Free the projector (idempotent)."""
        with self.lock:
            if self._ptr is not None:
                self._finalizer()
                self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ tokenizing media

    def _tokenize_media(self, chunks: _Chunks, bitmap: int) -> None:
        part = M.mtmd_input_part()
        part.bitmap = bitmap
        parts = (ctypes.POINTER(M.mtmd_input_part) * 1)(ctypes.pointer(part))
        mark = _log.mark()
        rc = int(M.mtmd_tokenize_from_parts(self.ptr, chunks.ptr, parts, 1, False))
        if rc != 0:
            raise MediaError(f"mtmd could not preprocess the media (code {rc}): {_log.recent_errors(mark)}")

    @staticmethod
    def _media_chunks(chunks: _Chunks) -> list[Any]:
        return [c for c in chunks if int(M.mtmd_input_chunk_get_type(c)) != M.MTMD_INPUT_CHUNK_TYPE_TEXT]

    @staticmethod
    def _grid(chunk: Any) -> tuple[int, int] | None:
        img = M.mtmd_input_chunk_get_tokens_image(chunk)
        if not img:
            return None
        n = int(M.mtmd_image_tokens_get_n_tokens(img))
        last = M.mtmd_image_tokens_get_decoder_pos(img, 0, n - 1)
        return int(last.x) + 1, int(last.y) + 1

    def _need(self, vision: bool) -> None:
        if vision and not self.supports_vision:
            raise MediaError("this mmproj has no vision encoder; images are not supported by this model")
        if not vision and not self.supports_audio:
            raise MediaError("this mmproj has no audio encoder; audio input is not supported by this model")

    def _encode(self, kind: str, bitmap_fn: Any) -> MediaEmbedding:
        n_embd = self.model.n_embd_inp
        with self.lock, _Bitmaps() as bm, _Chunks() as chunks:
            self._tokenize_media(chunks, bitmap_fn(bm))
            media = self._media_chunks(chunks)
            if not media:
                raise MediaError(f"mtmd produced no {kind} tokens for this input")
            parts, sizes, n_pos = [], [], 0
            for c in media:
                n = int(M.mtmd_input_chunk_get_n_tokens(c))
                mark = _log.mark()
                if int(M.mtmd_encode_chunk(self.ptr, c)) != 0:
                    raise MediaError(f"mtmd failed to encode the {kind}: {_log.recent_errors(mark)}")
                out = M.mtmd_get_output_embd(self.ptr)
                if not out:
                    raise PocketOmniError("mtmd returned no embeddings")
                parts.append(np.ctypeslib.as_array(out, shape=(n * n_embd,)).reshape(n, n_embd).copy())
                sizes.append(n)
                n_pos += int(M.mtmd_input_chunk_get_n_pos(c))
            grid = self._grid(media[0]) if kind == "image" else None
        return MediaEmbedding(kind, np.concatenate(parts), grid, n_pos, sizes)

    def encode_image(self, rgb: np.ndarray) -> MediaEmbedding:
        """Encode an RGB uint8 (H, W, 3) image. mtmd resizes it by the mmproj's own pixel limits."""
        self._need(True)
        a = _check_image(rgb)
        return self._encode("image", lambda bm: bm.image(a))

    def encode_audio(self, pcm: np.ndarray) -> MediaEmbedding:
        """Encode mono float32 PCM at `audio_sample_rate` (mtmd's own windowing, see design.md 8)."""
        self._need(False)
        a = _check_audio(pcm)
        return self._encode("audio", lambda bm: bm.audio(a))

    def encode_video_frames(self, frames: np.ndarray) -> MediaEmbedding:
        """Encode video frames (T, H, W, 3) uint8, T even, in temporal pairs (Qwen-VL temporal merge).

        Each consecutive pair (2i, 2i+1) becomes one group of tokens, like one temporal patch of the
        reference's video processor; the rows of all groups are concatenated in order. grid is the
        (nx, ny) token grid of one group. Frames must all have the same size (mtmd resizes each one
        by the mmproj's pixel limits exactly like an image).
        """
        self._need(True)
        a = np.asarray(frames)
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
            raise MediaError(f"video frames must be an RGB uint8 array (T, H, W, 3), got {a.dtype} {a.shape}")
        if a.shape[0] < 2 or a.shape[0] % 2:
            raise MediaError(f"video frames come in pairs (one temporal patch = 2 frames); got {a.shape[0]}")
        _check_image(a[0])
        n_embd = self.model.n_embd_inp
        with self.lock, _Bitmaps() as bm, _Chunks() as chunks:
            keep = [np.ascontiguousarray(f) for f in a]
            parts = []
            for f in keep:
                ptr = bm.image(f)
                M.mtmd_bitmap_set_mergeable(ptr, True)
                part = M.mtmd_input_part()
                part.bitmap = ptr
                parts.append(part)
            arr = (ctypes.POINTER(M.mtmd_input_part) * len(parts))(*[ctypes.pointer(p) for p in parts])
            mark = _log.mark()
            rc = int(M.mtmd_tokenize_from_parts(self.ptr, chunks.ptr, arr, len(parts), False))
            if rc != 0:
                raise MediaError(f"mtmd could not preprocess the video frames (code {rc}): {_log.recent_errors(mark)}")
            media = self._media_chunks(chunks)
            if len(media) != a.shape[0] // 2:
                raise PocketOmniError(
                    f"mtmd made {len(media)} groups of {a.shape[0]} frames instead of {a.shape[0] // 2}; "
                    "this projector does not merge frame pairs (not a Qwen-VL style vision tower)")
            out, sizes = [], []
            for c in media:
                n = int(M.mtmd_input_chunk_get_n_tokens(c))
                mark = _log.mark()
                if int(M.mtmd_encode_chunk(self.ptr, c)) != 0:
                    raise MediaError(f"mtmd failed to encode video frames: {_log.recent_errors(mark)}")
                ptr = M.mtmd_get_output_embd(self.ptr)
                if not ptr:
                    raise PocketOmniError("mtmd returned no embeddings")
                out.append(np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy())
                sizes.append(n)
            grid = self._grid(media[0])
        return MediaEmbedding("video", np.concatenate(out), grid, 0, sizes)

    def count_image_tokens(self, width: int, height: int) -> tuple[int, tuple[int, int] | None]:
        """(n_tokens, (nx, ny)) mtmd would produce for an image of this size, without encoding it."""
        self._need(True)
        if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
            raise MediaError(f"image sides must be between 1 and {MAX_IMAGE_SIDE} pixels")
        with self.lock, _Bitmaps() as bm, _Chunks() as chunks:
            self._tokenize_media(chunks, bm.image(None, int(width), int(height)))
            media = self._media_chunks(chunks)
            return sum(int(M.mtmd_input_chunk_get_n_tokens(c)) for c in media), self._grid(media[0])

    def count_audio_tokens(self, n_samples: int) -> int:
        """Tokens mtmd would produce for a clip of n_samples, without encoding it."""
        self._need(False)
        if n_samples < MIN_AUDIO_SAMPLES:
            raise MediaError("audio clip is empty or too short")
        with self.lock, _Bitmaps() as bm, _Chunks() as chunks:
            self._tokenize_media(chunks, bm.audio(None, int(n_samples)))
            return sum(int(M.mtmd_input_chunk_get_n_tokens(c)) for c in self._media_chunks(chunks))

    # ------------------------------------------------------------------ stock path (baselines)

    def _tokenize_stock(self, prompt: str, media: Sequence[np.ndarray], bm: _Bitmaps, chunks: _Chunks,
                        add_special: bool) -> None:
        if prompt.count(self.marker) != len(media):
            raise ValueError(f"prompt has {prompt.count(self.marker)} markers for {len(media)} media items")
        ptrs = []
        for m in media:
            a = np.asarray(m)
            ptrs.append(bm.image(_check_image(a)) if a.ndim == 3 else bm.audio(_check_audio(a)))
        arr = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        text = prompt.encode("utf-8")
        inp = M.mtmd_input_text(text, len(text), add_special, True)
        mark = _log.mark()
        rc = int(M.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(inp), arr, len(ptrs)))
        if rc != 0:
            raise MediaError(f"mtmd_tokenize failed (code {rc}): {_log.recent_errors(mark)}")

    def stock_plan(self, prompt: str, media: Sequence[np.ndarray], *, add_special: bool = False) -> list[tuple[str, Any]]:
        """What `eval_stock` would decode, without decoding: a list of ("text", token ids) and
        ("image" | "audio", n_tokens) items in prompt order (mtmd adds its own begin/end text)."""
        plan: list[tuple[str, Any]] = []
        with self.lock, _Bitmaps() as bm, _Chunks() as chunks:
            self._tokenize_stock(prompt, media, bm, chunks, add_special)
            for c in chunks:
                kind = int(M.mtmd_input_chunk_get_type(c))
                if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t(0)
                    toks = M.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                    plan.append(("text", [int(toks[i]) for i in range(n.value)]))
                else:
                    name = "image" if kind == M.MTMD_INPUT_CHUNK_TYPE_IMAGE else "audio"
                    plan.append((name, int(M.mtmd_input_chunk_get_n_tokens(c))))
        return plan

    def eval_stock(
        self,
        ctx: LlamaContext,
        prompt: str,
        media: Sequence[np.ndarray],
        *,
        n_past: int | None = None,
        seq_id: int = 0,
        add_special: bool = False,
        logits_last: bool = True,
    ) -> int:
        """Run mtmd's own prompt path: `prompt` holds one `self.marker` per item of `media`
        (RGB uint8 images or float32 audio). Returns the new n_past; the last logits are then in
        `ctx.output_logits()`. For baselines only: mtmd's positions and chunking, not the reference's."""
        if ctx.model is not self.model:
            raise ValueError("the context must belong to this projector's text model")
        seq = ctx._check_seq(seq_id)
        start = ctx.next_pos(seq) if n_past is None else int(n_past)
        with self.lock, _Bitmaps() as bm, _Chunks() as chunks:
            self._tokenize_stock(prompt, media, bm, chunks, add_special)
            new_past = L.llama_pos(start)
            mark = _log.mark()
            rc = int(M.mtmd_helper_eval_chunks(self.ptr, ctx.ptr, chunks.ptr, start, seq, ctx.n_batch,
                                               logits_last, ctypes.byref(new_past)))
            if rc != 0:
                raise PocketOmniError(f"mtmd_helper_eval_chunks failed (code {rc}): {_log.recent_errors(mark)}")
            ctx._note_external(seq, self._stock_positions(chunks, start))
        return int(new_past.value)

    def _stock_positions(self, chunks: _Chunks, p: int) -> np.ndarray:
        """(4, n) positions mtmd_helper_eval_chunks used, so the context's bookkeeping stays right."""
        cols = []
        for c in chunks:
            kind = int(M.mtmd_input_chunk_get_type(c))
            n = int(M.mtmd_input_chunk_get_n_tokens(c))
            if kind == M.MTMD_INPUT_CHUNK_TYPE_IMAGE and self.uses_mrope:
                g = self._grid(c)
                emb = MediaEmbedding("image", np.zeros((n, 0), np.float32), g, 0, [n])
                cols.append(emb.mrope_positions(p))
            else:
                t = np.arange(p, p + n)
                cols.append(np.stack([t, t, t, np.zeros(n, int)]))
            p += int(M.mtmd_input_chunk_get_n_pos(c))
        return np.concatenate(cols, axis=1).astype(np.int32) if cols else np.zeros((4, 0), np.int32)
