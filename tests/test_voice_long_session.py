"""A simulated 30-minute voice conversation (issue 15 §3) on the tiny model at n_ctx 4096: synthetic
(espeak-ng) speech turns go through the VoiceSession's real capture path (VAD, camera recorder, turn
thread) from a scripted microphone that delivers audio as fast as the session reads it; some turns
carry an attached image, stretches of them a live camera (a moving scene, sent as video at 2 fps
with the voice as its sound track). Time is simulated: the audio fed plus the spoken replies' length.

Asserted: no error and no context overflow for the whole session, the context was trimmed many times
(the session would have died long before the end otherwise), the memory held flat after warm-up
(slope bound derived below), no thread left behind by camera switches. Reported (pytest -s): the
slope in MB per simulated hour (with the least-squares slope of the whole RSS, for comparison) and
per-turn latencies by thirds of the session (not asserted: timing is noisy)."""

from __future__ import annotations

import ctypes
import gc
import os
import queue
import threading
import time

import numpy as np
import pytest
from audio_env import espeak

import pocketomni as po
from pocketomni.audio.devices import AudioDevice
from pocketomni.errors import FeatureUnavailableError
from pocketomni.voice.session import ReplyDone, UserTurn, VoiceError

R = 16000
BLOCK = R // 50  # 20 ms blocks, as the real recorders deliver
SIM_SECONDS = 30 * 60
PAUSE_SECONDS = (0.6, 1.0)  # noise before the user speaks; after: > the VAD's 0.7 s end-of-turn silence
REPLY_SECONDS_PER_TOKEN = 0.3
SENTENCES = [
    "What is in front of me right now?",
    "Is the light green yet?",
    "Read me the label on this jar, please, and tell me whether it contains any nuts or milk.",
    "How many minutes should I let the pasta cook?",
    "Okay. And what about the sauce, should it simmer the whole time, or only at the end?",
    "Thanks.",
    "Can you describe the person walking towards me?",
    "Where did I leave my keys? I think they were on the table by the window a moment ago.",
    "Is there a step down here?",
    "Tell me a short story about a cat who learns to cook, while I wait for the bus.",
]


class ScriptedMic:
    """An AudioRecorder (pocketomni.audio.contract) playing scripted audio: blocks are handed out as fast
    as the session reads them; between turns it delivers nothing (the user listens to the reply)."""

    def __init__(self) -> None:
        self.device = AudioDevice(0, "scripted microphone", "test", 1, 0, float(R), True, False)
        self.sample_rate = self.device_rate = R
        self.block = BLOCK
        self.overflows = 0
        self.started_at: float | None = None
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        self._noise = (np.random.default_rng(0).standard_normal(R * 4) * 0.002).astype(np.float32)
        self._at = 0

    def noise(self, seconds: float) -> np.ndarray:
        n = int(seconds * R)
        idx = (self._at + np.arange(n)) % self._noise.size
        self._at = (self._at + n) % self._noise.size
        return self._noise[idx]

    def say(self, clip: np.ndarray) -> float:
        """Queue noise, the clip (over the noise) and the end-of-turn silence; the seconds queued."""
        audio = np.concatenate([self.noise(PAUSE_SECONDS[0]), clip + self.noise(clip.size / R),
                                self.noise(PAUSE_SECONDS[1])])
        audio = np.concatenate([audio, np.zeros(-audio.size % BLOCK, np.float32)])
        for blk in audio.reshape(-1, BLOCK):
            self._q.put(blk.copy())
        return audio.size / R

    @property
    def capturing(self) -> bool:
        return self.started_at is not None

    def start(self) -> ScriptedMic:
        self.started_at = time.monotonic()
        return self

    def stop(self) -> None:
        self.started_at = None

    def close(self) -> None:
        self.stop()

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> np.ndarray:
        out = []
        while (blk := self.read(0)) is not None:
            out.append(blk)
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def record(self, seconds: float) -> np.ndarray:
        return np.concatenate([self.read(None) for _ in range(int(seconds * R) // BLOCK)])

    def __enter__(self) -> ScriptedMic:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedBackend:
    """An AudioBackend with the scripted microphone and no speaker."""

    name = "scripted"

    def __init__(self, mic: ScriptedMic) -> None:
        self.mic = mic

    def list_devices(self) -> list[AudioDevice]:
        return [self.mic.device]

    def find_device(self, device, kind):
        if kind == "input":
            return self.mic.device
        raise FeatureUnavailableError("no output device")

    def has_input_device(self) -> bool:
        return True

    def has_output_device(self) -> bool:
        return False

    def open_player(self, device=None, sample_rate=24000, **options):
        raise FeatureUnavailableError("no output device")

    def open_recorder(self, device=None, sample_rate=R, *, on_block=None, **options) -> ScriptedMic:
        assert sample_rate == R and on_block is None
        return self.mic


class Scene:
    """A camera source (callable): a 640x480 street-like gradient with a square moving across it."""

    def __init__(self) -> None:
        self.t = 0
        self.base = np.broadcast_to(np.linspace(30, 210, 640, dtype=np.float32)[None, :, None],
                                    (480, 640, 3)).astype(np.uint8)

    def __call__(self) -> np.ndarray:
        self.t += 1
        f = self.base.copy()
        x = (self.t * 23) % 560
        f[180:260, x:x + 80] = (200, 40 + self.t % 150, 30)
        return f


def _image(i: int) -> np.ndarray:
    return (np.random.default_rng(i).random((240, 320, 3)) * 255).astype(np.uint8)


def _memory_bytes() -> tuple[int, int]:
    """(held, RSS): held = resident anonymous and shared-memory pages + the full size of every file
    mapping; RSS = all resident pages (/proc/self/statm), reported only.

    Resident pages of file mappings (the model files, the libraries) are left out of `held`: the page
    cache decides them, not what this process keeps. They come in as the session first touches them
    (the tiny thinker file is half token embedding, 37 MB: a row comes in when its token is first read)
    and go under memory pressure. Measured: the thinker file's resident pages 41 -> 75 MB over a
    session, all file pages 129 -> 163 MB, +33 MB per simulated hour on their own, while anonymous
    memory stayed within a few MB; with a freshly written copy of the same files they were all in from
    the start (161 -> 164 MB). So the same code's RSS slope was +3..+10 with one copy of the model and
    +41..+44 with the other (bound 27.6). They cannot exceed the mappings' size, which `held` counts
    instead: a leaked mapping still counts in full."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS shows what is still held
    with open("/proc/self/status") as f:
        kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f) if k in ("RssAnon", "RssShmem")}
    mapped = 0
    with open("/proc/self/maps") as f:
        for ln in f:
            addr, _perms, _offset, _dev, inode = ln.split(maxsplit=5)[:5]
            if inode != "0":  # backed by a file
                lo, hi = addr.split("-")
                mapped += int(hi, 16) - int(lo, 16)
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 1024 * (kb["RssAnon"] + kb["RssShmem"]) + mapped, rss


def slope_mb_per_hour(seconds: np.ndarray, nbytes: np.ndarray) -> float:
    """Growth in MB per hour: the Theil-Sen slope (median of the slopes between every pair of points).

    Not least squares: a least-squares line follows single high points (a turn's freed buffers the
    allocator has not handed back yet, garbage not yet collected, a camera turn's frames still in a
    free list), most of all near the ends of the fit, so a few such points late in the session tilt it.
    The median ignores them as long as they are under ~29% of the points (its breakdown point), while a
    leak raises every later point and so every pairwise slope: a leak is measured at its rate (checked
    on synthetic series in test_slope_estimator_sees_a_leak_and_not_transient_peaks)."""
    i, j = np.triu_indices(len(seconds), 1)
    pairwise = (nbytes[j] - nbytes[i]) / (seconds[j] - seconds[i])
    return float(np.median(pairwise)) * 3600 / 2**20


class Recorder:
    """The session's events the test needs; only the last turn's are kept (the test must not grow)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.n_done = 0
        self.turn: UserTurn | None = None
        self.done: tuple[float, ReplyDone] | None = None  # (time.monotonic() it arrived, the event)
        self.trims: list[po.HistoryTrimmed] = []
        self.errors: list[VoiceError] = []
        self.audio_seconds = 0.0  # of the current reply

    def __call__(self, ev: object) -> None:
        with self.cond:
            if isinstance(ev, po.AudioChunk):
                self.audio_seconds += ev.duration
            elif isinstance(ev, UserTurn):
                self.turn = ev
            elif isinstance(ev, ReplyDone):
                self.done = (time.monotonic(), ev)
                self.n_done += 1
            elif isinstance(ev, po.HistoryTrimmed):
                self.trims.append(ev)
            elif isinstance(ev, VoiceError):
                self.errors.append(ev)
            self.cond.notify_all()

    def wait_done(self, n: int, timeout: float = 60.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.n_done >= n or self.errors, timeout):
                raise AssertionError(f"turn {n} got no reply within {timeout} s")


def _synthetic_held(seed: int, leak_mb_per_hour: float, peaks: bool) -> tuple[np.ndarray, np.ndarray]:
    """Memory held after each turn past warm-up, shaped like the session test's (92 turns of 10-20
    simulated seconds from 7.5 min on; a level per kind of turn repeating every 30 turns, 0.7 MB of
    noise), plus a leak; with `peaks`, transient peaks of 5-30 MB on 5% of the turns and 30% of those
    in the last third (the allocator holding more late in the session), each gone by the next turn."""
    rng = np.random.default_rng(seed)
    n = 92
    seconds = 7.5 * 60 + np.cumsum(rng.uniform(10, 20, n))
    level = rng.normal(0, 0.6, 30)[np.arange(n) % 30]
    mb = 300 + level + rng.normal(0, 0.7, n) + leak_mb_per_hour * seconds / 3600
    if peaks:
        hit = rng.random(n) < np.where(np.arange(n) >= 2 * n // 3, 0.3, 0.05)
        mb += hit * rng.uniform(5, 30, n)
    return seconds, mb * 2**20


def test_slope_estimator_sees_a_leak_and_not_transient_peaks() -> None:
    bound = 27.6  # MB per simulated hour: what the session test derives (27.6-27.7 in its runs)
    lsq_flat = []
    for seed in range(20):
        # a leak of the bound's size is measured as one, transient peaks or not; a bit more fails the test
        for peaks in (False, True):
            assert slope_mb_per_hour(*_synthetic_held(seed, bound, peaks)) > 0.9 * bound
            assert slope_mb_per_hour(*_synthetic_held(seed, 1.25 * bound, peaks)) > bound
        # flat with transient peaks: flat, where a least-squares line is tilted by the late peaks
        t, y = _synthetic_held(seed, 0.0, peaks=True)
        assert abs(slope_mb_per_hour(t, y)) < 0.25 * bound
        lsq_flat.append(np.polyfit(t, y, 1)[0] * 3600 / 2**20)
    assert np.mean(lsq_flat) > 0.25 * bound  # the peaks are big enough to matter (12.7 MB/h on average)


@pytest.fixture(scope="module")
def omni(converted_tiny):
    # a phone's camera budget (224x224 frames) needs a smaller video minimum than the reference's
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, n_ctx=4096, video_min_pixels=28 * 28 * 4) as o:
        yield o


def test_a_30_minute_voice_conversation_never_fills_up_and_stays_flat(omni) -> None:
    cpu0 = time.process_time()
    clips = [espeak(s, R) for s in SENTENCES]
    # text replies: the talker's work per turn would put the test far over its CI budget; spoken replies
    # through trims are covered by tests/test_chat_history_policy.py (a speech chat's rebuilt hidden states)
    chat = omni.chat(max_tokens=32)
    mic, log, scene = ScriptedMic(), Recorder(), Scene()
    vs = po.VoiceSession(chat, output_device=False, audio_backend=ScriptedBackend(mic), on_event=log,
                         camera_pixels=224 * 224)
    sim = 0.0
    rows: list[tuple[float, int, int, int]] = []  # (simulated seconds, held, RSS bytes, turn) after each reply
    latency: list[tuple[float, float, float]] = []  # (simulated seconds, first text, reply done) after speech end
    threads_at_warmup = trims_at_warmup = 0
    warmup = 3 * len(clips)  # turns: the first cycle; by then the context has been trimmed too
    with vs:
        i = 0
        while sim < SIM_SECONDS:
            # stretches of ten turns (every sentence once): voice only, every other one with an image, with
            # the camera on; a cycle of 30 turns shows every shape of input, so later turns bring no new one
            phase = (i // len(clips)) % 3
            if phase == 2 and vs.camera is None:
                vs.set_camera(scene)
                while vs.camera.latest is None:  # the user turns the camera on, then speaks
                    time.sleep(0.01)
            elif phase != 2 and vs.camera is not None:
                vs.set_camera(None)
            if phase == 1 and i % 2:
                vs.attach_image(_image(i))
            clip = clips[i % len(clips)]
            log.audio_seconds = 0.0
            sim += mic.say(clip)
            log.wait_done(i + 1)
            assert not log.errors, log.errors[0].message
            turn, (t_done, rd) = log.turn, log.done
            assert not rd.interrupted and rd.done.finish_reason in ("stop", "length")
            assert turn.audio is not None and abs(turn.audio.size / R - clip.size / R) < 1.0
            assert (turn.frames is not None) == (phase == 2)
            assert chat.n_tokens <= chat.n_ctx
            # the user listens to the whole reply: it lasts what its text takes to say, ~0.3 s a token (150 words/min)
            sim += max(log.audio_seconds, REPLY_SECONDS_PER_TOKEN * rd.done.usage.reply_tokens)
            rows.append((sim, *_memory_bytes(), i))
            latency.append((sim, rd.first_text_latency, t_done - turn.ended_at))
            i += 1
            if i == warmup:
                threads_at_warmup, trims_at_warmup = threading.active_count(), len(log.trims)
        msgs = chat.messages
    assert vs.closed and not log.errors
    n_turns = i
    # the conversation outgrew the window many times over; it went on by trimming, right after replies
    assert len(log.trims) >= 5 and all(not t.before_turn for t in log.trims)
    assert len(msgs) == 2 * n_turns and msgs[0].role == "user"  # no system message: the template's default
    assert msgs[0].dropped and not msgs[-1].dropped
    assert trims_at_warmup >= 1 and threading.active_count() <= threads_at_warmup  # camera switches leave no thread behind

    # Memory held (_memory_bytes) after warm-up: its slope (slope_mb_per_hour), MB per simulated hour.
    # What may legitimately grow is the transcript (chat.messages: text and media labels, a few hundred
    # bytes a turn; 4x its JSON size covers the Python objects); buffers sized by the largest input seen
    # stop growing after the first cycle. The bound: that, plus half of what keeping every turn's audio
    # would add (its mean size; a kept camera frame or image is larger still). All of it would be
    # anonymous memory, which `held` counts in full.
    import json

    transcript = len(json.dumps([m.to_dict() for m in msgs]).encode())
    sim_s = np.array([r[0] for r in rows])
    held = np.array([r[1] for r in rows], dtype=np.float64)
    rss = np.array([r[2] for r in rows], dtype=np.float64)
    late = np.array([r[3] for r in rows]) >= warmup
    assert sim_s[late][0] < SIM_SECONDS / 2  # the fit spans most of the session
    slope = slope_mb_per_hour(sim_s[late], held[late])
    rss_lsq = np.polyfit(sim_s[late], rss[late], 1)[0] * 3600 / 2**20  # the former measure, reported only
    turns_per_hour = n_turns / (sim / 3600)
    mean_clip = 4 * np.mean([c.size for c in clips])  # float32 bytes
    bound = turns_per_hour * (4 * transcript / n_turns + 0.5 * mean_clip) / 2**20
    thirds = np.array_split(np.array(latency), 3)
    print(f"\n{n_turns} turns over {sim / 60:.1f} simulated minutes, {len(log.trims)} trims "
          f"(rebuild median {np.median([t.seconds for t in log.trims]) * 1000:.0f} ms, "
          f"{np.median([t.tokens_after for t in log.trims]):.0f} tokens kept); held {held[0] / 2**20:.0f} -> "
          f"{held[late][0] / 2**20:.0f} (warm-up end) -> {held[-1] / 2**20:.0f} MB, slope after warm-up "
          f"{slope:+.2f} MB per simulated hour (bound {bound:.1f}); RSS {rss[0] / 2**20:.0f} -> "
          f"{rss[late][0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MB, least squares {rss_lsq:+.2f}; "
          f"{time.process_time() - cpu0:.0f} s of CPU")
    for k, part in enumerate(thirds):
        print(f"  third {k + 1}: end of speech -> first text median {np.median(part[:, 1]) * 1000:.0f} ms, "
              f"-> reply done median {np.median(part[:, 2]) * 1000:.0f} ms (max {part[:, 2].max() * 1000:.0f})")
    assert slope < bound
