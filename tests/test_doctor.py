"""`pocketomni doctor`: the report's sections hold this machine's real values, --json matches the text,
--no-smoke starts no process, and the smoke passes on the demo model (a crashing stage fails it)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import llama_cpp  # hard dependency: fail loudly if missing
import numpy as np
import pytest

from pocketomni.backend.cpu_guard import current_decision
from pocketomni.cli import doctor
from pocketomni.cli.doctor import DEMO_STAGE, DEMO_TIMEOUT, SMOKE_STAGES, run_stage
from pocketomni.cli.main import main

SECTIONS = ["system", "cpu", "llama.cpp", "guard", "numpy", "audio", "memory"]


@pytest.fixture(scope="module")
def cache_dir() -> str:
    from omni_fixtures import cache_root

    return str(cache_root() / "demo-cache")  # shared with test_native_smoke.py


@pytest.fixture(scope="module")
def demo_folder(cache_dir: str) -> str:
    r = run_stage(DEMO_STAGE, env=dict(os.environ, POCKETOMNI_CACHE=cache_dir), timeout=DEMO_TIMEOUT)
    assert r.ok, r.describe()
    return str(r.data["folder"])


def doctor_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["doctor", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def sections(text: str) -> dict[str, list[str]]:
    """Section name -> its indented lines (headers are the unindented lines without a colon)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(" ") and ":" not in line:
            out[line] = []
        elif line.startswith("  ") and out:
            out[list(out)[-1]].append(line.strip())
    return out


def field(lines: list[str], name: str) -> str:
    found = [ln.split(": ", 1)[1] for ln in lines if ln.startswith(name + ": ")]
    assert len(found) == 1, (name, lines)
    return found[0]


def cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) read straight from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^(?:model name|Hardware|cpu model)\s*:\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE | re.IGNORECASE)
    return (model.group(1).strip() if model else platform.machine()), set(flags.group(1).split() if flags else ())


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="compares with /proc/cpuinfo (Linux, Android)")
def test_report_holds_this_machines_values(demo_folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = doctor_cli(capsys, demo_folder, "--no-smoke")
    assert rc == 0
    s = sections(out)
    assert list(s) == SECTIONS, out

    model, flags = cpuinfo()
    assert field(s["cpu"], "model") == model
    has = set(field(s["cpu"], "has").split(", "))
    lacks = set(field(s["cpu"], "lacks").split(", "))
    assert has | lacks >= {"AVX2", "AVX512", "AMX", "NEON", "DOTPROD"} and not has & lacks
    assert ("AVX2" in has) == ("avx2" in flags) and ("AVX512" in has) == ("avx512f" in flags)
    assert ("AMX" in has) == bool({"amx_int8", "amx_tile"} & flags)

    assert field(s["guard"], "reason") == current_decision().reason
    assert field(s["guard"], "layout") == current_decision().layout
    assert field(s["llama.cpp"], "version") == f"llama-cpp-python {llama_cpp.__version__}"
    info = llama_cpp.llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    assert field(s["llama.cpp"], "system info") == info
    assert field(s["numpy"], "version") == np.__version__
    assert field(s["numpy"], "blas")  # a library name, or "none: ..." said plainly
    assert field(s["audio"], "input") and field(s["audio"], "output")  # device names or "none"

    avail = re.fullmatch(r".* \((\d+) bytes\)", field(s["memory"], "available"))
    assert avail and int(avail.group(1)) > 0
    line = field(s["memory"], demo_folder)
    verdicts = re.findall(r"(text|spoken|media) (\d+) MiB (fits|short by [\d.]+ [MG]iB)", line)
    assert [v[0] for v in verdicts] == ["text", "spoken", "media"], line
    for _, mib, word in verdicts:
        assert (word == "fits") == (int(mib) * 2**20 <= int(avail.group(1)))
    # one line per component, named with when it is resident
    names = [ln.split(" (")[0] for ln in s["memory"] if re.match(r"^[A-Za-z0-9 ]+ \((text|speech|media)\): ", ln)]
    assert names == ["runtime", "thinker weights", "thinker KV cache", "thinker compute", "talker weights",
                     "talker KV cache", "talker compute", "token2wav weights", "media encoders"]


def test_json_has_the_same_sections_and_real_numbers(demo_folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, text, _ = doctor_cli(capsys, demo_folder, "--no-smoke")
    rc, out, _ = doctor_cli(capsys, demo_folder, "--no-smoke", "--json")
    assert rc == 0
    data = json.loads(out)
    assert list(data) == list(sections(text)) == SECTIONS
    assert data["cpu"]["model"] == field(sections(text)["cpu"], "model")
    assert data["guard"]["reason"] == current_decision().reason
    assert data["llama.cpp"]["version"] == llama_cpp.__version__

    mem = data["memory"]
    assert isinstance(mem["available_bytes"], int) and mem["available_bytes"] > 0
    [model] = mem["models"]
    manifest = json.loads((Path(demo_folder) / "pocketomni.json").read_text())
    parts = {c["name"]: c for c in model["components"]}
    for name, key in (("thinker weights", "thinker"), ("talker weights", "talker"), ("media encoders", "mmproj")):
        assert parts[name]["mib"] == round(manifest["files"][key]["bytes"] / 2**20, 1)
    assert all(c["mib"] > 0 for c in model["components"])
    when = {"text": ("text",), "spoken": ("text", "speech"), "media": ("text", "speech", "media")}
    for k, total in model["totals_mib"].items():
        assert math.isclose(total, sum(c["mib"] for c in model["components"] if c["when"] in when[k]), abs_tol=0.6)
        assert model["fits"][k] == (total * 2**20 <= mem["available_bytes"])


def test_memory_says_when_a_model_does_not_fit(demo_folder: str, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import pocketomni.backend.llama as backend

    monkeypatch.setattr(backend, "available_memory", lambda: 1 << 20)
    rc, out, _ = doctor_cli(capsys, demo_folder, "--no-smoke")
    assert rc == 0
    line = field(sections(out)["memory"], demo_folder)
    assert re.fullmatch(r"text \d+ MiB short by .*; spoken \d+ MiB short by .*; media \d+ MiB short by .*", line)


def test_a_bad_model_folder_is_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = doctor_cli(capsys, str(tmp_path), "--no-smoke")
    assert rc == 0
    assert field(sections(out)["memory"], str(tmp_path)).startswith("cannot read it: ModelFileError")


def test_no_smoke_starts_no_process(demo_folder: str, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    doctor_cli(capsys, demo_folder, "--no-smoke")  # first run: one-time probes (PortAudio's library lookup)
    started: list[object] = []

    def no_process(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise AssertionError(f"--no-smoke started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    rc, out, _ = doctor_cli(capsys, demo_folder, "--no-smoke")
    assert rc == 0 and started == [] and "smoke" not in sections(out)


def test_smoke_on_the_demo_model_passes(cache_dir: str, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POCKETOMNI_CACHE", cache_dir)
    rc, out, err = doctor_cli(capsys, "--json", "--threads", "1")
    smoke = json.loads(out)["smoke"]
    failed = [f"{r['stage']}: {r['figure']}\n{r['stderr_tail']}" for r in smoke["stages"] if not r["ok"]]
    assert rc == 0 and smoke["passed"] and not failed, "\n".join(failed)
    assert [r["stage"] for r in smoke["stages"]] == [DEMO_STAGE, *SMOKE_STAGES]
    for r in smoke["stages"][1:]:
        assert isinstance(r["data"]["value"], float) and math.isfinite(r["data"]["value"]) and r["data"]["unit"]
    progress = [m.groups() for ln in err.splitlines() if (m := re.fullmatch(r"  (\S.*?) {2,}(ok|FAIL) +.*", ln))]
    assert progress == [("demo model", "ok")] + [(name, "ok") for name in SMOKE_STAGES], err
    assert err.rstrip().endswith("result: every stage passed")


def test_a_crashing_stage_fails_the_doctor(cache_dir: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POCKETOMNI_CACHE", cache_dir)
    monkeypatch.setattr(doctor, "SMOKE_STAGES", (doctor.CRASH_STAGE,))
    rc, out, _ = doctor_cli(capsys)
    assert rc == 1
    crash = [ln for ln in out.splitlines() if ln.startswith(f"  {doctor.CRASH_STAGE} ")]
    assert len(crash) == 1 and "FAIL" in crash[0] and "crashed with SIGSEGV" in crash[0], out
    assert out.rstrip().endswith("result: 1 stage(s) FAILED")
