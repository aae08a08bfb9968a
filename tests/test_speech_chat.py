"""Spoken replies through the public chat API on the tiny converted model (f32): audio interleaved with
the text, streamed audio equal to one-shot rendering, options and system prompt, cancellation, the
sync and async forms. The reference comparison is in test_speech_parity.py."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest

import pocketomni as po
from pocketomni.engine.speech import FEED_CODES, SPEECH_SYSTEM_PROMPT
from pocketomni.token2wav.first_chunk import CROSSFADE_SAMPLES

SEED = 77


def snr_db(ours: np.ndarray, ref: np.ndarray) -> float:
    err = np.asarray(ours, np.float64) - np.asarray(ref, np.float64)
    return float(10 * np.log10(np.sum(np.asarray(ref, np.float64) ** 2) / max(np.sum(err**2), 1e-300)))


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, kv_f32=True) as m:
        yield m


def greedy(max_codes: int, pipelined: bool | None = None) -> po.SpeechOptions:
    return po.SpeechOptions(temperature=0.0, max_codes=max_codes, seed=SEED, pipelined=pipelined)


# Tests of event order and of how far speech runs after a cancel pin the one-after-another engine
# (pipelined=False), whose order does not depend on timing; test_speech_pipeline.py covers the pipelined one.


def kinds(events) -> str:
    return "".join("T" if isinstance(e, po.TextDelta) else "A" if isinstance(e, po.AudioChunk) else "D" for e in events)


def audio(events) -> np.ndarray:
    parts = [e.samples for e in events if isinstance(e, po.AudioChunk)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# The tiny DiT looks one block (12 codes) ahead per solver evaluation. First audio, in codes: the
# default short first chunk, 24 (SpeechOptions.first_chunk_codes). Without it: fast/exact: 4
# evaluations x 12 + the vocoder's 18-code lag, at the next 36-code step = 72; reference/chunked: one
# 36-code chunk + 12 codes of future context = 49. The talker makes one code per decoded reply token
# while the text lasts, so the reply must be longer than that.
@pytest.mark.parametrize(("preset", "mode", "reply"), [("fast", "exact", 90), ("reference", "chunked", 60)])
def test_audio_arrives_while_text_streams(omni, preset, mode, reply):
    chat = omni.chat(speech=True, speech_preset=preset, speech_options=greedy(reply + 30, False), max_tokens=reply)
    assert chat.speech_settings.streaming == mode  # the default mode of the preset
    events = list(chat.send_sync("Tell me a long story."))
    k = kinds(events)
    done = events[-1]
    assert k[-1] == "D" and done.finish_reason == "length" and len(done.tokens) == reply
    assert k.index("A") < k.rindex("T"), k  # the first sound came while text was still streaming
    for e in events:
        if isinstance(e, po.AudioChunk):
            assert e.sample_rate == 24000 and e.samples.dtype == np.float32 and e.samples.ndim == 1
    codes = list(chat._last_speech.codes)
    wav = audio(events)
    assert done.usage.audio_codes == len(codes) == reply + 30  # the tiny talker speaks to its limit
    assert wav.size == 480 * len(codes) and done.timings.audio_seconds == pytest.approx(wav.size / 24000)
    assert 0 < done.timings.time_to_first_audio < done.timings.total_seconds
    assert done.timings.real_time_factor > 0
    assert 0.01 < float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < 1.0  # sound, not silence or clipping

    # The interleaved, streamed waveform equals rendering all codes at once with the same noise: in
    # exact mode one-shot rendering itself from the first chunk's seam on (before it, the independently
    # rendered first chunk: test_token2wav_first_chunk.py); in chunked mode the same chunking, first
    # chunk included, fed in one piece.
    eng = omni.runtime.speech_engine()
    spk = eng.speaker("Chelsie")
    opts = chat.speech_settings.options
    s = eng.token2wav.stream(spk, preset, mode=mode, seed=SEED, first_chunk_codes=opts.first_chunk_codes,
                             first_chunk_future=opts.first_chunk_future)
    if mode == "exact":
        seam = s.seam
        assert seam == (opts.first_chunk_codes - opts.first_chunk_future) * 480 + CROSSFADE_SAMPLES > 0
        whole = eng.token2wav.render(np.array(codes), spk, preset, seed=SEED)
        wav, whole = wav[seam:], whole[seam:]
    else:
        whole = np.concatenate([s.feed(np.array(codes)), s.finish()])
    snr = snr_db(wav, whole)
    print(f"\n[{preset}/{mode}] first audio after event {k.index('A')} of {len(k)}; streamed vs one-shot {snr:.1f} dB")
    assert snr >= 90.0


def test_voice_changes_the_sound_and_unknown_voice_is_rejected(omni):
    opts = greedy(40)
    a = list(omni.chat(speech=True, voice="Chelsie", speech_options=opts, max_tokens=8).send_sync("Hi"))
    b = list(omni.chat(speech=True, voice="Ethan", speech_options=opts, max_tokens=8).send_sync("Hi"))
    wa, wb = audio(a), audio(b)
    assert wa.size == wb.size > 0 and snr_db(wb, wa) < 20  # different speaker conditioning
    with pytest.raises(po.OptionsError, match="Chelsie, Ethan"):
        omni.chat(speech=True, voice="Nobody")


def test_speech_settings_per_chat_and_per_turn(omni):
    """speech=SpeechSettings(...) equals the keyword shorthands; send(speech={...}) changes one turn
    (same sound as a chat made with those settings) and leaves the chat's settings as they were."""
    opts = greedy(40)
    ethan = list(omni.chat(speech=True, voice="Ethan", speech_options=opts, max_tokens=8).send_sync("Hi"))
    chat = omni.chat(speech=po.SpeechSettings(voice="Chelsie", options=opts), max_tokens=8)
    assert chat.speech_settings == omni.chat(speech=True, speech_options=opts).speech_settings
    turn = list(chat.send_sync("Hi", speech={"voice": "Ethan"}))
    assert np.array_equal(audio(turn), audio(ethan))
    assert chat.speech_settings.voice == "Chelsie"
    ref = omni.chat(speech=True, speech_preset="reference", speech_options=opts).speech_settings
    assert chat.speech_settings.override({"preset": "reference"}) == ref  # its default streaming follows
    assert chat.speech_settings.override({"options": {"max_codes": 7}}).options == opts.replace(max_codes=7)
    with pytest.raises(po.OptionsError, match="Chelsie, Ethan"):
        chat.send_sync("Hi", speech={"voice": "Nobody"})
    with pytest.raises(po.OptionsError, match="unknown speech setting"):
        chat.send_sync("Hi", speech={"speed": 2})
    with pytest.raises(po.OptionsError, match="needs a speech chat"):
        omni.chat().send_sync("Hi", speech={"voice": "Ethan"})
    with pytest.raises(po.OptionsError, match="not both"):
        omni.chat(speech=po.SpeechSettings(), voice="Ethan")
    assert [m.role for m in chat.messages] == ["system", "user", "assistant"]  # the refused turns left no trace


def test_speech_system_prompt_and_options(omni):
    chat = omni.chat(speech=True)
    assert chat.system == SPEECH_SYSTEM_PROMPT
    assert chat.speech_settings.voice == "Chelsie" and chat.speech_settings.preset == "fast" and chat.speech_settings.options == po.SpeechOptions()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        omni.chat(speech=True, system=SPEECH_SYSTEM_PROMPT + " Answer briefly.")
        omni.chat(system="Be brief.")  # text chats need no speech prompt
    with pytest.warns(UserWarning, match="speech prompt"):
        omni.chat(speech=True, system="Be brief.")
    chat = omni.chat(speech=True, speech_options=greedy(5), max_tokens=3)
    with pytest.warns(UserWarning, match="speech prompt"):
        list(chat.send_sync(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]))
    with pytest.raises(po.OptionsError, match="speech=True"):
        omni.chat(voice="Ethan")
    with pytest.raises(po.OptionsError, match="preset"):
        omni.chat(speech=True, speech_preset="slow")
    with pytest.raises(po.OptionsError, match="speech_streaming"):
        omni.chat(speech=True, speech_streaming="live")
    with pytest.raises(po.OptionsError, match="unknown SpeechOptions"):
        omni.chat(speech=True, speech_options={"temperatur": 0.5})
    assert omni.chat(speech=True, speech_options={"top_k": 5}).speech_settings.options.top_k == 5


def test_cancel_during_text_keeps_the_partial_reply(omni):
    chat = omni.chat(speech=True, speech_preset="reference", speech_options=greedy(200, False), max_tokens=120)
    events = chat.send_sync("Tell me a long story.")
    seen = []
    for ev in events:
        seen.append(ev)
        if isinstance(ev, po.AudioChunk):
            break  # the consumer walks away mid-reply: the generator stops at once
    events.close()
    k = kinds(seen)
    assert k.endswith("A") and "D" not in k
    n_codes = len(chat._last_speech.codes)
    assert n_codes < 120  # the talker stopped with the text, well before its limit
    reply = chat.messages[-1]
    assert reply.role == "assistant" and reply.interrupted
    assert reply.text == "".join(e.text for e in seen if isinstance(e, po.TextDelta))
    # the chat and the talker are free again: the next spoken turn runs
    after = list(chat.send_sync("Go on.", max_tokens=4))
    assert after[-1].finish_reason == "length" and not chat.messages[-1].interrupted


def test_cancel_during_speech_stops_within_a_step(omni):
    chat = omni.chat(speech=True, speech_options=greedy(1000, False), max_tokens=6)

    async def run():
        events = []
        async for ev in chat.send("Tell me a long story."):
            events.append(ev)
            if isinstance(ev, po.AudioChunk):
                chat.cancel()  # the text is complete; the speech is cut
        return events

    events = asyncio.run(run())
    done = events[-1]
    assert isinstance(done, po.Done) and done.finish_reason == "cancelled"
    # The producer stops at its next code once the flag is set. Before the consumer saw the first
    # chunk, the producer may have run ahead by at most the stream's 8 queued events (36-code steps):
    # first audio by 72 codes (24 with the default first chunk) + 8 x 36 + one feed, far below the
    # 1000 codes the talker would make.
    assert done.usage.audio_codes <= 72 + 8 * 36 + FEED_CODES
    assert audio(events).size // 480 <= done.usage.audio_codes
    reply = chat.messages[-1]
    assert not reply.interrupted and reply.text == done.text and done.text  # the text was complete


def test_sync_and_async_give_the_same_spoken_turn(omni):
    kw = {"speech": True, "speech_options": po.SpeechOptions(max_codes=80, seed=5, pipelined=False), "max_tokens": 10}

    async def run():
        return [ev async for ev in omni.chat(**kw).send("Hello there")]

    a = asyncio.run(run())
    s = list(omni.chat(**kw).send_sync("Hello there"))
    assert kinds(a) == kinds(s)
    assert a[-1].text == s[-1].text and a[-1].usage == s[-1].usage
    np.testing.assert_array_equal(audio(a), audio(s))
    assert audio(s).size > 0


def test_speech_needs_the_speech_files(converted_tiny, tmp_path):
    import shutil

    src = converted_tiny("base", "f32")  # laid out like a community download: thinker + mmproj only
    shutil.copy(src / "thinker-f32.gguf", tmp_path / "tiny-Qwen2.5-Omni-f32.gguf")
    shutil.copy(src / "mmproj-f32.gguf", tmp_path / "mmproj-tiny-f32.gguf")
    with po.Omni.load_sync(tmp_path, n_threads=1) as m:
        assert not m.capabilities.speech_out
        with pytest.raises(po.FeatureUnavailableError, match="talker"):
            m.chat(speech=True)


def test_saved_speech_chat_keeps_its_voice_and_settings(omni, tmp_path):
    chat = omni.chat(speech=True, voice="Ethan", speech_preset="reference", speech_streaming="exact",
                     speech_options=greedy(5), max_tokens=3)
    first = list(chat.send_sync("Hello"))
    assert isinstance(first[-1], po.Done)
    chat.save(tmp_path / "spoken.chat")
    back = omni.restore_chat(tmp_path / "spoken.chat")
    assert back.speech and back.speech_settings == chat.speech_settings
    assert back.speech_settings.voice == "Ethan" and back.speech_settings.options.max_codes == 5
    assert isinstance(list(back.send_sync("Again"))[-1], po.Done)
    chat.close()
    back.close()
