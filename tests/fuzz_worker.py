"""Worker for tests/test_fuzz_loaders.py: runs fuzz cases FIRST..LAST of a deterministic list on damaged
copies of a converted tiny model's files and chat file, and appends one JSON line per case to OUT:
{"i", "target", "how", "outcome": "ok" | "typed" | "untyped", "error"}. A line "start i" is written
(and flushed) before each case, so the parent can name the case of a native crash or a hang.

    python tests/fuzz_worker.py FOLDER WORK_DIR FIRST LAST OUT
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import pocketomni as po
from pocketomni.backend import LlamaModel, MtmdContext
from pocketomni.chat.store import SavedChat, read_chat_file, write_chat_file
from pocketomni.engine.model_folder import ModelFolder
from pocketomni.engine.weights import load_token2wav
from pocketomni.gguf_file import GGUFFile

# (target, share of the cases): chat files (raw damage, and damage behind valid checksums), the
# manifest, and the four GGUF files (header damage and truncation).
TARGETS = [("chat-raw", 90), ("chat-resigned", 110), ("manifest", 50), ("talker", 30), ("mmproj", 30),
           ("token2wav", 30), ("thinker", 20)]
CONFUSIONS: list[Any] = [None, 0, -1, 2**70, 1.5, float("nan"), "x", "", [], {}, True, [1, "a"], {"a": 1},
                         "\udcff", "<|im_start|>", 10**6]


def cases() -> list[tuple[str, int]]:
    """(target, seed) for every case, in a fixed order."""
    return [(t, k) for t, n in TARGETS for k in range(n)]


def _mutate_bytes(data: bytes, rng: random.Random, limit: int | None = None) -> tuple[bytes, str]:
    """Truncate, flip bytes (within the first `limit` bytes), or splice garbage."""
    span = min(len(data), limit or len(data))
    kind = rng.choice(["truncate", "flip", "flip", "garbage"])
    if kind == "truncate":
        n = rng.randrange(0, len(data))
        return data[:n], f"truncate to {n}"
    b = bytearray(data)
    if kind == "flip":
        k = rng.choice([1, 2, 8, 64])
        for _ in range(k):
            b[rng.randrange(span)] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip {k} bits in the first {span} bytes"
    at = rng.randrange(span)
    n = rng.choice([4, 16, 256])
    b[at:at + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(b), f"garbage {n} bytes at {at}"


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def _confuse(tree: Any, rng: random.Random) -> tuple[Any, str]:
    """Replace one value anywhere in a JSON tree by a value of another type (or drop it)."""
    tree = json.loads(json.dumps(tree))
    paths = _paths(tree)
    if not paths:
        return rng.choice(CONFUSIONS), "replace the whole document"
    path = rng.choice(paths)
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        return tree, f"drop {'/'.join(map(str, path))}"
    value = rng.choice(CONFUSIONS)
    parent[path[-1]] = value
    return tree, f"{'/'.join(map(str, path))} = {value!r}"


def _damage_arrays(arrays: dict[str, np.ndarray], rng: random.Random) -> tuple[dict[str, np.ndarray], str]:
    arrays = dict(arrays)
    name = rng.choice(sorted(arrays))
    a = arrays[name]
    kind = rng.choice(["dtype", "shorter", "longer", "ndim", "drop", "values", "empty"])
    if kind == "dtype":
        arrays[name] = a.astype(rng.choice([np.float32, np.int8, np.bool_, np.float64, np.uint64]))
    elif kind == "shorter":
        arrays[name] = a[: max(0, len(a) - rng.randrange(1, 4))]
    elif kind == "longer":
        arrays[name] = np.concatenate([a, a[:3]])
    elif kind == "ndim":
        arrays[name] = a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1)
    elif kind == "drop":
        del arrays[name]
    elif kind == "values":
        b = a.copy()
        flat = b.reshape(-1)
        if flat.size:
            flat[rng.randrange(flat.size)] = rng.choice([-1, 2**31 - 1, 10**6, 0])
        arrays[name] = b
    else:
        arrays[name] = a[:0]
    return arrays, f"arrays[{name}]: {kind}"


def _damage_kv(kv: bytes, rng: random.Random) -> tuple[bytes, str]:
    (hlen,) = struct.unpack_from("<I", kv, 8)
    if rng.random() < 0.4:
        header, how = _confuse(json.loads(kv[12:12 + hlen]), rng)
        hj = json.dumps(header).encode()
        return kv[:8] + struct.pack("<I", len(hj)) + hj + kv[12 + hlen:], f"kv header: {how}"
    data, how = _mutate_bytes(kv, rng)
    return data, f"kv bytes: {how}"


class Fuzzer:
    def __init__(self, folder: Path, work: Path) -> None:
        self.folder, self.work = folder, work
        self.omni = po.Omni.load_sync(folder, n_threads=1, n_ctx=256)
        chat = self.omni.chat(system="S", max_tokens=3)
        list(chat.send_sync("hello there"))
        self.chat_path = work / "good.pochat"
        chat.save(self.chat_path)
        self.saved = read_chat_file(self.chat_path)
        self.chat_bytes = self.chat_path.read_bytes()
        self.manifest = json.loads((folder / "pocketomni.json").read_text())
        self.files = {c: folder / e["path"] for c, e in self.manifest["files"].items()}
        self.how, self.log = "", None

    def run(self, target: str, seed: int) -> str:
        rng = random.Random(f"{target}-{seed}")
        case_dir = self.work / f"case-{target}-{seed}"
        case_dir.mkdir()
        self.how = ""
        try:
            return getattr(self, "_" + target.replace("-", "_"))(rng, case_dir)
        finally:
            shutil.rmtree(case_dir, ignore_errors=True)

    def _note(self, how: str) -> None:
        """Record what this case did before the load runs (a native crash leaves this as the last line)."""
        self.how = how
        if self.log is not None:
            self.log.write(json.dumps({"how": how}) + "\n")
            self.log.flush()

    def _restore(self, path: Path) -> None:
        chat = self.omni.restore_chat(path)
        try:
            list(chat.send_sync("more", max_tokens=2))
        finally:
            chat.close()

    def _chat_raw(self, rng: random.Random, d: Path) -> str:
        data, how = _mutate_bytes(self.chat_bytes, rng)
        (d / "c.pochat").write_bytes(data)
        self._note(how)
        self._restore(d / "c.pochat")
        return how

    def _chat_resigned(self, rng: random.Random, d: Path) -> str:
        s = self.saved
        header, arrays, kv = dict(s.header), s.arrays, s.kv_state
        part = rng.choice(["header", "arrays", "kv"])
        if part == "header":
            header, how = _confuse(header, rng)
            if not isinstance(header, dict):
                header, how = {"messages": header}, how + " (as messages)"
        elif part == "arrays":
            arrays, how = _damage_arrays(arrays, rng)
        else:
            kv, how = _damage_kv(kv, rng)
        self._note(how)
        write_chat_file(d / "c.pochat", SavedChat(header, arrays, kv))
        self._restore(d / "c.pochat")
        return how

    def _manifest(self, rng: random.Random, d: Path) -> str:
        for f in self.files.values():
            (d / f.name).symlink_to(f)
        if rng.random() < 0.5:
            doc, how = _confuse(self.manifest, rng)
            (d / "pocketomni.json").write_text(json.dumps(doc))
        else:
            data, how = _mutate_bytes((self.folder / "pocketomni.json").read_bytes(), rng)
            (d / "pocketomni.json").write_bytes(data)
        self._note(how)
        ModelFolder.open(d)
        return how

    def _gguf(self, component: str, rng: random.Random, d: Path, load: Any) -> str:
        src = self.files[component]
        data = src.read_bytes()
        header_end = min((t.offset for t in GGUFFile.open(src).tensors.values()), default=len(data))
        bad, how = _mutate_bytes(data, rng, limit=header_end)
        path = d / src.name
        path.write_bytes(bad)
        self._note(how)
        load(path)
        return how

    def _talker(self, rng: random.Random, d: Path) -> str:
        return self._gguf("talker", rng, d, lambda p: LlamaModel(p, n_threads=1).close())

    def _thinker(self, rng: random.Random, d: Path) -> str:
        return self._gguf("thinker", rng, d, lambda p: LlamaModel(p, n_threads=1).close())

    def _mmproj(self, rng: random.Random, d: Path) -> str:
        model = self.omni.runtime.thinker.model
        return self._gguf("mmproj", rng, d, lambda p: MtmdContext(p, model, n_threads=1).close())

    def _token2wav(self, rng: random.Random, d: Path) -> str:
        return self._gguf("token2wav", rng, d, load_token2wav)


def main() -> None:
    folder, work, first, last, out = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    fz = Fuzzer(folder, work)
    todo = cases()
    with open(out, "a") as log:
        fz.log = log
        for i in range(first, last):
            target, seed = todo[i]
            log.write(json.dumps({"start": i, "target": target, "seed": seed}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            rec: dict[str, Any] = {"i": i, "target": target, "seed": seed}
            try:
                rec["how"] = fz.run(target, seed)
                rec["outcome"] = "ok"
            except po.PocketOmniError as e:
                rec["how"] = fz.how
                rec["outcome"], rec["error"] = "typed", f"{type(e).__name__}: {e}"[:300]
            except Exception as e:  # noqa: BLE001 -- what the test counts as a defect
                rec["how"] = fz.how
                rec["outcome"] = "untyped"
                rec["error"] = "".join(traceback.format_exception(e))[-1500:]
            log.write(json.dumps(rec) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
