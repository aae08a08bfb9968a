"""The memory budget (engine/memory_budget.py) against what llama.cpp allocates, and mapped weights whose
copied pages leave memory (backend/mapped_file.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.backend.mapped_file import drop_mapped_pages, mapped_ranges
from pocketomni.engine.memory_budget import compute_bytes, kv_bytes_per_cell, memory_budget
from pocketomni.engine.model_folder import ModelFolder

PAT = re.compile(r"(KV|compute) buffer size\s*=\s*([\d.]+) MiB")


@pytest.fixture(scope="module")
def folder(converted_tiny) -> Path:
    return converted_tiny(quant="q8_0")


class Buffers(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.mib: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = PAT.search(record.getMessage())
        if m:
            self.mib[m.group(1)] = self.mib.get(m.group(1), 0.0) + float(m.group(2))


@pytest.mark.parametrize("n_ctx,n_ubatch", [(512, 128), (2048, 64), (4096, 512)])
def test_kv_and_compute_estimates_match_llama_cpp(folder: Path, n_ctx: int, n_ubatch: int) -> None:
    thinker = ModelFolder.open(folder).thinker
    log = Buffers()
    lg = logging.getLogger("pocketomni.llama")
    old = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(log)
    try:
        with LlamaModel(thinker, n_threads=1) as m, LlamaContext(m, n_ctx=n_ctx, n_ubatch=n_ubatch, n_seq_max=1) as c:
            cells = c.n_ctx
    finally:
        lg.removeHandler(log)
        lg.setLevel(old)
    # the KV cache is exact arithmetic; llama.cpp prints MiB with 2 decimals
    assert abs(kv_bytes_per_cell(thinker) * cells / 2**20 - log.mib["KV"]) <= 0.01
    # the compute buffer estimate covers llama.cpp's graph within 10 % (its other tensors are small)
    est = compute_bytes(thinker, cells, n_ubatch) / 2**20
    assert log.mib["compute"] <= est * 1.1 and est <= log.mib["compute"] * 1.1, (est, log.mib)


def test_budget_items_and_totals(folder: Path) -> None:
    f = ModelFolder.open(folder)
    b = memory_budget(folder, n_ctx=1024)
    items = {i.name: i for i in b.items}
    assert items["thinker weights"].mb == f.thinker.stat().st_size / 2**20
    assert items["thinker KV cache"].mb == kv_bytes_per_cell(f.thinker) * 1024 / 2**20
    assert items["media encoders"].when == "media" and items["talker weights"].when == "speech"
    assert b.total_mb("text") < b.total_mb("spoken") < b.total_mb("media")
    assert b.total_mb("media") == pytest.approx(sum(i.mb for i in b.items))
    with pytest.raises(ValueError):
        b.total_mb("video")


def _resident(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (smaps)."""
    target, total, inside = str(path.resolve()), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(None, 5)
                inside = len(parts) == 6 and parts[5].strip() == target
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux, Android)")
def test_dropping_mapped_pages_keeps_the_model_working(folder: Path) -> None:
    thinker = ModelFolder.open(folder).thinker
    ids = np.arange(5, 40).tolist()
    with LlamaModel(thinker, n_threads=1, use_mmap=False) as m, LlamaContext(m, n_ctx=256, n_seq_max=1) as c:
        want = c.decode_tokens(ids, logits="all").logits
    with LlamaModel(thinker, n_threads=1, use_mmap=True) as m, LlamaContext(m, n_ctx=256, n_seq_max=1) as c:
        assert mapped_ranges(thinker)
        got = c.decode_tokens(ids, logits="all").logits
        assert _resident(thinker) > 0
        assert drop_mapped_pages(thinker) > 0
        assert _resident(thinker) == 0
        c.clear()
        again = c.decode_tokens(ids, logits="all").logits  # pages come back from the file as they are read
    np.testing.assert_array_equal(got, want)  # mapped or read, the same weights and arithmetic
    np.testing.assert_array_equal(again, want)


def test_weights_are_mapped_where_pages_can_be_dropped(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pocketomni.backend.llama as backend

    thinker = ModelFolder.open(folder).thinker
    monkeypatch.setattr(backend, "available_memory", lambda: 64 << 30)
    assert backend.should_mmap(thinker, 0, platform="android")
    assert backend.should_mmap(thinker, 0, platform="linux")
    assert not backend.should_mmap(thinker, 0, platform="darwin")
    assert not backend.should_mmap(thinker, 0, platform="win32")
    assert backend.should_mmap(thinker, 99, platform="darwin")  # a GPU maps
    monkeypatch.setattr(backend, "available_memory", lambda: thinker.stat().st_size)  # not 2x the file free
    assert backend.should_mmap(thinker, 0, platform="darwin")
