"""numpy's BLAS: detected from its build configuration, a warning once at load when there is none (as
python-for-android's numpy built with -Dblas=none), and the same answer in `pocketomni doctor`."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pocketomni import numpy_blas as nb
from pocketomni.cli.doctor import numpy_section


def no_blas_config() -> dict:
    """This numpy's configuration as a `-Dblas=none -Dlapack=none` build reports it (numpy's
    __config__.py: name "none", found False, no version)."""
    cfg = copy.deepcopy(np.show_config(mode="dicts"))
    for lib in ("blas", "lapack"):
        cfg["Build Dependencies"][lib] = {"name": "none", "found": False, "version": "unknown",
                                          "detection method": "", "include directory": "unknown",
                                          "lib directory": "unknown", "openblas configuration": "unknown",
                                          "pc file directory": "unknown"}
    return cfg


def test_this_numpy_has_a_blas() -> None:
    info = nb.numpy_blas()
    assert info.found is True and "blas" in info.name.lower()
    assert not nb.warn_if_no_blas()  # nothing to warn about here


def test_no_blas_config_is_detected() -> None:
    info = nb.numpy_blas(no_blas_config())
    assert info.found is False and info.name == "none"
    assert info.describe().startswith("none: numpy has no BLAS")
    missing = no_blas_config()
    del missing["Build Dependencies"]["blas"]
    assert nb.numpy_blas(missing).found is False
    assert nb.numpy_blas("not a dict").found is None  # type: ignore[arg-type]


def test_no_blas_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nb, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert nb.warn_if_no_blas(no_blas_config())
        assert not nb.warn_if_no_blas(no_blas_config())  # once per process
    assert [w.category for w in caught] == [nb.SlowNumpyWarning]
    assert str(caught[0].message).startswith("numpy has no BLAS, so token2wav will be very slow:")


def test_import_warns_at_load_only_without_blas() -> None:
    """`import pocketomni` in a fresh process, with numpy's configuration replaced by a no-BLAS one."""
    code = (
        "import json, sys, warnings\n"
        "import numpy as np\n"
        "cfg = json.loads(sys.argv[1])\n"
        "if cfg is not None:\n"
        "    np.show_config = lambda mode='stdout': cfg\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import pocketomni\n"
        "    import pocketomni.audio.io\n"
        "print(json.dumps([(w.category.__name__, str(w.message)) for w in caught]))\n"
    )
    out = {}
    for label, cfg in (("none", no_blas_config()), ("real", None)):
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True,
                              timeout=120, check=True)
        out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    slow = [m for c, m in out["none"] if c == "SlowNumpyWarning"]
    assert len(slow) == 1 and "token2wav will be very slow" in slow[0]
    assert not [c for c, _ in out["real"] if c == "SlowNumpyWarning"]


def test_doctor_shows_no_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "blas" in numpy_section()["blas"].lower() and not numpy_section()["blas"].startswith("none")
    cfg = no_blas_config()
    monkeypatch.setattr(np, "show_config", lambda mode="stdout": cfg)
    assert numpy_section()["blas"].startswith("none: numpy has no BLAS")
