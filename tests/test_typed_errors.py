"""Every deliberate error is a PocketOmniError subclass naming the culprit and the fix (issue 19 item 4
and 8): odd text (lone surrogates, invalid UTF-8 on the command line), option values checked before
any work (seed=-1, bools as ints), malformed pocketomni.json, damaged chat files, OS errors on model
files and save paths (permissions as an unprivileged user, a missing folder, a file size limit), and
`pocketomni convert` into a folder it cannot write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pocketomni as po

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(converted_tiny) -> Path:
    return converted_tiny("base", "f32")


@pytest.fixture(scope="module")
def omni(folder):
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=512) as o:
        yield o


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def _as_nobody(code: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run Python `code` without root's power to ignore file permissions (the tests run as root):
    setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so modes apply, even to root's files."""
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, timeout=600, env=_env(), input=stdin, check=False)


def _shared_dir() -> Path:
    """A fresh folder for the permission tests (outside pytest's tmp_path, removed by the test)."""
    d = Path(tempfile.mkdtemp(prefix="po-typed-"))
    d.chmod(0o755)
    return d


# ------------------------------------------------------------------ text


@pytest.mark.parametrize("how", ["text", "system", "messages", "stop"])
def test_lone_surrogates_are_a_typed_error_before_any_work(omni, how) -> None:
    bad = "hi \udcff there"
    chat = omni.chat(max_tokens=2)
    list(chat.send_sync("first"))
    before = (chat.tokens, chat.messages)
    with pytest.raises(po.OptionsError) as info:
        if how == "text":
            chat.send_sync(bad)
        elif how == "system":
            omni.chat(system=bad)
        elif how == "messages":
            chat.send_sync(messages=[{"role": "user", "content": [{"type": "text", "text": bad}]}])
        else:
            chat.send_sync("x", stop=[bad])
    assert "UTF-8" in str(info.value) and "surrogate" in str(info.value)
    assert (chat.tokens, chat.messages) == before
    assert list(chat.send_sync("again"))[-1].finish_reason in ("stop", "length")


def test_cli_chat_survives_invalid_utf8_on_stdin(folder) -> None:
    proc = subprocess.run([sys.executable, "-m", "pocketomni", "chat", str(folder), "--max-tokens", "2"],
                          input=b"first\nhi \xff\nthird\n", capture_output=True, timeout=300, env=_env(),
                          check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("override,named", [
    ({"seed": -1}, "seed=-1"), ({"seed": 2**64}, "seed="), ({"seed": True}, "seed=True"),
    ({"max_tokens": True}, "max_tokens=True"), ({"top_k": False}, "top_k=False"),
])
def test_generation_options_are_checked_before_the_prompt(omni, override, named) -> None:
    chat = omni.chat(max_tokens=2)
    list(chat.send_sync("first"))
    before = (chat.tokens, chat.messages)
    with pytest.raises(po.OptionsError) as info:
        chat.send_sync("second", temperature=0.7, **override)
    assert named in str(info.value)
    assert (chat.tokens, chat.messages) == before  # no empty assistant message left behind
    with pytest.raises(po.OptionsError):
        po.GenerationOptions(**override)


@pytest.mark.parametrize("field,value", [("seed", -1), ("max_codes", True), ("top_k", True), ("seed", 1.5)])
def test_speech_options_reject_bad_ints(field, value) -> None:
    with pytest.raises(po.OptionsError) as info:
        po.SpeechOptions(**{field: value})
    assert field in str(info.value)


# ------------------------------------------------------------------ pocketomni.json


def _linked_copy(folder: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.suffix == ".gguf":
            (dest / f.name).symlink_to(f)
    shutil.copy(folder / "pocketomni.json", dest / "pocketomni.json")
    return dest


MANIFESTS = {
    "a list": [],
    "a string": "pocketomni",
    "null": None,
    "files a list": {"format": "pocketomni", "format_version": 1, "files": []},
    "version a string": {"format": "pocketomni", "format_version": "one", "files": {}},
    "version null": {"format": "pocketomni", "format_version": None, "files": {}},
    "file entry a string": {"format": "pocketomni", "format_version": 1, "files": {"thinker": "thinker-f32.gguf"}},
    "path missing": {"format": "pocketomni", "format_version": 1, "files": {"thinker": {"type": "f32"}}},
    "path a number": {"format": "pocketomni", "format_version": 1, "files": {"thinker": {"path": 7}}},
    "path outside": {"format": "pocketomni", "format_version": 1, "files": {"thinker": {"path": "../x.gguf"}}},
    "path absolute": {"format": "pocketomni", "format_version": 1, "files": {"thinker": {"path": "/etc/passwd"}}},
    "no thinker": {"format": "pocketomni", "format_version": 1, "files": {}},
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_malformed_manifest_is_a_model_file_error_naming_it(folder, tmp_path, name) -> None:
    d = _linked_copy(folder, tmp_path / "m")
    (d / "pocketomni.json").write_text(json.dumps(MANIFESTS[name]))
    with pytest.raises(po.ModelFileError) as info:
        po.Omni.load_sync(d, n_threads=1).close()
    assert "pocketomni.json" in str(info.value) and "pocketomni convert" in str(info.value)


# ------------------------------------------------------------------ chat files


def _saved(omni, tmp_path: Path) -> Path:
    chat = omni.chat(system="S", max_tokens=2)
    list(chat.send_sync("hello"))
    path = tmp_path / "c.pochat"
    chat.save(path)
    return path


def _rewrite_header(path: Path, change) -> None:
    """Change the header through the chat-file writer (so any checksums match the damaged header)."""
    from pocketomni.chat.store import SavedChat, read_chat_file, write_chat_file

    saved = read_chat_file(path)
    header = json.loads(json.dumps(saved.header))
    change(header)
    write_chat_file(path, SavedChat(header, saved.arrays, saved.kv_state))


HEADER_DAMAGE = {
    "messages a number": lambda h: h.update(messages=5),
    "message not a dict": lambda h: h.update(messages=["hi"]),
    "message without role": lambda h: h.update(messages=[{"content": []}]),
    "content a string": lambda h: h.update(messages=[{"role": "user", "content": "hi"}]),
    "options a list": lambda h: h.update(options=[]),
    "options out of range": lambda h: h.update(options={"temperature": -3}),
    "pending strings": lambda h: h.update(pending=["x"]),
    "system a number": lambda h: h.update(system=5),
    "speech a string": lambda h: h.update(speech="yes"),
    "speech settings a list": lambda h: h.update(speech_settings=[1]),
}


@pytest.mark.parametrize("name", sorted(HEADER_DAMAGE))
def test_damaged_chat_header_is_a_typed_error(omni, tmp_path, name) -> None:
    path = _saved(omni, tmp_path)
    _rewrite_header(path, HEADER_DAMAGE[name])
    with pytest.raises(po.ModelFileError) as info:
        omni.restore_chat(path)
    assert str(path) in str(info.value)


def test_damaged_chat_sections_are_typed_errors(omni, tmp_path) -> None:
    path = _saved(omni, tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x03\x04")  # the .npz section
    bad_zip = bytes(data[:at]) + b"\x00" * 32 + bytes(data[at + 32:])
    cases = {"zip": bad_zip, "empty": b"", "magic only": b"POCHAT01"}
    for name, content in cases.items():
        p = tmp_path / f"{name}.pochat"
        p.write_bytes(content)
        with pytest.raises(po.ModelFileError) as info:
            omni.restore_chat(p)
        assert str(p) in str(info.value), name
    with pytest.raises(po.ModelFileError) as info:
        omni.restore_chat(tmp_path)  # a directory
    assert str(tmp_path) in str(info.value) and "directory" in str(info.value)


def test_save_path_errors_are_typed(omni, tmp_path) -> None:
    chat = omni.chat(max_tokens=2)
    list(chat.send_sync("hello"))
    for target, words in ((tmp_path / "absent" / "c.pochat", ("absent", "does not exist")),
                          (tmp_path, ("is a directory",))):
        with pytest.raises(po.ModelFileError) as info:
            chat.save(target)
        assert str(target) in str(info.value) and all(w in str(info.value) for w in words), str(info.value)
    assert list(chat.send_sync("still here"))[-1].finish_reason in ("stop", "length")


def test_save_beyond_the_file_size_limit_is_typed(folder) -> None:
    """A full disk, as the process sees it: RLIMIT_FSIZE makes the write fail with EFBIG."""
    d = _shared_dir()
    try:
        code = f"""
import resource, signal, pocketomni as po
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
omni = po.Omni.load_sync({str(folder)!r}, n_threads=1, n_ctx=256)
chat = omni.chat(max_tokens=2); list(chat.send_sync("hello"))
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    chat.save({str(d / 'c.pochat')!r})
except po.ModelFileError as e:
    print("TYPED", e)
import os; print("LEFT", sorted(os.listdir({str(d)!r})))
"""
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env(),
                              check=False)
        assert "TYPED" in proc.stdout and "free" in proc.stdout and "Traceback" not in proc.stderr, \
            proc.stdout + proc.stderr[-2000:]
        assert "LEFT []" in proc.stdout  # no temporary file left behind
    finally:
        shutil.rmtree(d)


def test_permission_errors_are_typed(folder) -> None:
    d = _shared_dir()
    try:
        model = _linked_copy(folder, d / "model")
        locked = d / "locked.gguf"
        shutil.copy(folder / "talker-f32.gguf", locked)
        locked.chmod(0)
        ro = d / "readonly"
        ro.mkdir()
        ro.chmod(0o555)
        code = f"""
import pocketomni as po
from pocketomni.backend import LlamaModel
for what, fn in [
    ("model file", lambda: LlamaModel({str(locked)!r})),
    ("save", lambda: po.Omni.load_sync({str(model)!r}, n_threads=1, n_ctx=256).chat().save({str(ro / 'c.pochat')!r})),
]:
    try:
        fn()
    except po.PocketOmniError as e:
        print("TYPED", what, "|", e)
"""
        proc = _as_nobody(code)
        out = proc.stdout.decode()
        err = proc.stderr.decode()
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
        lines = [ln for ln in out.splitlines() if ln.startswith("TYPED")]
        assert len(lines) == 2, out
        assert str(locked) in lines[0] and "permission" in lines[0].lower()
        assert str(ro / "c.pochat") in lines[1] and "permission" in lines[1].lower()
    finally:
        shutil.rmtree(d)


def test_convert_into_a_read_only_folder_is_a_clean_error(tiny_checkpoint) -> None:
    d = _shared_dir()
    try:
        ro = d / "readonly"
        ro.mkdir()
        ro.chmod(0o555)
        for out in (ro, ro / "sub"):
            code = f"import sys; from pocketomni.cli.main import main; sys.exit(main(['convert', {str(tiny_checkpoint)!r}, {str(out)!r}]))"
            proc = _as_nobody(code)
            err = proc.stderr.decode()
            assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
            assert str(ro) in err and "permission" in err.lower(), err
        assert not any(ro.iterdir())
    finally:
        shutil.rmtree(d)


def test_an_mmproj_passed_as_the_model_names_the_fix(folder) -> None:
    with pytest.raises(po.ModelFileError) as info:
        po.Omni.load_sync(folder / "mmproj-f32.gguf", n_threads=1)
    msg = str(info.value)
    assert "MtmdContext" not in msg and "mmproj=" in msg, msg
