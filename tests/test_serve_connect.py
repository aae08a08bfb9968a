"""`po.Omni.connect(base_url)`: the Chat API over HTTP against `pocketomni serve` on the tiny model
gives the same events as the local SDK (text, streamed speech, a second turn on the server's cached
prefix, typed errors, cancel), and reads vLLM-Omni's documented whole-reply shape.

vLLM-Omni's shape (contract only, no GPU here): its example client for Qwen2.5-Omni,
vllm-project/vllm-omni examples/online_serving/qwen2_5_omni/openai_chat_completion_client_for_multimodal_generation.py
(commit 115da3e), sends audio_url / image_url parts with data: URLs and reads a non-streamed reply whose
`choices` hold one message with the text (`message.content`) and one with the speech
(`message.audio.data`, a base64 WAV)."""

from __future__ import annotations

import asyncio
import base64
import io
import wave

import numpy as np
import pytest
from serve_harness import running_server, wait_for_record
from test_serve import png_bytes, wav_bytes

import pocketomni as po
from pocketomni.remote.wire import events_from_completion, request_body
from pocketomni.serve import ServeConfig


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, kv_f32=True) as m:
        yield m


@pytest.fixture(scope="module")
def srv(omni):
    with running_server(omni, ServeConfig()) as r:
        yield r


def audio_of(events) -> np.ndarray:
    parts = [e.samples for e in events if isinstance(e, po.AudioChunk)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def test_remote_chat_matches_the_local_sdk(srv, omni):
    remote = po.Omni.connect(srv.base_url)
    assert remote.model == srv.server.model_id
    png, wav = png_bytes(), wav_bytes()
    local = omni.chat(max_tokens=8)
    far = remote.chat(max_tokens=8)
    a = list(local.send_sync("What is this?", images=[png], audio=[wav]))
    b = list(far.send_sync("What is this?", images=[png], audio=[wav]))
    assert [type(e) for e in a] == [type(e) for e in b]
    assert [e.text for e in a if isinstance(e, po.TextDelta)] == [e.text for e in b if isinstance(e, po.TextDelta)]
    assert b[-1].text == a[-1].text and b[-1].finish_reason == a[-1].finish_reason == "length"
    assert b[-1].usage.prompt_tokens == a[-1].usage.prompt_tokens and b[-1].usage.reply_tokens == 8
    # the second turn: the server continues its cached chat (only the new message is prefilled)
    a2 = list(local.send_sync("And then?"))
    b2 = list(far.send_sync("And then?"))
    assert b2[-1].text == a2[-1].text and b2[-1].usage.prompt_tokens == a2[-1].usage.prompt_tokens
    assert wait_for_record(srv.server).reused_messages == 2


def test_remote_speech_streams_the_same_samples(srv, omni):
    so = po.SpeechOptions(seed=5, max_codes=100)
    local = list(omni.chat(speech=True, voice="Ethan", speech_options=so, max_tokens=80).send_sync("Tell me a story."))

    async def remote_events():
        chat = po.Omni.connect(srv.base_url).chat(speech=True, voice="Ethan", speech_options=so, max_tokens=80)
        return [ev async for ev in chat.send("Tell me a story.")]

    far = asyncio.run(remote_events())
    assert far[-1].text == local[-1].text and far[-1].usage.audio_codes == 100
    x, y = audio_of(local), audio_of(far)
    assert x.size == y.size > 0
    # the wire carries round(x * 32767) as int16: back as float, each sample is within half a step
    assert np.max(np.abs(y.astype(np.float64) - np.clip(x, -1, 1))) <= 0.5 / 32767 + 1e-7
    assert sum(isinstance(e, po.AudioChunk) for e in far) == sum(isinstance(e, po.AudioChunk) for e in local)


def test_remote_errors_are_typed_and_break_cancels(srv):
    remote = po.Omni.connect(srv.base_url)
    with pytest.raises(po.ContextOverflowError, match="n_ctx"):
        list(remote.chat().send_sync("word " * 5000))
    with pytest.raises(po.OptionsError, match="Chelsie, Ethan"):
        list(remote.chat(speech=True, voice="Nobody").send_sync("Hi"))
    with pytest.raises(po.PocketOmniError, match="cannot reach"):
        po.Omni.connect("http://127.0.0.1:9/v1")

    async def first_then_break():
        chat = remote.chat(max_tokens=3000)
        n = 0
        async for ev in chat.send("Count to a thousand."):
            n += isinstance(ev, po.TextDelta)
            if n == 2:
                break
        return chat

    chat = asyncio.run(first_then_break())
    rec = wait_for_record(srv.server)
    assert rec.finish_reason == "disconnected" and rec.tokens_after_cancel is not None and rec.tokens_after_cancel <= 1
    assert chat.messages == []  # the cancelled turn is not part of the conversation


def _wav_b64(samples: np.ndarray, rate: int) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def test_vllm_omni_whole_reply_shape():
    """A reply shaped as vLLM-Omni's example client reads it: text and speech in separate choices."""
    pcm = (np.sin(np.arange(2400) / 7) * 8000).astype(np.int16)
    reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": "Qwen/Qwen2.5-Omni-7B", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None,
                                 "audio": {"id": "a1", "data": _wav_b64(pcm, 24000), "expires_at": 0, "transcript": ""}},
         "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}}
    events = list(events_from_completion(reply))
    assert [type(e) for e in events] == [po.TextDelta, po.AudioChunk, po.Done]
    assert events[0].text == events[2].text == "Hello there." and events[2].finish_reason == "stop"
    np.testing.assert_array_equal(np.round(events[1].samples * 32767).astype(np.int16), pcm)
    assert events[1].sample_rate == 24000 and events[2].usage.prompt_tokens == 30
    # and the request a non-streaming client sends: data: URL parts vLLM-Omni accepts, WAV asked for
    body = request_body("Qwen/Qwen2.5-Omni-7B", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "Hi"}]}],
        {"max_tokens": 16, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": None, "stop": ()}, stream=False, speech={"voice": "Chelsie", "options": {}})
    assert body["stream"] is False and "stream_options" not in body and body["max_tokens"] == 16
    assert body["modalities"] == ["text", "audio"] and body["audio"]["format"] == "wav"
    assert body["temperature"] == 0.0 and not {"seed", "top_k", "top_p"} & set(body)  # "off" is left out
