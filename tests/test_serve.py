"""`pocketomni serve` driven by the official openai client on the tiny converted model: text, image and
audio in, text and speech out (streamed and whole) equal to the SDK's own output for the same inputs
and seed, prefix reuse across turns, client disconnects, and every error class with its status."""

from __future__ import annotations

import base64
import io
import time
import wave

import numpy as np
import openai
import pytest
from PIL import Image
from serve_harness import running_server, wait_for_record

import pocketomni as po
from pocketomni.serve import ServeConfig

SEED = 1234
SPEECH = {"max_codes": 120}  # the tiny talker speaks to its limit: keep replies short


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, kv_f32=True) as m:
        yield m


@pytest.fixture(scope="module")
def srv(omni):
    with running_server(omni, ServeConfig(max_active=2, cache_size=4)) as r:
        yield r


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key="not-needed", max_retries=0, timeout=120)


def png_bytes() -> bytes:
    img = (np.random.default_rng(1).random((56, 84, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = np.round(0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """What a float waveform becomes on the wire (the server's conversion, restated here)."""
    return np.round(np.clip(x.astype(np.float64), -1, 1) * 32767).astype("<i2")


def sdk_turn(chat, **kw) -> tuple[po.Done, np.ndarray]:
    events = list(chat.send_sync(**kw))
    parts = [e.samples for e in events if isinstance(e, po.AudioChunk)]
    return events[-1], (np.concatenate(parts) if parts else np.zeros(0, np.float32))


def stream_speech(client, model, messages, **kw):
    """(transcript, pcm16 samples, kinds of deltas in order, chunks) of a streamed spoken reply."""
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, modalities=["text", "audio"],
                                            audio={"voice": "Chelsie", "format": "pcm16"}, **kw)
    text, pcm, kinds, ids, chunks = [], [], [], set(), []
    for ch in stream:
        chunks.append(ch)
        if not ch.choices:
            continue
        a = ch.choices[0].delta.audio
        if a is None:
            continue
        ids.add(a.id)
        if a.transcript:
            text.append(a.transcript)
            kinds.append("T")
        if a.data:
            pcm.append(np.frombuffer(base64.b64decode(a.data), "<i2"))
            kinds.append("A")
    assert len(ids) == 1
    return "".join(text), (np.concatenate(pcm) if pcm else np.zeros(0, "<i2")), "".join(kinds), chunks


# ------------------------------------------------------------------ models and text


def test_models_lists_the_one_model(client, srv, omni):
    models = client.models.list().data
    assert [m.id for m in models] == [srv.server.model_id] == [omni.folder.root.name]
    extra = models[0].model_extra
    assert extra["voices"] == ["Chelsie", "Ethan"] and extra["capabilities"]["speech_out"] is True


def test_text_reply_streamed_and_whole_equals_the_sdk(client, srv, omni):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    done, _ = sdk_turn(omni.chat(), messages=msgs, max_tokens=12)
    whole = client.chat.completions.create(model=srv.server.model_id, messages=msgs, max_tokens=12)
    assert whole.choices[0].message.content == done.text and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    assert whole.usage.prompt_tokens == done.usage.prompt_tokens
    stream = client.chat.completions.create(model=srv.server.model_id, messages=msgs, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 6  # streamed, not one blob
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_sampling_options_and_seed_reproduce_the_sdk(client, srv, omni):
    msgs = [{"role": "user", "content": "Say something random."}]
    kw = {"temperature": 0.9, "top_p": 0.95, "seed": 7, "stop": ["\n\n"]}
    done, _ = sdk_turn(omni.chat(), messages=msgs, max_tokens=10, top_k=20, **kw)
    out = client.chat.completions.create(model=srv.server.model_id, messages=msgs, max_completion_tokens=10,
                                         extra_body={"top_k": 20}, **kw)
    assert out.choices[0].message.content == done.text


def test_image_and_audio_in_equal_the_sdk(client, srv, omni):
    png, wav = png_bytes(), wav_bytes()
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}},
        {"type": "text", "text": "What do you see and hear?"},
    ]
    sdk_content = [{"type": "image", "image": png}, {"type": "audio", "audio": wav},
                   {"type": "text", "text": "What do you see and hear?"}]
    done, _ = sdk_turn(omni.chat(), messages=[{"role": "user", "content": sdk_content}], max_tokens=8)
    assert done.usage.media_tokens > 0
    out = client.chat.completions.create(model=srv.server.model_id, messages=[{"role": "user", "content": content}],
                                         max_tokens=8)
    assert out.choices[0].message.content == done.text
    assert out.usage.prompt_tokens == done.usage.prompt_tokens


def test_video_with_its_sound_equals_the_sdk(client, srv, omni, tmp_path):
    from video_files import write_clip

    t = np.arange(3 * 16000) / 16000
    path = write_clip(tmp_path / "clip.mp4", fps=10, seconds=3, size=(160, 112), step=6,
                      tone=(0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate=16000)
    done, _ = sdk_turn(omni.chat(), messages=[{"role": "user", "content": [
        {"type": "video", "video": str(path)}, {"type": "text", "text": "What happens?"}]}], max_tokens=6)
    url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    out = client.chat.completions.create(model=srv.server.model_id, max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]}])
    assert out.choices[0].message.content == done.text
    assert out.usage.prompt_tokens == done.usage.prompt_tokens and wait_for_record(srv.server).media_tokens > 0


# ------------------------------------------------------------------ speech


def test_streamed_speech_equals_the_sdk_for_the_same_seed(client, srv, omni):
    msgs = [{"role": "user", "content": "Tell me a long story."}]
    chat = omni.chat(speech=True, voice="Chelsie", speech_options=po.SpeechOptions(seed=SEED, **SPEECH))
    done, wav = sdk_turn(chat, messages=msgs, max_tokens=90)
    text, pcm, kinds, chunks = stream_speech(client, srv.server.model_id, msgs, max_tokens=90, seed=SEED,
                                             extra_body={"speech_options": SPEECH})
    assert text == done.text and wav.size > 0
    np.testing.assert_array_equal(pcm, to_pcm16(wav))  # every sample, in order
    assert kinds.index("A") < kinds.rindex("T"), kinds  # speech arrived while the transcript was still streaming
    assert kinds.count("A") > 1  # in several chunks, as the SDK rendered them
    assert all(c.choices[0].delta.content is None for c in chunks if c.choices)  # text travels as the transcript


def test_whole_spoken_reply_is_a_wav_and_continues_by_audio_id(client, srv, omni):
    msgs = [{"role": "user", "content": "Hello there."}]
    out = client.chat.completions.create(model=srv.server.model_id, messages=msgs, max_tokens=10, seed=SEED,
                                         modalities=["text", "audio"], audio={"voice": "ethan", "format": "wav"},
                                         extra_body={"speech_options": SPEECH})
    msg = out.choices[0].message
    chat = omni.chat(speech=True, voice="Ethan", speech_options=po.SpeechOptions(seed=SEED, **SPEECH))
    done, wav = sdk_turn(chat, messages=msgs, max_tokens=10)
    assert msg.content is None and msg.audio.transcript == done.text
    with wave.open(io.BytesIO(base64.b64decode(msg.audio.data))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        np.testing.assert_array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), to_pcm16(wav))
    assert out.usage.completion_tokens_details.audio_tokens == done.usage.audio_codes == SPEECH["max_codes"]

    # the next turn names the spoken reply by its id (as OpenAI's clients do): the cached chat continues
    follow = msgs + [{"role": "assistant", "audio": {"id": msg.audio.id}}, {"role": "user", "content": "Go on."}]
    out2 = client.chat.completions.create(model=srv.server.model_id, messages=follow, max_tokens=6, seed=SEED,
                                          modalities=["text", "audio"], audio={"voice": "Ethan", "format": "pcm16"},
                                          extra_body={"speech_options": SPEECH})
    assert out2.usage.prompt_tokens_details.cached_tokens > 0
    done2, wav2 = sdk_turn(chat, messages=[{"role": "user", "content": "Go on."}], max_tokens=6)
    assert out2.choices[0].message.audio.transcript == done2.text
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(out2.choices[0].message.audio.data), "<i2"),
                                  to_pcm16(wav2))


# ------------------------------------------------------------------ prefix reuse


def test_second_turn_reuses_the_cached_history(client, srv, omni):
    png = png_bytes()
    first = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "text", "text": "Describe this picture in detail."}]}]
    r1 = client.chat.completions.create(model=srv.server.model_id, messages=first, max_tokens=16)
    rec1 = wait_for_record(srv.server)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0 and rec1.reused_messages == 0
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And the colours?"}]
    r2 = client.chat.completions.create(model=srv.server.model_id, messages=second, max_tokens=8)
    rec2 = wait_for_record(srv.server)
    history = r2.usage.prompt_tokens  # what a server without reuse would prefill
    assert rec2.reused_messages == 2 and r2.usage.prompt_tokens_details.cached_tokens > 0
    assert rec2.prompt_tokens == history - r2.usage.prompt_tokens_details.cached_tokens
    assert rec2.prompt_tokens < history - rec1.prompt_tokens  # not even the image's tokens were prefilled again
    # the same two turns in one SDK chat give the same reply
    chat = omni.chat()
    sdk_turn(chat, messages=[{"role": "user", "content": [{"type": "image", "image": png},
                                                          {"type": "text", "text": "Describe this picture in detail."}]}],
             max_tokens=16)
    done2, _ = sdk_turn(chat, messages=[{"role": "user", "content": "And the colours?"}], max_tokens=8)
    assert r2.choices[0].message.content == done2.text
    # an edited history does not match the cached prefix: full prefill, and still answered
    edited = first + [{"role": "assistant", "content": "Something else."}, {"role": "user", "content": "And the colours?"}]
    r3 = client.chat.completions.create(model=srv.server.model_id, messages=edited, max_tokens=4)
    assert r3.usage.prompt_tokens_details.cached_tokens == 0 and wait_for_record(srv.server).reused_messages == 0


# ------------------------------------------------------------------ disconnects


def test_closing_a_stream_cancels_generation_within_one_token(client, srv):
    stream = client.chat.completions.create(model=srv.server.model_id, max_tokens=3000, stream=True,
                                            messages=[{"role": "user", "content": "Count to a thousand."}])
    got = 0
    for ch in stream:
        got += bool(ch.choices and ch.choices[0].delta.content)
        if got == 3:
            break
    stream.close()
    rec = wait_for_record(srv.server)
    assert rec.finish_reason == "disconnected", rec
    assert rec.tokens_after_cancel is not None and 0 <= rec.tokens_after_cancel <= 1, rec
    assert rec.events < 3000


def test_a_client_timeout_cancels_a_whole_reply(srv):
    impatient = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=srv.server.model_id, max_tokens=3000,
                                          messages=[{"role": "user", "content": "Count to a thousand."}])
    rec = wait_for_record(srv.server)
    assert rec.finish_reason == "disconnected", rec
    assert rec.tokens_after_cancel is not None and 0 <= rec.tokens_after_cancel <= 1, rec


# ------------------------------------------------------------------ errors


def _error(excinfo) -> dict:
    body = excinfo.value.body
    assert set(body) == {"message", "type", "param", "code"}, body  # the client unwraps {"error": {...}}
    return body


def test_bad_input_is_400_with_the_sdks_fix_it_message(client, srv):
    m = srv.server.model_id
    hi = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=hi, temperature=-1)
    assert _error(e)["code"] == "invalid_value" and "use 0 for greedy" in e.value.message
    bad_png = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}
    for stream in (False, True):  # a stream fails before its first byte: a real status, not an SSE error
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=m, messages=[{"role": "user", "content": [bad_png]}], stream=stream)
        assert _error(e)["code"] == "invalid_media", e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=[{"role": "user", "content": "word " * 5000}])
    assert _error(e)["code"] == "context_length_exceeded" and "n_ctx" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=hi, modalities=["text", "audio"],
                                       audio={"voice": "Nobody", "format": "wav"})
    assert "Chelsie, Ethan" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=hi, stream=True, modalities=["text", "audio"],
                                       audio={"voice": "Chelsie", "format": "wav"})
    assert _error(e)["param"] == "audio.format" and "pcm16" in e.value.message
    for url, hint in (("https://example.com/cat.png", "data: URL"), ("/etc/hostname", "--allow-local-files")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=m, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}])
        assert hint in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=[{"role": "assistant", "content": "Hi"}])
    assert "last message must be a user message" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=hi, n=2)
    assert _error(e)["param"] == "n"
    # the server is still well after all of these
    assert client.chat.completions.create(model=m, messages=hi, max_tokens=2).usage.completion_tokens == 2


def test_unknown_model_and_route_are_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert _error(e)["code"] == "model_not_found" and "GET /v1/models" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="x", input="hi")


def test_local_files_only_inside_the_allowed_folder(omni, tmp_path):
    inside = tmp_path / "media"
    inside.mkdir()
    (inside / "cat.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    with running_server(omni, ServeConfig(allow_local_files=inside)) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0)

        def ask(url: str):
            return c.chat.completions.create(model=r.server.model_id, max_tokens=6, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is this?"}]}])

        data = ask("data:image/png;base64," + base64.b64encode(png_bytes()).decode()).choices[0].message.content
        assert ask(f"file://{inside / 'cat.png'}").choices[0].message.content == data
        assert ask(str(inside / "cat.png")).choices[0].message.content == data
        with pytest.raises(openai.PermissionDeniedError) as e:
            ask(str(inside / ".." / "secret.png"))
        assert _error(e)["code"] == "file_not_allowed"


def test_body_limit_is_413(omni):
    with running_server(omni, ServeConfig(max_body_bytes=4096)) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=r.server.model_id, messages=[{"role": "user", "content": "x" * 5000}])
        assert e.value.status_code == 413 and _error(e)["code"] == "request_too_large"
        assert c.chat.completions.create(model=r.server.model_id, max_tokens=2,
                                         messages=[{"role": "user", "content": "x" * 100}]).choices


def _hold_a_slot(c, model):
    """Start a long streamed reply and read its first chunk: it now holds a generation slot."""
    stream = c.chat.completions.create(model=model, max_tokens=3000, stream=True,
                                       messages=[{"role": "user", "content": "Count to a thousand."}])
    next(iter(stream))
    return stream


def test_full_queue_is_429_and_a_long_wait_is_503(omni):
    with running_server(omni, ServeConfig(max_active=1, max_queue=0)) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0)
        busy = _hold_a_slot(c, r.server.model_id)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=r.server.model_id, messages=[{"role": "user", "content": "Hi"}])
        assert _error(e)["code"] == "queue_full" and e.value.response.headers["retry-after"] == "1"
        busy.close()
    with running_server(omni, ServeConfig(max_active=1, max_queue=1, queue_timeout=0.3)) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0)
        busy = _hold_a_slot(c, r.server.model_id)
        t0 = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model=r.server.model_id, messages=[{"role": "user", "content": "Hi"}])
        assert e.value.status_code == 503 and _error(e)["code"] == "queue_timeout"
        assert time.monotonic() - t0 >= 0.3
        busy.close()
        wait_for_record(r.server)
        assert c.chat.completions.create(model=r.server.model_id, max_tokens=2,
                                         messages=[{"role": "user", "content": "Hi"}]).choices  # the slot is free again


def test_request_timeout_stops_generation(omni):
    with running_server(omni, ServeConfig(request_timeout=0.5)) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=r.server.model_id, max_tokens=3000,
                                      messages=[{"role": "user", "content": "Count to a thousand."}])
        assert e.value.status_code == 504 and _error(e)["code"] == "timeout" and "--request-timeout" in e.value.message
        rec = wait_for_record(r.server)
        assert rec.finish_reason == "timeout" and rec.events < 3000
        # in a stream the error arrives as an event after the text so far; the client raises it
        stream = c.chat.completions.create(model=r.server.model_id, max_tokens=3000, stream=True,
                                           messages=[{"role": "user", "content": "Count to a thousand."}])
        with pytest.raises(openai.APIError, match="longer than this server's limit"):
            for _ in stream:
                pass
