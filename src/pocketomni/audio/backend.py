"""Which audio backend runs here: AudioRecord/AudioTrack on Android (audio/android_io.py), PortAudio
through sounddevice elsewhere (audio/io.py). Both meet audio/contract.py.

The platform is detected once from the process (`detect_platform()`); callers that want another one
(tests, an app that knows better) pass `platform=` explicitly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pocketomni.audio.contract import AudioBackend
from pocketomni.errors import OptionsError

__all__ = ["BACKENDS", "audio_backend", "detect_platform"]

BACKENDS = ("sounddevice", "android")
# Set by python-for-android's launcher (PythonActivity / PythonService) in every p4a app.
P4A_ENV_MARKERS = ("ANDROID_ARGUMENT", "ANDROID_PRIVATE", "ANDROID_APP_PATH")


def detect_platform(environ: Mapping[str, str] | None = None, sys_platform: str | None = None,
                    android_api_level: bool | None = None) -> str:
    """"android" on Android (a python-for-android app, or a CPython built for Android: sys.platform
    "android" from 3.13, sys.getandroidapilevel), else sys.platform ("linux", "darwin", "win32")."""
    environ = os.environ if environ is None else environ
    sys_platform = sys.platform if sys_platform is None else sys_platform
    if android_api_level is None:
        android_api_level = hasattr(sys, "getandroidapilevel")
    if sys_platform == "android" or android_api_level or any(k in environ for k in P4A_ENV_MARKERS):
        return "android"
    return sys_platform


def audio_backend(platform: str | None = None, *, name: str | None = None) -> AudioBackend:
    """The backend for `platform` (default: this process's), or the one called `name`."""
    if name is None:
        name = "android" if (platform or detect_platform()) == "android" else "sounddevice"
    if name == "android":
        from pocketomni.audio.android_io import AndroidBackend

        return AndroidBackend()
    if name == "sounddevice":
        from pocketomni.audio.io import SoundDeviceBackend

        return SoundDeviceBackend()
    raise OptionsError(f"unknown audio backend {name!r}; choose one of {', '.join(BACKENDS)}")
