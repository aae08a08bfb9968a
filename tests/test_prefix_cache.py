"""The shared first (system) turn: a chat that restores it from the thinker's PrefixCache ends in the
same state, bit for bit, as one that decodes it, and as the whole prompt decoded in one piece."""

from __future__ import annotations

import numpy as np
import pytest

import pocketomni as po
from pocketomni.chat.conversation import user_message
from pocketomni.engine.positions import KIND_IMAGE, KIND_TEXT, PromptLayout
from pocketomni.engine.prefix_cache import MAX_TURN_TOKENS, CachedTurn, PrefixCache, first_turn_length

START = 7  # a stand-in turn-start id for the unit tests


def text_layout(ids: list[int], start: int = 0) -> PromptLayout:
    n = len(ids)
    pos = np.tile(np.arange(start, start + n), (3, 1))
    return PromptLayout(np.array(ids, np.int64), pos, np.full(n, KIND_TEXT, np.uint8), start + n, start + n)


def test_first_turn_is_what_comes_before_the_second_turn_start() -> None:
    assert first_turn_length(text_layout([START, 1, 2, START, 3]), START) == 3
    assert first_turn_length(text_layout([START, 1, 2, 3]), START) == 0  # one turn only: nothing to share
    assert first_turn_length(text_layout([1, START, 2, START]), START) == 0  # not a turn at the start
    assert first_turn_length(text_layout([START, 1, START]), None) == 0  # a model without the marker
    assert first_turn_length(text_layout([START, 1, START], start=5), START) == 0  # not at position 0
    media = text_layout([START, 1, 2, START])
    media.kinds[1] = KIND_IMAGE
    assert first_turn_length(media, START) == 0
    long = [START] + [1] * MAX_TURN_TOKENS + [START]
    assert first_turn_length(text_layout(long), START) == 0
    assert first_turn_length(text_layout(long[1:]), 1) == 1


def turn(nbytes: int) -> CachedTurn:
    return CachedTurn(b"x" * nbytes, {"ids": np.zeros(0, np.int64)})


def test_cache_drops_least_recently_used_entries_beyond_its_bounds() -> None:
    cache = PrefixCache(max_entries=2, max_bytes=1000)
    a, b, c = np.array([1]), np.array([2]), np.array([3])
    cache.put(a, False, turn(100))
    cache.put(b, False, turn(100))
    assert cache.get(a, False) is not None  # a is now the most recent
    cache.put(c, False, turn(100))
    assert cache.get(b, False) is None and cache.get(a, False) is not None and cache.get(c, False) is not None
    assert cache.get(a, True) is None  # hidden states kept or not: separate entries
    cache.put(b, False, turn(950))  # over max_bytes together with the others: they go
    assert len(cache) == 1 and cache.nbytes == 950
    cache.put(a, False, turn(2000))  # larger than the whole cache: not kept
    assert cache.get(a, False) is None
    assert (cache.hits, cache.misses) == (3, 3)


@pytest.mark.parametrize("speech", [False, True])
def test_restored_first_turn_gives_the_same_state_as_decoding_it(converted_tiny, speech: bool) -> None:
    extra = {"speech_options": po.SpeechOptions(max_codes=4, seed=1)} if speech else {}
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as omni:
        cache = omni.runtime.thinker.first_turns
        cache.clear()

        def turn(system: str | None = None) -> tuple[list[int], bytes, dict[str, np.ndarray]]:
            chat = omni.chat(system, speech=speech, max_tokens=5, temperature=0.0, **extra)
            done = [e for e in chat.send_sync("Hello there") if isinstance(e, po.Done)][-1]
            out = list(done.tokens), chat._session.get_state(), chat._session.history.arrays()
            chat.close()
            return out

        decoded = turn()
        assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
        restored = turn()
        assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
        assert restored[0] == decoded[0] and len(decoded[0]) == 5
        assert restored[1] == decoded[1]  # the whole sequence state after the reply, byte for byte
        assert restored[2].keys() == decoded[2].keys() and ("hidden" in decoded[2]) is speech
        for k in decoded[2]:
            np.testing.assert_array_equal(restored[2][k], decoded[2][k])
        if not speech:  # another system prompt: an entry of its own
            turn("You are a terse assistant.")
            assert (cache.misses, len(cache)) == (2, 2)


def test_split_prefill_equals_one_piece(converted_tiny) -> None:
    """Decoding the first turn as a batch of its own changes nothing against the whole prompt in one piece
    (llama.cpp without flash attention: each row's arithmetic does not depend on the batch)."""
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as omni:
        th = omni.runtime.thinker
        chat = omni.chat(max_tokens=1)
        layout = chat._plan([user_message("Hello there")])[1]
        chat.close()
        assert first_turn_length(layout, th.turn_start) > 0
        split, whole = th.session(keep_hidden=True), th.session(keep_hidden=True)
        try:
            a = split.prefill(layout, {})
            assert th.first_turns.misses == 1 and len(th.first_turns) == 1  # it did decode the turn apart
            b = whole._prefill(layout, {}, None, None, None)  # one piece, as before the cache
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(split.history.hidden, whole.history.hidden)
            assert split.get_state() == whole.get_state()
        finally:
            split.close()
            whole.close()
