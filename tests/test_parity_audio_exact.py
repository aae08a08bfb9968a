"""Audio parity through OUR path (issue 8): the same cases stock mtmd fails (test_parity_media_stock), passing.

Our exact encoder (the reference's whole-clip log-mel, 2 s windows with restarting positions) reads its
weights from the converted mmproj GGUF, and the thinker decodes our batch: token rows and audio
embedding rows with the TMRoPE layout of sdk/positions.py. Three levels, each against transformers on
the same tiny checkpoint, for 0.5 s, 3 s and 45 s clips (the last crosses 2 s windows and the 30 s
boundary stock mtmd pads to):

1. backend level: `load_audio_encoder` + `build_prompt` + `LlamaContext.decode` (tokens, then audio
   rows, then tokens): last logits within 1e-2 of max|logit|, token ids and audio token count equal to
   the processor's;
2. SDK level: the chat's own components (`MediaEncoders.prepare/encode`, `Thinker` session prefill):
   the same bound;
3. public API: `Omni` / `Chat.send` with an audio clip: prompt ids equal to the processor's and the
   greedy reply equal to `generate`'s.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (hard dependency: fail loudly if missing)
import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from test_parity_media_stock import (
    AUDIO_TEXT,
    IDS,
    RTOL,
    SAMPLE_RATE,
    audio_clip,
    media_layout,
    reference,
    reference_audio_logits,
    reference_prompt,
    relative_gap,
)

import pocketomni as po
from pocketomni.audio.features import log_mel_segments
from pocketomni.backend import LlamaContext, LlamaModel
from pocketomni.chat.conversation import media_part
from pocketomni.engine.encoders import MediaEncoders, load_audio_encoder
from pocketomni.engine.model_folder import ModelFolder
from pocketomni.engine.positions import KIND_AUDIO, AudioSegment, audio_tokens_from_samples
from pocketomni.engine.thinker import ContextSettings, Thinker

torch.set_num_threads(1)

VARIANTS = ("base", "gqa4", "odd")
SECONDS = (0.5, 3, 45)
PROCESSOR_TOKENS = {0.5: 12, 3: 75, 45: 1125}  # ((L-1)//2+1-2)//2+1 for L = 50, 300, 4500 mel frames
AUDIO_RUN = "<|audio_bos|><|AUDIO|><|audio_eos|>"
N_REPLY = 8

CASES = [pytest.param(v, s, id=f"{v}-{s}s") for v in VARIANTS for s in SECONDS]


@pytest.mark.parametrize("variant,seconds", CASES)
def test_exact_audio_logits_match_reference(converted_tiny, variant: str, seconds: float) -> None:
    ref, ref_ids = reference_audio_logits(variant, seconds)
    folder = converted_tiny(variant)
    wav = audio_clip(seconds)
    encoder = load_audio_encoder(folder / "mmproj-f32.gguf")
    rows = np.concatenate([encoder.encode(mel) for mel in log_mel_segments(wav)])
    n = audio_tokens_from_samples(wav.size)
    assert rows.shape[0] == n == ref_ids.count(IDS.audio) == PROCESSOR_TOKENS[seconds]
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as model, \
            LlamaContext(model, n_ctx=2048, n_batch=2048, n_threads=1, kv_f32=True, flash_attn=False) as ctx:
        layout = media_layout(model, reference_prompt(variant, "audio", AUDIO_TEXT), AUDIO_RUN, AudioSegment(n))
        assert layout.input_ids.tolist() == list(ref_ids)
        pos = layout.llama_rows()
        audio = np.flatnonzero(layout.kinds == KIND_AUDIO)
        a0, a1 = int(audio[0]), int(audio[-1]) + 1
        assert a1 - a0 == n
        ctx.decode(tokens=layout.input_ids[:a0], positions=pos[0, :a0], logits=None)
        ctx.decode(embeddings=rows, positions=pos[:, a0:a1], logits=None)
        got = ctx.decode(tokens=layout.input_ids[a1:], positions=pos[0, a1:]).last_logits
    gap = relative_gap(got, ref)
    print(f"{variant} {seconds} s: exact audio path, {n} tokens, logits gap {gap:.3g}")
    assert gap <= RTOL


@pytest.mark.parametrize("variant,seconds", CASES)
def test_sdk_audio_logits_match_reference(converted_tiny, variant: str, seconds: float) -> None:
    """The chat's own components: MediaEncoders (exact audio from the mmproj) + a Thinker session prefill."""
    ref, ref_ids = reference_audio_logits(variant, seconds)
    folder = ModelFolder.open(converted_tiny(variant))
    thinker = Thinker(folder.thinker, n_threads=1, settings=ContextSettings(n_ctx=2048, n_threads=1, kv_f32=True))
    try:
        media = MediaEncoders(thinker.model, folder, n_threads=1)
        try:
            assert media.exact_audio
            item = media.prepare(media_part("audio", (audio_clip(seconds), SAMPLE_RATE)))
            assert isinstance(item.segment, AudioSegment) and item.segment.n_tokens == PROCESSOR_TOKENS[seconds]
            rows = media.encode(item)
        finally:
            media.close()
        layout = media_layout(thinker.model, reference_prompt(variant, "audio", AUDIO_TEXT), AUDIO_RUN, item.segment)
        assert layout.input_ids.tolist() == list(ref_ids)
        session = thinker.session()
        try:
            got = session.prefill(layout, {KIND_AUDIO: rows})
        finally:
            session.close()
    finally:
        thinker.close()
    gap = relative_gap(got, ref)
    print(f"{variant} {seconds} s: SDK audio path, logits gap {gap:.3g}")
    assert gap <= RTOL


@pytest.mark.parametrize("variant,seconds", [pytest.param(v, s, id=f"{v}-{s}s") for v in ("base", "odd")
                                             for s in SECONDS])
def test_chat_with_audio_matches_generate(converted_tiny, variant: str, seconds: float) -> None:
    """Public API: Chat.send with one clip renders the processor's ids and replies like greedy generate."""
    model, proc = reference(variant)
    wav = audio_clip(seconds)
    enc = proc(text=[reference_prompt(variant, "audio", AUDIO_TEXT)], audio=[wav], return_tensors="pt")
    ref_ids = enc["input_ids"][0].tolist()
    with torch.no_grad():
        out = model.generate(**enc, generation_mode="text", thinker_max_new_tokens=N_REPLY, thinker_do_sample=False)
    seq = out.sequences if hasattr(out, "sequences") else out
    ref_reply = seq[0, len(ref_ids):].tolist()
    stopped = bool(ref_reply) and ref_reply[-1] in (151645, 151643)
    ref_core = ref_reply[:-1] if stopped else ref_reply

    with po.Omni.load_sync(converted_tiny(variant), n_threads=1, kv_f32=True) as omni:
        assert omni.capabilities.exact_audio
        chat = omni.chat(max_tokens=N_REPLY)
        done = next(ev for ev in chat.send_sync(AUDIO_TEXT, audio=[(wav, SAMPLE_RATE)]) if isinstance(ev, po.Done))
        assert chat.tokens[: done.usage.prompt_tokens] == ref_ids
        assert ref_ids.count(IDS.audio) == PROCESSOR_TOKENS[seconds]
        assert list(done.tokens) == ref_core
