"""Is numpy built with a BLAS? token2wav (the DiT and BigVGAN) and the audio tower are numpy matmuls;
without a BLAS (python-for-android's numpy before its OpenBLAS recipe: `-Dblas=none`) each is a plain
single-threaded loop, minutes per second of speech on a phone.

`numpy_blas()` reads numpy's build configuration (`np.show_config(mode="dicts")`, numpy >= 1.26);
`warn_if_no_blas()` warns once per process (pocketomni does it at import); `pocketomni doctor`
shows the same answer.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["BlasInfo", "SlowNumpyWarning", "numpy_blas", "warn_if_no_blas"]

log = logging.getLogger("pocketomni")


class SlowNumpyWarning(RuntimeWarning):
    """numpy has no BLAS: token2wav and the audio encoder will be very slow."""


@dataclass(frozen=True)
class BlasInfo:
    """found: True / False, or None when numpy is too old to say. name: e.g. "scipy-openblas",
    "openblas", "accelerate", "none". detail: version and OpenBLAS configuration when known."""

    found: bool | None
    name: str
    detail: str = ""

    def describe(self) -> str:
        if self.found is None:
            return "unknown (numpy too old to say)"
        if not self.found:
            return "none: numpy has no BLAS, its matmuls (audio encoder, token2wav) are slow"
        return " ".join(x for x in (self.name, self.detail) if x)


def numpy_blas(config: dict[str, Any] | None = None) -> BlasInfo:
    """numpy's BLAS, from `config` (the dict np.show_config(mode="dicts") returns; read when None)."""
    if config is None:
        import numpy as np

        try:
            config = np.show_config(mode="dicts")  # numpy >= 1.26
        except TypeError:
            return BlasInfo(None, "unknown")
    if not isinstance(config, dict):
        return BlasInfo(None, "unknown")
    dep = (config.get("Build Dependencies") or {}).get("blas") or {}
    name = str(dep.get("name") or "")
    found = dep.get("found", bool(name))
    if not found or str(found).lower() == "false" or name.lower() in ("", "none"):
        return BlasInfo(False, name or "none")
    detail = str(dep.get("version") or "")
    if dep.get("openblas configuration"):
        detail += f" ({dep['openblas configuration']})"
    return BlasInfo(True, name, detail.strip())


_warned = False


def warn_if_no_blas(config: dict[str, Any] | None = None) -> bool:
    """Warn (SlowNumpyWarning, once per process) when numpy has no BLAS; True if it warned now."""
    global _warned
    if _warned:
        return False
    info = numpy_blas(config)
    if info.found is not False:
        return False
    _warned = True
    warnings.warn(
        "numpy has no BLAS, so token2wav will be very slow: speech output and the audio encoder run "
        "plain single-threaded loops (minutes per second of speech on a phone). Install a numpy "
        "wheel built with OpenBLAS (pip install --force-reinstall numpy); on Android build the "
        "APK's numpy against the libopenblas recipe (apps/kivy_demo/README.md)",
        SlowNumpyWarning,
        stacklevel=2,
    )
    return True
