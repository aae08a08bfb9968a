"""Chats that never fill up (issue 15 §3): the trim plan (what is dropped, in which order), and on the
tiny model a chat at a small n_ctx that trims, whose replies after a trim equal a new chat's fed the
kept history, that saves and restores after a trim; the "error" policy still raises."""

from __future__ import annotations

import numpy as np
import pytest

import pocketomni as po
from pocketomni.chat.conversation import ChatTemplate, Message, Part
from pocketomni.chat.history_policy import HistoryPolicy, plan_trim, turns_of
from pocketomni.engine.positions import KIND_AUDIO

R = 16000


# ------------------------------------------------------------------ the plan (no model)


def _conv(n_turns: int, media: bool = True) -> list[Message]:
    out = [Message("system", (Part("text", text="sys"),))]
    for i in range(n_turns):
        parts = ((Part("image", label=f"img{i}"),) if media else ()) + (Part("text", text=f"q{i}"),)
        out += [Message("user", parts), Message("assistant", (Part("text", text=f"a{i}"),))]
    return out


def _cost(msgs: list[Message]) -> int:
    """10 per live message, 100 per live media part."""
    return sum(10 + 100 * len(m.media) for m in msgs if not m.dropped)


def _apply(msgs: list[Message], target: int, limit: int, **kw) -> tuple[list[Message], int]:
    from pocketomni.chat.history_policy import apply_plan

    plan = plan_trim(msgs, _cost, HistoryPolicy(**kw), target=target, limit=limit)
    return apply_plan(msgs, plan), plan.cost


def _live_media(msgs: list[Message]) -> list[str]:
    return [p.label for m in msgs if not m.dropped for p in m.media]


def test_media_of_old_turns_go_first_oldest_first() -> None:
    msgs = _conv(5)  # cost 10 + 5 * (20 + 100) = 610
    kept, cost = _apply(msgs, target=450, limit=450, min_turns=2, media_turns=5)
    # two old images (oldest first) are enough; no message is dropped, the last two turns keep theirs
    assert _live_media(kept) == ["img2", "img3", "img4"] and cost == 410
    assert not any(m.dropped for m in kept)
    assert [p.dropped for p in kept[1].parts] == [True, False] and kept[1].parts[0].placeholder == "[image]"


def test_then_whole_old_turns_oldest_first_and_the_system_prompt_stays() -> None:
    msgs = _conv(5)
    kept, cost = _apply(msgs, target=270, limit=270, min_turns=2, media_turns=5)
    # every old image went before any turn (310 left); then turns 0 and 1 (user + reply) whole
    assert _live_media(kept) == ["img3", "img4"] and cost == 10 + 20 + 2 * 120
    head, turns = turns_of(kept)
    assert kept[head[0]].role == "system" and [kept[t[0]].text for t in turns] == ["q2", "q3", "q4"]
    assert [m.dropped for m in kept[1:5]] == [True] * 4 and not kept[5].dropped
    kept, cost = _apply(msgs, target=100, limit=1000, min_turns=2, media_turns=5)
    assert cost == 10 + 2 * 120  # all old turns gone; the protected last two are only touched below the limit


def test_protected_turns_go_only_below_the_hard_limit() -> None:
    msgs = _conv(3)
    kept, cost = _apply(msgs, target=50, limit=200, min_turns=2, media_turns=5)
    assert _live_media(kept) == ["img2"] and cost == 10 + 20 + 120  # turn 1's image, not turn 2's
    kept, cost = _apply(msgs, target=50, limit=30, min_turns=2, media_turns=5)
    assert cost == 10 + 20 and [m.role for m in kept if not m.dropped] == ["system", "user", "assistant"]
    assert _live_media(kept) == []
    kept, cost = _apply(msgs, target=0, limit=0, min_turns=2)
    assert [m.role for m in kept if not m.dropped] == ["system"] and cost == 10  # never the system prompt


def test_media_without_kept_embeddings_always_go_and_nothing_when_it_fits() -> None:
    msgs = _conv(4)
    kept, cost = _apply(msgs, target=10_000, limit=10_000, min_turns=1, media_turns=1)
    assert _live_media(kept) == ["img3"] and not any(m.dropped for m in kept)
    kept, cost = _apply(msgs, target=10_000, limit=10_000, min_turns=1, media_turns=4)
    assert kept == msgs and cost == _cost(msgs)


def test_turns_group_user_and_following_messages() -> None:
    msgs = [Message("system", ()), Message("user", ()), Message("assistant", ()), Message("system", ()),
            Message("user", ()), Message("assistant", (), dropped=False)]
    head, turns = turns_of(msgs)
    assert head == [0] and turns == [[1, 2, 3], [4, 5]]


def test_policy_options_are_checked() -> None:
    assert HistoryPolicy.resolve(None) == HistoryPolicy() and HistoryPolicy().mode == "trim"
    assert HistoryPolicy.resolve("error").mode == "error"
    assert HistoryPolicy.resolve({"keep": 0.25}).keep == 0.25
    assert HistoryPolicy().headroom_for(4096) == 1024 and HistoryPolicy().headroom_for(512) == 128
    assert HistoryPolicy(headroom=3000).headroom_for(4096) == 2048
    for bad in ("drop", {"kep": 0.5}, {"keep": 1.0}, {"headroom": 0}, {"min_turns": -1}, 3):
        with pytest.raises(po.OptionsError):
            HistoryPolicy.resolve(bad)


def test_dropped_parts_render_as_text_and_survive_to_dict() -> None:
    from omni_fixtures.tokenizer import CHAT_TEMPLATE

    t = ChatTemplate(CHAT_TEMPLATE)
    m = Message("user", (Part("image", label="cat.jpg", dropped=True), Part("text", text=" and this?")), dropped=True)
    assert Message.from_dict(m.to_dict()) == m and m.media == []
    same = Message("user", (Part("text", text="[image]"), Part("text", text=" and this?")))
    assert t.render([m]) == t.render([same]) and "[image] and this?" in t.render([m])


# ------------------------------------------------------------------ the tiny model


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, n_ctx=512) as o:
        yield o


def _image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((56, 84, 3)) * 255).astype(np.uint8)


def _audio(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(R * seconds)) / R
    f = 200 + 40 * seed % 300
    return (0.3 * np.sin(2 * np.pi * f * t) + np.random.default_rng(seed).standard_normal(t.size) * 0.05).astype(np.float32)


def _turn(i: int) -> dict:
    kw: dict = {"text": f"Question {i}: what about this?"}
    if i % 3 == 0:
        kw["images"] = [_image(i)]
    if i % 2 == 0:
        kw["audio"] = [(_audio(1.0 + 0.25 * (i % 4), i), R)]
    return kw


def _send(chat: po.Chat, **kw) -> tuple[list, po.Done]:
    events = list(chat.send_sync(**kw))
    assert isinstance(events[-1], po.Done)
    return events, events[-1]


def _as_openai(m: Message, sources: dict) -> dict:
    """A kept message as a new chat receives it: live media with their sources, dropped ones as text."""
    if m.role != "user":
        return {"role": m.role, "content": m.text}
    images, audio = list(sources.get("images", [])), list(sources.get("audio", []))
    content = []
    for p in m.parts:
        if p.kind == "text":
            content.append({"type": "text", "text": p.text})
        elif p.dropped:
            content.append({"type": "text", "text": f"[{p.kind}]"})
        elif p.kind == "image":
            content.append({"type": "image", "image": images.pop(0)})
        else:
            content.append({"type": "audio", "audio": audio.pop(0)})
    return {"role": "user", "content": content}


def test_a_small_context_chat_runs_on_and_replies_like_a_new_chat_fed_the_kept_history(omni) -> None:
    chat = omni.chat(system="Be brief.", max_tokens=24)
    sources: dict[int, dict] = {}  # user message index -> the turn's inputs
    compared = trims = 0
    trimmed_last = False
    for i in range(24):
        turn = _turn(i)
        if trimmed_last:  # the trimmed chat and a new chat fed its kept history give the same reply
            kept = [_as_openai(m, sources.get(k, {})) for k, m in enumerate(chat.messages) if not m.dropped]
            new = _as_openai(Message("user", _user_parts(turn)), turn)
            fresh = omni.chat(max_tokens=24)
            _, want = _send(fresh, messages=[*kept, new])
        events, done = _send(chat, **turn)
        assert done.finish_reason in ("stop", "length") and chat.n_tokens <= chat.n_ctx
        sources[max(k for k, m in enumerate(chat.messages) if m.role == "user")] = turn
        if trimmed_last:
            assert done.tokens == want.tokens and chat.tokens == fresh.tokens
            compared += 1
            fresh.close()
        cut = [e for e in events if isinstance(e, po.HistoryTrimmed)]
        assert all(isinstance(e, po.TextDelta) for e in events[:-1] if not isinstance(e, po.HistoryTrimmed))
        if cut:  # right after the reply, before Done; the kept history fits the policy's target
            ev = cut[0]
            assert len(cut) == 1 and events[-2] is ev and not ev.before_turn
            assert ev.tokens_after == chat.n_tokens <= int(0.5 * chat.n_ctx) < ev.tokens_before
            assert ev.dropped_messages > 0 or ev.dropped_media > 0
            trims += 1
        trimmed_last = bool(cut)
    assert trims >= 3 and compared >= 3
    msgs = chat.messages
    assert msgs[0].role == "system" and not msgs[0].dropped and msgs[0].text == "Be brief."
    assert any(m.dropped for m in msgs) and not msgs[-1].dropped and not msgs[-2].dropped
    assert len(msgs) == 1 + 2 * 24  # nothing disappears from the transcript
    chat.close()


def _user_parts(turn: dict) -> tuple[Part, ...]:
    parts = [Part("image") for _ in turn.get("images", [])] + [Part("audio") for _ in turn.get("audio", [])]
    return (*parts, Part("text", text=turn["text"]))


def test_a_turn_that_does_not_fit_trims_before_its_prefill(omni) -> None:
    chat = omni.chat(max_tokens=16, context_policy={"headroom": 8})  # replies almost never trim
    for i in range(6):
        _send(chat, text=f"Tell me about thing number {i}, please, in some detail.")
    assert chat.n_tokens > 150
    n_before = chat.n_tokens
    big = [(_audio(10.0, 7), R)]  # 250 audio tokens
    events, done = _send(chat, text="Listen.", audio=big)
    ev = events[0]
    assert isinstance(ev, po.HistoryTrimmed) and ev.before_turn and ev.tokens_before == n_before
    assert done.finish_reason == "length" and done.usage.media_tokens == 250
    # a turn that cannot fit even alone is refused as before, and the history is left as it was
    msgs, n = chat.messages, chat.n_tokens
    with pytest.raises(po.ContextOverflowError, match="reset"):
        _send(chat, text="Too long.", audio=[(_audio(25.0, 8), R)])
    assert chat.messages == msgs and chat.n_tokens == n
    chat.close()


def test_the_error_policy_still_raises_the_typed_error(omni) -> None:
    chat = omni.chat(max_tokens=24, context_policy="error")
    with pytest.raises(po.ContextOverflowError, match="larger n_ctx"):
        for i in range(40):
            events, _ = _send(chat, **_turn(i))
            assert not any(isinstance(e, po.HistoryTrimmed) for e in events)
    assert not any(m.dropped for m in chat.messages)
    chat.close()


def test_a_chat_saved_after_a_trim_restores_and_continues_exactly(omni, tmp_path) -> None:
    chat = omni.chat(system="Be brief.", max_tokens=24, context_policy={"keep": 0.4})
    i = 0
    while not any(m.dropped for m in chat.messages):
        _send(chat, **_turn(i))
        i += 1
    path = tmp_path / "trimmed.pochat"
    chat.save(path)
    restored = omni.restore_chat(path)
    assert [m.to_dict() for m in restored.messages] == [m.to_dict() for m in chat.messages]
    assert restored.context_policy == chat.context_policy and restored.tokens == chat.tokens
    for j in range(i, i + 8):  # on through the next trims: the restored chat's media embeddings are gone,
        _, a = _send(chat, **_turn(j))  # so only turns without old media stay comparable; compare the first
        _, b = _send(restored, **_turn(j))
        if j == i:
            assert a.tokens == b.tokens
    assert restored.n_tokens <= restored.n_ctx
    chat.close()
    restored.close()


def test_a_speech_chat_trims_and_its_rebuilt_hidden_states_equal_a_new_chats(omni) -> None:
    """The talker reads the thinker's hidden states of the whole history: after a trim they come from
    the rebuild and must equal those of a new speech chat fed the kept history."""
    opts = {"max_tokens": 24, "speech_options": {"max_codes": 20}}
    chat = omni.chat(speech=True, **opts)
    i = 0
    while not any(m.dropped for m in chat.messages):
        events, _ = _send(chat, text=f"Tell me about thing number {i}, please, in some detail.")
        i += 1
    assert isinstance(events[-2], po.HistoryTrimmed) and any(isinstance(e, po.AudioChunk) for e in events)
    kept = [_as_openai(m, {}) for m in chat.messages if not m.dropped]
    turn = {"text": "And what comes next?"}
    fresh = omni.chat(speech=True, **opts)
    _, want = _send(fresh, messages=[*kept, {"role": "user", "content": turn["text"]}])
    events, got = _send(chat, **turn)
    assert got.tokens == want.tokens and chat.tokens == fresh.tokens
    assert any(isinstance(e, po.AudioChunk) for e in events) and got.usage.audio_codes > 0
    np.testing.assert_array_equal(chat._session.history.hidden, fresh._session.history.hidden)
    chat.close()
    fresh.close()


def test_a_live_turns_audio_is_kept_for_rebuilds(omni) -> None:
    """A live turn (chat.begin_turn) encodes its audio window by window; its rows are kept like a sent
    clip's, so a trim right after it keeps the audio (the last turns) instead of turning it into text."""
    chat = omni.chat(max_tokens=24, context_policy={"min_turns": 2, "media_turns": 2})
    for i in range(5):
        _send(chat, text=f"Tell me about thing number {i}, please, in some detail.")
    assert not any(m.dropped for m in chat.messages)
    turn = chat.begin_turn("exact", max_tokens=24)
    clip = _audio(4.5, 3)  # three 2 s windows, the last one partial
    for a in range(0, clip.size, 1600):
        turn.feed_audio(clip[a : a + 1600])
    events = list(turn.finish_sync("What was that?"))
    assert isinstance(events[-1], po.Done) and isinstance(events[-2], po.HistoryTrimmed)
    n_audio = events[-1].usage.media_tokens
    msgs = chat.messages
    live = msgs[-2]
    assert live.role == "user" and not live.dropped and [p.kind for p in live.media] == ["audio"]
    assert any(m.dropped for m in msgs) and int((chat._session.history.kinds == KIND_AUDIO).sum()) == n_audio > 0
    # the rebuilt cache equals a new chat's fed the kept history with the same clip
    kept = [_as_openai(m, {"audio": [(clip, R)]} if m is live else {}) for m in msgs if not m.dropped]
    fresh = omni.chat(max_tokens=24)
    _, want = _send(fresh, messages=[*kept, {"role": "user", "content": "Go on."}])
    _, got = _send(chat, text="Go on.")
    assert got.tokens == want.tokens and chat.tokens == fresh.tokens
    chat.close()
    fresh.close()
