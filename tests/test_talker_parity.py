"""Talker on llama.cpp vs the reference talker, fed from the reference thinker (tiny checkpoints, f32).

The reference side is `Qwen2_5OmniForConditionalGeneration.generate` up to the talker call (thinker
greedy, E/H zeroing, reply part, eos/pad rows, input ids for the repetition penalty), then the
reference `talker.generate` with those exact arguments, greedy, with raw logits returned.

Two transformers 5.24 defects are worked around on the reference side only:
- `generate` also hands `pixel_values` to the talker, whose generate rejects them: the image goes in as
  `thinker_pixel_values` (thinker only; the zeroing of the image rows still runs).
- `GenerationMixin.generate` drops an all-ones attention mask before calling forward, and the talker's
  forward only computes TMRoPE positions and adds the codec_pad / codec_bos embeddings when it gets a
  mask. A forward pre-hook hands it the all-ones mask, restoring the behaviour of the transformers
  release the model shipped with (and of design.md section 3).

Our side gets E+H built independently: E from the thinker's embedding table with placeholder rows
zeroed, H the thinker's final normed hidden state, positions from the thinker's get_rope_index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)

from pocketomni.engine.talker import Talker
from pocketomni.errors import OptionsError, PocketOmniError
from pocketomni.options import SpeechOptions

torch.set_num_threads(1)

from test_talker_convert import convert_speech

STEPS = 40
REPLY_TOKENS = 10
PLACEHOLDERS = (151655, 151646, 151656)  # image, audio, video
SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
# talker3b: the 3B talker's M-RoPE split with an empty width section ([4, 4, 0] here, [16, 16, 0] at 3B),
# fed an image prompt so the height and width positions differ and a wrong split changes the logits.
CASES = [("base", "image", "Chelsie"), ("gqa4", "audio", "Ethan"), ("odd", "text", "Chelsie"),
         ("talker3b", "image", "Ethan")]
IMAGE_HW = {"talker3b": (112, 168)}  # 4 x 6 merged patches (default 56 x 84: 2 x 3)


@dataclass
class Case:
    talker_path: object
    t2w_path: object
    embed: np.ndarray  # thinker input embedding table
    prompt_eh: np.ndarray
    positions: np.ndarray
    reply_eh: np.ndarray
    speaker: str
    media: str
    n_placeholders: int
    placeholder_rows: np.ndarray  # bool per prompt token
    placeholder_embedding: np.ndarray  # thinker embedding rows of the prompt tokens
    ref_codes: list
    ref_logits: np.ndarray

    def talker(self) -> Talker:
        return Talker(
            self.talker_path,
            self.t2w_path,
            1,
            thinker_embed=lambda ids: self.embed[np.asarray(ids)],
            n_ctx=512,
            kv_f32=True,
        )


def _inputs(proc, media: str, image_hw: tuple[int, int] = (56, 84)):
    from PIL import Image

    rng = np.random.default_rng(7)
    kw = {}
    if media == "image":
        kw["images"] = [Image.fromarray(rng.integers(0, 255, (*image_hw, 3), dtype=np.uint8))]
        user = "<|vision_bos|><|IMAGE|><|vision_eos|>Describe the picture."
    elif media == "audio":
        kw["audio"] = [(0.1 * rng.standard_normal(32000)).astype(np.float32)]
        user = "<|audio_bos|><|AUDIO|><|audio_eos|>What did you hear?"
    else:
        user = "Tell me a story."
    text = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
    return proc(text=[text], return_tensors="pt", padding=True, **kw)


def _keep_mask(module, args, kwargs):
    if kwargs.get("attention_mask") is None:
        cache = kwargs.get("cache")
        past = cache.get_seq_length() if cache is not None else 0
        x = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        kwargs["attention_mask"] = torch.ones(x.shape[0], past + x.shape[1], dtype=torch.long)
    return args, kwargs


class _Stop(Exception):
    pass


def _build_case(variant: str, media: str, speaker: str, out) -> Case:
    from omni_fixtures import build_checkpoint, load_processor, load_reference

    ckpt = build_checkpoint(variant)
    talker_path, t2w_path = convert_speech(ckpt, out)
    model, proc = load_reference(ckpt), load_processor(ckpt)
    inputs = dict(_inputs(proc, media, IMAGE_HW.get(variant, (56, 84))))
    if "pixel_values" in inputs:
        inputs["thinker_pixel_values"] = inputs.pop("pixel_values")
    seen: dict = {}
    thinker_generate, talker_generate = model.thinker.generate, model.talker.generate

    def thinker(*a, **k):
        seen["thinker"] = thinker_generate(*a, **k)
        return seen["thinker"]

    def talker(**k):
        seen["talker"] = k
        raise _Stop

    model.thinker.generate, model.talker.generate = thinker, talker
    with pytest.raises(_Stop):
        model.generate(
            **inputs,
            speaker=speaker,
            thinker_max_new_tokens=REPLY_TOKENS,
            thinker_do_sample=False,
            talker_do_sample=False,
            talker_max_new_tokens=STEPS,
        )
    result, ids = seen["thinker"], inputs["input_ids"]
    n = ids.shape[1]
    reply = result.sequences[0, n:].numpy()
    hs = result.hidden_states
    embed = model.thinker.get_input_embeddings().weight.detach().numpy()

    def e(tokens):
        rows = embed[np.asarray(tokens)].copy()
        rows[np.isin(np.asarray(tokens), PLACEHOLDERS)] = 0.0
        return rows

    prompt_ids = ids[0].numpy()
    prompt_eh = e(prompt_ids) + hs[0][-1][0].numpy()
    reply_eh = np.stack([e(reply[k - 1 : k])[0] + hs[k][-1][0, -1].numpy() for k in range(1, len(hs))])
    lengths = inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None
    pos, _ = model.thinker.get_rope_index(
        ids, inputs.get("image_grid_thw"), None, inputs["attention_mask"], False, lengths, None
    )

    model.talker.register_forward_pre_hook(_keep_mask, with_kwargs=True)
    ref = talker_generate(**seen["talker"], output_logits=True, return_dict_in_generate=True)
    n_in = seen["talker"]["input_ids"].shape[1]
    return Case(
        talker_path,
        t2w_path,
        embed,
        prompt_eh,
        pos[:, 0].numpy(),
        reply_eh,
        speaker,
        media,
        int(np.isin(prompt_ids, PLACEHOLDERS).sum()),
        np.isin(prompt_ids, PLACEHOLDERS),
        embed[prompt_ids],
        [int(c) for c in ref.sequences[0, n_in:]],
        np.stack([lg[0].numpy() for lg in ref.logits]),
    )


@pytest.fixture(scope="module", params=CASES, ids=[f"{v}-{m}" for v, m, _ in CASES])
def case(request, tmp_path_factory) -> Case:
    variant, media, speaker = request.param
    return _build_case(variant, media, speaker, tmp_path_factory.mktemp(f"talker-{variant}"))


GREEDY = SpeechOptions(temperature=0.0, max_codes=STEPS)


def _run(case: Case, options: SpeechOptions = GREEDY) -> tuple[list[int], np.ndarray]:
    logits: list[np.ndarray] = []
    with case.talker() as tk:
        codes = tk.generate_codes(
            case.prompt_eh,
            case.positions,
            case.speaker,
            case.reply_eh,
            options,
            on_step=lambda c, lg: logits.append(lg.copy()),
        )
    return codes, np.stack(logits)


def test_greedy_codes_and_codec_logits_match_reference(case):
    codes, logits = _run(case)
    assert len(case.ref_logits) == STEPS and len(case.ref_codes) == STEPS  # a full 40-step run
    assert logits.shape == case.ref_logits.shape
    rel = np.abs(logits - case.ref_logits).max(axis=1) / np.abs(case.ref_logits).max(axis=1)
    assert rel.max() < 1e-3, rel
    assert codes == case.ref_codes
    # the run reads the tts_text_eos / tts_text_pad rows after the reply, so the tail is exercised
    assert STEPS > len(case.reply_eh) + 1


def test_zeroed_placeholder_rows_matter(case):
    """The media prompts carry placeholders, and feeding their embedding rows instead of zeros would be
    caught: the first step's logits then leave the reference by far more than the tolerance."""
    assert (case.n_placeholders > 0) == (case.media != "text")
    if case.media == "text":
        return
    naive = case.prompt_eh + np.where(case.placeholder_rows[:, None], case.placeholder_embedding, 0.0)
    with case.talker() as tk:
        tk.start(naive, case.positions, case.speaker, case.reply_eh[0], GREEDY)
        first = tk.last_logits
    assert np.abs(first - case.ref_logits[0]).max() > 1e-2 * np.abs(case.ref_logits[0]).max()


def test_streamed_feed_equals_one_shot(case):
    want_codes, want_logits = _run(case)
    got_codes: list[int] = []
    got_logits: list[np.ndarray] = []
    with case.talker() as tk:
        with pytest.raises(PocketOmniError, match="start"):
            tk.push_reply(case.reply_eh[1])
        tk.start(case.prompt_eh, case.positions, case.speaker, case.reply_eh[0], GREEDY)
        blocked = 0
        for row in case.reply_eh[1:]:
            for code in tk.codes():
                got_codes.append(code)
                got_logits.append(tk.last_logits.copy())
            assert not tk.ready and not tk.done  # waits for the next reply token
            blocked += 1
            with pytest.raises(PocketOmniError, match="push_reply"):
                tk.next_code()
            tk.push_reply(row)
        tk.finish_reply()
        with pytest.raises(PocketOmniError, match="already"):
            tk.push_reply(row)
        for code in tk.codes():
            got_codes.append(code)
            got_logits.append(tk.last_logits.copy())
        assert tk.done and tk.next_code() is None
    assert blocked == len(case.reply_eh) - 1
    assert got_codes == want_codes
    np.testing.assert_array_equal(np.stack(got_logits), want_logits[: len(got_logits)])


def test_sampling_is_seeded_and_never_emits_codec_bos(case):
    opts = SpeechOptions(seed=11, max_codes=STEPS)  # the reference's defaults: top_k 40, top_p 0.8, T 0.9
    a, _ = _run(case, opts)
    b, _ = _run(case, opts)
    c, _ = _run(case, SpeechOptions(seed=12, max_codes=STEPS))
    assert a == b and a != c
    assert all(0 <= x < 8448 and x not in (8292, 8293, 8294) for x in a + c)


def test_bad_inputs_are_rejected(case):
    with case.talker() as tk:
        with pytest.raises(OptionsError, match="unknown voice"):
            tk.start(case.prompt_eh, case.positions, "Nobody", case.reply_eh[0])
        with pytest.raises(OptionsError, match="prompt_positions"):
            tk.start(case.prompt_eh, case.positions[:2], case.speaker, case.reply_eh[0])
        with pytest.raises(OptionsError, match="first_reply_eh"):
            tk.start(case.prompt_eh, case.positions, case.speaker, case.reply_eh[:2])
        with pytest.raises(OptionsError, match="prompt_eh"):
            tk.start(case.prompt_eh[:, :-1], case.positions, case.speaker, case.reply_eh[0])


def test_context_bounds_the_number_of_codes(case):
    from pocketomni.errors import ContextOverflowError

    embed = lambda ids: case.embed[np.asarray(ids)]
    with Talker(case.talker_path, case.t2w_path, 1, thinker_embed=embed, n_ctx=64, kv_f32=True) as tk:
        assert tk.max_ctx == 256  # 64 rounded up as llama.cpp rounds contexts (the KV cache grows toward it)
        room = tk.max_ctx - (len(case.prompt_eh) + 2) + 1
        codes = tk.generate_codes(
            case.prompt_eh, case.positions, case.speaker, case.reply_eh, SpeechOptions(temperature=0.0)
        )
        assert 0 < len(codes) <= room and tk.done
        assert codes[:STEPS] == case.ref_codes[: len(codes)]
        if tk.n_steps == len(codes):  # no end code: the context was the limit
            assert len(codes) == room
        big = np.concatenate([case.prompt_eh] * (tk.max_ctx // len(case.prompt_eh) + 1))
        pos = np.tile(np.arange(len(big)), (3, 1))
        with pytest.raises(ContextOverflowError, match="n_ctx"):
            tk.start(big, pos, case.speaker, case.reply_eh[0])
