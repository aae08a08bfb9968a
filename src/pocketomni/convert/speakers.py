"""Read `spk_dict.pt` (the Qwen2.5-Omni speaker table) without torch.

`torch.save` writes a zip archive: `<name>/data.pkl` is a pickle whose tensors are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls on storages referenced by
persistent id `("storage", StorageClass, key, location, numel)`; the raw bytes of storage `key` sit in
`<name>/data/<key>`. We unpickle with a restricted Unpickler that knows exactly these globals (plus
`collections.OrderedDict` for the empty backward-hook dict) and builds numpy arrays instead of tensors;
any other global is refused, so a crafted file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.errors import ConversionError

# Storage class name -> numpy dtype of its elements ("bf16" is read as uint16 bits, widened to f32).
_STORAGES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
SPEAKER_KEYS = ("bos_token", "cond", "ref_mel")


class _StorageType:
    """Stand-in for a torch storage class: remembers the element dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGES[name]


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: Any, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: Path) -> None:
        super().__init__(fh)
        self._zip, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
        self._cache: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a speaker table")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected storage record {pid!r}")
        if key not in self._cache:
            self._cache[key] = self._storage(stype, key, numel)
        return self._cache[key]

    def _storage(self, stype: _StorageType, key: str, numel: int) -> np.ndarray:
        try:
            raw = self._zip.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage data/{key} is missing from the archive") from None
        bf16 = stype.dtype == "bf16"
        dt = np.dtype("<u2" if bf16 else stype.dtype)
        if self._byteorder == "big":
            dt = dt.newbyteorder(">")
        if len(raw) < numel * dt.itemsize:
            raise pickle.UnpicklingError(
                f"storage data/{key} holds {len(raw)} bytes, expected {numel * dt.itemsize}"
            )
        arr = np.frombuffer(raw, dtype=dt, count=numel)
        if bf16:
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(dt.newbyteorder("<"))


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> np.ndarray:
    """A numpy copy of `storage[offset:]` viewed with torch's size and stride (in elements)."""
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("tensor without a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or int(offset) < 0:
        raise pickle.UnpicklingError("inconsistent tensor size/stride")
    last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if any(s < 0 for s in stride) or (all(n > 0 for n in size) and last >= storage.size):
        raise pickle.UnpicklingError("tensor reaches outside its storage")
    flat = storage[int(offset) :]
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat, shape=size, strides=tuple(s * item for s in stride))
    return np.array(view, copy=True)


def _archive_prefix(names: list[str]) -> str:
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pkl) != 1:
        raise ConversionError("no single data.pkl")
    return pkl[0][: -len("data.pkl")]


def _check(table: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(table, dict) or not table:
        raise ConversionError(f"{path} does not hold a speaker dictionary.")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in table.items():
        if (
            not isinstance(name, str)
            or not isinstance(entry, dict)
            or any(k not in entry for k in SPEAKER_KEYS)
        ):
            raise ConversionError(
                f"{path}: speaker entry {name!r} lacks {', '.join(SPEAKER_KEYS)}; this is not a Qwen2.5-Omni "
                "spk_dict.pt. Re-download it from the original repository."
            )
        bos, cond, mel = entry["bos_token"], entry["cond"], entry["ref_mel"]
        if isinstance(bos, np.ndarray) and bos.size == 1:
            bos = bos.reshape(()).item()
        if isinstance(bos, bool) or not isinstance(bos, int) or bos < 0:
            raise ConversionError(f"{path}: speaker {name!r} has bos_token {bos!r}; expected a token id.")
        if (
            not isinstance(cond, np.ndarray)
            or not isinstance(mel, np.ndarray)
            or not cond.size
            or not mel.size
        ):
            raise ConversionError(f"{path}: speaker {name!r} cond/ref_mel are not tensors.")
        out[name] = {
            "bos_token": int(bos),
            "cond": cond.astype(np.float32),
            "ref_mel": mel.astype(np.float32),
        }
    return out


def read_speakers(path: str | Path) -> dict[str, dict[str, Any]]:
    """The speakers of a `spk_dict.pt`: {name: {"bos_token": int, "cond": f32 array, "ref_mel": f32 array}}.

    Arrays keep the stored shapes (`cond` (1, 192), `ref_mel` (1, frames, 80) in the release).
    Raises ConversionError for a missing, legacy-format, corrupt or unexpected file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p} is missing. Download spk_dict.pt from the Qwen2.5-Omni repository.")
    if not zipfile.is_zipfile(p):
        raise ConversionError(
            f"{p} is not a zip-format torch file (legacy torch.save format or corrupt). Re-download it, or "
            "re-save it once with torch: torch.save(torch.load(p), p)."
        )
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            prefix = _archive_prefix(names)
            order = (
                z.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names else "little"
            )
            if order not in ("little", "big"):
                raise ConversionError(f"unknown byte order {order!r}")
            with z.open(f"{prefix}data.pkl") as fh:
                table = _Unpickler(fh, z, prefix, order, p).load()
    except ConversionError as e:
        raise ConversionError(f"{p} is not a readable speaker table ({e}). Re-download spk_dict.pt.") from e
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
    ) as e:
        raise ConversionError(
            f"{p} is not a readable speaker table ({e}). "
            "Re-download spk_dict.pt from the Qwen2.5-Omni repository."
        ) from e
    return _check(table, p)
