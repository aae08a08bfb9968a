"""Chat behaviour through the public API on the converted tiny checkpoint: sync/async agreement,
cancellation, fork, save/restore, concurrent chats, options, message formats, KV consistency."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import wave

import numpy as np
import pytest

import pocketomni as po
from pocketomni.backend import LlamaContext


def _image(seed: int = 0, w: int = 84, h: int = 56) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _audio(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + np.random.default_rng(seed).standard_normal(t.size) * 0.05).astype(np.float32)


def _wav_bytes(x: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def _png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as o:
        yield o


def _run(chat, *args, **kw) -> po.Done:
    events = list(chat.send_sync(*args, **kw))
    done = events[-1]
    assert isinstance(done, po.Done) and all(isinstance(e, po.TextDelta) for e in events[:-1])
    assert "".join(e.text for e in events[:-1]) == done.text
    return done


async def _arun(chat, *args, **kw) -> po.Done:
    events = [ev async for ev in chat.send(*args, **kw)]
    assert isinstance(events[-1], po.Done)
    return events[-1]


def _greedy_from_tokens(omni, ids: list[int], n: int) -> list[int]:
    """Greedy continuation of a text-only token sequence in a fresh raw context (no SDK state)."""
    model = omni.runtime.thinker.model
    with LlamaContext(model, n_ctx=omni.n_ctx, n_seq_max=1) as ctx:
        logits = ctx.decode_tokens(ids).last_logits
        out = []
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            logits = ctx.decode_tokens([tok]).last_logits
        return out


def test_sync_and_async_give_the_same_tokens(omni) -> None:
    turns = [{"text": "Look at this.", "images": [_image(1)]}, {"text": "Now listen.", "audio": [(_audio(1.2), 16000)]},
             {"text": "Thanks!"}]
    for opts in ({"max_tokens": 8}, {"max_tokens": 8, "temperature": 0.9, "top_k": 50, "top_p": 0.9, "seed": 11}):
        a, b = omni.chat(**opts), omni.chat(**opts)
        sync = [_run(a, **t) for t in turns]

        async def main(chat) -> list[po.Done]:
            return [await _arun(chat, **t) for t in turns]

        asyn = asyncio.run(main(b))
        assert [d.tokens for d in sync] == [d.tokens for d in asyn]
        assert [d.text for d in sync] == [d.text for d in asyn]
        assert a.tokens == b.tokens and len(sync[0].tokens) == 8
        a.close()
        b.close()


def test_history_matches_a_fresh_decode_of_the_cached_tokens(omni) -> None:
    chat = omni.chat(max_tokens=5)
    _run(chat, "Hello there")
    done = _run(chat, "And again")
    # A raw context fed the chat's cached ids (+ the pending last reply token) continues identically.
    ids = chat.tokens[: len(chat.tokens) - (len(done.tokens) - 1)]
    assert _greedy_from_tokens(omni, ids, 5) == list(done.tokens)
    assert chat.n_tokens == len(chat.tokens)
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "assistant"]


def test_async_break_stops_within_one_token_and_keeps_partial_reply(omni) -> None:
    chat = omni.chat(max_tokens=200)
    steps: list[bool] = []
    real_step = chat._session.step

    def spy(tok: int):
        steps.append(chat._flag is not None and chat._flag.is_set)
        return real_step(tok)

    chat._session.step = spy  # type: ignore[method-assign]

    async def main() -> list[str]:
        seen = []
        async for ev in chat.send("Tell me a long story"):
            seen.append(ev.text)
            if len(seen) == 3:
                break
        return seen

    seen = asyncio.run(main())
    msgs = chat.messages  # waits for the worker to finish its last token
    assert msgs[-1].role == "assistant" and msgs[-1].interrupted
    assert msgs[-1].text.startswith("".join(seen))
    assert sum(steps) <= 1, "decoding went on after the cancel flag was set"
    assert len(steps) < 200
    # The chat stays consistent: the cache equals its history and the next turn works from it.
    assert chat.n_tokens == len(chat.tokens)
    n_before = len(chat.tokens)
    done = _run(chat, "Shorter please", max_tokens=4)
    ids = chat.tokens[: n_before + done.usage.prompt_tokens]
    assert _greedy_from_tokens(omni, ids, 4) == list(done.tokens)
    chat.close()


def test_task_cancellation_and_sync_break(omni) -> None:
    chat = omni.chat(max_tokens=300)

    async def main() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for ev in chat.send("Go on and on"):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert chat.messages[-1].interrupted and len(chat.tokens) < 300 + 30
    # sync: leaving the loop closes the generator at once
    n = len(chat.messages)
    for i, ev in enumerate(chat.send_sync("More")):
        if i == 1:
            break
    assert len(chat.messages) == n + 2 and chat.messages[-1].interrupted
    # chat.cancel() from another thread ends the turn with finish_reason "cancelled"
    events = chat.send_sync("Again")
    first = next(events)
    assert isinstance(first, po.TextDelta)
    threading.Thread(target=chat.cancel).start()
    rest = list(events)
    assert rest[-1].finish_reason == "cancelled" and chat.messages[-1].interrupted
    done = _run(chat, "Fine.", max_tokens=3)
    assert done.finish_reason == "length" and not chat.messages[-1].interrupted
    chat.close()


def test_busy_chat_refuses_a_second_sync_turn(omni) -> None:
    chat = omni.chat(max_tokens=20)
    gen = chat.send_sync("one")
    next(gen)
    with pytest.raises(po.PocketOmniError, match="busy"):
        list(chat.send_sync("two"))
    gen.close()
    assert _run(chat, "two", max_tokens=2).finish_reason == "length"
    chat.close()


def test_messages_never_wait_for_a_running_turn(omni) -> None:
    """Another thread reading `messages` during a turn gets the history as of the last finished turn
    at once; the turn's own Done makes its messages visible; a chat is a context manager."""
    with omni.chat(max_tokens=3000) as chat:
        _run(chat, "first", max_tokens=2)
        before = chat.messages
        started, release = threading.Event(), threading.Event()

        def turn() -> None:
            for _ in chat.send_sync("second"):
                started.set()
                release.wait(60)

        worker = threading.Thread(target=turn)
        worker.start()
        assert started.wait(60)
        assert chat.messages == before  # the turn is held mid-reply: no wait, the finished history
        chat.cancel()
        release.set()
        worker.join(60)
        assert not worker.is_alive()
        roles = [(m.role, m.interrupted) for m in chat.messages]
        assert roles[len(before):] == [("user", False), ("assistant", True)]
    assert chat.closed


async def _async_context_manager(omni) -> list[str]:
    async with await omni.achat(max_tokens=2) as chat:
        async for _ in chat.send("hi"):
            pass
        forked = await chat.afork()
        await forked.aclose()
        await chat.areset()
        roles = [m.role for m in chat.messages]
    assert chat.closed and forked.closed
    return roles


def test_async_twins_and_async_context_manager(omni) -> None:
    assert asyncio.run(_async_context_manager(omni)) == []  # reset keeps only the system prompt (none here)


def test_fork_continues_independently(omni) -> None:
    a = omni.chat(max_tokens=6)
    _run(a, "Start", images=[_image(3)])
    b = a.fork()
    assert b.tokens == a.tokens and b.messages == a.messages
    tokens_a = a.tokens
    rb = _run(b, "Branch question")
    assert a.tokens == tokens_a  # the fork's turn did not touch the original
    ra = _run(a, "Branch question")
    assert ra.tokens == rb.tokens and a.tokens == b.tokens
    _run(b, "Something else entirely", max_tokens=3)
    assert a.tokens != b.tokens
    a.close()
    b.close()


def test_save_and_restore_continue_exactly(omni, tmp_path) -> None:
    chat = omni.chat(system="Be brief.", max_tokens=6, temperature=0.7, seed=5)
    _run(chat, "Hi", audio=[(_audio(0.8, seed=2), 16000)])
    path = tmp_path / "chat.pochat"
    chat.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    want = _run(chat, "What next?", seed=9)
    restored = omni.restore_chat(path)
    assert restored.system == "Be brief." and restored.options == chat.options
    assert [m.to_dict() for m in restored.messages] == [m.to_dict() for m in chat.messages[:3]]
    got = _run(restored, "What next?", seed=9)
    assert got.tokens == want.tokens and restored.tokens == chat.tokens
    (tmp_path / "bad.pochat").write_bytes(path.read_bytes()[:100])
    with pytest.raises(po.ModelFileError):
        omni.restore_chat(tmp_path / "bad.pochat")
    with pytest.raises(po.ModelFileError):
        omni.restore_chat(tmp_path / "absent.pochat")
    chat.close()
    restored.close()


def test_two_chats_interleaved_equal_each_alone(omni) -> None:
    script = {
        "a": [{"text": "Describe.", "images": [_image(5)]}, {"text": "Shorter."}],
        "b": [{"text": "Hear this.", "audio": [(_audio(1.5, seed=4), 16000)]}, {"text": "Again."}],
    }
    alone = {}
    for k, turns in script.items():
        c = omni.chat(max_tokens=10)
        alone[k] = [_run(c, **t).tokens for t in turns]
        c.close()

    async def main() -> dict[str, list[tuple[int, ...]]]:
        chats = {k: omni.chat(max_tokens=10) for k in script}
        out: dict[str, list[tuple[int, ...]]] = {k: [] for k in script}
        for i in range(2):
            dones = await asyncio.gather(*(_arun(chats[k], **script[k][i]) for k in script))
            for k, d in zip(script, dones):
                out[k].append(d.tokens)
        for c in chats.values():
            c.close()
        return out

    assert asyncio.run(main()) == alone


def test_options_stop_strings_length_and_seed(omni) -> None:
    base = _run(omni.chat(), "Count to ten", max_tokens=16)
    assert base.finish_reason == "length" and base.usage.reply_tokens == 16
    text = base.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.find(stop)
    d = _run(omni.chat(), "Count to ten", max_tokens=16, stop=[stop])
    assert d.finish_reason == "stop_string" and d.text == text[:cut]
    s1 = _run(omni.chat(), "Pick", max_tokens=8, temperature=1.0, seed=3)
    s2 = _run(omni.chat(), "Pick", max_tokens=8, temperature=1.0, seed=3)
    s3 = _run(omni.chat(), "Pick", max_tokens=8, temperature=1.0, seed=4)
    assert s1.tokens == s2.tokens and s1.tokens != s3.tokens
    with pytest.raises(po.OptionsError, match="temperatur"):
        omni.chat().send_sync("x", temperatur=0.5)
    with pytest.raises(po.OptionsError):
        omni.chat(max_tokens=0)
    t = base.timings
    assert t.time_to_first_token > 0 and t.prefill_tokens_per_second > 0 and t.decode_tokens_per_second > 0


def test_end_of_reply_closes_the_turn(omni, monkeypatch) -> None:
    probe = _run(omni.chat(), "Hello", max_tokens=4)
    chat = omni.chat()
    monkeypatch.setattr(omni.runtime.thinker, "eog_ids", frozenset({probe.tokens[2]}))
    done = _run(chat, "Hello", max_tokens=4)
    assert done.finish_reason == "stop" and done.tokens == probe.tokens[:2]
    monkeypatch.undo()
    n = len(chat.tokens)
    nxt = _run(chat, "Bye", max_tokens=2)
    im_end = omni.runtime.thinker.model.token_id("<|im_end|>")
    assert chat.tokens[n] == im_end and nxt.usage.prompt_tokens == len(chat.tokens) - n - 1
    chat.close()


def test_openai_messages_equal_keyword_inputs(omni, tmp_path) -> None:
    img, aud = _image(9), _audio(1.0, seed=9)
    (tmp_path / "p.png").write_bytes(_png_bytes(img))
    (tmp_path / "a.wav").write_bytes(_wav_bytes(aud))
    a = _run(omni.chat(), "What is this?", images=[str(tmp_path / "p.png")], audio=[tmp_path / "a.wav"], max_tokens=6)
    url = "data:image/png;base64," + base64.b64encode(_png_bytes(img)).decode()
    msgs = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav_bytes(aud)).decode(), "format": "wav"}},
        {"type": "text", "text": "What is this?"},
    ]}]
    b = _run(omni.chat(), messages=msgs, max_tokens=6)
    assert a.tokens == b.tokens and a.usage == b.usage
    # several images keep their order
    c1 = _run(omni.chat(), "Compare", images=[_image(1), _image(2)], max_tokens=6)
    c2 = _run(omni.chat(), "Compare", images=[_image(2), _image(1)], max_tokens=6)
    assert c1.usage.media_tokens == 12 and c1.tokens != c2.tokens
    from PIL import Image  # PIL images and encoded bytes are the same inputs as arrays

    c3 = _run(omni.chat(), "Compare", images=[Image.fromarray(_image(1)), _png_bytes(_image(2))], max_tokens=6)
    assert c3.tokens == c1.tokens
    # a system message and an earlier exchange given as messages
    sys_chat = omni.chat(system="S")
    d1 = _run(sys_chat, "Q", max_tokens=3)
    d2 = _run(omni.chat(), messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], max_tokens=3)
    assert d1.tokens == d2.tokens
    with pytest.raises(po.OptionsError):
        omni.chat().send_sync(messages=[{"role": "user", "content": [{"type": "bogus"}]}])
    with pytest.raises(po.OptionsError):
        omni.chat().send_sync(messages=[{"role": "assistant", "content": "no question"}])


def test_reset_keeps_system_prompt(omni) -> None:
    chat = omni.chat(system="Be nice.", max_tokens=4)
    first = _run(chat, "Hi")
    _run(chat, "More")
    chat.reset()
    assert chat.messages == [] and chat.tokens == []
    assert _run(chat, "Hi").tokens == first.tokens
    chat.close()


def test_stock_mtmd_audio_fallback_and_awaitable_load(converted_tiny) -> None:
    folder = converted_tiny("base", "f32")

    async def main() -> po.Done:
        omni = await po.Omni.load(folder, n_threads=1, exact_audio=False)
        try:
            assert omni.capabilities.audio_in and not omni.capabilities.exact_audio
            return await _arun(omni.chat(max_tokens=2), "listen", audio=[(_audio(1.0), 16000)])
        finally:
            await omni.aclose()

    done = asyncio.run(main())
    assert done.usage.media_tokens == 750  # stock mtmd pads to a 30 s window (design.md section 8)


def test_quantized_folder_chats(converted_tiny) -> None:
    with po.Omni.load_sync(converted_tiny("base", "q4_k_m"), n_threads=1) as omni:
        chat = omni.chat(max_tokens=3)
        d1 = _run(chat, "Look", images=[_image(4)], audio=[(_audio(0.5), 16000)])
        d2 = _run(chat, "Again")
        assert d1.usage.media_tokens == 6 + 12 and d2.usage.reply_tokens == 3


def test_progress_follows_media_encoding_and_prefill(omni) -> None:
    """on_progress sees each media item encoded, then the prompt's rows prefilled up to the total
    (several micro-batches when the prompt is longer than n_batch), from send_sync and send."""
    seen: list[po.Progress] = []
    with omni.chat(max_tokens=1) as chat:
        done = _run(chat, "Describe both.", images=[_image(1), _image(2)], audio=[(_audio(0.5), 16000)],
                    on_progress=seen.append)
        total = done.usage.prompt_tokens
        enc = [(p.done, p.total) for p in seen if p.stage == "encode"]
        pre = [(p.done, p.total) for p in seen if p.stage == "prefill"]
        assert enc == [(1, 3), (2, 3), (3, 3)]
        assert pre and pre[-1] == (total, total) and all(t == total for _, t in pre)
        assert [d for d, _ in pre] == sorted(d for d, _ in pre)
        assert [p.stage for p in seen] == ["encode"] * 3 + ["prefill"] * len(pre)
        batch = chat._session.ctx.n_batch
        assert len(pre) >= -(-total // batch)  # at least one report per micro-batch

        async def run_async() -> list[po.Progress]:
            got: list[po.Progress] = []
            async for _ in chat.send("Again.", on_progress=got.append):
                pass
            return got

        got = asyncio.run(run_async())
        assert got and got[-1].stage == "prefill" and got[-1].done == got[-1].total


def test_logits_processors_shape_the_reply(omni) -> None:
    """A processor that bans the greedy reply's first token changes the reply; one that only observes
    leaves it as it was and sees the whole conversation's ids; a bad one is a typed error."""
    with omni.chat(max_tokens=6, temperature=0.0) as chat:
        base = chat.fork()
        plain = _run(base, "Hello")
        banned = plain.tokens[0]

        def ban(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
            logits = logits.copy()
            logits[banned] = -np.inf
            return logits

        seen: list[int] = []

        def observe(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
            seen.append(len(ids))
            return logits

        other = chat.fork()
        got = _run(other, "Hello", logits_processors=[observe, ban])
        assert got.tokens[0] != banned and banned not in got.tokens
        # one call per reply token, each seeing the conversation so far (prompt + reply tokens decoded)
        assert len(seen) == len(got.tokens) and seen == list(range(seen[0], seen[0] + len(seen)))
        assert seen[0] == len(other.tokens) - len(got.tokens) + 1  # the last reply token is not decoded yet
        seen.clear()
        watched = chat.fork()
        assert _run(watched, "Hello", logits_processors=[observe]).tokens == plain.tokens
        with pytest.raises(po.OptionsError, match="logits_processors"):
            chat.send_sync("x", logits_processors=ban)
        with pytest.raises(po.OptionsError, match="must return an array"):
            _run(chat.fork(), "x", logits_processors=[lambda ids, logits: None])
        for c in (base, other, watched):
            c.close()


def test_cancel_reaches_inside_a_long_audio_encode(omni, monkeypatch) -> None:
    """Cancelling while a long clip is being encoded stops at the audio tower's next layer (not after
    the window group, or the whole clip); the turn never happened and the chat goes on."""
    from pocketomni.audio.tower import AudioEncoder

    calls: list[int] = []
    real = AudioEncoder._encode_group
    with omni.chat(max_tokens=2) as chat:
        _run(chat, "first")
        before = chat.messages

        def group(self, *args):
            calls.append(1)
            if len(calls) == 1:
                chat.cancel()  # from inside the first group: the next check must stop the encode
            return real(self, *args)

        layers: list[int] = []
        real_layer = AudioEncoder._layer

        def layer(self, *args):
            layers.append(1)
            return real_layer(self, *args)

        monkeypatch.setattr(AudioEncoder, "_encode_group", group)
        monkeypatch.setattr(AudioEncoder, "_layer", layer)
        clip = (_audio(150.0), 16000)  # several window groups on the tiny tower
        events = list(chat.send_sync("Listen.", audio=[clip]))
        assert len(calls) == 1, f"{len(calls)} window groups encoded after the cancel"
        assert layers == [], f"{len(layers)} encoder layers ran after the cancel"  # checked between layers too
        monkeypatch.setattr(AudioEncoder, "_layer", real_layer)
        assert events[-1].finish_reason == "cancelled" and chat.messages == before
        monkeypatch.setattr(AudioEncoder, "_encode_group", real)
        assert _run(chat, "again").finish_reason == "length"
