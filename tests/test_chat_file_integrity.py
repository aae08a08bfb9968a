"""Restores that verify (issue 19 item 3): a saved chat carries a checksum of every section and the
identity of the thinker file it was saved with. Damage to any section, or a restore onto another
model file (another quantization, or other weights behind an identical header), is a typed error
naming what differs; files in the previous format (POCHAT01) stay readable."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import pocketomni as po


@pytest.fixture(scope="module")
def folder(converted_tiny) -> Path:
    return converted_tiny("base", "f32")


@pytest.fixture(scope="module")
def omni(folder):
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=512) as o:
        yield o


def _chat(omni) -> po.Chat:
    chat = omni.chat(system="You are terse.", max_tokens=4)
    list(chat.send_sync("Describe the sea in one line."))
    return chat


def _next(chat: po.Chat) -> tuple[int, ...]:
    return list(chat.send_sync("And the sky?", max_tokens=4))[-1].tokens


def _sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of the .npz and KV sections (the npz ends at its end-of-central-directory record)."""
    a0 = data.index(b"PK\x03\x04")
    a1 = data.rindex(b"PK\x05\x06") + 22
    (klen,) = struct.unpack_from("<Q", data, a1)
    assert a1 + 8 + klen == len(data)
    return {"arrays": (a0, a1), "kv": (a1 + 8, len(data)), "header": (12, a0 - 8)}


def _flip(data: bytes, lo: int, hi: int, n: int = 64) -> bytes:
    b = bytearray(data)
    mid = (lo + hi) // 2 - n // 2
    for i in range(max(lo, mid), min(hi, mid + n)):
        b[i] ^= 0x5A
    return bytes(b)


@pytest.mark.parametrize("section,words", [("kv", ("KV",)), ("arrays", ("history",)), ("header", ("header",))])
def test_flipped_bytes_in_any_section_are_caught(omni, tmp_path, section, words) -> None:
    path = tmp_path / "c.pochat"
    _chat(omni).save(path)
    data = path.read_bytes()
    lo, hi = _sections(data)[section]
    path.write_bytes(_flip(data, lo, hi))
    with pytest.raises(po.ModelFileError) as info:
        omni.restore_chat(path)
    msg = str(info.value)
    assert str(path) in msg and "damaged" in msg and all(w in msg for w in words), msg


def test_restore_onto_another_quantization_is_refused(omni, converted_tiny, tmp_path) -> None:
    path = tmp_path / "c.pochat"
    _chat(omni).save(path)
    with po.Omni.load_sync(converted_tiny("base", "q4_k_m"), n_threads=1, n_ctx=512) as other, \
            pytest.raises(po.ModelFileError) as info:
        other.restore_chat(path)
    assert "thinker-f32.gguf" in str(info.value) and "thinker-q4_k_m.gguf" in str(info.value)


def test_restore_onto_other_weights_with_the_same_header_is_refused(omni, folder, tmp_path) -> None:
    """A thinker file whose metadata and tensor table are identical but whose weights differ."""
    from pocketomni.gguf_file import GGUFFile

    path = tmp_path / "c.pochat"
    _chat(omni).save(path)
    other = tmp_path / "other"
    other.mkdir()
    for f in folder.iterdir():
        shutil.copy(f, other / f.name)
    thinker = other / "thinker-f32.gguf"
    info = GGUFFile.open(thinker).tensors["blk.0.attn_q.weight"]  # one tensor, all of its values
    with open(thinker, "r+b") as fh:
        fh.seek(info.offset)
        w = np.frombuffer(fh.read(info.n_bytes), np.float32)
        fh.seek(info.offset)
        fh.write((w * np.float32(1.01)).tobytes())
    with po.Omni.load_sync(other, n_threads=1, n_ctx=512) as o2, pytest.raises(po.ModelFileError) as err:
        o2.restore_chat(path)
    assert "another model file" in str(err.value)


def test_restore_on_the_same_model_continues_exactly(omni, folder, tmp_path) -> None:
    chat = _chat(omni)
    path = tmp_path / "c.pochat"
    chat.save(path)
    want = _next(chat)
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=512) as again:  # a fresh load of the same files
        assert _next(again.restore_chat(path)) == want


def test_previous_format_is_still_readable(omni, tmp_path) -> None:
    """POCHAT01 = magic | u32 len | JSON header | u64 len | npz | u64 len | KV state (no checksums)."""
    from pocketomni.chat.store import read_chat_file

    chat = _chat(omni)
    path = tmp_path / "c.pochat"
    chat.save(path)
    want = _next(chat)
    saved = read_chat_file(path)
    header = {k: v for k, v in saved.header.items() if k in
              ("model", "system", "speech", "speech_settings", "options", "messages", "pending")}
    hj = json.dumps({"format": 1, **header}).encode()
    data = path.read_bytes()
    s = _sections(data)
    npz = data[s["arrays"][0]:s["arrays"][1]]
    old = tmp_path / "old.pochat"
    old.write_bytes(b"POCHAT01" + struct.pack("<I", len(hj)) + hj + struct.pack("<Q", len(npz)) + npz
                    + struct.pack("<Q", len(saved.kv_state)) + saved.kv_state)
    assert _next(omni.restore_chat(old)) == want


# ------------------------------------------------------------------ what saving leaves on disk


def test_save_clears_temporaries_of_killed_saves_but_not_live_ones(omni, tmp_path, caplog) -> None:
    """A save killed mid-write leaves `NAME.<random>.tmp`; the next save into that place removes such
    files (and says so), but not one another save is still writing (it holds a lock on it)."""
    import fcntl
    import logging

    chat = _chat(omni)
    path = tmp_path / "c.pochat"
    stale = [tmp_path / "c.pochat.k1ll3d.tmp", tmp_path / "c.pochat.x9y8z7.tmp"]
    for s in stale:
        s.write_bytes(b"\0" * 4096)
    live = tmp_path / "c.pochat.l1v3ab.tmp"
    other = tmp_path / "other.pochat.k1ll3d.tmp"  # another file's temporary: not ours to judge
    for f in (live, other):
        f.write_bytes(b"x")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.WARNING, logger="pocketomni"):
            chat.save(path)
    assert not any(s.exists() for s in stale) and live.exists() and other.exists()
    assert "c.pochat.k1ll3d.tmp" in caplog.text
    assert _next(omni.restore_chat(path)) == _next(chat)


def test_save_keeps_symlinks_and_the_file_mode(omni, tmp_path) -> None:
    chat = _chat(omni)
    real = tmp_path / "real.pochat"
    chat.save(real)
    real.chmod(0o640)
    link = tmp_path / "link.pochat"
    link.symlink_to(real)
    chat.save(link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real.stat().st_mode & 0o777) == 0o640
    omni.restore_chat(link).close()


# ------------------------------------------------------------------ restoring into another setup


def test_speech_chat_into_a_text_only_folder_fails_at_restore(omni, folder, tmp_path) -> None:
    chat = omni.chat(speech=True, max_tokens=2, speech_options={"max_codes": 20})
    list(chat.send_sync("hello"))
    path = tmp_path / "speech.pochat"
    chat.save(path)
    text_only = tmp_path / "text-only"
    text_only.mkdir()
    manifest = json.loads((folder / "pocketomni.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k in ("thinker", "mmproj")}
    for entry in manifest["files"].values():
        (text_only / entry["path"]).symlink_to(folder / entry["path"])
    (text_only / "pocketomni.json").write_text(json.dumps(manifest))
    with po.Omni.load_sync(text_only, n_threads=1, n_ctx=512) as o2:
        with pytest.raises(po.FeatureUnavailableError) as info:
            o2.restore_chat(path)
        assert "talker" in str(info.value)


def test_kv_type_mismatch_is_named(folder, tmp_path) -> None:
    path = tmp_path / "c.pochat"
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=512, kv_f32=True) as o32:
        chat = o32.chat(max_tokens=2)
        list(chat.send_sync("hello"))
        chat.save(path)
    with po.Omni.load_sync(folder, n_threads=1, n_ctx=512) as o16, pytest.raises(po.ModelFileError) as info:
        o16.restore_chat(path)
    assert "kv_f32=True" in str(info.value)
