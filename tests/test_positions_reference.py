"""TMRoPE positions of pocketomni.engine.positions vs the reference get_rope_index (exact equality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)

from pocketomni.engine.positions import (
    KIND_AUDIO,
    KIND_IMAGE,
    KIND_TEXT,
    KIND_VIDEO,
    AudioSegment,
    ImageSegment,
    TextSegment,
    VideoSegment,
    audio_tokens_from_frames,
    audio_tokens_from_samples,
    build_prompt,
    llama_pos_array,
    llama_rows,
    position_order_is_causal,
    text_positions,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def thinker():
    """A tiny random thinker: only its get_rope_index and config matter here."""
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    cfg = Qwen2_5OmniThinkerConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "vocab_size": 151936,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16,
                           "fullatt_block_indexes": [0]},
        audio_config={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                          "output_dim": 16, "num_mel_bins": 128},
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()


def _text(rng, n):
    return TextSegment(rng.integers(0, 151000, size=n).tolist())


def reference(thinker, segments, audio_frames, use_audio_in_video):
    """Run the reference get_rope_index on our expanded ids; returns (positions (3,N), delta, layout)."""
    layout = build_prompt(segments)
    images = [s.grid_thw for s in segments if isinstance(s, ImageSegment)]
    videos = [s for s in segments if isinstance(s, VideoSegment)]
    ids = torch.from_numpy(layout.input_ids)[None]
    pos, delta = thinker.get_rope_index(
        ids,
        torch.tensor(images, dtype=torch.long) if images else None,
        torch.tensor([v.grid_thw for v in videos], dtype=torch.long) if videos else None,
        torch.ones_like(ids),
        use_audio_in_video,
        torch.tensor(audio_frames, dtype=torch.long) if audio_frames else None,
        torch.tensor([v.seconds_per_grid for v in videos]) if videos else None,
    )
    return pos[:, 0].numpy(), int(delta.reshape(-1)[0]), layout


def check(thinker, segments, audio_frames=(), use_audio_in_video=False):
    ref, delta, layout = reference(thinker, segments, list(audio_frames), use_audio_in_video)
    assert layout.positions.shape == ref.shape
    np.testing.assert_array_equal(layout.positions, ref)
    assert layout.rope_delta == delta
    assert layout.decode_start == int(ref.max()) + 1
    return layout


def audio(frames):
    return AudioSegment(audio_tokens_from_frames(frames))


def test_text_only(thinker):
    rng = np.random.default_rng(0)
    lay = check(thinker, [_text(rng, 17)])
    np.testing.assert_array_equal(lay.positions, text_positions(0, 17))
    assert (lay.kinds == KIND_TEXT).all()


def test_single_image(thinker):
    rng = np.random.default_rng(1)
    lay = check(thinker, [_text(rng, 5), ImageSegment((1, 4, 6)), _text(rng, 7)])
    assert (lay.kinds == KIND_IMAGE).sum() == 6
    assert lay.input_ids[5] == 151652 and lay.input_ids[12] == 151653
    assert position_order_is_causal(lay.positions)


def test_several_images_adjacent_and_separated(thinker):
    rng = np.random.default_rng(2)
    segs = [
        _text(rng, 3), ImageSegment((1, 4, 6)), ImageSegment((1, 8, 2)), _text(rng, 2),
        ImageSegment((1, 2, 2)), _text(rng, 4), ImageSegment((1, 60, 40)), _text(rng, 3),
    ]
    check(thinker, segs)


def test_image_first_token(thinker):
    check(thinker, [ImageSegment((1, 6, 4)), _text(np.random.default_rng(3), 2)])


def test_single_and_several_audios(thinker):
    rng = np.random.default_rng(4)
    check(thinker, [_text(rng, 4), audio(100), _text(rng, 3)], [100])
    segs = [_text(rng, 4), audio(100), audio(37), _text(rng, 3), audio(3000), _text(rng, 2)]
    lay = check(thinker, segs, [100, 37, 3000])
    assert (lay.kinds == KIND_AUDIO).sum() == sum(audio_tokens_from_frames(f) for f in (100, 37, 3000))
    assert position_order_is_causal(lay.positions)


def test_audio_with_image_uses_main_path(thinker):
    rng = np.random.default_rng(5)
    segs = [_text(rng, 4), audio(250), _text(rng, 1), ImageSegment((1, 10, 14)), audio(61), _text(rng, 3)]
    check(thinker, segs, [250, 61])


@pytest.mark.parametrize("spg", [1.0, 0.5, 2.0, 2 / (14 / 182 * 25), 2 / 3.0, 2 / 29.97 * 15])
def test_video_without_audio(thinker, spg):
    rng = np.random.default_rng(6)
    lay = check(thinker, [_text(rng, 3), VideoSegment((7, 4, 6), spg), _text(rng, 5)])
    assert (lay.kinds == KIND_VIDEO).sum() == 7 * 6
    assert position_order_is_causal(lay.positions)


def test_video_with_audio_6s_three_chunks(thinker):
    rng = np.random.default_rng(7)
    frames = 600  # 6 s of 16 kHz audio -> 600 mel frames -> 150 tokens
    seg = VideoSegment((6, 4, 6), 1.0, audio_tokens_from_frames(frames))
    lay = check(thinker, [_text(rng, 4), seg, _text(rng, 3)], [frames], True)
    ids = lay.input_ids
    assert ids[4:6].tolist() == [151652, 151647] and ids[-5:-3].tolist() == [151648, 151653]
    # bos pair and eos pair share positions
    assert (lay.positions[:, 4] == lay.positions[:, 5]).all()
    assert (lay.positions[:, -5] == lay.positions[:, -4]).all()
    # three chunks: 2 frame groups (12 video tokens) then 50 audio tokens, three times
    kinds = lay.kinds[6:-5]
    runs = [(int(k), len(list(g))) for k, g in __import__("itertools").groupby(kinds)]
    assert runs == [(KIND_VIDEO, 12), (KIND_AUDIO, 50)] * 3
    assert not position_order_is_causal(lay.positions)


@pytest.mark.parametrize(
    "grid, spg, frames",
    [
        ((5, 4, 6), 1.0, 730),  # 5 s video, 7.3 s audio: more audio chunks
        ((8, 2, 4), 1.0, 300),  # 8 s video, 3 s audio: more video chunks
        ((3, 2, 2), 1.0, 3),  # one audio token
        ((1, 42, 74), 1.0, 100),  # 1 s clip, wide frames, short audio: eos below the grid maximum
        ((7, 4, 4), 2 / (14 / 182 * 25), 700),  # non-integer seconds per grid
        ((4, 2, 2), 4.0, 1600),  # 0.5 fps: t jumps 100 per group (one split per jump)
        ((2, 4, 4), 0.5, 1000),  # 4 fps
    ],
)
def test_video_with_audio_odd_lengths(thinker, grid, spg, frames):
    rng = np.random.default_rng(8)
    seg = VideoSegment(grid, spg, audio_tokens_from_frames(frames))
    check(thinker, [_text(rng, 3), seg, _text(rng, 6)], [frames], True)


def test_eos_below_grid_max_is_reported(thinker):
    seg = VideoSegment((1, 42, 74), 1.0, audio_tokens_from_frames(100))
    lay = check(thinker, [_text(np.random.default_rng(9), 2), seg], [100], True)
    # the reference starts following text after the last chunk's max, decoding after the global max
    assert lay.next_block_start < lay.decode_start


def test_mixed_prompts(thinker):
    rng = np.random.default_rng(10)
    segs = [
        _text(rng, 6), ImageSegment((1, 4, 4)), _text(rng, 2), audio(400), _text(rng, 3),
        VideoSegment((4, 6, 4), 1.0), _text(rng, 2), ImageSegment((1, 2, 8)), audio(90), _text(rng, 4),
    ]
    check(thinker, segs, [400, 90], False)
    segs = [
        _text(rng, 6), ImageSegment((1, 4, 4)), audio(400), _text(rng, 3),
        VideoSegment((4, 6, 4), 1.0, audio_tokens_from_frames(410)), _text(rng, 2), audio(90),
        VideoSegment((3, 2, 2), 1.0, audio_tokens_from_frames(333)), _text(rng, 4),
    ]
    check(thinker, segs, [400, 410, 90, 333], True)


def _random_prompt(rng, with_audio_in_video):
    segs, frames = [], []
    for _ in range(int(rng.integers(1, 6))):
        if rng.random() < 0.6:
            segs.append(_text(rng, int(rng.integers(1, 8))))
        kind = rng.integers(0, 3)
        if kind == 0:
            segs.append(ImageSegment((1, 2 * int(rng.integers(1, 12)), 2 * int(rng.integers(1, 12)))))
        elif kind == 1:
            f = int(rng.integers(3, 1500))
            frames.append(f)
            segs.append(audio(f))
        else:
            grid = (int(rng.integers(1, 9)), 2 * int(rng.integers(1, 6)), 2 * int(rng.integers(1, 6)))
            spg = float(rng.choice([1.0, 0.5, 2.0, 2 / float(rng.uniform(0.5, 4.0))]))
            if with_audio_in_video:
                f = int(rng.integers(3, 1500))
                frames.append(f)
                segs.append(VideoSegment(grid, spg, audio_tokens_from_frames(f)))
            else:
                segs.append(VideoSegment(grid, spg))
    segs.append(_text(rng, int(rng.integers(1, 5))))
    return segs, frames


@pytest.mark.parametrize("seed", range(24))
def test_random_prompts(thinker, seed):
    rng = np.random.default_rng(1000 + seed)
    with_audio = bool(seed % 2)
    segs, frames = _random_prompt(rng, with_audio)
    check(thinker, segs, frames, with_audio)


def test_continuation_matches_full_recompute(thinker):
    """A new turn started at the previous maximum + 1 equals the reference over the whole chat."""
    rng = np.random.default_rng(11)
    turn1 = [_text(rng, 5), ImageSegment((1, 6, 4)), audio(300), _text(rng, 4)]
    reply = rng.integers(0, 151000, size=9).tolist()
    turn2 = [_text(rng, 3), VideoSegment((3, 4, 4), 1.0), ImageSegment((1, 2, 2)), _text(rng, 5)]
    lay1 = build_prompt(turn1)
    assert lay1.next_block_start == lay1.decode_start
    reply_pos = text_positions(lay1.decode_start, len(reply))
    lay2 = build_prompt(turn2, start_pos=lay1.decode_start + len(reply))
    ours = np.concatenate([lay1.positions, reply_pos, lay2.positions], axis=1)
    ref, _, full = reference(thinker, turn1 + [TextSegment(reply)] + turn2, [300], False)
    np.testing.assert_array_equal(full.input_ids, np.concatenate([lay1.input_ids, reply, lay2.input_ids]))
    np.testing.assert_array_equal(ours, ref)


def test_audio_token_counts():
    # 16 kHz samples -> ceil(n / 160) mel frames -> two stride-2 convolutions
    assert audio_tokens_from_samples(16000) == 25
    assert audio_tokens_from_samples(96000) == 150
    assert audio_tokens_from_samples(321) == audio_tokens_from_frames(3) == 1
    assert audio_tokens_from_samples(320) == audio_tokens_from_frames(2) == 0
    assert audio_tokens_from_samples(16000 * 400) == audio_tokens_from_frames(30000) == 7500


def test_llama_rows_layout():
    lay = build_prompt([TextSegment([1, 2]), ImageSegment((1, 2, 4)), TextSegment([3])])
    rows = llama_rows(lay.positions)
    assert rows.dtype == np.int32 and rows.shape == (4, lay.positions.shape[1])
    np.testing.assert_array_equal(rows[:3], lay.positions)
    assert (rows[3] == 0).all()
    flat = llama_pos_array(lay.positions)
    n = lay.positions.shape[1]
    np.testing.assert_array_equal(flat[n : 2 * n], lay.positions[1])  # section-major
    with pytest.raises(ValueError):
        llama_rows(np.zeros((2, 3)))


def test_bad_segments():
    with pytest.raises(ValueError):
        build_prompt([ImageSegment((1, 3, 4))])
    with pytest.raises(ValueError):
        build_prompt([AudioSegment(0)])
    with pytest.raises(ValueError):
        build_prompt([])
    with pytest.raises(TypeError):
        build_prompt(["text"])  # type: ignore[list-item]
