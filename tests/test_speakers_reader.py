"""spk_dict.pt read without torch (restricted unpickler) equals torch.load; anything else is refused."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketomni.convert.speakers import read_speakers
from pocketomni.errors import ConversionError


def _same(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for name, entry in ref.items():
        assert set(ours[name]) == {"bos_token", "cond", "ref_mel"}
        assert ours[name]["bos_token"] == int(entry["bos_token"])
        for key in ("cond", "ref_mel"):
            want = entry[key].float().numpy()
            got = ours[name][key]
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("variant", ["base", "odd"])
def test_fixture_speakers_equal_torch_load(variant):
    from omni_fixtures import build_checkpoint

    path = build_checkpoint(variant) / "spk_dict.pt"
    _same(read_speakers(path), torch.load(path, weights_only=True))


def test_storage_types_views_and_shared_storage(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 80, generator=g)
    table = {
        "Half": {
            "bos_token": 5,
            "cond": torch.randn(1, 192, generator=g).half(),
            "ref_mel": torch.randn(1, 7, 80, generator=g).bfloat16(),
        },
        # a transposed view and a slice with an offset into a storage shared with the next speaker
        "View": {"bos_token": 6, "cond": base[1:2], "ref_mel": base.t().contiguous().t()[None]},
        "Shared": {"bos_token": torch.tensor(7), "cond": base[3:4].double(), "ref_mel": base[2:5][None]},
    }
    path = tmp_path / "spk_dict.pt"
    torch.save(table, path)
    _same(read_speakers(path), torch.load(path, weights_only=True))


def _zip_with_pickle(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("spk_dict/data.pkl", payload)
        z.writestr("spk_dict/byteorder", "little")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "spk_dict.pt"
    _zip_with_pickle(path, pickle.dumps({"Chelsie": _Evil()}, protocol=2))
    with pytest.raises(ConversionError, match="not allowed"):
        read_speakers(path)


def test_refuses_wrong_content_and_formats(tmp_path):
    bad = tmp_path / "spk_dict.pt"
    _zip_with_pickle(bad, pickle.dumps({"Chelsie": {"bos_token": 1, "cond": 2}}, protocol=2))
    with pytest.raises(ConversionError, match="lacks bos_token, cond, ref_mel"):
        read_speakers(bad)
    legacy = tmp_path / "legacy.pt"
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(ConversionError, match="not a zip-format torch file"):
        read_speakers(legacy)
    with pytest.raises(ConversionError, match="is missing"):
        read_speakers(tmp_path / "nope.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save(
        {"S": {"bos_token": 1, "cond": torch.zeros(1, 4), "ref_mel": torch.zeros(1, 2, 80)}}, truncated
    )
    with zipfile.ZipFile(truncated) as z:
        items = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(truncated, "w") as z:
        for n, data in items.items():
            z.writestr(n, data[:4] if n.endswith("data/0") else data)
    with pytest.raises(ConversionError, match="holds 4 bytes"):
        read_speakers(truncated)
