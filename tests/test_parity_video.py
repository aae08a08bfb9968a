"""Video parity (issue 5): frames through mtmd in temporal pairs, the sound track through our exact audio
encoder, interleaved per 2 s chunk with TMRoPE positions and decoded in sequence order
(pocketomni.engine.video_limits), against transformers with use_audio_in_video=True (and without sound).

The reference's video processor needs torchvision (absent), so its inputs are built here in numpy the
way that processor lays them out: pixel_values_videos = rescaled, normalised frames cut into
(t, h/2, w/2, 2, 2) patch groups of C x 2 x 14 x 14, video_grid_thw, video_second_per_grid = 1.0 (2 fps);
the placeholder expansion is the processor's own code (test_positions_processor). The frames are
280 x 364 (multiples of 28, inside the reference's per-frame pixel budget), so neither side resamples.
Bounds: last logits within 1e-2 of max|logit| (RTOL), frame-pair embeddings within 2e-3 (the image
embedding bound of test_convert_mmproj).
"""

from __future__ import annotations

import functools

import llama_cpp  # noqa: F401  (hard dependency: fail loudly if missing)
import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from test_parity_media_stock import RTOL, SAMPLE_RATE, audio_clip, reference, relative_gap
from test_positions_processor import _processor_video_text

import pocketomni as po
from pocketomni.backend import LlamaModel, MtmdContext
from pocketomni.chat.conversation import media_part
from pocketomni.engine.encoders import MediaEncoders
from pocketomni.engine.model_folder import ModelFolder
from pocketomni.engine.positions import KIND_AUDIO, KIND_VIDEO, TextSegment, VideoSegment, build_prompt
from pocketomni.engine.thinker import ContextSettings, Thinker

torch.set_num_threads(1)

VISION_RTOL = 2e-3
FRAME_H, FRAME_W = 280, 364  # 10 x 13 merged tokens per temporal patch
SECONDS = 6  # 12 frames at 2 fps, 6 temporal patches, 150 audio tokens: 3 chunks
TEXT = "What happens in this video?"
TEXT2 = "And then?"
VIDEO_RUN = "<|vision_bos|><|VIDEO|><|vision_eos|>"
N_REPLY = 8


def video_frames(n: int = 2 * SECONDS, h: int = FRAME_H, w: int = FRAME_W, seed: int = 5) -> np.ndarray:
    """Deterministic frames: a drifting smooth pattern plus noise, so consecutive frames differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        base = np.stack([np.sin((xx + 9 * i) / 17.0), np.cos((yy - 5 * i) / 23.0), np.sin((xx + yy + 13 * i) / 31.0)], -1)
        out[i] = np.clip(127 + 90 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return out


def pixel_values_videos(frames: np.ndarray, mean, std, patch: int = 14, merge: int = 2, tp: int = 2) -> np.ndarray:
    """The Qwen2-VL video processor's flat patches (grid_t * grid_h * grid_w, C * tp * patch * patch)."""
    t, h, w, c = frames.shape
    x = (frames.astype(np.float32) / np.float32(255.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = x.transpose(0, 3, 1, 2)  # T, C, H, W
    gt, gh, gw = t // tp, h // patch, w // patch
    x = x.reshape(gt, tp, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * patch * patch))


def _prompt(proc, text: str) -> str:
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    return proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)


def reference_inputs(variant: str, frames: np.ndarray, wav: np.ndarray | None, text: str = TEXT) -> dict:
    """The thinker's keyword inputs for one user turn holding the video (and its sound) then text."""
    _, proc = reference(variant)
    ip = proc.image_processor
    grid = (frames.shape[0] // 2, frames.shape[1] // 14, frames.shape[2] // 14)
    kw: dict = {
        "pixel_values_videos": torch.from_numpy(pixel_values_videos(frames, ip.image_mean, ip.image_std)),
        "video_grid_thw": torch.tensor([grid]),
        "video_second_per_grid": torch.tensor([1.0]),
    }
    n_audio = None
    if wav is not None:
        enc = proc(text=["<|audio_bos|><|AUDIO|><|audio_eos|>"], audio=[wav], return_tensors="pt")
        kw["input_features"], kw["feature_attention_mask"] = enc["input_features"], enc["feature_attention_mask"]
        n_audio = int((enc["input_ids"][0] == 151646).sum())
        kw["use_audio_in_video"] = True
    expanded = _processor_video_text(proc, _prompt(proc, text), grid, 1.0, n_audio)
    ids = proc.tokenizer.encode(expanded, add_special_tokens=False)
    kw["input_ids"] = torch.tensor([ids])
    kw["attention_mask"] = torch.ones_like(kw["input_ids"])
    return kw


@functools.cache
def reference_logits(variant: str, with_audio: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    model, _ = reference(variant)
    kw = reference_inputs(variant, video_frames(), audio_clip(SECONDS) if with_audio else None)
    with torch.no_grad():
        logits = model.thinker(**kw).logits[0, -1].numpy().copy()
    return logits, tuple(kw["input_ids"][0].tolist())


# ---------------------------------------------------------------------- vision tower on frame pairs


def test_frame_pair_embeddings_match_reference(converted_tiny):
    frames = video_frames(4, 56, 84)
    model, proc = reference("base")
    ip = proc.image_processor
    with torch.no_grad():
        ref = model.thinker.model.get_video_features(
            torch.from_numpy(pixel_values_videos(frames, ip.image_mean, ip.image_std)), torch.tensor([[2, 4, 6]]))
    ref = torch.cat(ref.pooler_output).numpy()
    folder = converted_tiny("base")
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as lm, \
            MtmdContext(folder / "mmproj-f32.gguf", lm, n_threads=1, image_min_tokens=4, image_max_tokens=16384) as mtmd:
        emb = mtmd.encode_video_frames(frames)
        swapped = mtmd.encode_video_frames(frames[[1, 0, 3, 2]])
    assert emb.grid == (3, 2) and emb.chunk_tokens == [6, 6] and emb.embd.shape == ref.shape
    gap = relative_gap(emb.embd, ref)
    print(f"frame-pair embeddings gap {gap:.3g}, swapped frames {relative_gap(swapped.embd, ref):.3g}")
    assert gap <= VISION_RTOL
    assert relative_gap(swapped.embd, ref) > 10 * VISION_RTOL  # the pair's temporal order matters


# ---------------------------------------------------------------------- logits after the prompt


def _sdk_logits(folder_path, with_audio: bool) -> tuple[np.ndarray, np.ndarray, object]:
    """The chat's components: MediaEncoders.prepare/encode_all + Thinker session prefill."""
    folder = ModelFolder.open(folder_path)
    thinker = Thinker(folder.thinker, n_threads=1, settings=ContextSettings(n_ctx=2048, n_threads=1, kv_f32=True))
    try:
        media = MediaEncoders(thinker.model, folder, n_threads=1)
        try:
            src = (video_frames(), 2.0, audio_clip(SECONDS), SAMPLE_RATE)
            item = media.prepare(media_part("video", src, use_audio=with_audio))
            rows = media.encode_all([item])
        finally:
            media.close()
        seg = item.segment
        assert isinstance(seg, VideoSegment) and seg.grid_thw == (SECONDS, FRAME_H // 14, FRAME_W // 14)
        assert seg.seconds_per_grid == 1.0 and seg.audio_tokens == (25 * SECONDS if with_audio else None)
        _, proc = reference("base")
        pre, post = _prompt(proc, TEXT).split(VIDEO_RUN)
        tok = thinker.tokenize
        layout = build_prompt([TextSegment(tok(pre)), seg, TextSegment(tok(post))])
        session = thinker.session()
        try:
            got = session.prefill(layout, rows)
            assert session.next_pos == layout.decode_start
        finally:
            session.close()
    finally:
        thinker.close()
    return got, layout.input_ids, layout


@pytest.mark.parametrize("with_audio", [True, False], ids=["with-audio", "no-audio"])
def test_video_logits_match_reference(converted_tiny, with_audio: bool) -> None:
    ref, ref_ids = reference_logits("base", with_audio)
    got, ids, layout = _sdk_logits(converted_tiny("base"), with_audio)
    assert ids.tolist() == list(ref_ids)
    assert int((layout.kinds == KIND_VIDEO).sum()) == SECONDS * (FRAME_H // 28) * (FRAME_W // 28)
    assert int((layout.kinds == KIND_AUDIO).sum()) == (25 * SECONDS if with_audio else 0)
    gap = relative_gap(got, ref)
    print(f"video {'with' if with_audio else 'without'} audio: {ids.size} prompt tokens, logits gap {gap:.3g}")
    assert gap <= RTOL


def test_sdk_positions_equal_reference_rope_index(converted_tiny) -> None:
    """The positions the SDK decodes the video+audio prompt with are the reference's get_rope_index."""
    model, _ = reference("base")
    kw = reference_inputs("base", video_frames(), audio_clip(SECONDS))
    audio_len = kw["feature_attention_mask"].sum(-1)
    ref_pos, _ = model.thinker.model.get_rope_index(
        kw["input_ids"], None, kw["video_grid_thw"], kw["attention_mask"], True,
        torch.as_tensor(audio_len), kw["video_second_per_grid"])
    _, ids, layout = _sdk_logits(converted_tiny("base"), True)
    np.testing.assert_array_equal(ids, kw["input_ids"][0].numpy())
    np.testing.assert_array_equal(layout.positions, ref_pos[:, 0].numpy())


# ---------------------------------------------------------------------- public API, two turns


def _reference_reply(model, kw: dict) -> list[int]:
    with torch.no_grad():
        out = model.generate(**kw, generation_mode="text", thinker_max_new_tokens=N_REPLY, thinker_do_sample=False)
    seq = out.sequences if hasattr(out, "sequences") else out
    return seq[0, kw["input_ids"].shape[1]:].tolist()


def _core(reply: list[int]) -> list[int]:
    return reply[:-1] if reply and reply[-1] in (151645, 151643) else reply


def test_two_turn_chat_with_video_matches_generate(converted_tiny) -> None:
    model, proc = reference("base")
    frames, wav = video_frames(), audio_clip(SECONDS)
    kw = reference_inputs("base", frames, wav)
    ref_ids1 = kw["input_ids"][0].tolist()
    ref_reply1 = _reference_reply(model, kw)

    with po.Omni.load_sync(converted_tiny("base"), n_threads=1, kv_f32=True) as omni:
        chat = omni.chat(max_tokens=N_REPLY)
        done1 = next(ev for ev in chat.send_sync(TEXT, video=(frames, 2.0, wav, SAMPLE_RATE))
                     if isinstance(ev, po.Done))
        assert chat.tokens[: done1.usage.prompt_tokens] == ref_ids1
        assert list(done1.tokens) == _core(ref_reply1)
        ref_pos, _ = model.thinker.model.get_rope_index(
            kw["input_ids"], None, kw["video_grid_thw"], kw["attention_mask"], True,
            kw["feature_attention_mask"].sum(-1), kw["video_second_per_grid"])
        np.testing.assert_array_equal(chat._session.history.positions[:, : len(ref_ids1)], ref_pos[:, 0].numpy())
        done2 = next(ev for ev in chat.send_sync(TEXT2) if isinstance(ev, po.Done))
        toks = chat.tokens
        cut = max(i for i in range(len(toks) - 2) if toks[i : i + 3] == [151644, 77091, 198]) + 3  # assistant prompt
        ids2 = toks[:cut]
        assert ids2[: len(ref_ids1)] == ref_ids1
        assert chat.messages[0].parts[0].kind == "video" and chat.messages[0].parts[0].use_audio

    kw2 = dict(kw, input_ids=torch.tensor([ids2]))
    kw2["attention_mask"] = torch.ones_like(kw2["input_ids"])
    tail = proc.tokenizer.decode(ids2[len(ref_ids1) + len(_core(ref_reply1)):])
    assert tail.endswith(f"<|im_start|>user\n{TEXT2}<|im_end|>\n<|im_start|>assistant\n")
    ref_reply2 = _reference_reply(model, kw2)
    print(f"two-turn video chat: replies {list(done1.tokens)} / {list(done2.tokens)}")
    assert list(done2.tokens) == _core(ref_reply2)


def test_video_in_second_turn_matches_generate(converted_tiny) -> None:
    """The video arrives after a text turn: the relabelling must leave the first turn's cells alone."""
    model, _ = reference("base")
    frames, wav = video_frames(), audio_clip(SECONDS)
    with po.Omni.load_sync(converted_tiny("base"), n_threads=1, kv_f32=True) as omni:
        chat = omni.chat(max_tokens=N_REPLY)
        next(ev for ev in chat.send_sync("Hello there.") if isinstance(ev, po.Done))
        n1 = chat.n_tokens
        done = next(ev for ev in chat.send_sync(TEXT, video=(frames, 2.0, wav, SAMPLE_RATE))
                    if isinstance(ev, po.Done))
        toks = chat.tokens
        stored = chat._session.ctx.stored_positions(0)
        true_pos = chat._session.history.positions
    cut = max(i for i in range(len(toks) - 2) if toks[i : i + 3] == [151644, 77091, 198]) + 3
    ids = toks[:cut]
    assert ids.count(151656) == SECONDS * 130 and ids.count(151646) == 25 * SECONDS
    first_turn_t = np.sort(true_pos[0, :n1])
    np.testing.assert_array_equal(np.sort(stored[:, 0])[:n1], first_turn_t)  # first turn untouched
    kw = dict(reference_inputs("base", frames, wav), input_ids=torch.tensor([ids]))
    kw["attention_mask"] = torch.ones_like(kw["input_ids"])
    ref_reply = _reference_reply(model, kw)
    print(f"video in turn 2: reply {list(done.tokens)}")
    assert list(done.tokens) == _core(ref_reply)
