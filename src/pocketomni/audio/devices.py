"""Audio devices through sounddevice (PortAudio): discovery, selection by index or name, and the lazy
import that turns a missing PortAudio library into an actionable error.

No device at all is a normal situation (a server, a container): `has_output_device()` lets a caller
fall back to text only, and `find_device()` raises FeatureUnavailableError saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

from pocketomni.errors import FeatureUnavailableError, OptionsError

__all__ = [
    "AudioDevice",
    "find_device",
    "has_input_device",
    "has_output_device",
    "import_sounddevice",
    "list_devices",
    "match_device",
    "pick_rate",
]


Kind = Literal["input", "output"]


def import_sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing package or PortAudio library into a clear error."""
    try:
        import sounddevice  # type: ignore[import-not-found]
    except ImportError as exc:
        raise FeatureUnavailableError(
            "audio playback and capture need the 'sounddevice' package: pip install sounddevice"
        ) from exc
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise FeatureUnavailableError(
            f"audio playback and capture need the PortAudio library ({exc}). Install it: "
            "sudo apt-get install libportaudio2 (Debian/Ubuntu), brew install portaudio (macOS)"
        ) from exc
    return sounddevice


# ---------------------------------------------------------------- devices


@dataclass(frozen=True)
class AudioDevice:
    """One audio device (a PortAudio device, or an Android route: see audio/android_io.py)."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool
    is_default_output: bool


def list_devices() -> list[AudioDevice]:
    """All devices PortAudio sees (empty when there are none). Raises FeatureUnavailableError without
    PortAudio."""
    sd = import_sounddevice()
    try:
        infos = sd.query_devices()
        apis = sd.query_hostapis()
        din, dout = (int(d) if d is not None else -1 for d in sd.default.device)
    except sd.PortAudioError:
        return []
    return [
        AudioDevice(
            index=int(i["index"]),
            name=str(i["name"]),
            hostapi=str(apis[i["hostapi"]]["name"]),
            max_input_channels=int(i["max_input_channels"]),
            max_output_channels=int(i["max_output_channels"]),
            default_samplerate=float(i["default_samplerate"]),
            is_default_input=int(i["index"]) == din,
            is_default_output=int(i["index"]) == dout,
        )
        for i in infos
    ]


def _has(kind: Kind) -> bool:
    try:
        devs = list_devices()
    except FeatureUnavailableError:
        return False
    return any((d.max_output_channels if kind == "output" else d.max_input_channels) > 0 for d in devs)


def has_output_device() -> bool:
    """True when some output device exists (False also when PortAudio is missing): else run text only."""
    return _has("output")


def has_input_device() -> bool:
    """True when some input device (microphone) exists."""
    return _has("input")


def find_device(device: int | str | None, kind: Kind) -> AudioDevice:
    """Resolve an index, a name (exact, else unique substring, case-insensitive) or None (default)."""
    return match_device(
        list_devices(), device, kind,
        "Check that a sound card or sound server (PulseAudio/PipeWire) is available to this process; "
        "pocketomni.audio.io.list_devices() shows what PortAudio sees",
    )


def match_device(devices: list[AudioDevice], device: int | str | None, kind: Kind, hint: str) -> AudioDevice:
    """Pick from `devices` (any backend's list) by index, name (exact, else unique substring,
    case-insensitive) or None (the default). `hint` ends the error when there is no device at all."""
    devs = [
        d for d in devices if (d.max_output_channels if kind == "output" else d.max_input_channels) > 0
    ]
    if not devs:
        what = "output device: run text only" if kind == "output" else "input device (microphone)"
        raise FeatureUnavailableError(f"no {what}. {hint}")
    names = ", ".join(f"[{d.index}] {d.name!r}" for d in devs)
    if device is None:
        default = [d for d in devs if (d.is_default_output if kind == "output" else d.is_default_input)]
        return default[0] if default else devs[0]
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        for d in devs:
            if d.index == int(device):
                return d
        raise OptionsError(f"no {kind} device with index {device}; {kind} devices: {names}")
    if isinstance(device, str):
        q = device.strip().lower()
        exact = [d for d in devs if d.name.lower() == q]
        if exact:
            return exact[0]
        part = [d for d in devs if q in d.name.lower()]
        if len(part) == 1:
            return part[0]
        if part:
            raise OptionsError(
                f"{kind} device name {device!r} is ambiguous: {names}; pass the full name or index"
            )
        raise OptionsError(f"no {kind} device named {device!r}; {kind} devices: {names}")
    raise OptionsError(f"device must be an index, a name or None, not {type(device).__name__}")


def pick_rate(sd: ModuleType, dev: AudioDevice, kind: Kind, want: int, channels: int) -> int:
    """`want` when the device accepts it, else the device's default rate."""
    check = sd.check_output_settings if kind == "output" else sd.check_input_settings
    try:
        check(device=dev.index, samplerate=want, channels=channels, dtype="float32")
        return want
    except (sd.PortAudioError, ValueError):  # the rate is not supported
        return int(round(dev.default_samplerate))
