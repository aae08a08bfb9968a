"""Our expanded prompt (media placeholders) equals the reference processor's input_ids, real vocabulary.

Images and audio go through the real Qwen2_5OmniProcessor of the tiny fixture; videos through the
processor's own placeholder code (its video processor needs torchvision, absent here). Positions are
then checked against the reference get_rope_index on the processor's ids.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from omni_fixtures import build_checkpoint, load_processor

from pocketomni.engine.positions import (
    AudioSegment,
    ImageSegment,
    TextSegment,
    VideoSegment,
    audio_tokens_from_frames,
    build_prompt,
    text_positions,
)
from pocketomni.media.audio import prepare_audio
from pocketomni.media.image import prepare_image

torch.set_num_threads(1)

IMG, AUD, VID = "<|vision_bos|><|IMAGE|><|vision_eos|>", "<|audio_bos|><|AUDIO|><|audio_eos|>", \
    "<|vision_bos|><|VIDEO|><|vision_eos|>"


@pytest.fixture(scope="module")
def ckpt():
    return build_checkpoint("base")


@pytest.fixture(scope="module")
def proc(ckpt):
    return load_processor(ckpt)


@pytest.fixture(scope="module")
def thinker(ckpt):
    from transformers import AutoConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    cfg = AutoConfig.from_pretrained(str(ckpt), local_files_only=True).thinker_config
    return Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()


def _segments(proc, text: str, media: list) -> list:
    """Split rendered chat text at the media placeholders; tokenize the text pieces separately."""
    parts = re.split("(" + "|".join(re.escape(p) for p in (IMG, AUD, VID)) + ")", text)
    segs, it = [], iter(media)
    for part in parts:
        if part in (IMG, AUD, VID):
            segs.append(next(it))
        elif part:
            segs.append(TextSegment(proc.tokenizer.encode(part, add_special_tokens=False)))
    return segs


def _rope(thinker, ids, image_grid=None, video_grid=None, use_audio_in_video=False, audio_frames=None, spg=None):
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
    pos, _ = thinker.get_rope_index(
        ids,
        None if image_grid is None else torch.as_tensor(np.asarray(image_grid, dtype=np.int64)),
        None if video_grid is None else torch.as_tensor(np.asarray(video_grid, dtype=np.int64)),
        torch.ones_like(ids),
        use_audio_in_video,
        None if audio_frames is None else torch.as_tensor(np.asarray(audio_frames, dtype=np.int64)),
        None if spg is None else torch.tensor(spg, dtype=torch.float32),
    )
    return pos[:, 0].numpy()


def test_images_and_audio_match_processor(proc, thinker):
    rng = np.random.default_rng(0)
    from PIL import Image

    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((100, 150), (57, 300))]
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (48077, 16000 * 2 + 5)]
    conv = [{"role": "user", "content": [
        {"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "audio"},
        {"type": "text", "text": " and then"}, {"type": "image"}, {"type": "audio"},
        {"type": "text", "text": "What is it?"}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    ref = proc(text=text, images=imgs, audio=clips, return_tensors="np")

    pimgs = [prepare_image(im) for im in imgs]
    pauds = [prepare_audio((c, 16000)) for c in clips]
    np.testing.assert_array_equal(np.array([p.grid_thw for p in pimgs]), ref["image_grid_thw"])
    frames = ref["feature_attention_mask"].sum(-1)
    assert [a.n_tokens for a in pauds] == [audio_tokens_from_frames(int(f)) for f in frames]

    media = [ImageSegment(pimgs[0].grid_thw), AudioSegment(pauds[0].n_tokens),
             ImageSegment(pimgs[1].grid_thw), AudioSegment(pauds[1].n_tokens)]
    lay = build_prompt(_segments(proc, text, media))
    np.testing.assert_array_equal(lay.input_ids, ref["input_ids"][0])
    np.testing.assert_array_equal(
        lay.positions, _rope(thinker, ref["input_ids"][0], ref["image_grid_thw"], audio_frames=frames))


def test_audio_only_matches_processor(proc, thinker):
    clip = np.sin(np.arange(16000 * 3) * 0.05).astype(np.float32)
    conv = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    ref = proc(text=text, audio=[clip], return_tensors="np")
    lay = build_prompt(_segments(proc, text, [AudioSegment(prepare_audio((clip, 16000)).n_tokens)]))
    np.testing.assert_array_equal(lay.input_ids, ref["input_ids"][0])
    frames = ref["feature_attention_mask"].sum(-1)
    np.testing.assert_array_equal(lay.positions, _rope(thinker, ref["input_ids"][0], audio_frames=frames))


def _processor_video_text(proc, text, grid, spg, audio_tokens):
    """Expand the video placeholder with the processor's own replacement code."""
    proc.video_processor = SimpleNamespace(merge_size=2, temporal_patch_size=2)
    try:
        vids = {"video_grid_thw": [np.array(grid)], "video_second_per_grid": [spg]}
        kw = {"position_id_per_seconds": 25, "seconds_per_chunk": 2.0}
        if audio_tokens is None:
            rep = proc.replace_video_token(vids, 0, load_audio_from_video=False, **kw)
        else:
            rep = proc.replace_video_token(vids, 0, processed_audio={"num_audio_tokens": [audio_tokens]},
                                           video_to_audio_indices=[0], load_audio_from_video=True, **kw)
    finally:
        proc.video_processor = None
    return text.replace("<|VIDEO|>", rep, 1)


@pytest.mark.parametrize(
    "grid, spg, frames",
    [
        ((6, 4, 6), 1.0, 600),  # 6 s, 3 chunks
        ((6, 4, 6), 1.0, None),  # same video, sound dropped
        ((5, 2, 4), 1.0, 730),  # more audio chunks than video chunks
        ((8, 2, 2), 1.0, 300),  # more video chunks than audio chunks
        ((7, 4, 4), 2 / (14 / 182 * 25), 700),  # non-integer seconds per grid
        ((4, 2, 2), 4.0, 1600),  # 0.5 fps
    ],
)
def test_video_matches_processor_expansion(proc, thinker, grid, spg, frames):
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    n_audio = None if frames is None else audio_tokens_from_frames(frames)
    expanded = _processor_video_text(proc, text, grid, spg, n_audio)
    ref_ids = np.asarray(proc.tokenizer.encode(expanded, add_special_tokens=False))
    lay = build_prompt(_segments(proc, text, [VideoSegment(grid, spg, n_audio)]))
    np.testing.assert_array_equal(lay.input_ids, ref_ids)
    ref_pos = _rope(thinker, ref_ids, video_grid=[grid], use_audio_in_video=frames is not None,
                    audio_frames=None if frames is None else [frames], spg=[spg])
    np.testing.assert_array_equal(lay.positions, ref_pos)


def test_two_turn_chat_continues_from_previous_max(proc, thinker):
    from PIL import Image

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (64, 90, 3), dtype=np.uint8))
    clip = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    turn1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    reply = "A noisy square."
    turn2 = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "And this?"}]}]
    full = turn1 + [{"role": "assistant", "content": reply}] + turn2
    text1 = proc.apply_chat_template(turn1, add_generation_prompt=True, tokenize=False)
    text_full = proc.apply_chat_template(full, add_generation_prompt=True, tokenize=False)
    assert text_full.startswith(text1)
    ref = proc(text=text_full, images=[img], audio=[clip], return_tensors="np")

    pimg, paud = prepare_image(img), prepare_audio((clip, 16000))
    lay1 = build_prompt(_segments(proc, text1, [ImageSegment(pimg.grid_thw)]))
    gen = proc.tokenizer.encode(reply + "<|im_end|>", add_special_tokens=False)  # decoded tokens
    rest = text_full[len(text1) + len(reply) + len("<|im_end|>"):]
    lay2 = build_prompt(_segments(proc, rest, [AudioSegment(paud.n_tokens)]),
                        start_pos=lay1.decode_start + len(gen))
    ids = np.concatenate([lay1.input_ids, gen, lay2.input_ids])
    np.testing.assert_array_equal(ids, ref["input_ids"][0])
    ours = np.concatenate([lay1.positions, text_positions(lay1.decode_start, len(gen)), lay2.positions], axis=1)
    frames = ref["feature_attention_mask"].sum(-1)
    np.testing.assert_array_equal(ours, _rope(thinker, ids, ref["image_grid_thw"], audio_frames=frames))
