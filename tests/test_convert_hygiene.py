"""What `pocketomni convert` leaves and replaces (issue 19 items 6 and 7): temporaries of a killed
conversion are removed by the next one into that folder (and reported); an existing model folder is
not overwritten without --force, and with it the previous conversion's files of other types go; every
file carries the conversion id of the manifest, so a folder mixing two conversions is refused at load
naming the odd file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pocketomni as po
from pocketomni.cli.main import main
from pocketomni.errors import ConversionError
from pocketomni.gguf_file import GGUFFile

CID_KEY = "pocketomni.conversion_id"


def _convert(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["convert", str(ckpt), str(out), "--no-progress", "--no-speech", "--quant", "f32",
                 "--mmproj-quant", "f32", *extra])


def test_stale_partials_are_removed_and_reported(tiny_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".thinker-q4_k_m.gguf.partial", out / ".thinker-q4_k_m.gguf.bf16.partial",
             out / ".mmproj-f16.gguf.partial", out / ".pocketomni.json.partial"]
    for s in stale:
        s.write_bytes(b"\0" * 1024)
    keep = out / ".my-notes.partial"  # not a name the converter writes
    keep.write_text("mine")
    assert _convert(tiny_checkpoint, out) == 0
    assert not any(s.exists() for s in stale) and keep.exists()
    assert ".thinker-q4_k_m.gguf.partial" in capsys.readouterr().err


def test_no_overwrite_without_force_and_force_removes_stale_types(tiny_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert _convert(tiny_checkpoint, out) == 0
    first = json.loads((out / "pocketomni.json").read_text())
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert _convert(tiny_checkpoint, out, "--quant", "q8_0") == 2
    err = capsys.readouterr().err
    assert "--force" in err and str(out) in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    assert _convert(tiny_checkpoint, out, "--quant", "q8_0", "--force") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mmproj-f32.gguf", "pocketomni.json", "thinker-q8_0.gguf"], names  # f32 thinker gone
    second = json.loads((out / "pocketomni.json").read_text())
    assert second["conversion_id"] != first["conversion_id"]


def test_every_file_carries_the_conversion_id_and_mixed_folders_are_refused(tiny_checkpoint, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _convert(tiny_checkpoint, out) == 0
    cid = json.loads((a / "pocketomni.json").read_text())["conversion_id"]
    for f in a.glob("*.gguf"):
        assert GGUFFile.open(f).metadata.get(CID_KEY) == cid, f.name
    with po.Omni.load_sync(a, n_threads=1) as omni:  # an intact folder loads
        assert omni.capabilities.vision
    shutil.copy(b / "mmproj-f32.gguf", a / "mmproj-f32.gguf")  # same name, other conversion
    with pytest.raises(po.ModelFileError) as info:
        po.Omni.load_sync(a, n_threads=1)
    assert "mmproj-f32.gguf" in str(info.value) and "another conversion" in str(info.value)


def test_force_is_an_api_argument_too(tiny_checkpoint, tmp_path) -> None:
    from pocketomni.convert import convert_checkpoint

    out = tmp_path / "out"
    convert_checkpoint(tiny_checkpoint, out, quant="f32", mmproj_quant="f32", progress=False, speech=False)
    with pytest.raises(ConversionError, match="force"):
        convert_checkpoint(tiny_checkpoint, out, quant="f32", mmproj_quant="f32", progress=False, speech=False)
    convert_checkpoint(tiny_checkpoint, out, quant="f32", mmproj_quant="f32", progress=False, speech=False,
                       force=True)
