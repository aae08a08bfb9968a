"""The pipelined spoken reply (engine/speech_pipeline.py) on the tiny converted model: the same tokens,
codes and waveform as the one-after-another path for both presets and both streaming modes; text that
never waits for speech; back-pressure; cancellation at 100 random points without a hang or a leaked
thread; barge-in keeping the interrupted reply; a stage's error raised in the caller as the same type;
token2wav's stop hook checked once per DiT block."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

import pocketomni as po
from pocketomni.engine import speech_pipeline
from pocketomni.engine.cpu_split import StageThreads, blas_threads, set_blas_threads, split_threads
from pocketomni.engine.speech_pipeline import MAX_AHEAD_CODES, PipelinedReply, _Channel
from pocketomni.engine.speech_render import ReplyRenderer
from pocketomni.token2wav.stop import RenderStopped, stop_hook

PROMPT = "Tell me a long story."
TIMEOUT = 120.0  # seconds a turn may take here before the test calls it a hang (a turn takes ~1 s)


def snr_db(ours: np.ndarray, ref: np.ndarray) -> float:
    err = np.asarray(ours, np.float64) - np.asarray(ref, np.float64)
    return float(10 * np.log10(np.sum(np.asarray(ref, np.float64) ** 2) / max(np.sum(err**2), 1e-300)))


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, kv_f32=True) as m:
        yield m


def audio(events) -> np.ndarray:
    parts = [e.samples for e in events if isinstance(e, po.AudioChunk)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def kinds(events) -> str:
    return "".join("T" if isinstance(e, po.TextDelta) else "A" if isinstance(e, po.AudioChunk) else "D" for e in events)


def spoken_chat(omni, pipelined: bool, preset: str = "fast", mode: str | None = None, max_tokens: int = 80,
                max_codes: int = 160, **speech):
    opts = po.SpeechOptions(temperature=0.9, max_codes=max_codes, seed=5, pipelined=pipelined, **speech)
    return omni.chat(speech=True, speech_preset=preset, speech_streaming=mode, speech_options=opts,
                     max_tokens=max_tokens, temperature=0.7, seed=3)


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith(("pocketomni-talker", "pocketomni-token2wav", "pocketomni-vocoder"))]


def run_with_timeout(fn, timeout: float = TIMEOUT):
    """fn() in a worker thread; fails the test (instead of hanging it) if it does not end in time."""
    box: dict[str, object] = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- re-raised below
            box["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the spoken turn did not end within {timeout} s (a hang)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# ---------------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize(("preset", "mode", "vocoder_thread"),
                         [("fast", "exact", True), ("fast", "chunked", True), ("reference", "exact", True),
                          ("reference", "chunked", True), ("fast", "exact", False), ("reference", "chunked", False)])
def test_pipelined_equals_sequential(omni, monkeypatch, preset, mode, vocoder_thread):
    """Both pipelines (token2wav on one thread, or its DiT and its vocoder on two) against one after another."""
    split = StageThreads(1, 1, 1, vocoder_thread=vocoder_thread)
    monkeypatch.setattr(speech_pipeline, "stage_threads", lambda options: split)
    vocoded_on: set[str] = set()
    take_audio = ReplyRenderer.take_audio

    def spy(self, step):
        vocoded_on.add(threading.current_thread().name)
        return take_audio(self, step)

    monkeypatch.setattr(ReplyRenderer, "take_audio", spy)
    out = {}
    for pipelined in (False, True):
        chat = spoken_chat(omni, pipelined, preset, mode)
        events = run_with_timeout(lambda c=chat: list(c.send_sync(PROMPT)))
        sp = chat._last_speech
        assert sp.pipelined is pipelined
        if pipelined:
            assert vocoded_on == {"pocketomni-vocoder" if vocoder_thread else "pocketomni-token2wav"}
            assert not [t for t in threading.enumerate() if t.name.startswith("pocketomni-")]  # joined
        vocoded_on.clear()
        out[pipelined] = (events, list(sp.codes), audio(events))
    (ev_s, codes_s, wav_s), (ev_p, codes_p, wav_p) = out[False], out[True]
    assert ev_p[-1].tokens == ev_s[-1].tokens and ev_p[-1].text == ev_s[-1].text and len(ev_s[-1].tokens) == 80
    assert codes_p == codes_s and len(codes_s) == 160  # sampled codes (temperature 0.9): the same draws
    assert ev_p[-1].usage == ev_s[-1].usage and ev_p[-1].finish_reason == ev_s[-1].finish_reason == "length"
    assert wav_s.size == 480 * len(codes_s) and wav_p.size == wav_s.size
    snr = snr_db(wav_p, wav_s)
    same = np.array_equal(wav_p, wav_s)
    print(f"\n[{preset}/{mode}/{'vocoder thread' if vocoder_thread else 'one render thread'}] pipelined vs sequential: {'bit-identical' if same else f'SNR {snr:.1f} dB'}; "
          f"events {kinds(ev_p).count('A')} audio chunks pipelined, {kinds(ev_s).count('A')} sequential")
    assert snr >= 100.0
    assert not stage_threads()


def test_same_threads_give_a_bit_identical_waveform(omni):
    """With the sequential path's own thread counts (llama.cpp 1, this process's BLAS count), the
    renderer computes exactly what the sequential path computes: the same bits."""
    blas = blas_threads() or 1
    wavs = []
    for pipelined in (False, True):
        chat = spoken_chat(omni, pipelined, threads=(1, 1, blas) if pipelined else None)
        wavs.append(audio(run_with_timeout(lambda c=chat: list(c.send_sync(PROMPT)))))
    np.testing.assert_array_equal(wavs[1], wavs[0])
    assert wavs[0].size > 0


def test_async_and_sync_pipelined_turns_agree(omni):
    import asyncio

    async def run():
        return [ev async for ev in spoken_chat(omni, True, max_tokens=20, max_codes=80).send(PROMPT)]

    a = asyncio.run(run())
    s = run_with_timeout(lambda: list(spoken_chat(omni, True, max_tokens=20, max_codes=80).send_sync(PROMPT)))
    assert a[-1].text == s[-1].text and a[-1].usage == s[-1].usage and a[-1].tokens == s[-1].tokens
    np.testing.assert_array_equal(audio(a), audio(s))  # the events may interleave differently; the audio does not
    assert audio(s).size == 80 * 480 and not stage_threads()


# ---------------------------------------------------------------------------------------------- flow


def test_text_never_waits_for_speech(omni, monkeypatch):
    """token2wav is blocked until the text is complete: the pipelined turn still writes all its text
    (the one-after-another path would deadlock here: it renders in the turn's thread)."""
    text_done = threading.Event()
    take = ReplyRenderer.take_mel

    def blocked_take(self, codes, final, every):
        assert text_done.wait(TIMEOUT), "the text never completed while token2wav was blocked"
        return take(self, codes, final, every)

    finish = PipelinedReply.finish

    def marking_finish(self, should_stop):
        text_done.set()
        return finish(self, should_stop)

    monkeypatch.setattr(ReplyRenderer, "take_mel", blocked_take)
    monkeypatch.setattr(PipelinedReply, "finish", marking_finish)
    chat = spoken_chat(omni, True, max_tokens=100, max_codes=300, first_audio_first=False)
    events = run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    k = kinds(events)
    assert "A" not in k[: k.rindex("T")]  # nothing could be rendered during the text...
    assert events[-1].finish_reason == "length" and len(events[-1].tokens) == 100  # ...which was not held back
    assert audio(events).size == 480 * len(chat._last_speech.codes) > 0


@pytest.mark.parametrize("first_audio_first", [True, False])
def test_text_waits_only_for_the_first_audio_when_asked(omni, monkeypatch, first_audio_first):
    """first_audio_first: the thinker decodes nothing while the first chunk is being rendered (here made
    0.5 s slower), then goes on beside token2wav; without it the text runs on during that render."""
    take_audio = ReplyRenderer.take_audio
    window: list[float] = []

    def slow_first_chunk(self, step):
        t0 = time.perf_counter()
        out = take_audio(self, step)
        if out and not window:
            time.sleep(0.5)
            window.extend([t0, time.perf_counter()])
        return out

    monkeypatch.setattr(ReplyRenderer, "take_audio", slow_first_chunk)
    chat = spoken_chat(omni, True, max_tokens=200, max_codes=60, first_audio_first=first_audio_first)
    starts: list[float] = []
    step = chat._session.step

    def timed_step(tok):
        starts.append(time.perf_counter())
        return step(tok)

    chat._session.step = timed_step
    events = run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    assert len(window) == 2 and audio(events).size == 60 * 480
    during = sum(window[0] < t < window[1] for t in starts)
    after = sum(t > window[1] for t in starts)
    print(f"\nfirst_audio_first={first_audio_first}: {during} tokens decoded during the first chunk's "
          f"0.5 s render, {after} after it")
    if first_audio_first:
        assert during <= 1 and after > 10  # at most the token already in flight when the render began
    else:
        assert during > 10


def test_talker_stays_within_its_lead(omni, monkeypatch):
    """A slow token2wav: the talker never gets more than MAX_AHEAD_CODES (+ the one code in hand)
    ahead of what token2wav has taken."""
    leads: list[int] = []
    taken = [0]
    take = ReplyRenderer.take_mel
    replies: list[PipelinedReply] = []
    init = PipelinedReply.__init__

    def record_init(self, *a, **kw):
        init(self, *a, **kw)
        replies.append(self)

    def slow_take(self, codes, final, every):
        taken[0] += len(codes)
        time.sleep(0.01)  # token2wav much slower than the talker: the talker runs into the bound
        leads.append(len(replies[-1].codes) - taken[0])
        return take(self, codes, final, every)

    monkeypatch.setattr(PipelinedReply, "__init__", record_init)
    monkeypatch.setattr(ReplyRenderer, "take_mel", slow_take)
    chat = spoken_chat(omni, True, max_tokens=5, max_codes=400)
    events = run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    assert len(chat._last_speech.codes) == 400 and audio(events).size == 400 * 480
    print(f"\nlargest talker lead over token2wav: {max(leads)} codes (bound {MAX_AHEAD_CODES} + 1)")
    assert MAX_AHEAD_CODES // 2 < max(leads) <= MAX_AHEAD_CODES + 1  # reached, never passed


def test_channel_bound_and_stop():
    ch = _Channel(3)

    def never() -> bool:
        return False

    assert ch.put("a", never, 2) and ch.put("b", never, 1)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert not ch.put("c", stop.is_set, 1)  # full: waits, then gives up when stopped
    assert ch.get(never) == "a" and ch.put("c", never, 2)
    assert ch.get(never) == "b" and ch.get(never) == "c"
    assert ch.get(lambda: True) is None and ch.get(never, timeout=0.01) is None
    big = _Channel(1)
    assert big.put("x", never, 5)  # larger than the bound, but the channel is empty


# ---------------------------------------------------------------------------------------------- stopping


def test_cancel_at_random_points(omni):
    """100 turns, each cancelled at a random moment (chat.cancel() from another thread, as a barge-in
    does) or abandoned at a random event (the consumer breaks out): every turn ends, no stage thread
    survives it, and the chat runs the next turn."""
    before = set(threading.enumerate())
    chat = spoken_chat(omni, True, max_tokens=40, max_codes=120)
    t0 = time.perf_counter()
    full = run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    span = time.perf_counter() - t0
    n_events = len(full)
    rng = random.Random(14)
    outcomes = {"stop_text": 0, "stop_speech": 0, "abandoned": 0, "finished": 0}
    for i in range(100):
        if i % 2:
            delay = rng.uniform(0, span)
            timer = threading.Timer(delay, chat.cancel)

            def run(timer=timer):
                timer.start()
                try:
                    return list(chat.send_sync(PROMPT))
                finally:
                    timer.cancel()
                    timer.join()

            events = run_with_timeout(run)
            done = events[-1]
            assert isinstance(done, po.Done)
            if done.finish_reason == "cancelled":
                outcomes["stop_speech" if not chat.messages[-1].interrupted else "stop_text"] += 1
            else:
                outcomes["finished"] += 1
        else:
            stop_at = rng.randrange(1, n_events)

            def run(stop_at=stop_at):
                gen = chat.send_sync(PROMPT)
                seen = []
                for ev in gen:
                    seen.append(ev)
                    if len(seen) == stop_at:
                        break
                gen.close()
                return seen

            seen = run_with_timeout(run)
            assert len(seen) == stop_at
            outcomes["abandoned"] += 1
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        assert not leaked, f"run {i}: threads left running: {leaked}"
        reply = chat.messages[-1]
        assert reply.role == "assistant"
        chat.reset()
    print(f"\n100 cancels over a {span:.2f} s turn: {outcomes}")
    assert outcomes["abandoned"] == 50 and outcomes["stop_text"] > 0
    after = run_with_timeout(lambda: list(chat.send_sync(PROMPT)))  # the chat and the engine are free
    np.testing.assert_array_equal(audio(after), audio(full))


def test_barge_in_keeps_the_interrupted_reply(omni):
    chat = spoken_chat(omni, True, max_tokens=200, max_codes=400)

    def during_text():
        seen = []
        for ev in chat.send_sync(PROMPT):
            seen.append(ev)
            if sum(isinstance(e, po.TextDelta) for e in seen) == 10:
                chat.cancel()  # the user starts speaking: the reply stops within one token
        return seen

    seen = run_with_timeout(during_text)
    done = seen[-1]
    assert isinstance(done, po.Done) and done.finish_reason == "cancelled"
    reply = chat.messages[-1]
    assert reply.interrupted and reply.text == done.text == "".join(e.text for e in seen if isinstance(e, po.TextDelta))
    assert len(done.tokens) >= 10 and len(chat._last_speech.codes) <= len(done.tokens)  # codes never outrun text
    assert not stage_threads()

    chat2 = spoken_chat(omni, True, max_tokens=6, max_codes=1000)

    def during_speech():
        seen = []
        for ev in chat2.send_sync(PROMPT):
            seen.append(ev)
            if isinstance(ev, po.AudioChunk):
                chat2.cancel()  # the text is complete; the speech is cut
        return seen

    seen = run_with_timeout(during_speech)
    done = seen[-1]
    assert done.finish_reason == "cancelled" and not chat2.messages[-1].interrupted and done.text
    # the talker is at most MAX_AHEAD_CODES ahead of token2wav, which is at most 4 chunks (36-code
    # steps) plus the one it renders ahead of the turn: far below the 1000 codes it would make
    assert done.usage.audio_codes <= 72 + MAX_AHEAD_CODES + 5 * 36 + 1
    assert not stage_threads()
    follow = run_with_timeout(lambda: list(chat2.send_sync("Go on.", max_tokens=4)))
    assert follow[-1].finish_reason == "length" and not chat2.messages[-1].interrupted


def test_render_stops_within_one_dit_block(omni):
    eng = omni.runtime.speech_engine()
    spk = eng.speaker("Chelsie")
    layers = len(eng.token2wav.dit.layers)
    calls = []
    s = eng.token2wav.stream(spk, "fast", seed=1)
    with stop_hook(lambda: calls.append(1) or False):
        s.feed(np.arange(100) % 50)  # several DiT evaluations and vocoder steps
    n_checks = len(calls)
    assert n_checks > layers
    for k in (1, layers // 2 + 1, n_checks - 1):
        calls.clear()
        s = eng.token2wav.stream(spk, "fast", seed=1)
        with stop_hook(lambda k=k: calls.append(1) or len(calls) >= k), pytest.raises(RenderStopped):
            s.feed(np.arange(100) % 50)
        assert len(calls) == k  # stopped at the first check that said stop: nothing more ran


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("stage", ["talker", "token2wav"])
def test_stage_error_reaches_the_caller(omni, monkeypatch, stage):
    chat = spoken_chat(omni, True, max_tokens=40, max_codes=200)
    eng = omni.runtime.speech_engine()
    if stage == "talker":
        real = type(eng.talker).next_code
        n = [0]

        def failing(self):
            n[0] += 1
            if n[0] == 20:
                raise po.ContextOverflowError("talker test failure")
            return real(self)

        monkeypatch.setattr(type(eng.talker), "next_code", failing)
        err = po.ContextOverflowError
    else:
        real_take = ReplyRenderer.take_mel

        def failing_take(self, codes, final, every):
            if self.samples or final:
                raise po.OptionsError("token2wav test failure")
            return real_take(self, codes, final, every)

        monkeypatch.setattr(ReplyRenderer, "take_mel", failing_take)
        err = po.OptionsError
    with pytest.raises(err, match="test failure"):
        run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    assert not stage_threads()
    assert chat.messages[-1].role == "assistant"
    monkeypatch.undo()
    after = run_with_timeout(lambda: list(chat.send_sync("Again", max_tokens=4)))  # engine released
    assert after[-1].finish_reason == "length"


# ---------------------------------------------------------------------------------------------- options


def test_options_threads_and_defaults(omni, monkeypatch):
    with pytest.raises(po.OptionsError, match="three positive integers"):
        po.SpeechOptions(threads=(1, 2))
    with pytest.raises(po.OptionsError, match="three positive integers"):
        po.SpeechOptions(threads=(1, 0, 1))
    with pytest.raises(po.OptionsError, match="pipelined"):
        po.SpeechOptions(pipelined="yes")
    assert po.SpeechOptions.from_dict({"threads": [1, 1, 2]}).threads == (1, 1, 2)  # a saved chat's list
    assert split_threads(2) == StageThreads(1, 1, 1, vocoder_thread=True) == split_threads(4)
    assert split_threads(8) == StageThreads(2, 2, 4) and split_threads(1) == StageThreads(1, 1, 1, True)
    # None: pipelined from 3 cores; on 2 only while OpenBLAS keeps its long idle spin (blas_spin)
    from pocketomni import blas_spin

    for cpus, spin, want in [(3, blas_spin.SPIN_EXPONENT, True), (2, blas_spin.SPIN_EXPONENT, False),
                             (2, blas_spin.DEFAULT_EXPONENT, True), (1, blas_spin.DEFAULT_EXPONENT, False)]:
        monkeypatch.setattr(speech_pipeline, "usable_cpus", lambda cpus=cpus: cpus)
        monkeypatch.setattr(blas_spin, "exponent", lambda spin=spin: spin)
        assert speech_pipeline.use_pipeline(po.SpeechOptions()) is want, (cpus, spin)
        assert speech_pipeline.use_pipeline(po.SpeechOptions(pipelined=True))
        assert not speech_pipeline.use_pipeline(po.SpeechOptions(pipelined=False))

    # a pipelined reply runs with its split and gives the counts back afterwards
    old_blas = blas_threads()
    assert old_blas is not None  # numpy's wheels ship OpenBLAS
    seen = {}
    take = ReplyRenderer.take_mel

    def spy(self, codes, final, every):
        seen["blas"] = blas_threads()
        return take(self, codes, final, every)

    monkeypatch.setattr(ReplyRenderer, "take_mel", spy)
    chat = spoken_chat(omni, True, max_tokens=8, max_codes=20, threads=(1, 1, 2))
    thinker_before = chat._session.ctx.threads
    run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    assert seen["blas"] == 2 and blas_threads() == old_blas
    assert chat._session.ctx.threads == thinker_before
    prev = set_blas_threads(old_blas)
    assert prev == old_blas

    # SpeechOptions.threads pins the one-after-another engine's threads too, and gives them back
    seen.clear()
    chat = spoken_chat(omni, False, max_tokens=8, max_codes=20, threads=(1, 1, old_blas + 1))
    run_with_timeout(lambda: list(chat.send_sync(PROMPT)))
    assert seen["blas"] == old_blas + 1 and blas_threads() == old_blas
