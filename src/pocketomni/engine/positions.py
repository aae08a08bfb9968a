"""Prompt token layout and TMRoPE position ids for Qwen2.5-Omni (numpy only).

A prompt is a list of segments: text token ids, images, audio clips and videos (with or
without their sound track). :func:`build_prompt` expands each media segment into the
placeholder tokens the reference processor produces and computes the 3 x N (t, h, w)
positions the reference ``get_rope_index`` computes for the same ids.

Rules (reference semantics, reproduced exactly):

* Every block starts at "the maximum of the previous block + 1" (the previous block, not the
  whole prompt), and text is t = h = w = running index.
* Image: ``<|vision_bos|> <|IMAGE|>*n <|vision_eos|>``; the image tokens get
  t = start, h = start + row, w = start + col on the merged grid.
* Audio: ``<|audio_bos|> <|AUDIO|>*n <|audio_eos|>``, all sequential.
* Video: ``<|vision_bos|> <|VIDEO|>*n <|vision_eos|>``; temporal group g gets
  t = start + trunc(g * seconds_per_grid * 25) (computed in float32 like the reference).
* Video with its sound: ``<|vision_bos|><|audio_bos|>`` (one shared position), then per
  2-second chunk the chunk's video tokens followed by the chunk's audio tokens (video and
  audio both start at the same position), then ``<|audio_eos|><|vision_eos|>`` (one shared
  position).

Decoding continues at the maximum position of the whole prompt + 1 (``decode_start``); a new
turn appended to the KV cache starts from the maximum so far + 1 (pass ``start_pos``).
The reference only defines ``use_audio_in_video`` per prompt: mixing videos with and without
sound in one prompt follows the per-video rules above (the reference cannot express it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KIND_AUDIO",
    "KIND_IMAGE",
    "KIND_TEXT",
    "KIND_VIDEO",
    "AudioSegment",
    "ImageSegment",
    "PromptLayout",
    "RopeConfig",
    "Segment",
    "TextSegment",
    "TokenIds",
    "VideoSegment",
    "audio_tokens_from_frames",
    "audio_tokens_from_samples",
    "build_prompt",
    "llama_pos_array",
    "llama_rows",
    "position_order_is_causal",
    "text_positions",
]

# Token kinds in PromptLayout.kinds: which embedding source fills each slot.
KIND_TEXT, KIND_IMAGE, KIND_AUDIO, KIND_VIDEO = 0, 1, 2, 3


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of the Qwen2.5-Omni vocabulary."""

    audio: int = 151646  # <|AUDIO|>
    audio_bos: int = 151647  # <|audio_bos|>
    audio_eos: int = 151648  # <|audio_eos|>
    vision_bos: int = 151652  # <|vision_bos|>
    vision_eos: int = 151653  # <|vision_eos|>
    image: int = 151655  # <|IMAGE|>
    video: int = 151656  # <|VIDEO|>


@dataclass(frozen=True)
class RopeConfig:
    """Model constants that shape the layout (defaults are Qwen2.5-Omni 3B/7B's)."""

    spatial_merge_size: int = 2
    position_id_per_seconds: int = 25
    seconds_per_chunk: float = 2.0
    tokens: TokenIds = field(default_factory=TokenIds)


@dataclass(frozen=True)
class TextSegment:
    """Already tokenized text (may contain ordinary special tokens such as <|im_start|>)."""

    ids: Sequence[int]


@dataclass(frozen=True)
class ImageSegment:
    """An image by its patch grid (t, h, w) before merging, as the processor's image_grid_thw."""

    grid_thw: tuple[int, int, int]


@dataclass(frozen=True)
class AudioSegment:
    """An audio clip by its number of LLM tokens (see audio_tokens_from_samples)."""

    n_tokens: int


@dataclass(frozen=True)
class VideoSegment:
    """A video by its patch grid (t, h, w) before merging.

    seconds_per_grid is temporal_patch_size / sampled fps (1.0 at 2 fps). audio_tokens is the
    token count of its sound track, or None for a silent video / use_audio_in_video=False.
    """

    grid_thw: tuple[int, int, int]
    seconds_per_grid: float = 1.0
    audio_tokens: int | None = None


Segment = TextSegment | ImageSegment | AudioSegment | VideoSegment


@dataclass
class PromptLayout:
    """Expanded ids, their (3, N) positions and kinds, and where decoding continues."""

    input_ids: np.ndarray  # (N,) int64
    positions: np.ndarray  # (3, N) int64, rows t, h, w
    kinds: np.ndarray  # (N,) uint8, KIND_* per token
    decode_start: int  # max position + 1: first generated token's position
    next_block_start: int  # where the reference would start a block appended to these ids

    @property
    def rope_delta(self) -> int:
        """Reference rope delta for a prompt built at start_pos=0: decode_start - N."""
        return self.decode_start - int(self.input_ids.shape[0])

    def llama_rows(self) -> np.ndarray:
        """(4, N) int32 rows t, h, w, 0 as llama.cpp's M-RoPE batch wants them."""
        return llama_rows(self.positions)

    def part(self, a: int, b: int) -> PromptLayout:
        """Rows a..b as a layout of their own (decoding would continue after their largest t)."""
        return PromptLayout(self.input_ids[a:b], self.positions[:, a:b], self.kinds[a:b],
                            int(self.positions[0, a:b].max()) + 1 if b > a else self.decode_start,
                            self.next_block_start)


def audio_tokens_from_frames(n_frames: int) -> int:
    """LLM tokens of an audio clip with n_frames mel frames (the encoder's two stride-2 steps)."""
    if n_frames <= 0:
        return 0
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def audio_tokens_from_samples(n_samples: int, hop_length: int = 160, max_frames: int = 30000) -> int:
    """LLM tokens of n_samples of 16 kHz audio (mel frames = ceil(n / hop), capped at 300 s)."""
    frames = min(-(-int(n_samples) // hop_length), max_frames)
    return audio_tokens_from_frames(frames)


def _merged_grid(grid_thw: Sequence[int], merge: int) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in grid_thw)
    if t < 1 or h < merge or w < merge or h % merge or w % merge:
        raise ValueError(f"grid {tuple(grid_thw)} is not a valid (t, h, w) patch grid for merge size {merge}")
    return t, h // merge, w // merge


def _vision_block(start: int, t_index: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """(3, T*gh*gw) positions of a merged vision grid whose first token sits at start."""
    n_t = t_index.shape[0]
    t = np.repeat(t_index.astype(np.int64), gh * gw)
    h = np.tile(np.repeat(np.arange(gh, dtype=np.int64), gw), n_t)
    w = np.tile(np.arange(gw, dtype=np.int64), n_t * gh)
    return np.stack([t, h, w]) + start


def _video_t_index(grid_t: int, seconds_per_grid: float, per_second: int) -> np.ndarray:
    """Temporal positions per frame group, truncated from float32 products like the reference."""
    spg = np.float32(seconds_per_grid)
    prod = (np.arange(grid_t).astype(np.float32) * spg) * np.float32(per_second)
    return np.trunc(prod).astype(np.int64)


def _chunk_bounds(values: np.ndarray, per_chunk: int) -> list[tuple[int, int]]:
    """Split non-decreasing values into runs; a new run starts at the first value >= k * per_chunk.

    k advances by one per split, exactly as the reference's chunk iterator does, so a jump over
    several chunk widths still makes one split.
    """
    bounds = []
    start, k, i, n = 0, 1, 0, values.shape[0]
    while True:
        j = max(i, int(np.searchsorted(values, k * per_chunk, side="left")))
        if j >= n:
            break
        bounds.append((start, j))
        start, k, i = j, k + 1, j + 1
    bounds.append((start, n))
    return bounds


def _interleave_counts(video_bounds, audio_bounds) -> list[tuple[int, int]]:
    """(kind, count) runs: chunk j's video tokens then chunk j's audio tokens."""
    runs = []
    for j in range(max(len(video_bounds), len(audio_bounds))):
        if j < len(video_bounds):
            runs.append((KIND_VIDEO, video_bounds[j][1] - video_bounds[j][0]))
        if j < len(audio_bounds):
            runs.append((KIND_AUDIO, audio_bounds[j][1] - audio_bounds[j][0]))
    return runs


class _Builder:
    def __init__(self, start_pos: int):
        self.ids: list[np.ndarray] = []
        self.kinds: list[np.ndarray] = []
        self.pos: list[np.ndarray] = []
        self.next = int(start_pos)  # reference: previous block's max + 1

    def tokens(self, token: int, count: int, kind: int) -> None:
        self.ids.append(np.full(count, token, dtype=np.int64))
        self.kinds.append(np.full(count, kind, dtype=np.uint8))

    def block(self, positions: np.ndarray) -> None:
        if positions.shape[1] == 0:
            return
        self.pos.append(positions)
        self.next = int(positions.max()) + 1

    def sequential(self, count: int) -> None:
        self.block(np.broadcast_to(np.arange(count, dtype=np.int64) + self.next, (3, count)))


def build_prompt(segments: Sequence[Segment], *, start_pos: int = 0, config: RopeConfig | None = None) -> PromptLayout:
    """Expand segments into token ids, kinds and TMRoPE positions.

    start_pos is the position of the first block: 0 for a fresh prompt, or the previous
    turn's maximum position + 1 when appending to a conversation already in the KV cache.
    """
    cfg = config or RopeConfig()
    tok = cfg.tokens
    merge = cfg.spatial_merge_size
    per_chunk = int(cfg.position_id_per_seconds * cfg.seconds_per_chunk)  # int() like the reference
    b = _Builder(start_pos)
    for seg in segments:
        if isinstance(seg, TextSegment):
            ids = np.asarray(list(seg.ids), dtype=np.int64)
            if ids.size:
                b.ids.append(ids)
                b.kinds.append(np.zeros(ids.size, dtype=np.uint8))
                b.sequential(ids.size)
        elif isinstance(seg, AudioSegment):
            n = int(seg.n_tokens)
            if n < 1:
                raise ValueError("an audio segment needs at least one token")
            b.tokens(tok.audio_bos, 1, KIND_TEXT)
            b.tokens(tok.audio, n, KIND_AUDIO)
            b.tokens(tok.audio_eos, 1, KIND_TEXT)
            for count in (1, n, 1):
                b.sequential(count)
        elif isinstance(seg, ImageSegment):
            gt, gh, gw = _merged_grid(seg.grid_thw, merge)
            b.tokens(tok.vision_bos, 1, KIND_TEXT)
            b.tokens(tok.image, gt * gh * gw, KIND_IMAGE)
            b.tokens(tok.vision_eos, 1, KIND_TEXT)
            b.sequential(1)
            t_index = np.arange(gt, dtype=np.int64) * cfg.position_id_per_seconds
            b.block(_vision_block(b.next, t_index, gh, gw))
            b.sequential(1)
        elif isinstance(seg, VideoSegment):
            gt, gh, gw = _merged_grid(seg.grid_thw, merge)
            t_index = _video_t_index(gt, seg.seconds_per_grid, cfg.position_id_per_seconds)
            if seg.audio_tokens is None:
                b.tokens(tok.vision_bos, 1, KIND_TEXT)
                b.tokens(tok.video, gt * gh * gw, KIND_VIDEO)
                b.tokens(tok.vision_eos, 1, KIND_TEXT)
                b.sequential(1)
                b.block(_vision_block(b.next, t_index, gh, gw))
                b.sequential(1)
            else:
                _video_with_audio(b, seg, (gt, gh, gw), t_index, per_chunk, cfg)
        else:
            raise TypeError(f"unknown prompt segment {type(seg).__name__}")
    if not b.ids:
        raise ValueError("the prompt is empty")
    positions = np.concatenate(b.pos, axis=1) if b.pos else np.zeros((3, 0), np.int64)
    decode_start = int(positions.max()) + 1
    return PromptLayout(
        input_ids=np.concatenate(b.ids),
        positions=np.ascontiguousarray(positions),
        kinds=np.concatenate(b.kinds),
        decode_start=decode_start,
        next_block_start=b.next,
    )


def _video_with_audio(b: _Builder, seg: VideoSegment, grid, t_index, per_chunk: int, cfg: RopeConfig) -> None:
    tok = cfg.tokens
    gt, gh, gw = grid
    n_audio = int(seg.audio_tokens)
    if n_audio < 1:
        raise ValueError("a video's sound track needs at least one audio token (or pass audio_tokens=None)")
    per_frame = gh * gw
    # Token order follows the processor: chunking of float64 times (seconds_per_grid * 25 * g).
    video_times = np.repeat(np.arange(gt) * float(seg.seconds_per_grid) * cfg.position_id_per_seconds, per_frame)
    layout = _interleave_counts(
        _chunk_bounds(video_times, per_chunk), _chunk_bounds(np.arange(n_audio, dtype=np.float64), per_chunk)
    )
    b.tokens(tok.vision_bos, 1, KIND_TEXT)
    b.tokens(tok.audio_bos, 1, KIND_TEXT)
    for kind, count in layout:
        b.tokens(tok.video if kind == KIND_VIDEO else tok.audio, count, kind)
    b.tokens(tok.audio_eos, 1, KIND_TEXT)
    b.tokens(tok.vision_eos, 1, KIND_TEXT)
    # Positions follow the model: chunking of the truncated integer t offsets.
    b.sequential(1)
    b.pos.append(b.pos[-1])  # the two bos tokens share one position
    st = b.next
    video_pos = _vision_block(st, t_index, gh, gw)
    audio_pos = np.broadcast_to(np.arange(n_audio, dtype=np.int64) + st, (3, n_audio))
    v_bounds = _chunk_bounds(video_pos[0] - st, per_chunk)
    a_bounds = _chunk_bounds(audio_pos[0] - st, per_chunk)
    for j in range(max(len(v_bounds), len(a_bounds))):
        if j < len(v_bounds):
            b.block(video_pos[:, v_bounds[j][0] : v_bounds[j][1]])
        if j < len(a_bounds):
            b.block(audio_pos[:, a_bounds[j][0] : a_bounds[j][1]])
    b.sequential(1)
    b.pos.append(b.pos[-1])  # the two eos tokens share one position


def text_positions(start: int, count: int) -> np.ndarray:
    """(3, count) positions of text or generated tokens starting at start."""
    return np.broadcast_to(np.arange(count, dtype=np.int64) + int(start), (3, count)).copy()


def llama_rows(positions: np.ndarray) -> np.ndarray:
    """(4, N) int32 rows t, h, w, 0: the per-token layout of llama.cpp's M-RoPE embedding batch."""
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[0] != 3:
        raise ValueError(f"expected (3, N) positions, got shape {pos.shape}")
    if pos.size and (pos.max() > np.iinfo(np.int32).max or pos.min() < 0):
        raise ValueError("positions do not fit llama_pos (int32, non-negative)")
    out = np.zeros((4, pos.shape[1]), dtype=np.int32)
    out[:3] = pos
    return out


def llama_pos_array(positions: np.ndarray) -> np.ndarray:
    """Flat int32 array for llama_batch.pos: section-major (all t, then all h, all w, all 0)."""
    return np.ascontiguousarray(llama_rows(positions)).reshape(-1)


def position_order_is_causal(positions: np.ndarray) -> bool:
    """True when (t, h, w) strictly increases lexicographically along the sequence.

    llama.cpp's KV-cache mask for M-RoPE models orders tokens by position (row t, ties broken
    by h then w) instead of by sequence index. It equals the reference's causal mask only
    when this returns True; video with its sound (interleaved chunks, shared bos/eos
    positions) does not satisfy it.
    """
    pos = np.asarray(positions, dtype=np.int64)
    if pos.shape[1] < 2:
        return True
    d = np.diff(pos, axis=1)
    t_up, t_eq = d[0] > 0, d[0] == 0
    h_up, h_eq = d[1] > 0, d[1] == 0
    return bool(np.all(t_up | (t_eq & (h_up | (h_eq & (d[2] > 0))))))
