"""The Android audio backend's own calls, on the stand-in Java classes (tests/android_standin.py): which
Java objects it builds and with what, the run-time permission, the rate fallback, device routes,
barge-in as pause()+flush(), and its threads. This proves our calls and buffer handling, not a phone.
(The contract tests in test_audio_io_playback.py / test_audio_io_capture.py also run on it.)"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from android_standin import RECORD_AUDIO, StandIn
from audio_env import align, tone

from pocketomni.audio.android_io import AndroidBackend
from pocketomni.audio.backend import audio_backend, detect_platform
from pocketomni.audio.contract import AudioBackend, AudioPlayer, AudioRecorder
from pocketomni.audio.io import SoundDeviceBackend
from pocketomni.errors import FeatureUnavailableError, OptionsError


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    s = StandIn()
    s.install(monkeypatch)
    return s


def test_standin_capture_is_voice_communication_16k_mono_after_the_permission(standin: StandIn) -> None:
    backend = AndroidBackend(standin.jnius)
    assert isinstance(backend, AudioBackend)
    assert not standin.permission_granted
    with backend.open_recorder() as rec:
        assert isinstance(rec, AudioRecorder)
        x = rec.record(0.2)
    assert standin.permission_requests == 1 and standin.permission_granted
    calls = [(w, a) for _, w, a in standin.calls]
    # asked first, then the recorder built: VOICE_COMMUNICATION (7), 16 kHz, CHANNEL_IN_MONO (16), PCM 16-bit (2)
    assert calls.index(("request_permissions", ((RECORD_AUDIO,),))) < standin.methods().index("AudioRecord.<init>")
    (record,) = standin.records
    assert (record.source, record.rate) == (7, 16000)
    init = next(a for w, a in calls if w == "AudioRecord.<init>")
    assert init[2:4] == (16, 2) and init[4] >= 2 * 16000 // 25  # at least getMinBufferSize
    assert rec.device_rate == 16000 and x.shape == (3200,) and x.dtype == np.float32
    # reads are one 20 ms block each (640 bytes), into a bytearray pyjnius can copy back into
    reads = [a for w, a in calls if w == "AudioRecord.read"]
    assert reads and all(a == (640, 0, 640) for a in reads)
    # the platform's echo canceller and noise suppressor are switched on for this capture session
    assert rec.effects == ["AcousticEchoCanceler", "NoiseSuppressor"]
    assert all(e.enabled and e.session == 4242 for e in standin.effects)
    assert record.released and record.recordstate == record.RECORDSTATE_STOPPED
    standin.check_threads()


def test_standin_permission_already_granted_is_not_asked_again(standin: StandIn) -> None:
    standin.permission_granted = True
    with AndroidBackend(standin.jnius).open_recorder():
        pass
    assert standin.permission_requests == 0 and "check_permission" in standin.methods()
    standin.check_threads()


def test_standin_refused_permission_means_no_microphone(standin: StandIn) -> None:
    standin.permission_answer = False
    with pytest.raises(FeatureUnavailableError, match="RECORD_AUDIO.*denied"):
        AndroidBackend(standin.jnius).open_recorder()
    assert not standin.records  # nothing was opened
    standin.check_threads()


def test_standin_unanswered_permission_times_out(standin: StandIn) -> None:
    standin.permission_answer = None
    with pytest.raises(FeatureUnavailableError, match="not answered"):
        AndroidBackend(standin.jnius).open_recorder(permission_timeout=0.3)
    standin.check_threads()


def test_standin_without_p4a_permissions_module_relies_on_audiorecord_state(monkeypatch: pytest.MonkeyPatch) -> None:
    s = StandIn()
    monkeypatch.setitem(sys.modules, "android.permissions", None)  # not a python-for-android build
    monkeypatch.setitem(sys.modules, "android", None)
    with pytest.raises(FeatureUnavailableError, match="RECORD_AUDIO permission may be missing"):
        AndroidBackend(s.jnius).open_recorder()
    # every rate tried was released again
    assert [r.rate for r in s.records] == [16000, 48000, 44100] and all(r.released for r in s.records)
    s.check_threads()


def test_standin_capture_rate_refused_falls_back_to_48k_resampled(monkeypatch: pytest.MonkeyPatch) -> None:
    s = StandIn(refused_capture_rates=(16000,))
    s.install(monkeypatch)
    sent = tone(700, 0.3, 48000)
    with AndroidBackend(s.jnius).open_recorder() as rec:
        assert rec.device_rate == 48000 and rec.sample_rate == 16000 and rec.block == 320
        s.mic.say(sent)
        time.sleep(0.5)
        rec.stop()
        got = rec.drain()
    ncc, _ = align(tone(700, 0.3, 16000)[200:-200], got)
    assert ncc >= 0.99, ncc
    assert [r.rate for r in s.records] == [16000, 48000] and s.records[0].released
    s.check_threads()


def test_standin_playback_track_and_barge_in(standin: StandIn) -> None:
    with AndroidBackend(standin.jnius).open_player() as player:
        assert isinstance(player, AudioPlayer)
        (track,) = standin.tracks
        # STREAM_MUSIC (3): the loudspeaker, not the earpiece; 24 kHz mono 16-bit, MODE_STREAM
        assert (track.stream, track.rate, track.route) == (3, 24000, None)
        assert track.size >= int(0.1 * 24000) * 2  # the 0.1 s latency buffer
        assert player.write(tone(440, 2.0, 24000))
        time.sleep(0.5)
        took = player.stop()
        assert not player.is_playing and player.write(tone(440, 0.1, 24000)) is False
        names = standin.methods("AudioTrack.")
        i = names.index("AudioTrack.pause", names.index("AudioTrack.play"))
        assert names[i + 1] == "AudioTrack.flush"  # pause() then flush(): the rest is discarded
        time.sleep(0.3)
        standin.flush_speaker()
        played = sum(x.size for _, _, x in standin.speaker.segments) / 24000
        player.resume()
        assert player.play(tone(1000, 0.1, 24000), timeout=5)
    writes = [a for _, w, a in standin.calls if w == "AudioTrack.write"]
    assert writes and all(a[3] == 1 and a[2] <= 2 * 480 for a in writes)  # non-blocking, <= 20 ms each
    # the stop cut the tone where it was: 0.5 s in, plus at most what the call took and a block
    assert 0.4 <= played <= 0.5 + took + 0.05, played
    assert track.released
    standin.check_threads()


def test_standin_routes_are_listed_and_chosen_with_set_preferred_device(standin: StandIn) -> None:
    backend = AndroidBackend(standin.jnius)
    devs = {d.name: d for d in backend.list_devices()}
    assert set(devs) == {"default", "Pixel 8 (built-in mic)", "USB-C headset (wired headset)", "Pixel 8 (speaker)",
                         "Pixel 8 (earpiece)"}
    assert backend.find_device(None, "input").name == "default"
    assert backend.find_device(12, "input").name == "USB-C headset (wired headset)"
    with pytest.raises(OptionsError, match="ambiguous"):
        backend.find_device("pixel 8", "output")
    with pytest.raises(OptionsError, match="no input device named"):
        backend.find_device("bluetooth", "input")
    with backend.open_player("earpiece") as player, backend.open_recorder("USB-C") as rec:
        assert player.device.index == 13 and rec.device.index == 12
    assert standin.tracks[0].route._id == 13 and standin.records[0].route._id == 12
    with backend.open_player("default"):
        assert standin.tracks[1].route is None  # the default route: no preference set
    standin.check_threads()


def test_standin_without_pyjnius_says_what_to_add(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jnius", None)
    backend = audio_backend("android")
    assert isinstance(backend, AndroidBackend)  # selecting it imports nothing
    with pytest.raises(FeatureUnavailableError, match="pyjnius.*buildozer.spec"):
        backend.open_player()


def test_standin_backend_imports_jnius_lazily(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jnius", standin.jnius)
    with audio_backend("android").open_player() as player:
        assert player.play(tone(500, 0.05, 24000), timeout=5)
    assert standin.tracks and standin.tracks[0].released
    standin.check_threads()


@pytest.mark.parametrize(
    ("environ", "sys_platform", "api_level", "want"),
    [
        ({"ANDROID_ARGUMENT": "/data/user/0/org.pocketomni/files/app"}, "linux", False, "android"),  # p4a
        ({"ANDROID_PRIVATE": "/data/user/0/org.pocketomni/files"}, "linux", False, "android"),
        ({}, "android", False, "android"),  # CPython 3.13+ built for Android
        ({}, "linux", True, "android"),  # sys.getandroidapilevel exists
        ({}, "linux", False, "linux"),
        ({}, "darwin", False, "darwin"),
        ({}, "win32", False, "win32"),
    ],
)
def test_platform_detection(environ: dict[str, str], sys_platform: str, api_level: bool, want: str) -> None:
    assert detect_platform(environ, sys_platform, api_level) == want


def test_backend_per_platform() -> None:
    assert isinstance(audio_backend("android"), AndroidBackend)
    for p in ("linux", "darwin", "win32"):
        assert isinstance(audio_backend(p), SoundDeviceBackend)
    assert audio_backend().name == ("android" if detect_platform() == "android" else "sounddevice")
    assert audio_backend(name="sounddevice").name == "sounddevice"
    with pytest.raises(OptionsError, match="unknown audio backend"):
        audio_backend(name="alsa")
