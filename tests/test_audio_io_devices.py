"""Device discovery on the real PulseAudio null sinks, and the no-device (text only) path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from audio_env import MIC, SPEAKER, audio_devices  # noqa: F401  (fixture)

from pocketomni.errors import OptionsError


def test_virtual_devices_are_listed_and_resolved(audio_devices: None) -> None:  # noqa: F811
    from pocketomni.audio.io import find_device, has_input_device, has_output_device, list_devices

    devs = {d.name: d for d in list_devices()}
    assert SPEAKER in devs and MIC in devs, f"PortAudio sees {sorted(devs)}"
    assert devs[SPEAKER].max_output_channels > 0 and devs[MIC].max_input_channels > 0
    assert has_output_device() and has_input_device()
    # exact name wins over the longer "pocketomni_speaker_monitor"; an index resolves to the same device
    assert find_device(SPEAKER, "output").name == SPEAKER
    assert find_device(devs[MIC].index, "input").name == MIC
    assert find_device("POCKETOMNI_MIC", "input").name == MIC  # case-insensitive
    with pytest.raises(OptionsError, match="ambiguous"):
        find_device("pocketomni", "output")
    with pytest.raises(OptionsError, match="no output device named"):
        find_device("no-such-device", "output")
    with pytest.raises(OptionsError, match="index"):
        find_device(10_000, "output")


def test_no_device_means_text_only() -> None:
    """A process that reaches no sound card and no sound server: has_output_device() is False and
    opening a Player raises FeatureUnavailableError saying to run text only."""
    if os.environ.get("POCKETOMNI_SKIP_AUDIO") == "1":
        pytest.skip("POCKETOMNI_SKIP_AUDIO=1: tests on real audio devices are skipped")
    if os.path.exists("/proc/asound/cards") and "no soundcards" not in open("/proc/asound/cards").read():
        pytest.skip("this machine has a real sound card, so a no-device process cannot be made here")
    env = {k: v for k, v in os.environ.items() if k != "ALSA_CONFIG_PATH"}
    env["PULSE_SERVER"] = "unix:/nonexistent/pocketomni-no-pulse"
    code = (
        "from pocketomni.audio import devices as d, io as a\n"
        "from pocketomni.errors import FeatureUnavailableError\n"
        "print(d.has_output_device(), d.has_input_device(), len(d.list_devices()))\n"
        "for cls in (a.Player, a.Recorder):\n"
        "    try:\n"
        "        cls()\n"
        "    except FeatureUnavailableError as e:\n"
        "        print(str(e))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False False 0"
    assert "no output device: run text only" in lines[1]
    assert "no input device" in lines[2]
