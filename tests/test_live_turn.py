"""Live user turns (chat.begin_turn): audio encoded and prefilled window by window while it is fed.

`exact` mode must give what `chat.send(audio=...)` gives for the same clip: the same prompt ids and
positions, and first-reply-token logits equal up to float32 rounding (the live turn encodes and
prefills the same rows in other batch splits). The tolerance is the classic bound for re-associated
float32 sums: a dot product of K terms computed in another order differs by at most K * u * sum|terms|
(u = 2**-24), per reduction on the path; the path has the audio tower's and the thinker's layers, and
the longest reduction is the larger of the FFN width and the prompt length. Relative to max|logit|
(the size of sum|terms| at the output) that gives (layers + 2) * K * u.
`streaming` mode works end to end and differs only where the clamp's running maximum was lower.
A camera turn (begin_turn(video=True)) fed frames at 2 fps while the audio comes in must give what
`chat.send(video=(frames, 2, clip, 16000))` gives: each frame pair is encoded alone in both (bit-equal
rows), so the same bound holds.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from audio_env import espeak, silence
from omni_fixtures.config import VARIANT_SPECS

import pocketomni as po
from pocketomni.audio.features import log_mel
from pocketomni.audio.live_mel import LiveLogMel
from pocketomni.engine.positions import KIND_VIDEO

R = 16000
U = 2.0**-24
QUESTION = "What is on the kitchen counter? Tell me about the cups and the plates."


def quiet_then_loud() -> np.ndarray:
    """Digital silence, a quiet question, then the loud question: the clip's maximum comes late, so
    windows heard early were clamped at a lower maximum (exact mode must redo them)."""
    q = espeak(QUESTION, R)
    return np.concatenate([silence(0.3, R), 0.003 * q[: int(2.5 * R)], q, silence(0.2, R)]).astype(np.float32)


def loud_then_quiet() -> np.ndarray:
    q = espeak(QUESTION, R)
    return np.concatenate([silence(0.2, R), q[: int(2.2 * R)], 0.003 * q, silence(0.2, R)]).astype(np.float32)


def logit_tolerance(n_prompt: int) -> float:
    v = VARIANT_SPECS["base"]
    k = max(v.intermediate, v.aud_ffn, n_prompt)
    return (v.layers + v.aud_layers + 2) * k * U


@pytest.fixture(scope="module")
def omni(converted_tiny):
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as o:
        yield o


def _observer() -> tuple[list[np.ndarray], object]:
    box: list[np.ndarray] = []

    def obs(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if not box:
            box.append(np.array(logits, np.float64))
        return logits

    return box, obs


def _feed(turn: po.LiveTurn, clip: np.ndarray, block: int = 320) -> None:
    for i in range(0, clip.size, block):
        turn.feed_audio(clip[i : i + block])


def _wait_prefilled(turn: po.LiveTurn, n: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while turn.windows_prefilled < n:
        assert time.monotonic() < end, f"only {turn.windows_prefilled} of {n} windows prefilled"
        time.sleep(0.02)


def _one_piece(omni, clip: np.ndarray, text: str | None = None):
    chat = omni.chat(max_tokens=6)
    box, obs = _observer()
    done = list(chat.send_sync(text, audio=[(clip, R)], logits_processors=[obs]))[-1]
    return chat, box[0], done


@pytest.mark.parametrize("shape", ["quiet_then_loud", "loud_then_quiet"])
def test_exact_live_turn_equals_sending_the_clip(omni, shape: str) -> None:
    clip = quiet_then_loud() if shape == "quiet_then_loud" else loud_then_quiet()
    ref_chat, ref_logits, ref_done = _one_piece(omni, clip, "Answer briefly.")
    chat = omni.chat(max_tokens=6)
    box, obs = _observer()
    turn = chat.begin_turn("exact", logits_processors=[obs])
    _feed(turn, clip)
    n_full = (clip.size - 200) // 160 // 200  # windows complete before the end (audio.live_mel)
    _wait_prefilled(turn, n_full)  # encoded and in the cache before the turn ends
    assert n_full >= 2 and all(t.prefilled_at > 0 for t in turn.timings)
    done = list(turn.finish_sync("Answer briefly."))[-1]
    redone = [t.index for t in turn.timings if t.reencoded]
    if shape == "quiet_then_loud":
        assert redone and redone[0] == 0  # the late maximum changed the first window's features
    else:
        assert not redone
    n = ref_done.usage.prompt_tokens
    assert done.usage == ref_done.usage
    assert chat.tokens[:n] == ref_chat.tokens[:n]
    np.testing.assert_array_equal(chat._session.history.positions[:, :n], ref_chat._session.history.positions[:, :n])
    gap = np.abs(box[0] - ref_logits).max() / np.abs(ref_logits).max()
    assert gap <= logit_tolerance(n), gap
    assert done.tokens == ref_done.tokens
    assert [m.to_dict() for m in chat.messages] == [m.to_dict() for m in ref_chat.messages]
    print(f"\n[live exact {shape}] windows redone {redone}; logits relative gap {gap:.2e} "
          f"(bound {logit_tolerance(n):.1e})")


def test_streaming_live_turn_end_to_end(omni) -> None:
    clip = quiet_then_loud()
    ref_chat, ref_logits, ref_done = _one_piece(omni, clip)
    chat = omni.chat(max_tokens=6)
    box, obs = _observer()
    turn = chat.begin_turn("streaming", logits_processors=[obs])
    _feed(turn, clip)
    done = list(turn.finish_sync())[-1]
    assert done.finish_reason in ("stop", "length") and not any(t.reencoded for t in turn.timings)
    n = ref_done.usage.prompt_tokens
    assert done.usage.prompt_tokens == n and chat.tokens[:n] == ref_chat.tokens[:n]
    gap = np.abs(box[0] - ref_logits).max() / np.abs(ref_logits).max()
    assert gap > logit_tolerance(n)  # the first window really was clamped lower: not the exact result
    # a second, typed turn continues the conversation from the live one
    second = list(chat.send_sync("And then?"))[-1]
    assert second.finish_reason in ("stop", "length")
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    print(f"\n[live streaming] logits relative gap to the whole-clip clamp {gap:.2e}")


def test_abort_and_a_busy_chat(omni) -> None:
    chat = omni.chat(max_tokens=4)
    list(chat.send_sync("Hello"))
    before = chat.tokens
    turn = chat.begin_turn()
    _feed(turn, quiet_then_loud()[: 5 * R])
    _wait_prefilled(turn, 2)
    assert len(chat._session.history.ids) > len(before)  # the open turn is in the cache
    turn.abort()
    assert chat.tokens == before and [m.role for m in chat.messages] == ["user", "assistant"]
    with pytest.raises(po.PocketOmniError, match="ended"):
        turn.feed_audio(np.zeros(160, np.float32))
    # a turn begun while a reply runs: windows are encoded meanwhile, prefilled once the chat is free
    clip = loud_then_quiet()
    ref_done = _one_piece(omni, clip)[2]
    other = omni.chat(max_tokens=200)
    release = threading.Event()
    started = threading.Event()

    def slow(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(30)
        return logits

    t = threading.Thread(target=lambda: list(other.send_sync("Hi", logits_processors=[slow], max_tokens=1)))
    t.start()
    assert started.wait(30)
    live = other.begin_turn("exact", max_tokens=6)
    _feed(live, clip)
    end = time.monotonic() + 30
    while not (live.timings and all(w.encoded_at for w in live.timings)):
        assert time.monotonic() < end
        time.sleep(0.02)
    assert live.windows_prefilled == 0  # the chat is still busy with the reply
    release.set()
    t.join(30)
    done = list(live.finish_sync())[-1]
    assert done.usage.media_tokens == ref_done.usage.media_tokens
    assert [m.role for m in other.messages] == ["user", "assistant", "user", "assistant"]


def scene(n: int, h: int = 308, w: int = 392) -> np.ndarray:
    """n frames (already at a video frame size: multiples of 28) of a square crossing a gradient."""
    base = np.broadcast_to(np.linspace(40, 200, w, dtype=np.float32)[None, :, None], (h, w, 3)).astype(np.uint8)
    out = np.repeat(base[None], n, axis=0)
    for i in range(n):
        x = (i * 23) % (w - 60)
        out[i, 100:160, x : x + 60] = (220, 30, 30)
    return out


def _feed_live(turn: po.LiveTurn, clip: np.ndarray, frames: np.ndarray, block: int = 320) -> None:
    """Audio and frames in the order a camera gives them: frame k once k / 2 s of audio are in."""
    k = 0
    for i in range(0, clip.size, block):
        turn.feed_audio(clip[i : i + block])
        while k < frames.shape[0] and k * R // 2 <= i + block:
            turn.feed_video(frames[k])
            k += 1
    if k < frames.shape[0]:
        turn.feed_video(frames[k:])


@pytest.mark.parametrize("shape", ["loud_then_quiet", "quiet_then_loud"])
def test_exact_live_camera_turn_equals_sending_the_video(omni, shape: str) -> None:
    clip = quiet_then_loud() if shape == "quiet_then_loud" else loud_then_quiet()
    frames = scene(max(2, 2 * math.floor(clip.size / R)))  # a camera's 2 fps over the clip (voice.camera)
    ref = omni.chat(max_tokens=6)
    box_ref, obs_ref = _observer()
    ref_done = list(ref.send_sync("Answer briefly.", video=(frames, 2.0, clip, R), logits_processors=[obs_ref]))[-1]
    chat = omni.chat(max_tokens=6)
    box, obs = _observer()
    turn = chat.begin_turn("exact", video=True, logits_processors=[obs])
    _feed_live(turn, clip, frames)
    n_full = min((clip.size - 200) // 160 // 200, frames.shape[0] // 4)  # chunks complete before the end
    _wait_prefilled(turn, n_full)
    assert n_full >= 2
    streamed = chat._session.history.n
    t_end = time.monotonic()
    done = list(turn.finish_sync("Answer briefly."))[-1]
    redone = [t.index for t in turn.timings if t.reencoded]
    if shape == "quiet_then_loud":  # the late maximum changed streamed audio: the turn was prefilled again
        assert redone and all(t.prefilled_at >= t_end for t in turn.timings)
    else:  # the streamed chunks stayed in the cache
        assert not redone and all(t.prefilled_at < t_end for t in turn.timings[:n_full])
    n = ref_done.usage.prompt_tokens
    assert done.usage == ref_done.usage and streamed < n
    assert chat.tokens[:n] == ref.tokens[:n]
    np.testing.assert_array_equal(chat._session.history.positions[:, :n], ref._session.history.positions[:, :n])
    kinds = chat._session.history.kinds[:n]
    assert np.count_nonzero(kinds == KIND_VIDEO) == frames.shape[0] // 2 * (308 // 28) * (392 // 28)
    gap = np.abs(box[0] - box_ref[0]).max() / np.abs(box_ref[0]).max()
    assert gap <= min(logit_tolerance(n), 1e-3), gap
    assert done.tokens == ref_done.tokens
    assert [m.to_dict() for m in chat.messages] == [m.to_dict() for m in ref.messages]
    print(f"\n[live camera exact {shape}] {frames.shape[0]} frames, {n_full} chunks streamed, windows redone "
          f"{redone}; logits relative gap {gap:.2e} (bound {min(logit_tolerance(n), 1e-3):.1e})")


def test_live_camera_turn_inputs(omni) -> None:
    chat = omni.chat(max_tokens=4)
    audio_only = chat.begin_turn()
    with pytest.raises(po.OptionsError, match="video=True"):
        audio_only.feed_video(scene(1)[0])
    audio_only.abort()
    turn = chat.begin_turn(video=True)
    with pytest.raises(po.OptionsError, match="2 fps"):
        turn.feed_video(scene(1)[0], fps=30)
    turn.feed_video(scene(2))
    with pytest.raises(po.MediaError, match="one size"):
        turn.feed_video(scene(1, 336, 448))
    with pytest.raises(po.MediaError):
        turn.feed_video(np.zeros((4, 4), np.float64))
    turn.abort()
    # the camera gave nothing in the end (frames=()): the turn goes as audio, equal to sending the clip
    clip = loud_then_quiet()
    ref_chat, ref_logits, ref_done = _one_piece(omni, clip)
    chat = omni.chat(max_tokens=6)
    box, obs = _observer()
    turn = chat.begin_turn("exact", video=True, logits_processors=[obs])
    _feed_live(turn, clip, scene(2 * math.floor(clip.size / R)))
    _wait_prefilled(turn, 2)
    done = list(turn.finish_sync(frames=()))[-1]
    n = ref_done.usage.prompt_tokens
    assert done.usage == ref_done.usage and chat.tokens[:n] == ref_chat.tokens[:n]
    assert [m.to_dict() for m in chat.messages] == [m.to_dict() for m in ref_chat.messages]
    assert np.abs(box[0] - ref_logits).max() / np.abs(ref_logits).max() <= logit_tolerance(n)


def test_live_camera_turn_repairs_and_abort(omni) -> None:
    """finish(frames=...) with a recording that differs from the frames fed (from the third pair on) is
    the one-piece send of that recording; an aborted camera turn (its cells relabelled by the ordered
    decode) leaves the chat exactly as it was."""
    clip = loud_then_quiet()
    n = 2 * math.floor(clip.size / R)
    fed, final = scene(n), scene(n)
    final[4:] = final[4:, ::-1]  # the camera's recording from frame 4 on is not what was streamed
    ref = omni.chat(max_tokens=6)
    list(ref.send_sync("First."))
    box_ref, obs_ref = _observer()
    ref_done = list(ref.send_sync(video=(final, 2.0, clip, R), logits_processors=[obs_ref]))[-1]
    chat = omni.chat(max_tokens=6)
    list(chat.send_sync("First."))
    before = (chat.tokens, chat._session.history.n, chat._session.next_pos)
    dropped = chat.begin_turn("exact", video=True)
    _feed_live(dropped, clip, fed)
    _wait_prefilled(dropped, 2)
    assert chat._session.history.n > before[1]
    dropped.abort()
    assert (chat.tokens, chat._session.history.n, chat._session.next_pos) == before
    box, obs = _observer()
    turn = chat.begin_turn("exact", video=True, logits_processors=[obs])
    _feed_live(turn, clip, fed)
    _wait_prefilled(turn, 2)
    done = list(turn.finish_sync(frames=final))[-1]
    m = len(ref.tokens) - ref_done.usage.reply_tokens
    assert done.usage == ref_done.usage and chat.tokens[:m] == ref.tokens[:m]
    np.testing.assert_array_equal(chat._session.history.positions, ref._session.history.positions)
    gap = np.abs(box[0] - box_ref[0]).max() / np.abs(box_ref[0]).max()
    assert gap <= min(logit_tolerance(m), 1e-3), gap
    assert done.tokens == ref_done.tokens


def test_live_log_mel_exact_repair_is_the_whole_clip_log_mel() -> None:
    rng = np.random.default_rng(7)
    for n in (321, 3 * R + 77, 64039, 64040, 9 * R + 5):
        x = (rng.standard_normal(n) * 0.1).astype(np.float32)
        x[: n // 3] *= 1e-6  # quiet start: the early windows' running maximum is too low
        lm, given = LiveLogMel(), []
        for i in range(0, n, 997):
            lm.feed(x[i : i + 997])
            given += lm.windows()
        peak = lm.end()
        fixed = [w if w.valid_for(peak) else lm.reclamp(w.index, peak) for w in given] + lm.rest(peak)
        np.testing.assert_array_equal(np.concatenate([w.features for w in fixed], axis=1), log_mel(x))
