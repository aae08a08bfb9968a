"""A spoken chat turn through the public API against the reference's `generate`, up to the waveform.

Our side: the tiny checkpoint converted with `pocketomni convert` (f32 thinker/talker; token2wav weights
float16, the default, and float32), `omni.chat(speech=True)` with
the default speech system prompt, the talker greedy, the `reference` token2wav preset streamed in
`exact` mode (equal to one-shot rendering) and a fixed seed. The reference side:
`Qwen2_5OmniForConditionalGeneration.generate` on the same conversation (processor + chat template),
thinker and talker greedy, token2wav at its defaults (the `reference` preset, one-shot).

Noise: the reference's DiT draws its initial noise with `torch.randn` inside `sample`; it is handed
the noise our seeded `NoiseSource` draws instead (the same array on both sides).

The two transformers 5.24 defects worked around in test_talker_parity.py are worked around the same
way here (image as `thinker_pixel_values`; the all-ones attention mask restored for the talker).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from omni_fixtures import build_checkpoint, load_processor, load_reference
from test_talker_parity import _keep_mask
from test_token2wav_bigvgan import snr_db

import pocketomni as po
from pocketomni.engine.speech import SPEECH_SYSTEM_PROMPT
from pocketomni.token2wav import NoiseSource

torch.set_num_threads(1)

REPLY_TOKENS = 12
CODES = 60
SEED = 1234
CASES = [("base", "text", "Chelsie"), ("gqa4", "image", "Ethan"), ("odd", "audio", "Chelsie")]


def _image() -> np.ndarray:
    return (np.random.default_rng(7).random((56, 84, 3)) * 255).astype(np.uint8)


def _audio() -> np.ndarray:
    t = np.arange(int(16000 * 2.5)) / 16000
    noise = np.random.default_rng(8).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * 330 * t) + noise).astype(np.float32)


def _inputs(proc, media: str, text: str) -> dict:
    """The reference processor's inputs for a first turn (speech system prompt + one user message)."""
    from PIL import Image

    content = [{"type": media}] if media != "text" else []
    content.append({"type": "text", "text": text})
    conv = [{"role": "system", "content": SPEECH_SYSTEM_PROMPT}, {"role": "user", "content": content}]
    prompt = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    kw = {}
    if media == "image":
        kw["images"] = [Image.fromarray(_image())]
    elif media == "audio":
        kw["audio"] = [_audio()]
    inputs = dict(proc(text=[prompt], return_tensors="pt", **kw))
    if "pixel_values" in inputs:
        inputs["thinker_pixel_values"] = inputs.pop("pixel_values")
    return inputs


def _load(variant: str):
    ckpt = build_checkpoint(variant)
    model, proc = load_reference(ckpt), load_processor(ckpt)
    model.talker.register_forward_pre_hook(_keep_mask, with_kwargs=True)
    return model, proc


def _generate(model, inputs: dict, voice: str):
    """(prompt ids, reply token ids, talker codes, waveform) from the reference's generate."""
    seen: dict = {}
    talker_generate = model.talker.generate

    def talker(**k):
        seen["codes"] = out = talker_generate(**k)
        seen["n_in"] = k["input_ids"].shape[1]
        return out

    real_randn = torch.randn

    def randn(*shape, **k):  # the DiT's initial noise only: (1, frames, 80)
        size = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else shape
        if len(size) == 3 and size[0] == 1 and size[2] == 80:
            seen["noise_frames"] = size[1]
            return torch.from_numpy(NoiseSource(80, seed=SEED).get(0, size[1]).copy())[None]
        return real_randn(*shape, **k)

    torch.randn = randn
    model.talker.generate = talker
    try:
        with torch.no_grad():
            seq, wav = model.generate(**inputs, speaker=voice, thinker_max_new_tokens=REPLY_TOKENS,
                                      thinker_do_sample=False, talker_do_sample=False,
                                      talker_max_new_tokens=CODES)
    finally:
        torch.randn = real_randn
        model.talker.generate = talker_generate
    ids = inputs["input_ids"][0].tolist()
    reply = seq[0, len(ids):].tolist()
    codes = seen["codes"][0, seen["n_in"]:].tolist()
    codes = [c for c in codes if c not in (8292, 8294)]  # generate cuts at the first end code
    assert seen["noise_frames"] == 2 * len(codes)
    return ids, reply, codes, wav.numpy().astype(np.float64)


@pytest.mark.parametrize("t2w_type", ["f16", "f32"])
@pytest.mark.parametrize(("variant", "media", "voice"), CASES, ids=[f"{v}-{m}" for v, m, _ in CASES])
def test_spoken_turn_matches_reference_generate(converted_tiny, variant, media, voice, t2w_type):
    text = {"text": "Tell me a story.", "image": "Describe the picture.", "audio": "What did you hear?"}[media]
    model, proc = _load(variant)
    ref = _generate(model, _inputs(proc, media, text), voice)

    folder = converted_tiny(variant, "f32", token2wav_type=t2w_type)
    kw = {"images": [_image()]} if media == "image" else {"audio": [(_audio(), 16000)]} if media == "audio" else {}
    with po.Omni.load_sync(folder, n_threads=1, kv_f32=True) as omni:
        chat = omni.chat(speech=True, voice=voice, speech_preset="reference", speech_streaming="exact",
                         speech_options=po.SpeechOptions(temperature=0.0, max_codes=CODES, seed=SEED),
                         max_tokens=REPLY_TOKENS)
        _compare(chat, chat.send_sync(text, **kw), ref, f"{variant}-{media} token2wav {t2w_type}")
        if media != "text":
            return
        # A second turn: the talker reads the whole conversation (the first reply's hidden states too).
        # The reference gets the ids our cache holds (a reply is never re-tokenized) and recomputes all.
        n0 = len(chat.tokens)
        events = list(chat.send_sync("Go on."))
        ids2 = chat.tokens[: n0 + events[-1].usage.prompt_tokens]
        inp = torch.tensor([ids2])
        ref2 = _generate(model, {"input_ids": inp, "attention_mask": torch.ones_like(inp)}, voice)
        _compare(chat, events, ref2, f"{variant}-{media} token2wav {t2w_type} turn 2")


def _compare(chat, events, ref, name: str) -> None:
    ref_ids, ref_reply, ref_codes, ref_wav = ref
    events = list(events)
    assert chat.tokens[: len(ref_ids)] == ref_ids  # same prompt, system prompt included
    codes = list(chat._last_speech.codes)
    done = events[-1]
    assert isinstance(done, po.Done)
    stopped = ref_reply[-1] in (151645, 151643)
    assert list(done.tokens) == (ref_reply[:-1] if stopped else ref_reply)
    assert codes == ref_codes and done.usage.audio_codes == len(codes) > 20
    wav = np.concatenate([e.samples for e in events if isinstance(e, po.AudioChunk)])
    assert wav.dtype == np.float32 and wav.shape == ref_wav.shape == (len(codes) * 480,)
    snr = snr_db(wav, ref_wav)
    print(f"\n[{name}] {len(codes)} codes, waveform SNR vs reference generate {snr:.1f} dB")
    assert snr >= 40.0
    assert done.timings.audio_seconds == pytest.approx(len(codes) * 480 / 24000)
